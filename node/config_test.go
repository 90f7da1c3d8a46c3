package node

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"
)

// elect turns leader election on with a namespace, so that validation does not look for the pod's.
func elect(c *Config) {
	c.LeaderElection.Enabled = true
	c.LeaderElection.Namespace = "i2kit-system"
}

func awsConfig(c *Config) {
	c.Backend = "aws"
	c.AWS.Cluster, c.AWS.Region = "c", "eu-west-1"
	c.AWS.Subnets, c.AWS.SecurityGroups = []string{"s"}, []string{"g"}
}

func validConfig() Config {
	c := DefaultConfig()
	c.Kubeconfig = ""
	c.InternalIP = "198.18.0.10"
	return c
}

func TestValidateNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string // "" means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"empty node name", func(c *Config) { c.NodeName = "" }, "nodeName: must not be empty"},
		{"bad node name", func(c *Config) { c.NodeName = "Not_A_Name" }, `nodeName "Not_A_Name"`},
		{"unknown backend", func(c *Config) { c.Backend = "xen" }, `backend "xen": unknown`},
		{"bad cpu", func(c *Config) { c.Capacity.CPU = "many" }, `capacity.cpu "many"`},
		{"zero memory", func(c *Config) { c.Capacity.Memory = "0" }, `capacity.memory "0": must be positive`},
		{"bad pods", func(c *Config) { c.Capacity.Pods = "" }, "capacity.pods"},
		{"bad label key", func(c *Config) { c.Labels = map[string]string{"a b": "c"} }, `labels: key "a b"`},
		{"bad label value", func(c *Config) { c.Labels = map[string]string{"a": "b c"} }, `labels: value "b c"`},
		{"taint without effect", func(c *Config) { c.Taints = []string{"k=v"} }, `taints: "k=v": want key[=value]:Effect`},
		{"taint bad effect", func(c *Config) { c.Taints = []string{"k=v:Never"} }, `effect "Never"`},
		{"no taints", func(c *Config) { c.Taints = []string{} }, ""},
		{"listen address", func(c *Config) { c.ListenAddress = "localhost" }, `listenAddress "localhost"`},
		{"port", func(c *Config) { c.Port = 70000 }, "port 70000"},
		{"internal ip", func(c *Config) { c.InternalIP = "10.0.0" }, `internalIP "10.0.0"`},
		{"half a key pair", func(c *Config) { c.TLSCertFile = "x.crt" }, "tlsCertFile and tlsKeyFile: set both or neither"},
		{"missing cert file", func(c *Config) { c.TLSCertFile, c.TLSKeyFile = "/nonexistent.crt", "/nonexistent.key" }, "tlsCertFile: "},
		{"missing client ca", func(c *Config) { c.ClientCAFile = "/nonexistent" }, "clientCAFile: "},
		{"missing kubeconfig", func(c *Config) { c.Kubeconfig = "/nonexistent" }, "kubeconfig: "},
		{"comma in runtimeDir", func(c *Config) { c.Backend, c.QEMU.RuntimeDir = "qemu", "/run/a,b" }, `qemu.runtimeDir "/run/a,b": must not contain a comma`},
		{"comma in store", func(c *Config) { c.Backend, c.Images.Store = "qemu", "/x/a,file=/etc/shadow" }, `images.store "/x/a,file=/etc/shadow": must not contain a comma`},
		{"comma in kernel", func(c *Config) { c.Backend, c.Images.Kernel = "qemu", "/k/v,x" }, `images.kernel "/k/v,x"`},
		{"comma in agent", func(c *Config) { c.Backend, c.Images.Agent = "qemu", "/a/b,c" }, `images.agent "/a/b,c"`},
		{"aws without region", func(c *Config) {
			c.Backend = "aws"
			c.AWS.Cluster = "c"
			c.AWS.Subnets = []string{"s"}
			c.AWS.SecurityGroups = []string{"g"}
		}, "aws.region: required"},
		{"aws without subnets", func(c *Config) {
			c.Backend = "aws"
			c.AWS.Cluster = "c"
			c.AWS.Region = "eu-west-1"
			c.AWS.SecurityGroups = []string{"g"}
		}, "aws.subnets: at least one subnet"},
		{"aws without cluster", func(c *Config) {
			c.Backend = "aws"
			c.AWS.Region = "eu-west-1"
			c.AWS.Subnets = []string{"s"}
			c.AWS.SecurityGroups = []string{"g"}
		}, "aws.cluster: required"},
		{"qemu defaults", func(c *Config) { c.Backend = "qemu" }, ""},
		{"image bounds", func(c *Config) { c.Backend, c.Images.MaxImageBytes, c.Images.MaxLayerBytes = "qemu", "8Gi", "1Gi" }, ""},
		{"bad image bound", func(c *Config) { c.Backend, c.Images.MaxImageBytes = "qemu", "lots" }, `images.maxImageBytes "lots": want a positive quantity`},
		{"zero layer bound", func(c *Config) { c.Backend, c.Images.MaxLayerBytes = "qemu", "0" }, `images.maxLayerBytes "0": want a positive quantity`},
		{"layer bound above the image's", func(c *Config) { c.Backend, c.Images.MaxImageBytes, c.Images.MaxLayerBytes = "qemu", "1Gi", "2Gi" },
			`images.maxLayerBytes "2Gi": more than images.maxImageBytes "1Gi"`},
		{"load balancer class", func(c *Config) { c.LoadBalancers.Class = "example.com/lb" }, ""},
		{"pool in the pod range", func(c *Config) { c.Backend, c.LoadBalancers.Pool = "qemu", "10.88.7.0/24" }, `loadBalancers.pool "10.88.7.0/24": overlaps podCIDR "10.88.0.0/16"`},
		{"bad load balancer class", func(c *Config) { c.LoadBalancers.Class = "a b/c" }, `loadBalancers.class "a b/c"`},
		{"pod cidr", func(c *Config) { c.PodCIDR = "10.88.0.0" }, `podCIDR "10.88.0.0"`},
		{"healthz address", func(c *Config) { c.HealthzAddress = ":10248" }, ""},
		{"healthz address without port", func(c *Config) { c.HealthzAddress = "0.0.0.0" }, `healthzAddress "0.0.0.0"`},
		{"healthz address with a name", func(c *Config) { c.HealthzAddress = "localhost:10248" }, `healthzAddress "localhost:10248": host "localhost"`},
		{"healthz port", func(c *Config) { c.HealthzAddress = ":0" }, `healthzAddress ":0": port "0"`},
		{"metrics address", func(c *Config) { c.MetricsAddress = ":8080" }, ""},
		{"unsafe sysctls", func(c *Config) {
			c.AllowedUnsafeSysctls = []string{"kernel.msg*", "net.core.somaxconn", "vm.*", "net/ipv4/conf/eth0.1/rp_filter"}
		}, ""},
		{"unsafe sysctl with a star inside", func(c *Config) { c.AllowedUnsafeSysctls = []string{"kernel.*.x"} }, `allowedUnsafeSysctls "kernel.*.x"`},
		{"unsafe sysctl with ..", func(c *Config) { c.AllowedUnsafeSysctls = []string{"kernel/../x"} }, `allowedUnsafeSysctls "kernel/../x"`},
		{"unsafe sysctl empty", func(c *Config) { c.AllowedUnsafeSysctls = []string{""} }, `allowedUnsafeSysctls ""`},
		{"metrics address the healthz address", func(c *Config) { c.MetricsAddress, c.HealthzAddress = ":8080", ":8080" }, ""},
		{"metrics address without port", func(c *Config) { c.MetricsAddress = "0.0.0.0" }, `metricsAddress "0.0.0.0"`},
		{"metrics address with a name", func(c *Config) { c.MetricsAddress = "localhost:8080" }, `metricsAddress "localhost:8080": host "localhost"`},
		{"leader election", func(c *Config) { elect(c) }, ""},
		{"leader election bad lease name", func(c *Config) { elect(c); c.LeaderElection.LeaseName = "A_b" }, `leaderElection.leaseName "A_b"`},
		{"leader election bad namespace", func(c *Config) { elect(c); c.LeaderElection.Namespace = "a.b" }, `leaderElection.namespace "a.b"`},
		{"leader election on the heartbeat lease", func(c *Config) { elect(c); c.LeaderElection.Namespace = "kube-node-lease" },
			`leaderElection.leaseName "i2kit": in namespace kube-node-lease it is the node's heartbeat Lease`},
		{"leader election in kube-node-lease", func(c *Config) {
			elect(c)
			c.LeaderElection.Namespace, c.LeaderElection.LeaseName = "kube-node-lease", "i2kit-leader"
		}, ""},
		{"lease of a fraction of a second", func(c *Config) { elect(c); c.LeaderElection.LeaseDuration.Duration = 1500 * time.Millisecond },
			"leaderElection.leaseDuration 1.5s: want a whole number of seconds"},
		{"renew deadline past the lease", func(c *Config) { elect(c); c.LeaderElection.RenewDeadline.Duration = 15 * time.Second },
			"leaderElection.renewDeadline 15s: want more than 0 and less than leaseDuration (15s)"},
		{"retry period too long", func(c *Config) { elect(c); c.LeaderElection.RetryPeriod.Duration = 9 * time.Second },
			"leaderElection.retryPeriod 9s"},
		{"zero retry period", func(c *Config) { elect(c); c.LeaderElection.RetryPeriod.Duration = 0 }, "leaderElection.retryPeriod 0s"},
		{"leader election with aws and no shared CA", func(c *Config) { elect(c); awsConfig(c) },
			"leaderElection: with the aws backend, aws.agentCA.cert and aws.agentCA.key must be set"},
		{"leader election with aws and a shared CA", func(c *Config) {
			elect(c)
			awsConfig(c)
			c.AWS.AgentCA.Cert, c.AWS.AgentCA.Key = "/ca/tls.crt", "/ca/tls.key"
		}, ""},
		{"leader election off ignores its settings", func(c *Config) { c.LeaderElection.RetryPeriod.Duration = 0 }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.mutate(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestValidateDefaultsTheTaint(t *testing.T) {
	c := validConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Taints) != 1 || c.Taints[0] != DefaultTaint {
		t.Fatalf("taints = %v, want [%s]", c.Taints, DefaultTaint)
	}
}

func TestLoadFileIsStrict(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown top-level field", "nodeName: a\nbakend: none\n", `unknown field "bakend"`},
		{"unknown nested field", "capacity:\n  gpus: 2\n", `unknown field "gpus"`},
		{"wrong type", "port: eighty\n", "port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "c.yaml")
			os.WriteFile(p, []byte(tc.yaml), 0o600) //nolint:errcheck
			c := DefaultConfig()
			err := c.LoadFile(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestFlagsOverrideFileOverridesDefaults(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte("nodeName: from-file\nport: 11250\ncapacity:\n  cpu: \"4\"\ntaints: [\"a=b:NoExecute\"]\nlabels: {zone: a}\n"), 0o600) //nolint:errcheck
	fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
	flags := AddFlags(fs)
	if err := fs.Parse([]string{"--node-name", "from-flag", "--memory", "8Gi", "--taints="}); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	flags.Apply(&c)
	if c.NodeName != "from-flag" || c.Port != 11250 || c.Capacity.CPU != "4" || c.Capacity.Memory != "8Gi" ||
		c.Capacity.Pods != "110" || c.Labels["zone"] != "a" {
		t.Errorf("merged config = %+v", c)
	}
	if c.Taints == nil || len(c.Taints) != 0 {
		t.Errorf("--taints= gave %#v, want an empty, non-nil list (no taints)", c.Taints)
	}
}

func TestDefaultCapacity(t *testing.T) {
	for _, tc := range []struct {
		name       string
		in         Capacity
		backend    string
		cpus       int
		mem        int64
		wantCPU    string
		wantMemory string
	}{
		{"qemu takes the host's", Capacity{}, "qemu", 4, 16 << 30, "4", "16Gi"},
		{"qemu keeps configured values", Capacity{CPU: "2", Memory: "1Gi"}, "qemu", 4, 16 << 30, "2", "1Gi"},
		{"qemu with the host unknown", Capacity{}, "qemu", 0, 0, "8", "32Gi"},
		{"odd MemTotal", Capacity{}, "qemu", 2, 8039352 << 10, "2", "8039352Ki"},
		{"none keeps the fixed defaults", Capacity{}, "none", 4, 16 << 30, "8", "32Gi"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := DefaultCapacity(tc.in, tc.backend, tc.cpus, tc.mem)
			if got.CPU != tc.wantCPU || got.Memory != tc.wantMemory {
				t.Errorf("DefaultCapacity = cpu %q memory %q, want %q %q", got.CPU, got.Memory, tc.wantCPU, tc.wantMemory)
			}
		})
	}
}

// TestValidateTakesTheHostsCapacity: a qemu node whose configuration leaves cpu and memory unset offers what the
// host has (DefaultCapacity from runtime.NumCPU and /proc/meminfo), not the fixed defaults a VM could outgrow.
func TestValidateTakesTheHostsCapacity(t *testing.T) {
	mem := hostMemTotal()
	if mem <= 0 {
		t.Skip("no /proc/meminfo here")
	}
	c := validConfig()
	c.Backend = "qemu"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if want := strconv.Itoa(runtime.NumCPU()); c.Capacity.CPU != want {
		t.Errorf("capacity.cpu = %q, want the host's %s", c.Capacity.CPU, want)
	}
	if q, err := resource.ParseQuantity(c.Capacity.Memory); err != nil || q.Value() != mem {
		t.Errorf("capacity.memory = %q (%v), want the host's %d bytes", c.Capacity.Memory, err, mem)
	}
}

// TestLeaderElectionDefaults: the lease is named after the node, in the pod's namespace ($POD_NAMESPACE, else the
// service account's); outside a pod the namespace must be given; each replica gets an identity of its own.
func TestLeaderElectionDefaults(t *testing.T) {
	dir := t.TempDir()
	saFile := filepath.Join(dir, "namespace")
	orig := serviceAccountNamespace
	t.Cleanup(func() { serviceAccountNamespace = orig })
	for _, tc := range []struct {
		name, env, file, want, wantErr string
	}{
		{name: "POD_NAMESPACE", env: "from-env", file: "from-file\n", want: "from-env"},
		{name: "service account", file: "from-file\n", want: "from-file"},
		{name: "outside a pod", wantErr: "leaderElection.namespace: not set, and this process runs in no pod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("POD_NAMESPACE", tc.env)
			serviceAccountNamespace = filepath.Join(dir, "absent")
			if tc.file != "" {
				os.WriteFile(saFile, []byte(tc.file), 0o600) //nolint:errcheck
				serviceAccountNamespace = saFile
			}
			c := validConfig()
			c.LeaderElection.Enabled = true
			err := c.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if le := c.LeaderElection; le.Namespace != tc.want || le.LeaseName != c.NodeName {
				t.Errorf("lease %s/%s, want %s/%s", le.Namespace, le.LeaseName, tc.want, c.NodeName)
			}
		})
	}
	t.Setenv("POD_NAMESPACE", "ns")
	host, _ := os.Hostname()
	a, b := validConfig(), validConfig()
	a.LeaderElection.Enabled, b.LeaderElection.Enabled = true, true
	if err := a.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	if ia, ib := a.LeaderElection.Identity, b.LeaderElection.Identity; ia == ib || !strings.HasPrefix(ia, host+"_") {
		t.Errorf("identities %q and %q: want the host name %q and a suffix of their own", ia, ib, host)
	}
}

func TestLeaderElectionFromFileAndFlags(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(p, []byte("leaderElection:\n  enabled: true\n  namespace: from-file\n  leaseDuration: 20s\nhealthzAddress: \":10248\"\n"), 0o600) //nolint:errcheck
	fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
	flags := AddFlags(fs)
	if err := fs.Parse([]string{"--leader-elect-namespace", "from-flag", "--leader-elect-retry-period", "3s", "--leader-elect-identity", "me"}); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	if err := c.LoadFile(p); err != nil {
		t.Fatal(err)
	}
	flags.Apply(&c)
	le := c.LeaderElection
	if !le.Enabled || le.Namespace != "from-flag" || le.Identity != "me" || le.LeaseDuration.Duration != 20*time.Second ||
		le.RenewDeadline.Duration != 10*time.Second || le.RetryPeriod.Duration != 3*time.Second || c.HealthzAddress != ":10248" {
		t.Errorf("merged leader election = %+v, healthz %q", le, c.HealthzAddress)
	}
	os.WriteFile(p, []byte("leaderElection:\n  enable: true\n"), 0o600) //nolint:errcheck
	c = DefaultConfig()
	if err := c.LoadFile(p); err == nil || !strings.Contains(err.Error(), `unknown field "enable"`) {
		t.Errorf("a misspelt leaderElection field: %v, want it named", err)
	}
}
