package agent

import (
	"bufio"
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

	"github.com/i2kit/i2kit/agent/crilog"
	"github.com/i2kit/i2kit/agent/protocol"
)

// server serves the protocol's routes (see package protocol) for one runtime.
type server struct {
	rt       *runtime
	poweroff chan<- time.Duration // a request to stop within the grace period and power off
	stats    statsSource
}

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/pod", s.configure)
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/logs", s.logs)
	mux.HandleFunc("POST /v1/exec", s.exec)
	mux.HandleFunc("POST /v1/attach", s.attach)
	mux.HandleFunc("POST /v1/portforward", s.portForward)
	mux.HandleFunc("GET /v1/stats", s.statsHandler)
	mux.HandleFunc("PUT /v1/volumes/{name}", s.updateVolume)
	mux.HandleFunc("PUT /v1/services", s.setServices)
	mux.HandleFunc("PUT /v1/containers/{name}/resources", s.resize)
	mux.HandleFunc("POST /v1/poweroff", s.powerOff)
	mux.HandleFunc("POST /v1/ephemeral", s.addEphemeral)
	return mux
}

func (s *server) configure(w http.ResponseWriter, req *http.Request) {
	var cfg protocol.PodConfig
	if err := json.NewDecoder(req.Body).Decode(&cfg); err != nil {
		http.Error(w, "decoding the pod configuration: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := s.rt.configure(cfg); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// updateVolume replaces a files volume's content: 404 for a volume the pod lacks, 400 for an emptyDir or a bad path.
func (s *server) setServices(w http.ResponseWriter, req *http.Request) {
	var table []protocol.Service
	if err := json.NewDecoder(req.Body).Decode(&table); err != nil {
		http.Error(w, "decoding the service table: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := s.rt.services.set(table); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) updateVolume(w http.ResponseWriter, req *http.Request) {
	var files []protocol.File
	if err := json.NewDecoder(req.Body).Decode(&files); err != nil {
		http.Error(w, "decoding the volume's files: "+err.Error(), http.StatusBadRequest)
		return
	}
	err := s.rt.updateVolume(req.PathValue("name"), files)
	switch {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, errUnknownVolume):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, errNotFiles), errors.Is(err, errBadPath):
		http.Error(w, err.Error(), http.StatusBadRequest)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

func (s *server) status(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	st, changed := s.rt.status()
	enc := json.NewEncoder(w)
	if req.URL.Query().Get("watch") != "1" {
		enc.Encode(st) //nolint:errcheck
		return
	}
	fl, _ := w.(http.Flusher)
	for {
		if err := enc.Encode(st); err != nil {
			return
		}
		if fl != nil {
			fl.Flush()
		}
		select {
		case <-changed:
		case <-req.Context().Done():
			return
		}
		st, changed = s.rt.status()
	}
}

func (s *server) container(w http.ResponseWriter, name string) *container {
	c := s.rt.find(name)
	if c == nil {
		c = s.rt.findEphemeral(name)
	}
	if c == nil {
		http.Error(w, fmt.Sprintf("container %q is not in this pod", name), http.StatusNotFound)
	}
	return c
}

func (s *server) logs(w http.ResponseWriter, req *http.Request) {
	o, err := protocol.ParseLogOptions(req.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c := s.container(w, o.Container)
	if c == nil {
		return
	}
	s.rt.mu.Lock()
	logs := c.logs
	s.rt.mu.Unlock()
	if logs == nil {
		http.Error(w, fmt.Sprintf("container %q has not started yet", o.Container), http.StatusBadRequest)
		return
	}
	fw := &flushWriter{w: w}
	fw.f, _ = w.(http.Flusher)
	err = logs.Read(req.Context(), fw, crilog.Options{Follow: o.Follow, Previous: o.Previous, Timestamps: o.Timestamps,
		Tail: o.Tail, Since: o.SinceTime, LimitBytes: o.LimitBytes})
	if err != nil && !fw.wrote {
		code := http.StatusInternalServerError
		if errors.Is(err, crilog.ErrNoPrevious) || errors.Is(err, crilog.ErrNoRun) {
			code = http.StatusBadRequest
		}
		http.Error(w, fmt.Sprintf("container %q: %v", o.Container, err), code)
	}
}

// flushWriter flushes every write: a followed log reaches the client line by line.
type flushWriter struct {
	w     io.Writer
	f     http.Flusher
	wrote bool
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.wrote = true
	n, err := f.w.Write(p)
	if f.f != nil {
		f.f.Flush()
	}
	return n, err
}

// upgrade takes over an HTTP request's stream for another protocol.
func upgrade(w http.ResponseWriter, proto string) (net.Conn, *bufio.Reader, error) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("the stream cannot be upgraded")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", proto)
	if err := brw.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, brw.Reader, nil
}

func (s *server) exec(w http.ResponseWriter, req *http.Request) {
	var r protocol.ExecRequest
	if err := json.Unmarshal([]byte(req.URL.Query().Get("request")), &r); err != nil || len(r.Command) == 0 {
		http.Error(w, "an exec request needs a container and a command", http.StatusBadRequest)
		return
	}
	s.frames(w, r.Container, func(c *container, br *bufio.Reader, fw *protocol.FrameWriter) (int, error) {
		return s.rt.execIn(req.Context(), c, r, br, fw)
	})
}

func (s *server) attach(w http.ResponseWriter, req *http.Request) {
	var r protocol.AttachRequest
	if err := json.Unmarshal([]byte(req.URL.Query().Get("request")), &r); err != nil {
		http.Error(w, "decoding the attach request: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.frames(w, r.Container, func(c *container, br *bufio.Reader, fw *protocol.FrameWriter) (int, error) {
		return s.rt.attachTo(req.Context(), c, r, br, fw)
	})
}

// frames upgrades a request for a container to framed streams, runs run on them and ends with its exit.
func (s *server) frames(w http.ResponseWriter, name string, run func(*container, *bufio.Reader, *protocol.FrameWriter) (int, error)) {
	c := s.container(w, name)
	if c == nil {
		return
	}
	conn, br, err := upgrade(w, protocol.UpgradeFrames)
	if err != nil {
		return
	}
	defer conn.Close()
	fw := protocol.NewFrameWriter(conn)
	code, err := run(c, br, fw)
	writeExit(fw, code, err)
}

func writeExit(fw *protocol.FrameWriter, code int, err error) {
	e := protocol.Exit{Code: code}
	if err != nil {
		e.Error = err.Error()
	}
	b, _ := json.Marshal(e)
	fw.Write(protocol.ExitCh, b) //nolint:errcheck
}

func (s *server) portForward(w http.ResponseWriter, req *http.Request) {
	port, err := strconv.Atoi(req.URL.Query().Get("port"))
	if err != nil || port <= 0 || port > 65535 {
		http.Error(w, "port-forward needs a port in 1-65535", http.StatusBadRequest)
		return
	}
	// Refuse at once, before upgrading, when nothing listens: kubectl shows the error.
	probe, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		http.Error(w, fmt.Sprintf("nothing listens on port %d in the pod: %v", port, err), http.StatusBadGateway)
		return
	}
	probe.Close()
	conn, br, err := upgrade(w, protocol.UpgradeRaw)
	if err != nil {
		return
	}
	portForward(conn, br, port)
}

func (s *server) statsHandler(w http.ResponseWriter, _ *http.Request) {
	s.rt.mu.Lock()
	var targets []statsTarget
	for _, c := range s.rt.containers {
		if c.status.State.State != protocol.Running {
			continue
		}
		targets = append(targets, statsTarget{Name: c.Name, StartedAt: c.status.State.StartedAt,
			UpperDir: filepath.Join(ContainersDir, c.Name, "upper"), LogDir: filepath.Join(LogsDir, c.Name)})
	}
	s.rt.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(s.stats.collect(time.Now(), targets)) //nolint:errcheck
}

// powerOff answers POST /v1/poweroff: the pod stops within grace and the VM powers off. See shortenStop for a
// repeated request.
func (s *server) powerOff(w http.ResponseWriter, req *http.Request) {
	grace, err := time.ParseDuration(req.URL.Query().Get("grace"))
	if err != nil {
		grace = 30 * time.Second
	}
	// A repeated request while the pod stops (its grace period shortened) moves the stop's deadline earlier, never
	// later; the first sets it before the stop begins. It is in effect once the host has the answer.
	s.rt.shortenStop(grace)
	// The answer goes out, whole, before the request is handed on: with nothing to stop, the VM powers off at once,
	// and an answer still in the server's buffer — or a chunked one whose end is — would never reach the host.
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	select {
	case s.poweroff <- grace:
	default: // already powering off
	}
}

// serveChannel serves the protocol on the virtio-serial port named protocol.PortName, one session at a time:
// when a session ends (the node restarted), the next host's hello starts another. It returns at once when the
// VM has no such port (an image booted by hand).
func (s *server) serveChannel() {
	dev := findPort(protocol.PortName)
	if dev == "" {
		return
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		s.rt.say("i2kit-agent: opening %s: %v", dev, err)
		return
	}
	h := s.handler()
	for {
		f.SetReadDeadline(time.Time{}) //nolint:errcheck
		sess, err := protocol.Accept(portConn{f})
		if err != nil {
			// No host is connected: the port reads end-of-file until one is.
			time.Sleep(50 * time.Millisecond)
			continue
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
		srv.Serve(sess) //nolint:errcheck // returns when the session ends
		sess.Close()
	}
}

// portConn keeps the port open when a session ends: yamux closes its connection then, and the next session needs
// the port. Its Close only unblocks the ended session's pending read.
type portConn struct{ *os.File }

func (p portConn) Close() error { return p.File.SetReadDeadline(time.Now()) }

// findPort returns the device of the virtio-serial port with the given name.
func findPort(name string) string {
	deadline := time.Now().Add(2 * time.Second)
	for {
		ports, _ := filepath.Glob("/sys/class/virtio-ports/*")
		for _, p := range ports {
			if b, err := os.ReadFile(filepath.Join(p, "name")); err == nil && strings.TrimSpace(string(b)) == name {
				return "/dev/" + filepath.Base(p)
			}
		}
		if len(ports) > 0 || time.Now().After(deadline) {
			return ""
		}
		time.Sleep(20 * time.Millisecond) // the kernel may still be probing the port
	}
}
