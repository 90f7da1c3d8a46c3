package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certSpec describes one leaf certificate of the plane's PKI.
type certSpec struct {
	name   string // file stem under pki/
	cn     string
	org    []string
	server bool // serverAuth with SANs; clientAuth otherwise
	ips    []net.IP
	dns    []string
	ca     string // signing CA's file stem
}

// writePKI generates the plane's PKI under dir unless it exists (marked by dir/done): a cluster CA, a front-proxy
// CA, the apiserver serving certificate, client certificates for the admin, the controller-manager, the scheduler
// and the apiserver's kubelet client, and the service-account signing key. ECDSA P-256 keeps it fast (~10 ms).
func writePKI(dir string, apiserverIPs []net.IP) error {
	if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating pki directory, %w", err)
	}
	cas := map[string]*keyPair{}
	for _, ca := range []struct{ name, cn string }{{"ca", "i2kit-dev-ca"}, {"front-proxy-ca", "i2kit-dev-front-proxy-ca"}} {
		kp, err := newCA(ca.cn)
		if err != nil {
			return err
		}
		if err := kp.write(dir, ca.name); err != nil {
			return err
		}
		cas[ca.name] = kp
	}
	leaves := []certSpec{
		{name: "apiserver", cn: "kube-apiserver", server: true, ips: apiserverIPs,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}, ca: "ca"},
		{name: "admin", cn: "kubernetes-admin", org: []string{"system:masters"}, ca: "ca"},
		{name: "kube-controller-manager", cn: "system:kube-controller-manager", ca: "ca"},
		{name: "kube-scheduler", cn: "system:kube-scheduler", ca: "ca"},
		{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", org: []string{"system:masters"}, ca: "ca"},
		{name: "front-proxy-client", cn: "front-proxy-client", ca: "front-proxy-ca"},
	}
	for _, l := range leaves {
		kp, err := cas[l.ca].sign(l)
		if err != nil {
			return fmt.Errorf("signing %s certificate, %w", l.name, err)
		}
		if err := kp.write(dir, l.name); err != nil {
			return err
		}
	}
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating service account key, %w", err)
	}
	if err := writeKey(filepath.Join(dir, "sa.key"), sa); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding service account public key, %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return fmt.Errorf("writing service account public key, %w", err)
	}
	return os.WriteFile(filepath.Join(dir, "done"), nil, 0o600)
}

// keyPair is a certificate with its private key.
type keyPair struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(cn string) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key, %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate, %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate, %w", err)
	}
	return &keyPair{cert: cert, key: key}, nil
}

func (ca *keyPair) sign(s certSpec) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: s.cn, Organization: s.org},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(10, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IPAddresses:  s.ips,
		DNSNames:     s.dns,
	}
	if s.server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

func (kp *keyPair) write(dir, name string) error {
	crt := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.cert.Raw})
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), crt, 0o644); err != nil {
		return fmt.Errorf("writing %s certificate, %w", name, err)
	}
	return writeKey(filepath.Join(dir, name+".key"), kp.key)
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding key, %w", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("writing %s, %w", path, err)
	}
	return nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
