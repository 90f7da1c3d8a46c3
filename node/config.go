package node

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/i2kit/i2kit/internal/cachedir"
	"github.com/i2kit/i2kit/netsync"
	"github.com/i2kit/i2kit/provider/aws"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// DefaultTaint keeps pods off the node unless they tolerate it, so mixed clusters offload only pods that opt in.
const DefaultTaint = "virtual-kubelet.io/provider=i2kit:NoSchedule"

// Backends lists the backends a node can run pods on: "qemu" runs each pod as a microVM on this machine, "aws" as
// an EC2 instance; "none" runs no pod (pods stay Pending with the reason).
var Backends = []string{"none", "qemu", "aws"}

// Config is the node's configuration, from a YAML file (strictly decoded) and flags; flags win.
type Config struct {
	// Kubeconfig is the path of the kubeconfig to reach the cluster; empty means in-cluster configuration.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// NodeName is the Node object's name.
	NodeName string `json:"nodeName,omitempty"`
	// Backend runs the pods' VMs: one of Backends.
	Backend string `json:"backend,omitempty"`
	// Capacity is what the node offers the scheduler; allocatable equals capacity. Pod VMs larger than its cpu or
	// memory are refused. Unset cpu and memory default to this host's with the qemu backend (its VMs run here),
	// else to 8 and 32Gi.
	Capacity Capacity `json:"capacity,omitempty"`
	// Labels are added to the node's standard labels (and may override them).
	Labels map[string]string `json:"labels,omitempty"`
	// Taints in kubectl's form key[=value]:Effect; nil means [DefaultTaint], empty means none.
	Taints []string `json:"taints"`
	// ListenAddress and Port are where the kubelet API is served over HTTPS.
	ListenAddress string `json:"listenAddress,omitempty"`
	Port          int    `json:"port,omitempty"`
	// InternalIP is the node address the apiserver uses to reach the kubelet API; by default the first global
	// unicast IPv4 address of this host.
	InternalIP string `json:"internalIP,omitempty"`
	// TLSCertFile and TLSKeyFile are the kubelet API's serving certificate; when empty a self-signed one is made
	// at start (the apiserver accepts it unless it runs with --kubelet-certificate-authority).
	TLSCertFile string `json:"tlsCertFile,omitempty"`
	TLSKeyFile  string `json:"tlsKeyFile,omitempty"`
	// ClientCAFile verifies client certificates on the kubelet API; when empty the cluster's client CA is read
	// from the kube-system/extension-apiserver-authentication ConfigMap.
	ClientCAFile string `json:"clientCAFile,omitempty"`
	// PodCIDR is the range pod VM addresses come from; with the qemu backend its first address is the bridge's.
	PodCIDR string `json:"podCIDR,omitempty"`
	// QEMU configures the qemu backend.
	QEMU QEMUConfig `json:"qemu,omitempty"`
	// AWS configures the aws backend; its node defaults to NodeName.
	AWS aws.Config `json:"aws,omitempty"`
	// LoadBalancers configures the load balancers of Services of type LoadBalancer.
	LoadBalancers LoadBalancersConfig `json:"loadBalancers,omitempty"`
	// Images configures how pod VM images are built.
	Images ImagesConfig `json:"images,omitempty"`
	// LeaderElection lets several replicas of the node stand by for one another: only the one holding the lease
	// runs the node.
	LeaderElection LeaderElectionConfig `json:"leaderElection,omitempty"`
	// HealthzAddress is host:port where /healthz is served over plain HTTP without authentication, for a pod's
	// liveness probe (the kubelet API's /healthz requires authentication, and a standby does not serve the kubelet
	// API). Every replica answers it, leader or standby, once its configuration is valid. Empty (the default) serves
	// none.
	HealthzAddress string `json:"healthzAddress,omitempty"`
	// AllowedUnsafeSysctls are the sysctls, beyond a kubelet's safe set (kernel.shm_rmid_forced,
	// net.ipv4.ip_local_port_range, ...), that pods may set, as a kubelet's --allowed-unsafe-sysctls: names, or
	// prefixes ending in "*" ("kernel.msg*", "net.core.*"). A pod setting any other fails with SysctlForbidden. Unlike
	// a kubelet's, they may name sysctls that are not namespaced ("vm.*"): a pod VM's kernel is the pod's alone.
	AllowedUnsafeSysctls []string `json:"allowedUnsafeSysctls,omitempty"`
	// MetricsAddress is host:port where the node's Prometheus metrics are served at /metrics over plain HTTP without
	// authentication, for a scraper beside the node (a ServiceMonitor); the same address as HealthzAddress serves
	// both on one listener. Empty (the default) serves none there; the kubelet API serves them at /metrics anyway,
	// to clients authorized for the node's nodes/metrics subresource.
	MetricsAddress string `json:"metricsAddress,omitempty"`
}

// LeaderElectionConfig configures the election among the node's replicas: they campaign for a coordination Lease,
// and only its holder registers the Node, serves the kubelet API, runs the pods and touches their VMs; a standby
// only campaigns and answers HealthzAddress. When the leader dies, a standby takes the lease once it has seen it
// unrenewed for LeaseDuration, and adopts the running VMs as a restarted node does: none is lost or launched twice.
// A leader that cannot renew the lease within RenewDeadline exits at once, before another may take it. Every
// replica must reach the same VMs: with the qemu backend they run on one host and share qemu.runtimeDir; with the
// aws backend they must share the agent CA (aws.agentCA), or the new leader is refused by every adopted VM's agent.
// The node's identity needs get, create and update on leases in Namespace.
type LeaderElectionConfig struct {
	// Enabled turns the election on (default off: the process runs the node at once).
	Enabled bool `json:"enabled,omitempty"`
	// LeaseName is the Lease's name (default: the node's name).
	LeaseName string `json:"leaseName,omitempty"`
	// Namespace is the Lease's namespace: by default the namespace the node's pod runs in ($POD_NAMESPACE, else its
	// service account's), where its chart's Role is; outside a pod it must be set. kube-node-lease is possible but
	// holds the node's heartbeat Lease, named after the node, so the two must not share a name.
	Namespace string `json:"namespace,omitempty"`
	// Identity names this replica in the Lease (default: the host name, which is the pod's name in a pod, and a
	// random suffix, so that a restarted replica is a new candidate).
	Identity string `json:"identity,omitempty"`
	// LeaseDuration is how long a standby waits, without seeing the lease renewed, before it takes the lease (default
	// 15s, a whole number of seconds: the Lease records seconds). RenewDeadline is how long the leader keeps trying
	// to renew before it gives up and exits (default 10s, less than LeaseDuration). RetryPeriod is how often every
	// replica tries (default 2s; RenewDeadline must exceed 1.2 times it). These are the Kubernetes components'
	// defaults: a dead leader is replaced within about 15–17 s.
	LeaseDuration metav1.Duration `json:"leaseDuration,omitempty"`
	RenewDeadline metav1.Duration `json:"renewDeadline,omitempty"`
	RetryPeriod   metav1.Duration `json:"retryPeriod,omitempty"`
}

// LoadBalancersConfig configures the load balancers the node makes for the Services of type LoadBalancer it
// claims: those whose loadBalancerClass is Class (and, with ClaimUnclassed, those without a class). With the qemu
// backend they are the node's own (nftables), their ingress addresses from Pool; with aws, Network Load Balancers
// with ip targets in aws.loadBalancerSubnets or aws.subnets (provider/aws.NLBBalancer), their DNS names as ingress.
type LoadBalancersConfig struct {
	// Enabled runs the load-balancer controller (default true).
	Enabled bool `json:"enabled"`
	// Class is the loadBalancerClass of the Services the node claims (default netsync.LoadBalancerClass,
	// "i2kit.io/load-balancer"). Two nodes must not claim one class: give each its own (the replicas of one node,
	// with leaderElection, are one node).
	Class string `json:"class,omitempty"`
	// ClaimUnclassed also claims Services without a loadBalancerClass: off by default, so that a mixed cluster's own
	// cloud controller keeps them.
	ClaimUnclassed bool `json:"claimUnclassed,omitempty"`
	// Cluster names the cluster in the load balancers' tags (default: aws.cluster, else the node's name). With the
	// aws backend it is what iam-policy.json's CLUSTER_NAME conditions must allow: leave it to aws.cluster.
	Cluster string `json:"cluster,omitempty"`
	// Pool is the IPv4 range of the qemu backend's ingress addresses, added to the host's loopback; nothing else on
	// the host may use it (default 10.89.0.0/24).
	Pool string `json:"pool,omitempty"`
}

// QEMUConfig configures the qemu backend.
type QEMUConfig struct {
	// RuntimeDir holds a directory per pod VM; running VMs are adopted from it when the node restarts.
	RuntimeDir string `json:"runtimeDir,omitempty"`
	// Bridge is the host bridge pod VMs' TAPs join.
	Bridge string `json:"bridge,omitempty"`
}

// ImagesConfig configures pod VM images.
type ImagesConfig struct {
	// Store is the image store directory (one node per store).
	Store string `json:"store,omitempty"`
	// MaxImages and MaxBytes bound the store: least recently used images go first, images in use never.
	MaxImages int    `json:"maxImages,omitempty"`
	MaxBytes  string `json:"maxBytes,omitempty"`
	// Kernel is the pod VMs' kernel (vmlinux); by default the one `make kernel` built.
	Kernel string `json:"kernel,omitempty"`
	// Agent is the i2kit-agent binary; by default the one beside this binary.
	Agent string `json:"agent,omitempty"`
	// InsecureRegistries are registry hosts served over plain HTTP.
	InsecureRegistries []string `json:"insecureRegistries,omitempty"`
	// Mirrors are registry=mirror pairs; mirrors are tried before the registry.
	Mirrors []string `json:"mirrors,omitempty"`
	// DockerConfigs are docker config.json files with the node's registry credentials (default:
	// ~/.docker/config.json), tried after a pod's pull secrets.
	DockerConfigs []string `json:"dockerConfigs,omitempty"`
	// MaxImageBytes bounds the uncompressed bytes of one container image's layers, as downloaded and as
	// extracted (a quantity; 16Gi when empty); MaxLayerBytes bounds one layer's (MaxImageBytes when empty). An
	// image over either fails its build: a small gzip must not expand into the node's disk.
	MaxImageBytes string `json:"maxImageBytes,omitempty"`
	MaxLayerBytes string `json:"maxLayerBytes,omitempty"`
}

// UncompressedLimits returns MaxImageBytes and MaxLayerBytes in bytes, 0 for those unset (the image builder's
// defaults); an error names the field that is not a positive quantity, or a layer bound above the image's.
func (c ImagesConfig) UncompressedLimits() (image, layer int64, err error) {
	parse := func(field, v string) (int64, error) {
		if v == "" {
			return 0, nil
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() <= 0 {
			return 0, fmt.Errorf("%s %q: want a positive quantity such as 16Gi", field, v)
		}
		return q.Value(), nil
	}
	if image, err = parse("images.maxImageBytes", c.MaxImageBytes); err != nil {
		return 0, 0, err
	}
	if layer, err = parse("images.maxLayerBytes", c.MaxLayerBytes); err != nil {
		return 0, 0, err
	}
	if image > 0 && layer > image {
		return 0, 0, fmt.Errorf("images.maxLayerBytes %q: more than images.maxImageBytes %q", c.MaxLayerBytes, c.MaxImageBytes)
	}
	return image, layer, nil
}

// Capacity is the node's resources as Kubernetes quantities.
type Capacity struct {
	CPU              string `json:"cpu,omitempty"`
	Memory           string `json:"memory,omitempty"`
	Pods             string `json:"pods,omitempty"`
	EphemeralStorage string `json:"ephemeral-storage,omitempty"`
}

// DefaultConfig is the configuration before the file and flags apply.
func DefaultConfig() Config {
	return Config{
		Kubeconfig:    os.Getenv("KUBECONFIG"),
		NodeName:      "i2kit",
		Backend:       "none",
		Capacity:      Capacity{Pods: "110", EphemeralStorage: "100Gi"}, // cpu and memory: Validate (DefaultCapacity)
		ListenAddress: "0.0.0.0",
		Port:          10250,
		PodCIDR:       "10.88.0.0/16",
		QEMU:          QEMUConfig{RuntimeDir: "/run/i2kit/qemu", Bridge: "i2kit0"},
		LoadBalancers: LoadBalancersConfig{Enabled: true, Pool: "10.89.0.0/24"},
		Images:        ImagesConfig{Store: filepath.Join(cachedir.Root(), "images"), MaxImages: 500, MaxBytes: "50Gi"},
		LeaderElection: LeaderElectionConfig{
			LeaseDuration: metav1.Duration{Duration: 15 * time.Second},
			RenewDeadline: metav1.Duration{Duration: 10 * time.Second},
			RetryPeriod:   metav1.Duration{Duration: 2 * time.Second},
		},
	}
}

// LoadFile decodes a YAML configuration file over c; an unknown field is an error that names it.
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading config file, %w", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	if err := yaml.UnmarshalStrict(b, c); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

// Flags binds the configuration's flags; Apply copies the ones the user set onto a configuration, so that a
// configuration file can sit between defaults and flags.
type Flags struct {
	fs   *pflag.FlagSet
	vals Config
	copy map[string]func(dst *Config)
}

// AddFlags registers the node's flags on fs.
func AddFlags(fs *pflag.FlagSet) *Flags {
	f := &Flags{fs: fs, vals: DefaultConfig(), copy: map[string]func(*Config){}}
	v := &f.vals
	str := func(name string, field func(*Config) *string, usage string) {
		p := field(v)
		fs.StringVar(p, name, *p, usage)
		f.copy[name] = func(dst *Config) { *field(dst) = *p }
	}
	str("kubeconfig", func(c *Config) *string { return &c.Kubeconfig }, "kubeconfig to reach the cluster (default $KUBECONFIG; empty: in-cluster)")
	str("node-name", func(c *Config) *string { return &c.NodeName }, "name of the Node object")
	str("backend", func(c *Config) *string { return &c.Backend }, "backend that runs pod VMs: "+strings.Join(Backends, ", "))
	str("cpu", func(c *Config) *string { return &c.Capacity.CPU }, "node CPU capacity (default: the host's with --backend qemu, else 8)")
	str("memory", func(c *Config) *string { return &c.Capacity.Memory }, "node memory capacity (default: the host's with --backend qemu, else 32Gi)")
	str("pods", func(c *Config) *string { return &c.Capacity.Pods }, "node pod capacity")
	str("ephemeral-storage", func(c *Config) *string { return &c.Capacity.EphemeralStorage }, "node ephemeral-storage capacity")
	str("listen-address", func(c *Config) *string { return &c.ListenAddress }, "address the kubelet API listens on")
	str("internal-ip", func(c *Config) *string { return &c.InternalIP }, "node InternalIP the apiserver reaches the kubelet API at (default: first global IPv4 of this host)")
	str("tls-cert-file", func(c *Config) *string { return &c.TLSCertFile }, "kubelet API serving certificate (default: self-signed at start)")
	str("tls-key-file", func(c *Config) *string { return &c.TLSKeyFile }, "kubelet API serving key")
	str("client-ca-file", func(c *Config) *string { return &c.ClientCAFile }, "CA for client certificates (default: kube-system/extension-apiserver-authentication)")
	str("pod-cidr", func(c *Config) *string { return &c.PodCIDR }, "range pod VM addresses come from")
	str("qemu-runtime-dir", func(c *Config) *string { return &c.QEMU.RuntimeDir }, "qemu backend: directory of the pod VMs' state")
	str("qemu-bridge", func(c *Config) *string { return &c.QEMU.Bridge }, "qemu backend: host bridge of the pod VMs")
	str("image-store", func(c *Config) *string { return &c.Images.Store }, "pod VM image store directory")
	str("kernel", func(c *Config) *string { return &c.Images.Kernel }, "pod VM kernel (vmlinux; default: the one `make kernel` built)")
	str("agent", func(c *Config) *string { return &c.Images.Agent }, "i2kit-agent binary (default: beside this binary)")
	fs.StringSliceVar(&v.Images.InsecureRegistries, "insecure-registry", nil, "registry hosts served over plain HTTP")
	f.copy["insecure-registry"] = func(dst *Config) { dst.Images.InsecureRegistries = v.Images.InsecureRegistries }
	fs.StringSliceVar(&v.Images.Mirrors, "registry-mirror", nil, "registry=mirror pairs, tried before the registry")
	f.copy["registry-mirror"] = func(dst *Config) { dst.Images.Mirrors = v.Images.Mirrors }
	fs.StringSliceVar(&v.Images.DockerConfigs, "docker-config", nil, "docker config.json files with the node's registry credentials")
	f.copy["docker-config"] = func(dst *Config) { dst.Images.DockerConfigs = v.Images.DockerConfigs }
	fs.StringSliceVar(&v.AllowedUnsafeSysctls, "allowed-unsafe-sysctls", nil, "sysctls or patterns ending in * that pods may set beyond the safe ones (e.g. kernel.msg*,net.core.somaxconn)")
	f.copy["allowed-unsafe-sysctls"] = func(dst *Config) { dst.AllowedUnsafeSysctls = v.AllowedUnsafeSysctls }
	fs.IntVar(&v.Images.MaxImages, "max-images", 0, "images kept in the store")
	f.copy["max-images"] = func(dst *Config) { dst.Images.MaxImages = v.Images.MaxImages }
	str("max-bytes", func(c *Config) *string { return &c.Images.MaxBytes }, "bytes kept in the image store")
	str("healthz-address", func(c *Config) *string { return &c.HealthzAddress }, "host:port serving /healthz over plain HTTP without authentication, for probes (default: none)")
	str("metrics-address", func(c *Config) *string { return &c.MetricsAddress }, "host:port serving the node's Prometheus metrics at /metrics over plain HTTP without authentication (default: none; the kubelet API serves them to clients allowed nodes/metrics)")
	fs.BoolVar(&v.LeaderElection.Enabled, "leader-elect", false, "elect a leader among the node's replicas through a Lease; only the leader runs the node")
	f.copy["leader-elect"] = func(dst *Config) { dst.LeaderElection.Enabled = v.LeaderElection.Enabled }
	str("leader-elect-lease-name", func(c *Config) *string { return &c.LeaderElection.LeaseName }, "leader election: name of the Lease (default: the node's name)")
	str("leader-elect-namespace", func(c *Config) *string { return &c.LeaderElection.Namespace }, "leader election: namespace of the Lease (default: the pod's namespace)")
	str("leader-elect-identity", func(c *Config) *string { return &c.LeaderElection.Identity }, "leader election: this replica's identity (default: host name and a random suffix)")
	dur := func(name string, field func(*Config) *time.Duration, usage string) {
		p := field(v)
		fs.DurationVar(p, name, *p, usage)
		f.copy[name] = func(dst *Config) { *field(dst) = *p }
	}
	dur("leader-elect-lease-duration", func(c *Config) *time.Duration { return &c.LeaderElection.LeaseDuration.Duration }, "leader election: how long a standby waits for an unrenewed lease before taking it")
	dur("leader-elect-renew-deadline", func(c *Config) *time.Duration { return &c.LeaderElection.RenewDeadline.Duration }, "leader election: how long the leader tries to renew before it exits")
	dur("leader-elect-retry-period", func(c *Config) *time.Duration { return &c.LeaderElection.RetryPeriod.Duration }, "leader election: how often replicas try to acquire or renew")
	fs.IntVar(&v.Port, "port", v.Port, "port of the kubelet API")
	f.copy["port"] = func(dst *Config) { dst.Port = v.Port }
	fs.StringToStringVar(&v.Labels, "labels", nil, "extra node labels, key=value,...")
	f.copy["labels"] = func(dst *Config) { dst.Labels = v.Labels }
	fs.StringSliceVar(&v.Taints, "taints", nil, "node taints key[=value]:Effect,... (default "+DefaultTaint+"; --taints= for none)")
	f.copy["taints"] = func(dst *Config) {
		dst.Taints = []string{}
		for _, t := range v.Taints {
			if t != "" {
				dst.Taints = append(dst.Taints, t)
			}
		}
	}
	return f
}

// Apply copies every flag the user set onto c.
func (f *Flags) Apply(c *Config) {
	f.fs.Visit(func(fl *pflag.Flag) {
		if cp, ok := f.copy[fl.Name]; ok {
			cp(c)
		}
	})
}

// Validate checks the configuration and fills derived defaults (InternalIP, taints); an error names the field.
func (c *Config) Validate() error {
	if c.NodeName == "" {
		return fmt.Errorf("nodeName: must not be empty")
	}
	if errs := validation.IsDNS1123Subdomain(c.NodeName); len(errs) > 0 {
		return fmt.Errorf("nodeName %q: %s", c.NodeName, strings.Join(errs, "; "))
	}
	if !slices.Contains(Backends, c.Backend) {
		return fmt.Errorf("backend %q: unknown, want one of %s", c.Backend, strings.Join(Backends, ", "))
	}
	c.Capacity = DefaultCapacity(c.Capacity, c.Backend, runtime.NumCPU(), hostMemTotal())
	for _, q := range []struct{ field, val string }{
		{"capacity.cpu", c.Capacity.CPU}, {"capacity.memory", c.Capacity.Memory},
		{"capacity.pods", c.Capacity.Pods}, {"capacity.ephemeral-storage", c.Capacity.EphemeralStorage},
	} {
		v, err := resource.ParseQuantity(q.val)
		if err != nil {
			return fmt.Errorf("%s %q: %w", q.field, q.val, err)
		}
		if v.Sign() <= 0 {
			return fmt.Errorf("%s %q: must be positive", q.field, q.val)
		}
	}
	for k, v := range c.Labels {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return fmt.Errorf("labels: key %q: %s", k, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return fmt.Errorf("labels: value %q of %q: %s", v, k, strings.Join(errs, "; "))
		}
	}
	if c.Taints == nil {
		c.Taints = []string{DefaultTaint}
	}
	if _, err := ParseTaints(c.Taints); err != nil {
		return err
	}
	if net.ParseIP(c.ListenAddress) == nil {
		return fmt.Errorf("listenAddress %q: not an IP address", c.ListenAddress)
	}
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("port %d: out of range 1-65535", c.Port)
	}
	if c.InternalIP == "" {
		ip, err := firstGlobalIPv4()
		if err != nil {
			return fmt.Errorf("internalIP: not set and %w", err)
		}
		c.InternalIP = ip
	}
	if net.ParseIP(c.InternalIP) == nil {
		return fmt.Errorf("internalIP %q: not an IP address", c.InternalIP)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return fmt.Errorf("tlsCertFile and tlsKeyFile: set both or neither")
	}
	for _, f := range []struct{ field, path string }{
		{"tlsCertFile", c.TLSCertFile}, {"tlsKeyFile", c.TLSKeyFile}, {"clientCAFile", c.ClientCAFile}, {"kubeconfig", c.Kubeconfig},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.field, err)
		}
	}
	if _, _, err := net.ParseCIDR(c.PodCIDR); err != nil {
		return fmt.Errorf("podCIDR %q: %w", c.PodCIDR, err)
	}
	if c.LoadBalancers.Cluster == "" {
		c.LoadBalancers.Cluster = cmp.Or(c.AWS.Cluster, c.NodeName)
	}
	if c.LoadBalancers.Class == "" {
		c.LoadBalancers.Class = netsync.LoadBalancerClass
	}
	if errs := validation.IsQualifiedName(c.LoadBalancers.Class); len(errs) > 0 {
		return fmt.Errorf("loadBalancers.class %q: %s", c.LoadBalancers.Class, strings.Join(errs, "; "))
	}
	if c.Backend == "qemu" && c.LoadBalancers.Enabled {
		p, err := netip.ParsePrefix(c.LoadBalancers.Pool)
		if err != nil || !p.Addr().Is4() || p.Bits() < 16 {
			return fmt.Errorf("loadBalancers.pool %q: want an IPv4 range from /16 to /32, such as 10.89.0.0/24", c.LoadBalancers.Pool)
		}
		if pods, err := netip.ParsePrefix(c.PodCIDR); err == nil && pods.Overlaps(p) {
			return fmt.Errorf("loadBalancers.pool %q: overlaps podCIDR %q", c.LoadBalancers.Pool, c.PodCIDR)
		}
	}
	if c.Backend == "aws" {
		if c.AWS.Node == "" {
			c.AWS.Node = c.NodeName
		}
		if err := c.AWS.Validate(); err != nil {
			return err
		}
	}
	if c.Backend == "qemu" {
		if c.QEMU.RuntimeDir == "" || c.QEMU.Bridge == "" || c.Images.Store == "" {
			return fmt.Errorf("qemu.runtimeDir, qemu.bridge and images.store: must not be empty")
		}
		if len(c.QEMU.Bridge) > 15 {
			return fmt.Errorf("qemu.bridge %q: at most 15 characters", c.QEMU.Bridge)
		}
		// These paths end up inside QEMU's key=value,... options; the backend escapes commas, and a comma in a
		// node's path is refused as well, so that no configuration can add options to QEMU's command line.
		for _, f := range []struct{ field, path string }{
			{"qemu.runtimeDir", c.QEMU.RuntimeDir}, {"images.store", c.Images.Store},
			{"images.kernel", c.Images.Kernel}, {"images.agent", c.Images.Agent},
		} {
			if strings.ContainsAny(f.path, ",\x00\n") {
				return fmt.Errorf("%s %q: must not contain a comma, NUL or newline (they would be read as QEMU options)", f.field, f.path)
			}
		}
	}
	if c.HealthzAddress != "" {
		if err := checkHostPort(c.HealthzAddress); err != nil {
			return fmt.Errorf("healthzAddress %q: %w", c.HealthzAddress, err)
		}
	}
	if c.MetricsAddress != "" {
		if err := checkHostPort(c.MetricsAddress); err != nil {
			return fmt.Errorf("metricsAddress %q: %w", c.MetricsAddress, err)
		}
	}
	for _, p := range c.AllowedUnsafeSysctls {
		if len(p) > 253 || !sysctlPattern.MatchString(p) {
			return fmt.Errorf("allowedUnsafeSysctls %q: want a sysctl name, or a prefix ending in *, such as kernel.msg* (at most 253 characters matching %s)", p, sysctlPattern)
		}
	}
	if c.LeaderElection.Enabled {
		if err := c.validateLeaderElection(); err != nil {
			return err
		}
	}
	if c.Backend != "none" {
		if c.Images.MaxImages < 1 {
			return fmt.Errorf("images.maxImages %d: must be at least 1", c.Images.MaxImages)
		}
		if q, err := resource.ParseQuantity(c.Images.MaxBytes); err != nil || q.Sign() <= 0 {
			return fmt.Errorf("images.maxBytes %q: want a positive quantity such as 50Gi", c.Images.MaxBytes)
		}
		if _, _, err := c.Images.UncompressedLimits(); err != nil {
			return err
		}
		for _, m := range c.Images.Mirrors {
			if r, mirror, ok := strings.Cut(m, "="); !ok || r == "" || mirror == "" {
				return fmt.Errorf("images.mirrors %q: want registry=mirror", m)
			}
		}
	}
	return nil
}

// sysctlPattern is a sysctl name or a prefix ending in "*", elements separated by dots or slashes, as a kubelet's
// --allowed-unsafe-sysctls (policy validation's SysctlContainSlashPatternFmt).
var sysctlPattern = regexp.MustCompile(`^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*([a-z0-9][-_a-z0-9]*)?[a-z0-9*]$`)

// serviceAccountNamespace is where a pod finds its namespace; a variable for tests.
var serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// validateLeaderElection checks the election's settings and fills their defaults: the lease named after the node,
// in the pod's namespace, and an identity of the host name and a random suffix.
func (c *Config) validateLeaderElection() error {
	le := &c.LeaderElection
	le.LeaseName = cmp.Or(le.LeaseName, c.NodeName)
	if errs := validation.IsDNS1123Subdomain(le.LeaseName); len(errs) > 0 {
		return fmt.Errorf("leaderElection.leaseName %q: %s", le.LeaseName, strings.Join(errs, "; "))
	}
	if le.Namespace == "" {
		le.Namespace = os.Getenv("POD_NAMESPACE")
	}
	if le.Namespace == "" {
		if b, err := os.ReadFile(serviceAccountNamespace); err == nil {
			le.Namespace = strings.TrimSpace(string(b))
		}
	}
	if le.Namespace == "" {
		return fmt.Errorf("leaderElection.namespace: not set, and this process runs in no pod ($POD_NAMESPACE unset, no %s)", serviceAccountNamespace)
	}
	if errs := validation.IsDNS1123Label(le.Namespace); len(errs) > 0 {
		return fmt.Errorf("leaderElection.namespace %q: %s", le.Namespace, strings.Join(errs, "; "))
	}
	// The node's heartbeat is kube-node-lease/<node>, renewed by whichever replica leads: an election on the same
	// Lease would see the heartbeat's holder (the node's name) as a leader that never goes away.
	if le.Namespace == corev1.NamespaceNodeLease && le.LeaseName == c.NodeName {
		return fmt.Errorf("leaderElection.leaseName %q: in namespace %s it is the node's heartbeat Lease; choose another name or namespace", le.LeaseName, le.Namespace)
	}
	if le.Identity == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("leaderElection.identity: not set and %w", err)
		}
		var suffix [4]byte
		rand.Read(suffix[:]) //nolint:errcheck // crypto/rand.Read does not fail
		le.Identity = host + "_" + hex.EncodeToString(suffix[:])
	}
	lease, renew, retry := le.LeaseDuration.Duration, le.RenewDeadline.Duration, le.RetryPeriod.Duration
	switch {
	case lease < time.Second || lease%time.Second != 0:
		// The Lease records whole seconds: 1.5s would tell the standbys 1s, and they would take over early.
		return fmt.Errorf("leaderElection.leaseDuration %s: want a whole number of seconds, at least 1s", lease)
	case renew <= 0 || renew >= lease:
		return fmt.Errorf("leaderElection.renewDeadline %s: want more than 0 and less than leaseDuration (%s)", renew, lease)
	case retry <= 0 || float64(renew) <= 1.2*float64(retry):
		return fmt.Errorf("leaderElection.retryPeriod %s: want more than 0 and renewDeadline (%s) more than 1.2 times it", retry, renew)
	}
	if c.Backend == "aws" && (c.AWS.AgentCA.Cert == "" || c.AWS.AgentCA.Key == "") {
		// Each replica would otherwise make a CA of its own in its own state directory, and the agents of the VMs a
		// new leader adopts trust only the CA that launched them.
		return fmt.Errorf("leaderElection: with the aws backend, aws.agentCA.cert and aws.agentCA.key must be set, the same for every replica (a Secret): the agents of adopted instances trust only the CA that launched them")
	}
	return nil
}

// checkHostPort checks a listen address: an IP address or nothing, and a port from 1 to 65535.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host != "" && net.ParseIP(host) == nil {
		return fmt.Errorf("host %q: not an IP address", host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want 1-65535", port)
	}
	return nil
}

// DefaultCapacity fills a capacity's unset cpu and memory: with the qemu backend from the host the VMs run on
// (hostCPUs, hostMemBytes; 0 when unknown); with aws what a modest account's EC2 quota runs (256 CPUs, 1Ti);
// otherwise, or when the host's are unknown, 8 CPUs and 32Gi.
func DefaultCapacity(c Capacity, backend string, hostCPUs int, hostMemBytes int64) Capacity {
	if backend == "aws" {
		c.CPU = cmp.Or(c.CPU, "256")
		c.Memory = cmp.Or(c.Memory, "1Ti")
	}
	if c.CPU == "" {
		c.CPU = "8"
		if backend == "qemu" && hostCPUs > 0 {
			c.CPU = strconv.Itoa(hostCPUs)
		}
	}
	if c.Memory == "" {
		c.Memory = "32Gi"
		if backend == "qemu" && hostMemBytes > 0 {
			c.Memory = resource.NewQuantity(hostMemBytes, resource.BinarySI).String()
		}
	}
	return c
}

// hostMemTotal is the host's MemTotal from /proc/meminfo in bytes; 0 if unknown.
func hostMemTotal() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// ParseTaints parses taints in kubectl's form key[=value]:Effect.
func ParseTaints(specs []string) ([]corev1.Taint, error) {
	var out []corev1.Taint
	for _, s := range specs {
		kv, effect, ok := strings.Cut(s, ":")
		if !ok {
			return nil, fmt.Errorf("taints: %q: want key[=value]:Effect", s)
		}
		k, v, _ := strings.Cut(kv, "=")
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return nil, fmt.Errorf("taints: %q: key: %s", s, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return nil, fmt.Errorf("taints: %q: value: %s", s, strings.Join(errs, "; "))
		}
		e := corev1.TaintEffect(effect)
		if e != corev1.TaintEffectNoSchedule && e != corev1.TaintEffectPreferNoSchedule && e != corev1.TaintEffectNoExecute {
			return nil, fmt.Errorf("taints: %q: effect %q: want NoSchedule, PreferNoSchedule or NoExecute", s, effect)
		}
		out = append(out, corev1.Taint{Key: k, Value: v, Effect: e})
	}
	return out, nil
}

func firstGlobalIPv4() (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("listing addresses, %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && n.IP.IsGlobalUnicast() {
			return n.IP.String(), nil
		}
	}
	return "", fmt.Errorf("this host has no global unicast IPv4 address")
}
