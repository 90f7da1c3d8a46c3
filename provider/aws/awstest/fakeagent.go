// Package awstest helps test the aws backend where no instance boots: a FakeAgent plays an instance's agent on
// the network, with the real agent's contract (user-data in, key line on the console, mutually authenticated TLS,
// the protocol's session) and a pod that starts the moment it is configured.
package awstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
)

// handshakeTimeout bounds a client's TLS and protocol handshakes.
const handshakeTimeout = 10 * time.Second

// FakeAgent is an instance's agent without the instance. It is safe for concurrent use.
type FakeAgent struct {
	ud         boot.UserData
	fp         string
	ln         net.Listener
	onPowerOff func()

	wg sync.WaitGroup // the accept loop, each connection, the power-off

	mu         sync.Mutex
	conns      map[*tls.Conn]struct{}
	closed     bool
	done       chan struct{} // closed by stop
	refused    int
	cfg        *protocol.PodConfig
	status     protocol.PodStatus
	changed    chan struct{} // closed and replaced at every status change
	poweredOff bool
}

// NewFakeAgent starts the agent of an instance whose user-data is userData (as boot.ParseUserData reads it),
// listening on addr: "host:port", or "host" alone for the user-data's agent port. Any 127/8 address works on
// Linux's loopback, so many agents can share a port as instances share one. onPowerOff (may be nil) is called
// once the agent has answered a power-off and stopped serving: an emulator marks the instance stopped there.
func NewFakeAgent(userData []byte, addr string, onPowerOff func()) (*FakeAgent, error) {
	ud, err := boot.ParseUserData(userData)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(ud.NodeCA)) {
		return nil, errors.New("user-data: nodeCA holds no certificate")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, strconv.Itoa(ud.AgentPort))
	}
	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	ln, err := tls.Listen("tcp", addr, &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s, %w", addr, err)
	}
	a := &FakeAgent{ud: ud, fp: boot.KeyFingerprint(cert.Leaf), ln: ln, onPowerOff: onPowerOff,
		conns: map[*tls.Conn]struct{}{}, done: make(chan struct{}), changed: make(chan struct{}),
		status: protocol.PodStatus{Seq: 1}}
	a.wg.Add(1)
	go a.accept()
	return a, nil
}

// selfSigned makes the agent's key and certificate, as the agent does at boot.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating the agent's key, %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "i2kit agent"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("creating the agent's certificate, %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// ConsoleLine is the line the agent prints on the instance's console (boot.KeyLine of its key), with its newline.
func (a *FakeAgent) ConsoleLine() string { return boot.KeyLine(a.fp) + "\n" }

// Fingerprint is the agent's key fingerprint (boot.KeyFingerprint).
func (a *FakeAgent) Fingerprint() string { return a.fp }

// Addr is the address the agent listens on.
func (a *FakeAgent) Addr() string { return a.ln.Addr().String() }

// UserData is the user-data the agent was started with.
func (a *FakeAgent) UserData() boot.UserData { return a.ud }

// Config returns the pod configuration the node sent (PUT /v1/pod), if any.
func (a *FakeAgent) Config() (protocol.PodConfig, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cfg == nil {
		return protocol.PodConfig{}, false
	}
	return *a.cfg, true
}

// Refused counts the connections whose TLS handshake the agent refused (no client certificate, or one the
// node's CA did not sign).
func (a *FakeAgent) Refused() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refused
}

// Close stops the agent: it listens no more and ends every connection. It is idempotent.
func (a *FakeAgent) Close() error {
	a.stop(true)
	a.wg.Wait()
	return nil
}

// stop stops listening and ends every connection, without waiting for their goroutines: hard closes them; else
// each established one is only closed for writing (what was sent is delivered, then the peer reads the end), as
// a powered-off instance's connections end.
func (a *FakeAgent) stop(hard bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.closed = true
		close(a.done)
		a.ln.Close()
	}
	for c := range a.conns {
		if hard || c.CloseWrite() != nil {
			c.Close()
		}
	}
}

func (a *FakeAgent) accept() {
	defer a.wg.Done()
	for {
		c, err := a.ln.Accept()
		if err != nil {
			return
		}
		a.mu.Lock()
		if a.closed {
			a.mu.Unlock()
			c.Close()
			return
		}
		tc := c.(*tls.Conn)
		a.conns[tc] = struct{}{}
		a.wg.Add(1)
		a.mu.Unlock()
		go a.serve(tc)
	}
}

// serve runs one connection as the agent does: the TLS handshake (client certificate required), the protocol's
// handshake, then HTTP over the session until it ends.
func (a *FakeAgent) serve(c *tls.Conn) {
	defer a.wg.Done()
	defer func() {
		c.Close()
		a.mu.Lock()
		delete(a.conns, c)
		a.mu.Unlock()
	}()
	c.SetDeadline(time.Now().Add(handshakeTimeout)) //nolint:errcheck
	if err := c.Handshake(); err != nil {
		a.mu.Lock()
		a.refused++
		a.mu.Unlock()
		return
	}
	sess, err := protocol.Accept(c)
	if err != nil {
		return
	}
	c.SetDeadline(time.Time{}) //nolint:errcheck
	srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: handshakeTimeout}
	srv.Serve(sess) //nolint:errcheck // returns when the session ends
	sess.Close()
}

func (a *FakeAgent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/pod", a.configure)
	mux.HandleFunc("GET /v1/status", a.statusHandler)
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(protocol.Stats{Time: time.Now()}) //nolint:errcheck
	})
	accept := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }
	mux.HandleFunc("PUT /v1/services", accept)
	mux.HandleFunc("PUT /v1/volumes/{name}", accept)
	mux.HandleFunc("POST /v1/poweroff", a.powerOff)
	return mux
}

// configure takes the pod's configuration once (later calls are no-ops, as the agent's) and reports every
// container running and ready at once.
func (a *FakeAgent) configure(w http.ResponseWriter, req *http.Request) {
	var cfg protocol.PodConfig
	if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, protocol.MaxResponseBytes)).Decode(&cfg); err != nil {
		http.Error(w, "decoding the pod configuration: "+err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	if a.cfg == nil {
		a.cfg = &cfg
		now := time.Now()
		st := protocol.PodStatus{Seq: a.status.Seq + 1, Configured: true}
		for _, c := range cfg.Containers {
			st.Containers = append(st.Containers, protocol.ContainerStatus{Name: c.Name, Ready: true, Started: true,
				State: protocol.ContainerState{State: protocol.Running, StartedAt: now}})
		}
		a.setStatusLocked(st)
	}
	a.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (a *FakeAgent) setStatusLocked(st protocol.PodStatus) {
	a.status = st
	close(a.changed)
	a.changed = make(chan struct{})
}

// statusHandler answers the status, or with ?watch=1 a JSON line per change until the request or the agent ends.
func (a *FakeAgent) statusHandler(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	fl, _ := w.(http.Flusher)
	for {
		a.mu.Lock()
		st, changed := a.status, a.changed
		a.mu.Unlock()
		if err := enc.Encode(st); err != nil || req.URL.Query().Get("watch") != "1" {
			return
		}
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-changed:
		case <-req.Context().Done():
			return
		case <-a.done:
			return
		}
	}
}

// powerOff answers, then stops the agent as a powered-off instance does (nothing listens any more) and calls
// onPowerOff, once.
func (a *FakeAgent) powerOff(w http.ResponseWriter, _ *http.Request) {
	// Whole when flushed, as the agent's: the session ends right after.
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	a.mu.Lock()
	first := !a.poweredOff && !a.closed
	a.poweredOff = true
	if first {
		a.wg.Add(1)
	}
	a.mu.Unlock()
	if !first {
		return
	}
	go func() {
		defer a.wg.Done()
		a.stop(false)
		if a.onPowerOff != nil {
			a.onPowerOff()
		}
	}()
}
