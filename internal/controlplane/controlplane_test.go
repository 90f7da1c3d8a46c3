package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWritePKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if err := writePKI(dir, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	pool := func(name string) *x509.CertPool {
		b, err := os.ReadFile(filepath.Join(dir, name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		p := x509.NewCertPool()
		p.AppendCertsFromPEM(b)
		return p
	}
	for _, tc := range []struct {
		name, ca string
		usage    x509.ExtKeyUsage
		host     string
		org      string
	}{
		{"apiserver", "ca", x509.ExtKeyUsageServerAuth, "10.0.0.1", ""},
		{"apiserver", "ca", x509.ExtKeyUsageServerAuth, "kubernetes.default.svc", ""},
		{"admin", "ca", x509.ExtKeyUsageClientAuth, "", "system:masters"},
		{"apiserver-kubelet-client", "ca", x509.ExtKeyUsageClientAuth, "", "system:masters"},
		{"kube-controller-manager", "ca", x509.ExtKeyUsageClientAuth, "", ""},
		{"kube-scheduler", "ca", x509.ExtKeyUsageClientAuth, "", ""},
		{"front-proxy-client", "front-proxy-ca", x509.ExtKeyUsageClientAuth, "", ""},
	} {
		kp, err := tls.LoadX509KeyPair(filepath.Join(dir, tc.name+".crt"), filepath.Join(dir, tc.name+".key"))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		cert, _ := x509.ParseCertificate(kp.Certificate[0])
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(tc.ca), KeyUsages: []x509.ExtKeyUsage{tc.usage}, DNSName: tc.host}); err != nil {
			t.Errorf("%s does not verify against %s for %s: %v", tc.name, tc.ca, tc.host, err)
		}
		if tc.org != "" && (len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != tc.org) {
			t.Errorf("%s organization = %v, want %s", tc.name, cert.Subject.Organization, tc.org)
		}
	}
	// A second call keeps the PKI: a restarted plane must trust the certificates it issued.
	before, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err := writePKI(dir, nil); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if string(before) != string(after) {
		t.Error("writePKI replaced an existing CA")
	}
}

func TestConfigDefaultsAndErrors(t *testing.T) {
	c := Config{StateDir: "rel"}
	if err := c.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(c.StateDir) || c.PortBase != 16443 || c.Host != "127.0.0.1" || c.BinDir != DefaultBinDir() {
		t.Errorf("defaults = %+v", c)
	}
	for _, bad := range []Config{{}, {StateDir: "x", PortBase: 80}, {StateDir: "x", ServiceCIDR: "10.0.0.0"},
		{StateDir: "x", AdvertiseAddress: "127.0.0.1"}, {StateDir: "x", AdvertiseAddress: "node"}, {StateDir: "x", AdvertiseAddress: "0.0.0.0"}} {
		if err := bad.setDefaults(); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

func TestAddressFlags(t *testing.T) {
	p := &Plane{cfg: Config{Host: "127.0.0.1"}}
	if got := strings.Join(p.addressFlags(), " "); got != "--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --endpoint-reconciler-type none" {
		t.Errorf("loopback plane: %s", got)
	}
	p.cfg.AdvertiseAddress = "198.18.0.10"
	if got := strings.Join(p.addressFlags(), " "); got != "--bind-address 0.0.0.0 --advertise-address 198.18.0.10" {
		t.Errorf("plane advertised to pods: %s", got)
	}
}

func TestPortsDoNotOverlapBetweenPlanes(t *testing.T) {
	a, b := &Plane{cfg: Config{PortBase: 16443}}, &Plane{cfg: Config{PortBase: 16449}}
	seen := map[int]bool{}
	for _, p := range append(a.Ports(), b.Ports()...) {
		if seen[p] {
			t.Fatalf("port %d used twice", p)
		}
		seen[p] = true
	}
}

func TestIsPackageLine(t *testing.T) {
	for line, want := range map[string]bool{
		"k8s.io/api/core/v1":                 true,
		"go.etcd.io/etcd/server/v3":          true,
		"go: downloading k8s.io/api v0.37.2": false,
		"# k8s.io/foo":                       false,
		"./x.go:1:2: undefined: y":           false,
		"":                                   false,
	} {
		if got := isPackageLine(line); got != want {
			t.Errorf("isPackageLine(%q) = %v, want %v", line, got, want)
		}
	}
}
