package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config places one control plane. The zero value of every field but StateDir has a default.
type Config struct {
	// StateDir holds the plane's PKI, kubeconfigs, etcd data, logs and pid files.
	StateDir string `json:"stateDir"`
	// BinDir holds the binaries Build made; DefaultBinDir() by default.
	BinDir string `json:"binDir"`
	// Host is the loopback address every component listens on; 127.0.0.1 by default.
	Host string `json:"host"`
	// AdvertiseAddress, when set, is where pods reach the apiserver: the endpoint of the default/kubernetes Service
	// (published by the apiserver's endpoint reconciler) and an address of its serving certificate. The apiserver
	// then listens on every address, so set it only in a network namespace of its own, as the demo and the tests
	// do. Empty: the apiserver listens on Host alone and the kubernetes Service has no endpoints.
	AdvertiseAddress string `json:"advertiseAddress,omitempty"`
	// PortBase is the apiserver's port; etcd client, etcd peer, etcd metrics, controller-manager and scheduler use
	// the five ports after it. 16443 by default.
	PortBase int `json:"portBase"`
	// ServiceCIDR is the ClusterIP range; 10.0.0.0/24 by default. It is allocated from, never routed.
	ServiceCIDR string `json:"serviceCIDR"`
	// DieWithParent kills the components when the process that started them dies (tests); otherwise they run on
	// until Stop (`i2kit dev up`).
	DieWithParent bool `json:"-"`
}

func (c *Config) setDefaults() error {
	if c.StateDir == "" {
		return errors.New("controlplane: StateDir is required")
	}
	abs, err := filepath.Abs(c.StateDir)
	if err != nil {
		return fmt.Errorf("resolving state directory, %w", err)
	}
	c.StateDir = abs
	if c.BinDir == "" {
		c.BinDir = DefaultBinDir()
	}
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	if c.PortBase == 0 {
		c.PortBase = 16443
	}
	if c.PortBase < 1024 || c.PortBase > 65535-5 {
		return fmt.Errorf("controlplane: PortBase %d out of range [1024, 65530]", c.PortBase)
	}
	if c.ServiceCIDR == "" {
		c.ServiceCIDR = "10.0.0.0/24"
	}
	if _, _, err := net.ParseCIDR(c.ServiceCIDR); err != nil {
		return fmt.Errorf("controlplane: ServiceCIDR: %w", err)
	}
	if a := c.AdvertiseAddress; a != "" && (net.ParseIP(a) == nil || net.ParseIP(a).IsLoopback() || net.ParseIP(a).IsUnspecified()) {
		return fmt.Errorf("controlplane: AdvertiseAddress %q: want an IP address pods can reach, not loopback", a)
	}
	return nil
}

// Plane is a control plane started from, or found in, a state directory.
type Plane struct {
	cfg Config
}

// Components in start order; Stop goes in reverse.
var components = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}

// Config returns the plane's configuration with defaults applied.
func (p *Plane) Config() Config { return p.cfg }

// APIServerURL is the apiserver's https URL.
func (p *Plane) APIServerURL() string {
	return "https://" + net.JoinHostPort(p.cfg.Host, strconv.Itoa(p.cfg.PortBase))
}

// KubeconfigPath is an admin (system:masters) kubeconfig.
func (p *Plane) KubeconfigPath() string { return filepath.Join(p.cfg.StateDir, "admin.kubeconfig") }

// PKIDir holds ca.crt/ca.key (the cluster CA, which also signs client certificates) and the other certificates.
func (p *Plane) PKIDir() string { return filepath.Join(p.cfg.StateDir, "pki") }

// LogPath is the log file of a component.
func (p *Plane) LogPath(component string) string {
	return filepath.Join(p.cfg.StateDir, "logs", component+".log")
}

// Env lists the environment a user needs to reach the plane with kubectl.
func (p *Plane) Env() []string {
	return []string{"KUBECONFIG=" + p.KubeconfigPath(), "PATH=" + p.cfg.BinDir + ":" + os.Getenv("PATH")}
}

func (p *Plane) pidFile(c string) string { return filepath.Join(p.cfg.StateDir, "run", c+".pid") }
func (p *Plane) port(offset int) string  { return strconv.Itoa(p.cfg.PortBase + offset) }

// Open finds the plane that was started in stateDir; it need not be running.
func Open(stateDir string) (*Plane, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "plane.json"))
	if err != nil {
		return nil, fmt.Errorf("reading plane configuration, %w", err)
	}
	var cfg Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("decoding %s, %w", filepath.Join(stateDir, "plane.json"), err)
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Plane{cfg: cfg}, nil
}

// Start generates the PKI (once per state directory), starts etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler as processes of their own session, and returns when the plane is ready: the apiserver answers
// /readyz and the default namespace's ServiceAccount exists, so pods can be created. The processes outlive the
// caller until Stop; ctx bounds only the wait. On failure everything started is stopped and the error carries
// the failing component's log tail. Progress goes to out.
func Start(ctx context.Context, cfg Config, out io.Writer) (*Plane, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	p := &Plane{cfg: cfg}
	if !Built(cfg.BinDir) {
		return nil, fmt.Errorf("%w in %s: run `i2kit dev build`", ErrNotBuilt, cfg.BinDir)
	}
	for _, c := range components {
		if pid, ok := p.running(c); ok {
			return nil, fmt.Errorf("%s already runs (pid %d) from %s: stop it first", c, pid, cfg.StateDir)
		}
	}
	for _, d := range []string{"run", "logs"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o755); err != nil {
			return nil, fmt.Errorf("creating state directory, %w", err)
		}
	}
	t0 := time.Now()
	_, svcNet, _ := net.ParseCIDR(cfg.ServiceCIDR)
	firstSvcIP := append(net.IP(nil), svcNet.IP.To4()...)
	firstSvcIP[3]++
	ips := []net.IP{net.ParseIP(cfg.Host), net.IPv4(127, 0, 0, 1), firstSvcIP}
	if a := net.ParseIP(cfg.AdvertiseAddress); a != nil {
		ips = append(ips, a)
	}
	if err := writePKI(p.PKIDir(), ips); err != nil {
		return nil, err
	}
	if err := p.writeKubeconfigs(); err != nil {
		return nil, err
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(cfg.StateDir, "plane.json"), b, 0o644); err != nil {
		return nil, fmt.Errorf("writing plane configuration, %w", err)
	}
	fmt.Fprintf(out, "starting the control plane in %s (apiserver %s)\n", cfg.StateDir, p.APIServerURL())
	if err := p.startAll(ctx, out, t0); err != nil {
		p.Stop(context.Background()) //nolint:errcheck
		return nil, err
	}
	return p, nil
}

func (p *Plane) startAll(ctx context.Context, out io.Writer, t0 time.Time) error {
	pki := p.PKIDir()
	h := p.cfg.Host
	etcdURL := "http://" + net.JoinHostPort(h, p.port(1))
	peerURL := "http://" + net.JoinHostPort(h, p.port(2))
	if err := p.launch("etcd", "--name", "i2kit-dev", "--data-dir", filepath.Join(p.cfg.StateDir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "i2kit-dev="+peerURL,
		"--listen-metrics-urls", "http://"+net.JoinHostPort(h, p.port(3)),
		"--quota-backend-bytes", "4294967296", "--logger", "zap", "--log-level", "warn",
		"--unsafe-no-fsync"); err != nil { // test data is throw-away
		return err
	}
	if err := p.waitFor(ctx, "etcd", "etcd /health", 30*time.Second, p.httpOK(etcdURL+"/health", nil)); err != nil {
		return err
	}
	fmt.Fprintf(out, "  etcd ready (%s)\n", since(t0))

	if err := p.launch("kube-apiserver", append([]string{
		"--etcd-servers", etcdURL,
		"--secure-port", p.port(0),
		"--cert-dir", filepath.Join(p.cfg.StateDir, "apiserver-certs"),
		"--tls-cert-file", filepath.Join(pki, "apiserver.crt"), "--tls-private-key-file", filepath.Join(pki, "apiserver.key"),
		"--client-ca-file", filepath.Join(pki, "ca.crt"),
		"--requestheader-client-ca-file", filepath.Join(pki, "front-proxy-ca.crt"),
		"--requestheader-allowed-names", "front-proxy-client",
		"--requestheader-username-headers", "X-Remote-User", "--requestheader-group-headers", "X-Remote-Group",
		"--requestheader-extra-headers-prefix", "X-Remote-Extra-",
		"--proxy-client-cert-file", filepath.Join(pki, "front-proxy-client.crt"),
		"--proxy-client-key-file", filepath.Join(pki, "front-proxy-client.key"),
		// Aggregated APIs (metrics-server) are reached at their endpoints: no kube-proxy routes Service IPs here.
		"--enable-aggregator-routing=true",
		"--kubelet-client-certificate", filepath.Join(pki, "apiserver-kubelet-client.crt"),
		"--kubelet-client-key", filepath.Join(pki, "apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types", "InternalIP",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(pki, "sa.pub"),
		"--service-account-signing-key-file", filepath.Join(pki, "sa.key"),
		"--service-cluster-ip-range", p.cfg.ServiceCIDR,
		"--authorization-mode", "Node,RBAC", "--allow-privileged=true", "--profiling=false"},
		p.addressFlags()...)...); err != nil {
		return err
	}
	tlsCfg, err := p.adminTLS()
	if err != nil {
		return err
	}
	if err := p.waitFor(ctx, "kube-apiserver", "kube-apiserver /readyz", 120*time.Second, p.httpOK(p.APIServerURL()+"/readyz", tlsCfg)); err != nil {
		return err
	}
	fmt.Fprintf(out, "  kube-apiserver ready (%s)\n", since(t0))

	kcm := filepath.Join(p.cfg.StateDir, "kube-controller-manager.kubeconfig")
	if err := p.launch("kube-controller-manager",
		"--kubeconfig", kcm, "--authentication-kubeconfig", kcm, "--authorization-kubeconfig", kcm,
		"--bind-address", h, "--secure-port", p.port(4), "--cert-dir", filepath.Join(p.cfg.StateDir, "kcm-certs"),
		"--leader-elect=false",
		"--use-service-account-credentials=true", // with false, RBAC forbids it to create ReplicaSets
		"--service-account-private-key-file", filepath.Join(pki, "sa.key"), "--root-ca-file", filepath.Join(pki, "ca.crt"),
		"--cluster-signing-cert-file", filepath.Join(pki, "ca.crt"), "--cluster-signing-key-file", filepath.Join(pki, "ca.key"),
		"--service-cluster-ip-range", p.cfg.ServiceCIDR, "--allocate-node-cidrs=false", "--profiling=false"); err != nil {
		return err
	}
	sched := filepath.Join(p.cfg.StateDir, "kube-scheduler.kubeconfig")
	if err := p.launch("kube-scheduler",
		"--kubeconfig", sched, "--authentication-kubeconfig", sched, "--authorization-kubeconfig", sched,
		"--bind-address", h, "--secure-port", p.port(5), "--leader-elect=false", "--profiling=false"); err != nil {
		return err
	}
	insecure := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // self-signed health endpoints on loopback
	if err := p.waitFor(ctx, "kube-controller-manager", "kube-controller-manager /healthz", 60*time.Second,
		p.httpOK("https://"+net.JoinHostPort(h, p.port(4))+"/healthz", insecure)); err != nil {
		return err
	}
	if err := p.waitFor(ctx, "kube-scheduler", "kube-scheduler /readyz", 60*time.Second,
		p.httpOK("https://"+net.JoinHostPort(h, p.port(5))+"/readyz", insecure)); err != nil {
		return err
	}
	// Pods are refused until their namespace's default ServiceAccount exists; the controller-manager makes it.
	if err := p.waitFor(ctx, "kube-controller-manager", "the default ServiceAccount", 60*time.Second,
		p.httpOK(p.APIServerURL()+"/api/v1/namespaces/default/serviceaccounts/default", tlsCfg)); err != nil {
		return err
	}
	fmt.Fprintf(out, "control plane ready (%s)\n", since(t0))
	return nil
}

// Stop ends every component (SIGTERM, then SIGKILL after 10 s) in reverse start order, by the pids recorded in
// the state directory, and waits until each has exited. The state directory is kept. Stop may be called repeatedly.
func (p *Plane) Stop(ctx context.Context) error {
	var errs []error
	for i := len(components) - 1; i >= 0; i-- {
		c := components[i]
		if pid, ok := p.running(c); ok {
			if err := stopProcess(ctx, pid, 10*time.Second); err != nil {
				errs = append(errs, fmt.Errorf("stopping %s (pid %d), %w", c, pid, err))
				continue
			}
		}
		os.Remove(p.pidFile(c))
	}
	return errors.Join(errs...)
}

// Status maps each component to its pid, or 0 when it does not run.
func (p *Plane) Status() map[string]int {
	st := map[string]int{}
	for _, c := range components {
		pid, _ := p.running(c)
		st[c] = pid
	}
	return st
}

// Ports lists every TCP port the plane listens on.
func (p *Plane) Ports() []int {
	ports := make([]int, 6)
	for i := range ports {
		ports[i] = p.cfg.PortBase + i
	}
	return ports
}

func (p *Plane) adminTLS() (*tls.Config, error) {
	pki := p.PKIDir()
	ca, err := os.ReadFile(filepath.Join(pki, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("reading CA, %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "admin.crt"), filepath.Join(pki, "admin.key"))
	if err != nil {
		return nil, fmt.Errorf("loading admin certificate, %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

func (p *Plane) httpOK(url string, tlsCfg *tls.Config) func(context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, DisableKeepAlives: true}}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	}
}

// waitFor polls check until it succeeds, the component exits, or the timeout passes.
func (p *Plane) waitFor(ctx context.Context, component, what string, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		if _, ok := p.running(component); !ok {
			return fmt.Errorf("%s exited while waiting for %s:\n%s", component, what, tailFile(p.LogPath(component), 20))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s, %w (last: %v)\n%s", what, ctx.Err(), last, tailFile(p.LogPath(component), 20))
		case <-tick.C:
		}
	}
}

func (p *Plane) writeKubeconfigs() error {
	for _, u := range []string{"admin", "kube-controller-manager", "kube-scheduler"} {
		f := filepath.Join(p.cfg.StateDir, u+".kubeconfig")
		if u == "admin" {
			f = p.KubeconfigPath()
		}
		if err := os.WriteFile(f, []byte(Kubeconfig(p.APIServerURL(), filepath.Join(p.PKIDir(), "ca.crt"),
			filepath.Join(p.PKIDir(), u+".crt"), filepath.Join(p.PKIDir(), u+".key"))), 0o600); err != nil {
			return fmt.Errorf("writing kubeconfig, %w", err)
		}
	}
	return nil
}

// Kubeconfig renders a kubeconfig that authenticates with a client certificate.
func Kubeconfig(server, caFile, certFile, keyFile string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: i2kit-dev
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: user
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: i2kit-dev
  context: {cluster: i2kit-dev, user: user, namespace: default}
current-context: i2kit-dev
`, server, caFile, certFile, keyFile)
}

func since(t time.Time) string { return time.Since(t).Round(10 * time.Millisecond).String() }

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// addressFlags are the apiserver's listening and advertised addresses (see Config.AdvertiseAddress).
func (p *Plane) addressFlags() []string {
	if a := p.cfg.AdvertiseAddress; a != "" {
		return []string{"--bind-address", "0.0.0.0", "--advertise-address", a}
	}
	// 1.37 refuses a loopback advertise address unless nothing publishes it.
	return []string{"--bind-address", p.cfg.Host, "--advertise-address", p.cfg.Host, "--endpoint-reconciler-type", "none"}
}
