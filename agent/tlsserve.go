package agent

import (
	"container/list"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/i2kit/i2kit/agent/protocol"
)

// On a cloud instance the agent serves the protocol over TLS 1.3 on the instance's network. Both ends are
// authenticated: the node by a client certificate its own CA signed (the CA's certificate comes in user-data,
// public material), the agent by a key it makes at boot, which never leaves its memory, and whose fingerprint it
// prints on the serial console, where the node reads it through the cloud's authenticated API and pins it. The
// port is open to the VPC (a security group should narrow it to the node): until a peer has proved its
// certificate it is a stranger, and strangers get bounded time and a bounded number of places.

const (
	// tlsHandshakeTimeout bounds a connection's TLS handshake and the protocol's hello together.
	tlsHandshakeTimeout = 10 * time.Second
	// maxPendingConns bounds the connections in their handshake. When a new one would pass it, the oldest is
	// dropped rather than the new one refused: a neighbour holding connections open idle cannot keep the node out,
	// it would have to open them faster than the node completes a handshake (milliseconds).
	maxPendingConns = 16
	// maxSessions bounds the authenticated sessions. Several may be live: a node that restarted or lost its
	// connection (a half-open TCP connection lingers until yamux's keep-alive finds it dead) must get in at once,
	// so a new session beyond the bound ends the oldest one. Only holders of a certificate from the node's CA get
	// this far; all sessions serve the same handler, as the streams of one session do.
	maxSessions = 4
)

// newAgentKey makes the agent's TLS identity: an ECDSA P-256 key, held in memory only, and a self-signed
// certificate for it (also parsed, as Leaf). The node pins the key (boot.KeyFingerprint), not the certificate's names or dates: it never
// expires (RFC 5280's 99991231235959Z, no well-defined expiry), and starts an hour back, for a clock not yet set.
func newAgentKey(now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating the agent's key, %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("drawing a serial number, %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "i2kit-agent"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("signing the agent's certificate, %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// nodeCAPool parses the node's CA from user-data: exactly one PEM certificate, a CA.
func nodeCAPool(pemCA string) (*x509.CertPool, error) {
	block, rest := pem.Decode([]byte(pemCA))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("nodeCA: not a PEM certificate")
	}
	if extra, _ := pem.Decode(rest); extra != nil {
		return nil, errors.New("nodeCA: more than one PEM block")
	}
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("nodeCA: %w", err)
	}
	if !ca.BasicConstraintsValid || !ca.IsCA {
		return nil, errors.New("nodeCA: not a CA certificate")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, nil
}

// tlsServer serves the protocol (protocol.Accept, then the handler on the session) on every connection whose
// peer completes a TLS 1.3 handshake with a client certificate the node's CA signed; see the constants above for
// its bounds.
type tlsServer struct {
	tls     *tls.Config
	handler http.Handler
	// handshakeTimeout, maxPending and maxSessions default to the constants above (tests shrink them).
	handshakeTimeout time.Duration
	maxPending       int
	maxSessions      int

	mu       sync.Mutex
	pending  list.List // of net.Conn, oldest first
	sessions list.List // of *yamux.Session, oldest first
}

func newTLSServer(id tls.Certificate, nodeCA string, h http.Handler) (*tlsServer, error) {
	pool, err := nodeCAPool(nodeCA)
	if err != nil {
		return nil, err
	}
	return &tlsServer{
		tls: &tls.Config{
			MinVersion:             tls.VersionTLS13,
			Certificates:           []tls.Certificate{id},
			ClientAuth:             tls.RequireAndVerifyClientCert,
			ClientCAs:              pool,
			SessionTicketsDisabled: true, // every connection proves its certificate afresh
		},
		handler: h, handshakeTimeout: tlsHandshakeTimeout, maxPending: maxPendingConns, maxSessions: maxSessions,
	}, nil
}

// Serve accepts connections on ln until ln is closed, and returns then. Other accept errors (out of descriptors)
// pass: it waits, up to a second, and accepts again, as net/http's server does.
func (s *tlsServer) Serve(ln net.Listener) error {
	var wait time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			wait = min(max(2*wait, 5*time.Millisecond), time.Second)
			time.Sleep(wait)
			continue
		}
		wait = 0
		go s.serveConn(c)
	}
}

// serveConn handshakes (TLS, then the protocol's hello) within the time-out, holding a pending place, then
// serves the session, holding a session place, until it ends.
func (s *tlsServer) serveConn(c net.Conn) {
	el := s.admit(&s.pending, c, s.maxPending, func(v any) { v.(net.Conn).Close() })
	c.SetDeadline(time.Now().Add(s.handshakeTimeout)) //nolint:errcheck
	tc := tls.Server(c, s.tls)
	sess, err := s.handshake(tc)
	s.release(&s.pending, el)
	if err != nil {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{}) //nolint:errcheck
	el = s.admit(&s.sessions, sess, s.maxSessions, func(v any) { v.(*yamux.Session).Close() })
	defer s.release(&s.sessions, el)
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 30 * time.Second}
	srv.Serve(sess) //nolint:errcheck // returns when the session ends
	sess.Close()
}

func (s *tlsServer) handshake(tc *tls.Conn) (*yamux.Session, error) {
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("TLS handshake, %w", err)
	}
	return protocol.Accept(tc)
}

// admit records v in l, first ending the oldest entries while l holds max or more.
func (s *tlsServer) admit(l *list.List, v any, max int, end func(any)) *list.Element {
	s.mu.Lock()
	var evicted []any
	for l.Len() >= max {
		evicted = append(evicted, l.Remove(l.Front()))
	}
	el := l.PushBack(v)
	s.mu.Unlock()
	for _, e := range evicted {
		end(e)
	}
	return el
}

// release forgets an entry admit recorded, unless it was evicted already.
func (s *tlsServer) release(l *list.List, el *list.Element) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l.Remove(el) // a no-op for an element no longer in l
}
