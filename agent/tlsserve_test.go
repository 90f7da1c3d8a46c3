package agent

import (
	"bytes"
	"container/list"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
)

// testCA is a CA that issues certificates, as the node's does.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// issue makes a certificate for a fresh key with the given extended key usage.
func (ca *testCA) issue(t *testing.T, usage x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "i2kit-node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// pinnedDial dials the agent as the node does: with a client certificate (none when cert is nil), accepting only
// a server key whose fingerprint is pin.
func pinnedDial(addr string, cert *tls.Certificate, pin string, version uint16) (net.Conn, error) {
	cfg := &tls.Config{
		MinVersion: version, MaxVersion: version,
		InsecureSkipVerify: true, // the key is pinned below, the certificate's names and dates mean nothing
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || boot.KeyFingerprint(cs.PeerCertificates[0]) != pin {
				return errors.New("the agent's key is not the pinned one")
			}
			return nil
		},
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
}

// lockedBuffer is a console several goroutines write.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// agentUnderTest is a cloud boot on 127.0.0.1 against a fake metadata service, serving a real runtime's handler.
type agentUnderTest struct {
	addr    string
	pin     string // the fingerprint the console announced
	console *lockedBuffer
	blocked int
}

func startCloudAgent(t *testing.T, ca *testCA, keep bool) *agentUnderTest {
	t.Helper()
	ud, _ := json.Marshal(boot.UserData{Version: 1, Hostname: "web-1", AgentPort: 8443, NodeCA: ca.pem, KeepMetadata: keep})
	srv := httptest.NewServer(newFakeIMDS(string(ud)))
	t.Cleanup(srv.Close)
	a := &agentUnderTest{console: &lockedBuffer{}}
	ci, err := cloudBoot(context.Background(), a.console, testIMDS(srv), func() (tls.Certificate, error) { return newAgentKey(time.Now()) })
	if err != nil {
		t.Fatal(err)
	}
	if got := ci.hostname("pod"); got != "web-1" {
		t.Errorf("hostname %q, want web-1", got)
	}
	rt := newRuntime(a.console, boot.ImageConfig{}, ci.hostname("pod"))
	h := (&server{rt: rt, poweroff: make(chan time.Duration, 1)}).handler()
	addr, err := ci.serve("127.0.0.1:0", h, func() error { a.blocked++; return nil }, rt.say)
	if err != nil {
		t.Fatal(err)
	}
	a.addr = addr.String()
	var ok bool
	if a.pin, ok = boot.FirstKeyLine(strings.NewReader(a.console.String()), 1<<20); !ok {
		t.Fatalf("no key line on the console:\n%s", a.console.String())
	}
	if !strings.HasPrefix(a.console.String(), boot.KeyMarker+" ") {
		t.Errorf("the key line is not the cloud boot's first line:\n%s", a.console.String())
	}
	return a
}

// TestTLSChannel: a node with a certificate from the CA in user-data, pinning the key the console announced,
// completes the protocol's handshake and calls the agent.
func TestTLSChannel(t *testing.T) {
	ca := newTestCA(t, "node-ca")
	a := startCloudAgent(t, ca, false)
	if a.blocked != 1 {
		t.Errorf("the metadata service was shut off %d times, want once", a.blocked)
	}
	cert := ca.issue(t, x509.ExtKeyUsageClientAuth)
	conn, err := pinnedDial(a.addr, &cert, a.pin, tls.VersionTLS13)
	if err != nil {
		t.Fatalf("dialling the agent with the announced key pinned: %v", err)
	}
	c, err := protocol.NewClient(conn, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil || st.Configured {
		t.Fatalf("status %+v, %v; want an unconfigured pod", st, err)
	}
	// The key line is the served key's: another pin fails.
	if _, err := pinnedDial(a.addr, &cert, "sha256:"+strings.Repeat("0", 64), tls.VersionTLS13); err == nil {
		t.Error("a node pinning another key connected")
	}
}

func TestTLSKeepMetadata(t *testing.T) {
	if a := startCloudAgent(t, newTestCA(t, "node-ca"), true); a.blocked != 0 {
		t.Errorf("the metadata service was shut off although the pod keeps it")
	}
}

// TestTLSRefusesStrangers: without a certificate from the node's CA (none, another CA's, one not for client
// authentication), or below TLS 1.3, no protocol session starts.
func TestTLSRefusesStrangers(t *testing.T) {
	ca := newTestCA(t, "node-ca")
	a := startCloudAgent(t, ca, false)
	good := ca.issue(t, x509.ExtKeyUsageClientAuth)
	otherCA := newTestCA(t, "node-ca") // the same name, another key
	other := otherCA.issue(t, x509.ExtKeyUsageClientAuth)
	serverOnly := ca.issue(t, x509.ExtKeyUsageServerAuth)
	for _, tc := range []struct {
		name    string
		cert    *tls.Certificate
		version uint16
	}{
		{"no certificate", nil, tls.VersionTLS13},
		{"another CA's certificate", &other, tls.VersionTLS13},
		{"a server certificate", &serverOnly, tls.VersionTLS13},
		{"TLS 1.2", &good, tls.VersionTLS12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := pinnedDial(a.addr, tc.cert, a.pin, tc.version)
			if err != nil {
				return // refused in the handshake
			}
			// TLS 1.3 lets the client finish first: the server's refusal comes with the first read.
			c, err := protocol.NewClient(conn, 5*time.Second)
			if err == nil {
				c.Close()
				t.Fatal("the agent accepted a protocol session")
			}
		})
	}
}

// idleConn opens a TCP connection that never speaks and returns it.
func idleConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer waits (up to a bound far beyond the server's own time-outs) for the server to close c.
func closedByServer(c net.Conn) error {
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) //nolint:errcheck
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("the connection is still open")
	}
	return nil
}

// testTLSServer serves a real runtime's handler with the given bounds on 127.0.0.1.
func testTLSServer(t *testing.T, ca *testCA, timeout time.Duration, pending, sessions int) (*tlsServer, string, string) {
	t.Helper()
	id, err := newAgentKey(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(io.Discard, boot.ImageConfig{}, "pod")
	s, err := newTLSServer(id, ca.pem, (&server{rt: rt}).handler())
	if err != nil {
		t.Fatal(err)
	}
	s.handshakeTimeout, s.maxPending, s.maxSessions = timeout, pending, sessions
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go s.Serve(ln) //nolint:errcheck
	return s, ln.Addr().String(), boot.KeyFingerprint(id.Leaf)
}

// waitLen waits until l (guarded by s.mu) holds n entries.
func waitLen(t *testing.T, s *tlsServer, l *list.List, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		got := l.Len()
		s.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries, want %d", got, n)
		}
		time.Sleep(time.Millisecond) // a condition on another goroutine's progress
	}
}

// TestTLSHandshakeTimeout: a connection that never completes its handshake is closed.
func TestTLSHandshakeTimeout(t *testing.T) {
	_, addr, _ := testTLSServer(t, newTestCA(t, "node-ca"), 100*time.Millisecond, 16, 4)
	if err := closedByServer(idleConn(t, addr)); err != nil {
		t.Error(err)
	}
}

// TestTLSPendingBound: idle strangers hold at most maxPending places, the oldest giving way, and the node still
// gets in.
func TestTLSPendingBound(t *testing.T) {
	ca := newTestCA(t, "node-ca")
	s, addr, pin := testTLSServer(t, ca, time.Minute, 2, 4)
	var idle []net.Conn
	for i := range 3 {
		idle = append(idle, idleConn(t, addr))
		waitLen(t, s, &s.pending, min(i+1, 2))
	}
	if err := closedByServer(idle[0]); err != nil {
		t.Errorf("the oldest idle connection: %v", err)
	}
	cert := ca.issue(t, x509.ExtKeyUsageClientAuth)
	conn, err := pinnedDial(addr, &cert, pin, tls.VersionTLS13)
	if err != nil {
		t.Fatal(err)
	}
	c, err := protocol.NewClient(conn, 5*time.Second)
	if err != nil {
		t.Fatalf("the node could not get in past idle strangers: %v", err)
	}
	defer c.Close()
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := closedByServer(idle[1]); err != nil {
		t.Errorf("the second idle connection, older than the node's: %v", err)
	}
}

// TestTLSSessionBound: beyond maxSessions, a new session ends the oldest (a node that restarted gets in while its
// old connection lingers).
func TestTLSSessionBound(t *testing.T) {
	ca := newTestCA(t, "node-ca")
	s, addr, pin := testTLSServer(t, ca, time.Minute, 16, 2)
	cert := ca.issue(t, x509.ExtKeyUsageClientAuth)
	var clients []*protocol.Client
	for i := range 3 {
		conn, err := pinnedDial(addr, &cert, pin, tls.VersionTLS13)
		if err != nil {
			t.Fatal(err)
		}
		c, err := protocol.NewClient(conn, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
		waitLen(t, s, &s.sessions, min(i+1, 2))
	}
	select {
	case <-clients[0].Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the oldest session is still open")
	}
	for i, c := range clients[1:] {
		if _, err := c.Status(context.Background()); err != nil {
			t.Errorf("session %d: %v", i+1, err)
		}
	}
}

func TestNodeCAPool(t *testing.T) {
	ca := newTestCA(t, "node-ca")
	leaf := ca.issue(t, x509.ExtKeyUsageClientAuth)
	leafPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}))
	for _, tc := range []struct {
		name, pem, err string
	}{
		{"a CA", ca.pem, ""},
		{"garbage", "not PEM", "not a PEM certificate"},
		{"a key", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n", "not a PEM certificate"},
		{"two certificates", ca.pem + ca.pem, "more than one"},
		{"not a CA", leafPEM, "not a CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nodeCAPool(tc.pem)
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("nodeCAPool: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("nodeCAPool: %v, want an error with %q", err, tc.err)
			}
		})
	}
}

func TestAgentKey(t *testing.T) {
	now := time.Now()
	id, err := newAgentKey(now)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := id.PrivateKey.(*ecdsa.PrivateKey); !ok || id.Leaf.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key %T, want ECDSA", id.PrivateKey)
	}
	if !id.Leaf.NotBefore.Before(now) || id.Leaf.NotAfter.Year() != 9999 {
		t.Errorf("validity %s to %s", id.Leaf.NotBefore, id.Leaf.NotAfter)
	}
	other, _ := newAgentKey(now)
	if boot.KeyFingerprint(id.Leaf) == boot.KeyFingerprint(other.Leaf) {
		t.Error("two boots made the same key")
	}
}
