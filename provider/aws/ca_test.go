package aws

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLoadCAKeepsTheCAItMade(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	first, err := LoadCA("", "", dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, CAFileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("the CA's file has mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := LoadCA("", "", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.CertPEM(), again.CertPEM()) {
		t.Fatal("a second load made another CA: the agents of adopted instances would refuse the node")
	}
	pub, ok := first.cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || !first.cert.IsCA || first.cert.MaxPathLen != 0 || !first.cert.MaxPathLenZero {
		t.Fatalf("the CA is %T, IsCA %v, MaxPathLen %d", first.cert.PublicKey, first.cert.IsCA, first.cert.MaxPathLen)
	}
}

func TestLoadCAConcurrentlyMakesOne(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	pems := make([][]byte, 8)
	for i := range pems {
		wg.Go(func() {
			ca, err := LoadCA("", "", dir)
			if err != nil {
				t.Error(err)
				return
			}
			pems[i] = ca.CertPEM()
		})
	}
	wg.Wait()
	for _, p := range pems[1:] {
		if !bytes.Equal(p, pems[0]) {
			t.Fatal("two loads of one state directory hold different CAs")
		}
	}
}

func TestWriteOnceNeverReplaces(t *testing.T) {
	path := filepath.Join(t.TempDir(), CAFileName)
	if err := writeOnce(path, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := writeOnce(path, []byte("second")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second write: %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "first" {
		t.Fatalf("the file holds %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// splitPEM returns the certificate and the key blocks of a CA file.
func splitPEM(t *testing.T, b []byte) (cert, key []byte) {
	t.Helper()
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return cert, key
		}
		if blk.Type == "CERTIFICATE" {
			cert = append(cert, pem.EncodeToMemory(blk)...)
		} else {
			key = append(key, pem.EncodeToMemory(blk)...)
		}
	}
}

func writePEM(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadCAFromFiles(t *testing.T) {
	caPEM, err := newCAPEM(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := splitPEM(t, caPEM)
	otherPEM, _ := newCAPEM(time.Now())
	_, otherKey := splitPEM(t, otherPEM)
	expiredPEM, _ := newCAPEM(time.Now().Add(-caLifetime - time.Hour))
	expiredCert, expiredKey := splitPEM(t, expiredPEM)
	ca, _ := parseCA(caPEM, caPEM, time.Now())
	client, err := ca.ClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	clientKey, _ := x509.MarshalPKCS8PrivateKey(client.PrivateKey)
	clientCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: client.Certificate[0]})
	clientKeyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: clientKey})
	padding := bytes.Repeat([]byte("#"), maxPEMFile)

	for _, tc := range []struct {
		name      string
		cert, key []byte
		err       string
	}{
		{"cert and key", certPEM, keyPEM, ""},
		{"the key of another CA", certPEM, otherKey, "private key does not match"},
		{"not a CA", clientCert, clientKeyPEM, "not a CA's"},
		{"expired", expiredCert, expiredKey, "valid from"},
		{"a certificate file over the bound", append(certPEM, padding...), keyPEM, "over 65536 bytes"},
		{"a key file over the bound", certPEM, append(keyPEM, padding...), "over 65536 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadCA(writePEM(t, "ca.crt", tc.cert), writePEM(t, "ca.key", tc.key), "")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.CertPEM(), certPEM) {
				t.Fatal("CertPEM is not the file's certificate")
			}
		})
	}
	t.Run("a state file over the bound", func(t *testing.T) {
		dir := t.TempDir()
		writePEMAt(t, filepath.Join(dir, CAFileName), append(caPEM, padding...))
		if _, err := LoadCA("", "", dir); err == nil || !strings.Contains(err.Error(), "over 65536 bytes") {
			t.Fatalf("got %v", err)
		}
	})
	for _, args := range [][3]string{{"ca.crt", "", "/state"}, {"", "ca.key", "/state"}, {"", "", ""}} {
		if _, err := LoadCA(args[0], args[1], args[2]); err == nil {
			t.Errorf("LoadCA%q: no error", args)
		}
	}
}

func writePEMAt(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestClientCertificateIsShortLivedAndRenewed(t *testing.T) {
	ca, err := LoadCA("", "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca.now = func() time.Time { return now }
	first, err := ca.ClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.CertPEM())
	if _, err := first.Leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the client certificate does not chain to the CA for client auth: %v", err)
	}
	if life := first.Leaf.NotAfter.Sub(now); life > clientLifetime {
		t.Fatalf("the client certificate lives %v, want at most %v", life, clientLifetime)
	}
	now = now.Add(clientLifetime/2 - time.Minute)
	if c, _ := ca.ClientCertificate(); c != first {
		t.Fatal("renewed before half of the lifetime passed")
	}
	now = now.Add(2 * time.Minute)
	second, err := ca.ClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if second == first || !second.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Fatal("not renewed past half of its lifetime")
	}
	if _, err := second.Leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: first.Leaf.NotAfter.Add(time.Minute),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the renewed certificate is not valid when the first expires: %v", err)
	}
	now = ca.cert.NotAfter.Add(time.Second)
	if _, err := ca.ClientCertificate(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("a client certificate from an expired CA: %v", err)
	}
}
