package aws

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The node's own CA signs the certificate the node shows to its instances' agents; its certificate (public) goes
// into every instance's user-data, and an agent accepts only clients whose certificate chains to it. Instances
// outlive the node's process, so the CA must too: a restarted node that made a new CA would be refused by every
// agent of the instances it adopts. It is therefore either given (files the operator manages) or made once and kept
// in the node's state directory.

// CAFileName is the file in the state directory that holds the generated CA: its certificate and its private key,
// PEM, mode 0600. Both live in one file so that it appears whole, by one link(2), or not at all.
const CAFileName = "agent-ca.pem"

// maxPEMFile bounds what the CA reads from a file: a certificate and a key are a few KiB.
const maxPEMFile = 64 << 10

const (
	// caLifetime is how long a generated CA is valid: as long as any instance it launched may run.
	caLifetime = 10 * 365 * 24 * time.Hour
	// clientLifetime is how long a client certificate is valid; it is renewed once half of it has passed, so a
	// leaked one is of use for hours, not years.
	clientLifetime = 12 * time.Hour
	// certBackdate backdates certificates: an instance's clock may lag the node's a little.
	certBackdate = 5 * time.Minute
)

// CA is the node's CA for the agent channel. It is safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	now     func() time.Time // tests move the clock

	mu     sync.Mutex
	client *tls.Certificate // the current client certificate; nil until the first is made
}

// LoadCA returns the node's CA: the one in certFile and keyFile (PEM) when both are set, else the one kept in
// stateDir (CAFileName), which it makes, ECDSA P-256, the first time. The files are read bounded; a given CA must
// be a valid CA certificate (basic constraints, cert-sign usage, not expired) matching its key.
func LoadCA(certFile, keyFile, stateDir string) (*CA, error) {
	switch {
	case certFile != "" && keyFile != "":
		certPEM, err := readPEMFile(certFile)
		if err != nil {
			return nil, fmt.Errorf("reading the agent CA's certificate, %w", err)
		}
		keyPEM, err := readPEMFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("reading the agent CA's key, %w", err)
		}
		ca, err := parseCA(certPEM, keyPEM, time.Now())
		if err != nil {
			return nil, fmt.Errorf("loading the agent CA from %s and %s, %w", certFile, keyFile, err)
		}
		return ca, nil
	case certFile != "" || keyFile != "":
		return nil, errors.New("the agent CA needs both its certificate and its key file, or neither")
	case stateDir == "":
		return nil, errors.New("the agent CA needs a state directory to keep its key in, or certificate and key files")
	}
	return loadOrMakeCA(stateDir)
}

// loadOrMakeCA loads the CA kept in dir, or makes and keeps one. The file is written under a temporary name and
// linked to its final name, which fails if another process got there first: then that one's CA is the CA.
func loadOrMakeCA(dir string) (*CA, error) {
	path := filepath.Join(dir, CAFileName)
	b, err := readPEMFile(path)
	if err == nil {
		ca, err := parseCA(b, b, time.Now())
		if err != nil {
			return nil, fmt.Errorf("loading the agent CA from %s, %w", path, err)
		}
		return ca, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the agent CA, %w", err)
	}
	pemBytes, err := newCAPEM(time.Now())
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("making the state directory, %w", err)
	}
	if err := writeOnce(path, pemBytes); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("keeping the agent CA, %w", err)
	}
	return loadOrMakeCA(dir) // ours, or the one a racing process linked first
}

// writeOnce writes b to path (mode 0600) unless path exists, in which case it fails with fs.ErrExist; path
// appears whole or not at all.
func writeOnce(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*") // mode 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() //nolint:errcheck // best effort: the link is made
		d.Close()
	}
	return nil
}

// newCAPEM makes a CA (ECDSA P-256, self-signed, signing end-entity certificates only) and returns its
// certificate and key as PEM.
func newCAPEM(now time.Time) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the agent CA's key, %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          certSerial(),
		Subject:               pkix.Name{CommonName: "i2kit node agent CA"},
		NotBefore:             now.Add(-certBackdate),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating the agent CA's certificate, %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the agent CA's key, %w", err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...), nil
}

// parseCA checks and returns the CA in certPEM and keyPEM (which may be the same bytes: each parser takes the
// blocks of its kind).
func parseCA(certPEM, keyPEM []byte, now time.Time) (*CA, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM) // checks that the key is the certificate's
	if err != nil {
		return nil, err
	}
	cert := pair.Leaf
	key, ok := pair.PrivateKey.(crypto.Signer)
	switch {
	case !ok:
		return nil, fmt.Errorf("a %T cannot sign", pair.PrivateKey)
	case !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return nil, errors.New("the certificate is not a CA's (basic constraints and cert-sign usage)")
	case now.Before(cert.NotBefore) || now.After(cert.NotAfter):
		return nil, fmt.Errorf("the CA is valid from %s to %s only", cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339))
	}
	return &CA{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		key:     key,
		now:     time.Now,
	}, nil
}

// CertPEM is the CA's certificate, PEM: public material, what user-data carries. It is re-encoded from the
// certificate alone, so nothing else of the files it came from can leak through it.
func (c *CA) CertPEM() []byte { return append([]byte(nil), c.certPEM...) }

// ClientCertificate returns the node's client certificate for the agent channel, signed by the CA, valid for
// clientLifetime and renewed (a new key too) once half of it has passed. It suits tls.Config's
// GetClientCertificate: each handshake takes the current one.
func (c *CA) ClientCertificate() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if cur := c.client; cur != nil && now.Before(cur.Leaf.NotBefore.Add(certBackdate+clientLifetime/2)) {
		return cur, nil
	}
	if !now.Before(c.cert.NotAfter) {
		return nil, fmt.Errorf("the agent CA expired at %s", c.cert.NotAfter.Format(time.RFC3339))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the node's client key, %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: certSerial(),
		Subject:      pkix.Name{CommonName: "i2kit node"},
		NotBefore:    now.Add(-certBackdate),
		NotAfter:     earlier(now.Add(clientLifetime), c.cert.NotAfter),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("signing the node's client certificate, %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the node's client certificate, %w", err)
	}
	c.client = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	return c.client, nil
}

// readPEMFile reads a PEM file of at most maxPEMFile bytes.
func readPEMFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPEMFile {
		return nil, fmt.Errorf("%s is over %d bytes", path, maxPEMFile)
	}
	return b, nil
}

func certSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) //nolint:errcheck // never fails
	return n
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
