package agent

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/i2kit/i2kit/agent/boot"

	"github.com/i2kit/i2kit/agent/protocol"
)

// A probe's second is 10 ms in these tests: set before any test runs, so that no prober reads it as it changes.
func init() { probeSecond = 10 * time.Millisecond }

func TestThreshold(t *testing.T) {
	const (
		U = probeUnknown
		S = probeSuccess
		F = probeFailure
	)
	for _, tc := range []struct {
		name             string
		kind             probeKind
		success, failure int32
		attempts         string // s: success, f: failure
		want             []probeResult
		changedAt        []int // attempts at which the result changes
	}{
		{"startup succeeds at once", startupProbe, 0, 0, "s", []probeResult{S}, []int{0}},
		{"startup fails after 3", startupProbe, 0, 0, "fffs", []probeResult{U, U, F, S}, []int{2, 3}},
		{"startup recovers before the threshold", startupProbe, 1, 3, "ffsff", []probeResult{U, U, S, S, S}, []int{2}},
		{"liveness starts successful", livenessProbe, 1, 2, "sfsffs", []probeResult{S, S, S, S, F, S}, []int{4, 5}},
		{"readiness starts failed", readinessProbe, 0, 0, "ffs", []probeResult{F, F, S}, []int{2}},
		{"readiness success threshold", readinessProbe, 2, 1, "ssfsssf", []probeResult{F, S, F, F, S, S, F}, []int{1, 2, 4, 6}},
		{"failure threshold 1", livenessProbe, 1, 1, "f", []probeResult{F}, []int{0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := newThreshold(tc.kind, &protocol.Probe{SuccessThreshold: tc.success, FailureThreshold: tc.failure})
			var changedAt []int
			for i, a := range tc.attempts {
				got, changed := th.observe(a == 's')
				if got != tc.want[i] {
					t.Errorf("attempt %d (%c): result %d, want %d", i, a, got, tc.want[i])
				}
				if changed {
					changedAt = append(changedAt, i)
				}
			}
			if fmt.Sprint(changedAt) != fmt.Sprint(tc.changedAt) {
				t.Errorf("changed at %v, want %v", changedAt, tc.changedAt)
			}
		})
	}
}

// hostPort splits a test server's address.
func hostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	if u, ok := strings.CutPrefix(addr, "http://"); ok {
		addr = u
	} else if u, ok := strings.CutPrefix(addr, "https://"); ok {
		addr = u
	}
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	return h, port
}

func TestProbeHTTP(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/headers", func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "example.com" || r.Header.Get("X-Custom") != "yes" || r.Header.Get("User-Agent") != "kube-probe/1.37" {
			http.Error(w, fmt.Sprintf("host %q, headers %v", r.Host, r.Header), 400)
		}
	})
	mux.HandleFunc("/agent", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") != "custom" {
			w.WriteHeader(400)
		}
	})
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://0.0.0.0/", http.StatusFound)
	})
	mux.HandleFunc("/here", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/fail", http.StatusFound) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	tls := httptest.NewTLSServer(mux)
	defer tls.Close()
	host, port := hostPort(t, srv.URL)
	_, tlsPort := hostPort(t, tls.URL)

	for _, tc := range []struct {
		name        string
		action      protocol.HTTPGetAction
		wantErr     string // "" for a success
		wantWarning string
	}{
		{"200", protocol.HTTPGetAction{Port: port, Path: "/ok"}, "", ""},
		{"path without slash", protocol.HTTPGetAction{Port: port, Path: "ok"}, "", ""},
		{"500", protocol.HTTPGetAction{Port: port, Path: "/fail"}, "HTTP probe failed with statuscode: 500", ""},
		{"timeout", protocol.HTTPGetAction{Port: port, Path: "/slow"}, "Client.Timeout exceeded", ""},
		{"headers", protocol.HTTPGetAction{Port: port, Path: "/headers", Headers: map[string]string{"Host": "example.com", "X-Custom": "yes"}}, "", ""},
		{"user agent", protocol.HTTPGetAction{Port: port, Path: "/agent", Headers: map[string]string{"User-Agent": "custom"}}, "", ""},
		// As a kubelet: a success with a warning, and the body as agnhost's redirect (Go's http.Redirect) sends it.
		{"redirect to another host", protocol.HTTPGetAction{Port: port, Path: "/elsewhere"}, "",
			"Probe terminated redirects, Response body: <a href=\"http://0.0.0.0/\">Found</a>.\n\n"},
		{"redirect on the host", protocol.HTTPGetAction{Port: port, Path: "/here"}, "statuscode: 500", ""},
		{"https", protocol.HTTPGetAction{Scheme: "HTTPS", Port: tlsPort, Path: "/ok"}, "", ""},
		{"explicit host", protocol.HTTPGetAction{Host: "127.0.0.1", Port: port, Path: "/ok"}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			timeout := 5 * time.Second
			if tc.name == "timeout" {
				timeout = 50 * time.Millisecond
			}
			warning, err := probeHTTP(t.Context(), &tc.action, host, timeout)
			if warning != tc.wantWarning {
				t.Errorf("warning %q, want %q", warning, tc.wantWarning)
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("failed: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("error %v, want one with %q", err, tc.wantErr)
			}
		})
	}
}

func TestProbeTCP(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	_, port := hostPort(t, lis.Addr().String())
	if err := probeTCP(t.Context(), "127.0.0.1", port, time.Second); err != nil {
		t.Errorf("listening port: %v", err)
	}
	closed := closedPort(t)
	err = probeTCP(t.Context(), "127.0.0.1", closed, time.Second)
	want := fmt.Sprintf("dial tcp 127.0.0.1:%d: connect: connection refused", closed)
	if err == nil || err.Error() != want {
		t.Errorf("closed port: %v, want %s", err, want)
	}
}

// closedPort returns a port nothing listens on.
func closedPort(t *testing.T) int {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port := hostPort(t, lis.Addr().String())
	lis.Close()
	return port
}

// grpcHealthServer serves grpc.health.v1.Health/Check over h2c: service "" and "web" are SERVING, "down" is
// NOT_SERVING, "missing" is NOT_FOUND (a trailers-only response), "broken" fails with Internal in the trailers.
func grpcHealthServer(t *testing.T) *httptest.Server {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || r.Method != http.MethodPost || r.URL.Path != "/grpc.health.v1.Health/Check" ||
			r.Header.Get("Content-Type") != "application/grpc" || r.Header.Get("Te") != "trailers" {
			t.Errorf("request %s %s %s %v", r.Proto, r.Method, r.URL, r.Header)
			w.WriteHeader(400)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if len(body) < 5 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
			t.Errorf("bad frame %x", body)
			return
		}
		service := ""
		if msg := body[5:]; len(msg) > 0 {
			if msg[0] != 0x0a || int(msg[1]) != len(msg)-2 {
				t.Errorf("bad request %x", msg)
			}
			service = string(msg[2:])
		}
		w.Header().Set("Content-Type", "application/grpc")
		var status byte
		switch service {
		case "", "web":
			status = 1
		case "down":
			status = 2
		case "missing":
			w.Header().Set("Grpc-Status", "5")
			w.Header().Set("Grpc-Message", "unknown service missing")
			w.WriteHeader(200)
			return
		case "broken":
			w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
			w.WriteHeader(200)
			w.Header().Set("Grpc-Status", "13")
			w.Header().Set("Grpc-Message", "it%20broke")
			return
		}
		// An unknown field (2, varint) before the status, as a newer server might send.
		msg := []byte{2<<3 | 0, 7, 1<<3 | 0, status}
		frame := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
		w.Write(append(frame, msg...)) //nolint:errcheck
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	return srv
}

func TestProbeGRPC(t *testing.T) {
	srv := grpcHealthServer(t)
	defer srv.Close()
	host, port := hostPort(t, srv.URL)
	for _, tc := range []struct {
		service, wantErr string
	}{
		{"", ""},
		{"web", ""},
		{"down", `service unhealthy (responded with "NOT_SERVING")`},
		{"missing", "rpc error: code = NotFound desc = unknown service missing"},
		{"broken", "rpc error: code = Internal desc = it broke"},
	} {
		err := probeGRPC(t.Context(), &protocol.GRPCAction{Port: port, Service: tc.service}, host, 5*time.Second)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("service %q: %v", tc.service, err)
		case tc.wantErr != "" && (err == nil || err.Error() != tc.wantErr):
			t.Errorf("service %q: error %v, want %s", tc.service, err, tc.wantErr)
		}
	}
	if err := probeGRPC(t.Context(), &protocol.GRPCAction{Port: closedPort(t)}, "127.0.0.1", time.Second); err == nil ||
		!strings.Contains(err.Error(), "failed to connect service") {
		t.Errorf("closed port: %v", err)
	}
}

func TestHealthCheckStatus(t *testing.T) {
	for _, tc := range []struct {
		msg  []byte
		want uint64
		err  bool
	}{
		{nil, 0, false},
		{[]byte{0x08, 0x01}, 1, false},
		{[]byte{0x12, 0x02, 'a', 'b', 0x08, 0x02}, 2, false},
		{[]byte{0x1d, 1, 2, 3, 4, 0x08, 0x03}, 3, false},
		{[]byte{0x08}, 0, true},
		{[]byte{0x12, 0x05, 'a'}, 0, true},
	} {
		got, err := healthCheckStatus(tc.msg)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("healthCheckStatus(%x) = %d, %v", tc.msg, got, err)
		}
	}
	if got := healthCheckRequest("web"); string(got) != "\x0a\x03web" {
		t.Errorf("healthCheckRequest = %x", got)
	}
}

// fakeRun starts a process as a container run would (it stands for the supervisor) and runs c's probes until it
// exits, keeping c's status as runOnce does. It returns the exit status and closes done once the run has ended.
func fakeRun(t *testing.T, r *runtime, c *container, script string) (ws *syscall.WaitStatus, done chan struct{}) {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	bufio.NewReader(out).ReadString('\n') //nolint:errcheck // the script says when it is ready
	ended := make(chan struct{})
	r.mu.Lock()
	c.pid, c.ended = cmd.Process.Pid, ended
	c.status.State = protocol.ContainerState{State: protocol.Running, StartedAt: time.Now()}
	c.status.Started = c.rc.Startup == nil
	c.status.Ready = c.status.Started && c.rc.Readiness == nil
	c.status.Killed = ""
	r.changedLocked()
	r.mu.Unlock()
	go r.probe(c, ended)
	ws, done = new(syscall.WaitStatus), make(chan struct{})
	go func() {
		cmd.Wait() //nolint:errcheck
		*ws = cmd.ProcessState.Sys().(syscall.WaitStatus)
		r.mu.Lock()
		c.pid = 0
		c.status.Ready, c.status.Started = false, false
		c.status.State = protocol.ContainerState{State: protocol.Terminated}
		close(ended)
		r.changedLocked()
		r.mu.Unlock()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill() //nolint:errcheck
		<-done
	})
	return ws, done
}

func probeRuntime(rc protocol.ContainerConfig) (*runtime, *container) {
	r := newRuntime(io.Discard, boot.ImageConfig{Containers: []boot.Container{{Name: "web"}}}, "pod")
	c := r.containers[0]
	c.rc = rc
	return r, c
}

// waitFor waits for c's status to meet cond and returns it.
func waitFor(t *testing.T, r *runtime, what string, cond func(protocol.ContainerStatus) bool) protocol.ContainerStatus {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		st, changed := r.status()
		if cond(st.Containers[0]) {
			return st.Containers[0]
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("no %s: %+v", what, st.Containers[0])
		}
	}
}

func TestProberReadiness(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port := hostPort(t, lis.Addr().String())
	r, c := probeRuntime(protocol.ContainerConfig{Name: "web", Readiness: &protocol.Probe{
		TCPSocket: &protocol.TCPAction{Host: "127.0.0.1", Port: port}, PeriodSeconds: 1, TimeoutSeconds: 100, FailureThreshold: 2,
		InitialDelaySeconds: 100}}) // the first probe, which passes, comes after the check of the state at start (1 s here)
	_, done := fakeRun(t, r, c, "echo; exec sleep 60")
	if st, _ := r.status(); st.Containers[0].Ready || !st.Containers[0].Started {
		t.Errorf("at start: %+v", st.Containers[0])
	}
	waitFor(t, r, "ready", func(cs protocol.ContainerStatus) bool { return cs.Ready })
	lis.Close()
	cs := waitFor(t, r, "unready", func(cs protocol.ContainerStatus) bool { return !cs.Ready })
	want := fmt.Sprintf("Readiness probe failed: dial tcp 127.0.0.1:%d: connect: connection refused", port)
	if cs.ProbeFailures < 2 || cs.LastProbeFailure != want || cs.Killed != "" || cs.State.State != protocol.Running {
		t.Errorf("after 2 failures: %+v", cs)
	}
	select {
	case <-done:
		t.Error("a readiness failure ended the run")
	default:
	}
}

func TestProberStartupHoldsLiveness(t *testing.T) {
	var healthy, livenessHits atomic.Int32
	liveness := make(chan struct{}, 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/live" {
			livenessHits.Add(1)
			select {
			case liveness <- struct{}{}:
			default:
			}
			return
		}
		if healthy.Load() == 0 {
			w.WriteHeader(503)
		}
	}))
	defer srv.Close()
	host, port := hostPort(t, srv.URL)
	r, c := probeRuntime(protocol.ContainerConfig{Name: "web",
		Startup:  &protocol.Probe{HTTPGet: &protocol.HTTPGetAction{Host: host, Port: port, Path: "/start"}, PeriodSeconds: 1, TimeoutSeconds: 100, FailureThreshold: 1000},
		Liveness: &protocol.Probe{HTTPGet: &protocol.HTTPGetAction{Host: host, Port: port, Path: "/live"}, PeriodSeconds: 1, TimeoutSeconds: 100}})
	fakeRun(t, r, c, "echo; exec sleep 60")
	cs := waitFor(t, r, "startup failures", func(cs protocol.ContainerStatus) bool { return cs.ProbeFailures >= 3 })
	if cs.Started || cs.Ready || cs.LastProbeFailure != "Startup probe failed: HTTP probe failed with statuscode: 503" {
		t.Errorf("while the startup probe fails: %+v", cs)
	}
	if n := livenessHits.Load(); n != 0 {
		t.Errorf("the liveness probe ran %d times before the container started", n)
	}
	healthy.Store(1)
	cs = waitFor(t, r, "start", func(cs protocol.ContainerStatus) bool { return cs.Started })
	if !cs.Ready {
		t.Errorf("started without a readiness probe but not ready: %+v", cs)
	}
	// The liveness probe now runs: wait for two of its attempts through the server.
	deadline := time.After(20 * time.Second)
	for range 2 {
		select {
		case <-liveness:
		case <-deadline:
			t.Fatal("the liveness probe does not run")
		}
	}
}

func TestProberLivenessKills(t *testing.T) {
	port := closedPort(t)
	r, c := probeRuntime(protocol.ContainerConfig{Name: "web", Liveness: &protocol.Probe{
		TCPSocket: &protocol.TCPAction{Host: "127.0.0.1", Port: port}, PeriodSeconds: 1, TimeoutSeconds: 100, FailureThreshold: 2}})
	ws, done := fakeRun(t, r, c, "echo; exec sleep 60")
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("a failing liveness probe did not kill the container")
	}
	if !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("ended with %v, want SIGTERM", *ws)
	}
	st, _ := r.status()
	cs := st.Containers[0]
	if cs.Killed != "Container web failed liveness probe, will be restarted" || cs.ProbeFailures != 2 ||
		!strings.HasPrefix(cs.LastProbeFailure, "Liveness probe failed: dial tcp") || cs.Ready || cs.Started {
		t.Errorf("after the kill: %+v", cs)
	}
}

func TestProberStartupFailureKillsAfterGrace(t *testing.T) {
	port := closedPort(t)
	grace := int64(5)
	r, c := probeRuntime(protocol.ContainerConfig{Name: "web", Startup: &protocol.Probe{
		TCPSocket: &protocol.TCPAction{Host: "127.0.0.1", Port: port}, PeriodSeconds: 1, TimeoutSeconds: 100,
		FailureThreshold: 1, TerminationGracePeriodSeconds: &grace}})
	// The process ignores SIGTERM: SIGKILL ends it after the probe's grace period.
	ws, done := fakeRun(t, r, c, `trap "" TERM; echo; exec sleep 60`)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("a failing startup probe did not kill the container")
	}
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("ended with %v, want SIGKILL", *ws)
	}
	st, _ := r.status()
	if cs := st.Containers[0]; cs.Killed != "Container web failed startup probe, will be restarted" || cs.ProbeFailures != 1 {
		t.Errorf("after the kill: %+v", cs)
	}
}

// probeServer serves /live, /ready and /start, each 200 until failed by its switch (then 500), counting its hits.
type probeServer struct {
	fail [3]atomic.Bool  // live, ready, start
	hits [3]atomic.Int32 // live, ready, start
}

func (s *probeServer) handler(w http.ResponseWriter, r *http.Request) {
	i := map[string]int{"/live": 0, "/ready": 1, "/start": 2}[r.URL.Path]
	s.hits[i].Add(1)
	if s.fail[i].Load() {
		w.WriteHeader(500)
	}
}

func (s *probeServer) probe(t *testing.T, path string, period int32) *protocol.Probe {
	srv := httptest.NewServer(http.HandlerFunc(s.handler))
	t.Cleanup(srv.Close)
	host, port := hostPort(t, srv.URL)
	return &protocol.Probe{HTTPGet: &protocol.HTTPGetAction{Host: host, Port: port, Path: path}, PeriodSeconds: period,
		TimeoutSeconds: 100, FailureThreshold: 1}
}

// TestProberWhileStopping: once the pod stops (as once a kubelet's pod is being deleted), the readiness probe goes
// on and its failure makes the container not ready, while a failing liveness probe neither kills the container nor
// says it failed.
func TestProberWhileStopping(t *testing.T) {
	s := &probeServer{}
	r, c := probeRuntime(protocol.ContainerConfig{Name: "web", Readiness: s.probe(t, "/ready", 5), Liveness: s.probe(t, "/live", 1)})
	_, done := fakeRun(t, r, c, "echo; exec sleep 60")
	waitFor(t, r, "ready", func(cs protocol.ContainerStatus) bool { return cs.Ready })
	r.mu.Lock()
	r.stopping = true // what stop does first
	r.mu.Unlock()
	s.fail[0].Store(true)
	s.fail[1].Store(true)
	waitFor(t, r, "unready", func(cs protocol.ContainerStatus) bool { return !cs.Ready })
	// Three more readiness periods: the liveness probe, five times as frequent, would have failed and killed.
	cs := waitFor(t, r, "readiness failures", func(cs protocol.ContainerStatus) bool { return cs.ProbeFailures >= 4 })
	if cs.Killed != "" || cs.State.State != protocol.Running || !strings.HasPrefix(cs.LastProbeFailure, "Readiness probe failed") {
		t.Errorf("while stopping: %+v", cs)
	}
	select {
	case <-done:
		t.Error("a liveness failure ended the run of a stopping pod")
	default:
	}
}

// TestProberReadyAtOnceAfterStartup: the readiness probe runs as soon as the startup probe succeeds, not a period
// later (the node conformance spec "should be ready immediately after startupProbe succeeds").
func TestProberReadyAtOnceAfterStartup(t *testing.T) {
	s := &probeServer{}
	s.fail[2].Store(true)
	startup := s.probe(t, "/start", 1)
	startup.FailureThreshold = 1000
	readiness := s.probe(t, "/ready", 100000) // 1000 s: only the first attempt can make it ready within the test
	r, c := probeRuntime(protocol.ContainerConfig{Name: "web", Startup: startup, Readiness: readiness})
	fakeRun(t, r, c, "echo; exec sleep 60")
	waitFor(t, r, "startup failures", func(cs protocol.ContainerStatus) bool { return cs.ProbeFailures >= 2 })
	if n := s.hits[1].Load(); n != 0 {
		t.Errorf("the readiness probe ran %d times before the container started", n)
	}
	s.fail[2].Store(false)
	waitFor(t, r, "started", func(cs protocol.ContainerStatus) bool { return cs.Started })
	waitFor(t, r, "ready", func(cs protocol.ContainerStatus) bool { return cs.Ready })
}

// TestProberReadinessInitialDelay: a readiness probe, a sidecar's as an app container's, makes the container ready
// no sooner than its initial delay after the start.
func TestProberReadinessInitialDelay(t *testing.T) {
	s := &probeServer{}
	readiness := s.probe(t, "/ready", 1)
	readiness.InitialDelaySeconds = 30 // 300 ms
	r, c := probeRuntime(protocol.ContainerConfig{Name: "web", Readiness: readiness})
	start := time.Now()
	fakeRun(t, r, c, "echo; exec sleep 60")
	waitFor(t, r, "ready", func(cs protocol.ContainerStatus) bool { return cs.Ready })
	if d := time.Since(start); d < probeSeconds(30) {
		t.Errorf("ready %s after the start, before the initial delay", d)
	}
}

// TestProberWarning: an HTTP liveness probe redirected to another host succeeds with a warning, counted in the
// status with a kubelet's ProbeWarning message; the container is neither killed nor restarted.
func TestProberWarning(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://0.0.0.0/", http.StatusFound)
	}))
	defer srv.Close()
	host, port := hostPort(t, srv.URL)
	r, c := probeRuntime(protocol.ContainerConfig{Name: "web", Liveness: &protocol.Probe{
		HTTPGet: &protocol.HTTPGetAction{Host: host, Port: port, Path: "/redirect"}, PeriodSeconds: 1, TimeoutSeconds: 100, FailureThreshold: 1}})
	_, done := fakeRun(t, r, c, "echo; exec sleep 60")
	cs := waitFor(t, r, "warnings", func(cs protocol.ContainerStatus) bool { return cs.ProbeWarnings >= 3 })
	const want = "Liveness probe warning: Probe terminated redirects, Response body: <a href=\"http://0.0.0.0/\">Found</a>.\n\n"
	if cs.LastProbeWarning != want || cs.ProbeFailures != 0 || cs.Killed != "" {
		t.Errorf("after redirects: %+v", cs)
	}
	select {
	case <-done:
		t.Error("a redirected liveness probe ended the run")
	default:
	}
}
