package agent

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
)

// fakePod is a podRunner without processes: supervise logs "run NAME" and returns the result the test sends on
// result(NAME); whenStarted logs "wait NAME" and returns started(NAME), which the test closes.
type fakePod struct {
	t      *testing.T
	events chan string
	onRun  func(c *container) // called as supervise begins, before it logs

	mu      sync.Mutex
	results map[string]chan bool
	started map[string]chan struct{}
}

func newFakePod(t *testing.T) *fakePod {
	return &fakePod{t: t, events: make(chan string, 100), results: map[string]chan bool{}, started: map[string]chan struct{}{}}
}

func (f *fakePod) result(name string) chan bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.results[name] == nil {
		f.results[name] = make(chan bool, 1)
	}
	return f.results[name]
}

func (f *fakePod) startedCh(name string) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.started[name] == nil {
		f.started[name] = make(chan struct{})
	}
	return f.started[name]
}

func (f *fakePod) supervise(c *container) bool {
	if f.onRun != nil {
		f.onRun(c)
	}
	f.events <- "run " + c.Name
	if c.createErr != nil {
		return false
	}
	return <-f.result(c.Name)
}

func (f *fakePod) whenStarted(c *container) <-chan struct{} {
	f.events <- "wait " + c.Name
	return f.startedCh(c.Name)
}

func (f *fakePod) initFailed(c *container, rest []*container) {
	f.events <- fmt.Sprintf("initFailed %s %s", c.Name, names(rest))
}

func (f *fakePod) stopSidecars(sidecars []*container) {
	f.events <- "stopSidecars " + names(sidecars)
}

// next is the next event; it fails the test if none comes within 10 s.
func (f *fakePod) next() string {
	f.t.Helper()
	select {
	case e := <-f.events:
		return e
	case <-time.After(10 * time.Second):
		f.t.Fatal("no event within 10 s")
		return ""
	}
}

// expect takes the next len(want) events, in any order, and fails unless they are want.
func (f *fakePod) expect(want ...string) {
	f.t.Helper()
	var got []string
	for range want {
		got = append(got, f.next())
	}
	slices.Sort(got)
	want = slices.Clone(want)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		f.t.Fatalf("events %q, want %q", got, want)
	}
}

// quiet fails if an event is pending once startPod has returned.
func (f *fakePod) quiet() {
	f.t.Helper()
	select {
	case e := <-f.events:
		f.t.Errorf("unexpected event %q", e)
	default:
	}
}

func names(cs []*container) string {
	var n []string
	for _, c := range cs {
		n = append(n, c.Name)
	}
	return strings.Join(n, ",")
}

func testContainer(name string, k containerKind) *container {
	return &container{Container: boot.Container{Name: name}, kind: k, wake: make(chan struct{})}
}

// run starts startPod and returns a channel closed when it returns.
func run(p podRunner, order []*container, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		startPod(p, order, stop)
	}()
	return done
}

func waitDone(t *testing.T, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("startPod did not return within 10 s")
	}
}

// TestStartPodWaitsForSidecarStarted: a regular init container runs to success, then the sidecar starts, and the
// app containers start only once it is started (its startup probe and postStart hook done), as on a kubelet.
func TestStartPodWaitsForSidecarStarted(t *testing.T) {
	setup, proxy := testContainer("setup", initKind), testContainer("proxy", sidecarKind)
	web, worker := testContainer("web", appKind), testContainer("worker", appKind)
	f := newFakePod(t)
	var setupDone atomic.Bool
	f.onRun = func(c *container) {
		switch c.Name {
		case "proxy":
			if !setupDone.Load() {
				t.Error("the sidecar started before the init container before it succeeded")
			}
		case "web", "worker":
			select {
			case <-f.startedCh("proxy"):
			default:
				t.Errorf("%s started before the sidecar was started", c.Name)
			}
		}
	}
	stop := make(chan struct{})
	done := run(f, []*container{setup, proxy, web, worker}, stop)
	f.expect("run setup")
	setupDone.Store(true)
	f.result("setup") <- true
	f.expect("run proxy", "wait proxy")
	close(f.startedCh("proxy"))
	f.expect("run web", "run worker")
	close(stop) // the pod stops: the apps end, the sidecars are not stopped apart
	f.result("web") <- false
	f.result("worker") <- false
	waitDone(t, done)
	f.result("proxy") <- false
	f.quiet()
}

// TestStartPodInitRunsToSuccessFirst: a regular init container runs to its end before the next one starts, and
// one that failed for good (a Never pod's) leaves the rest waiting, never started, and stops the sidecars
// already running.
func TestStartPodInitRunsToSuccessFirst(t *testing.T) {
	for _, ok := range []bool{true, false} {
		t.Run(strconv.FormatBool(ok), func(t *testing.T) {
			proxy, first, second := testContainer("proxy", sidecarKind), testContainer("first", initKind), testContainer("second", initKind)
			web := testContainer("web", appKind)
			f := newFakePod(t)
			var firstEnded atomic.Bool
			f.onRun = func(c *container) {
				if (c.Name == "second" || c.Name == "web") && !firstEnded.Load() {
					t.Errorf("%s started while the init container before it ran", c.Name)
				}
			}
			done := run(f, []*container{proxy, first, second, web}, make(chan struct{}))
			f.expect("run proxy", "wait proxy")
			close(f.startedCh("proxy"))
			f.expect("run first")
			firstEnded.Store(true)
			f.result("first") <- ok
			if !ok {
				f.expect("initFailed first second,web")
				f.expect("stopSidecars proxy")
				waitDone(t, done)
				f.quiet()
				return
			}
			f.expect("run second")
			f.result("second") <- true
			f.expect("run web")
			f.result("web") <- true
			f.expect("stopSidecars proxy")
			waitDone(t, done)
			f.quiet()
		})
	}
}

// TestStartPodStopsSidecarsOnlyWhenAppsAreDone: the sidecars are stopped once every app container is done for
// good, but not when the pod stops (stop stops them in order) nor while an app container cannot be created.
func TestStartPodStopsSidecarsOnlyWhenAppsAreDone(t *testing.T) {
	for _, tc := range []struct {
		name      string
		stop      bool
		createErr bool
		want      bool
	}{
		{"apps done", false, false, true},
		{"pod stopping", true, false, false},
		{"an app never created", false, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy, web, job := testContainer("proxy", sidecarKind), testContainer("web", appKind), testContainer("job", appKind)
			if tc.createErr {
				job.createErr = errors.New("no command")
			}
			f := newFakePod(t)
			stop := make(chan struct{})
			done := run(f, []*container{proxy, web, job}, stop)
			f.expect("run proxy", "wait proxy")
			close(f.startedCh("proxy"))
			f.expect("run web", "run job")
			if tc.stop {
				close(stop)
			}
			f.result("web") <- true
			f.result("job") <- true
			if tc.want {
				f.expect("stopSidecars proxy")
			}
			waitDone(t, done)
			f.quiet()
		})
	}
}

// TestStartPodSidecarThatNeverStarts: a sidecar that cannot be created keeps what follows it from starting.
func TestStartPodSidecarThatNeverStarts(t *testing.T) {
	proxy, web := testContainer("proxy", sidecarKind), testContainer("web", appKind)
	proxy.createErr = errors.New("no command")
	f := newFakePod(t)
	done := run(f, []*container{proxy, web}, make(chan struct{}))
	f.expect("run proxy", "wait proxy", "initFailed proxy web")
	waitDone(t, done)
	f.quiet()
}

func TestRestarts(t *testing.T) {
	const A, O, N = protocol.RestartAlways, protocol.RestartOnFailure, protocol.RestartNever
	in42 := []protocol.RestartRule{{Action: "Restart", Operator: "In", Values: []int32{42}}}
	notIn0 := []protocol.RestartRule{{Action: "Restart", Operator: "NotIn", Values: []int32{0}}}
	allFirst := []protocol.RestartRule{{Action: "RestartAllContainers", Operator: "In", Values: []int32{42}}, in42[0]}
	for _, tc := range []struct {
		kind     containerKind
		pod, own string
		rules    []protocol.RestartRule
		code     int
		want     bool
		name     string
	}{
		// The restart rules of Kubernetes' node specs (container_restart_policy.go) and the kubelet's order.
		{appKind, N, N, in42, 42, true, "a rule that matches restarts a Never container in a Never pod"},
		{appKind, N, N, in42, 1, false, "a rule that does not match leaves the container's Never"},
		{appKind, A, N, in42, 1, false, "a container's Never in an Always pod, rule mismatch"},
		{appKind, N, N, notIn0, 3, true, "NotIn"},
		{appKind, N, N, notIn0, 0, false, "NotIn, a listed code"},
		{appKind, N, N, allFirst, 42, false, "the first match decides: RestartAllContainers falls to the policy"},
		{appKind, N, "", in42, 42, false, "rules without a policy of the container's own are not read"},
		{initKind, N, N, in42, 42, true, "an init container's rule"},
		{initKind, A, N, nil, 1, false, "an init container's own Never in an Always pod"},
		{appKind, A, "", nil, 0, true, "app, Always, success"},
		{appKind, A, "", nil, 1, true, "app, Always, failure"},
		{appKind, O, "", nil, 0, false, "app, OnFailure, success"},
		{appKind, O, "", nil, 1, true, "app, OnFailure, failure"},
		{appKind, N, "", nil, 1, false, "app, Never, failure"},
		{appKind, N, A, nil, 0, true, "app with its own Always in a Never pod"},
		{appKind, A, N, nil, 1, false, "app with its own Never in an Always pod"},
		{initKind, A, "", nil, 0, false, "init, Always, success"},
		{initKind, A, "", nil, 1, true, "init, Always, failure"},
		{initKind, O, "", nil, 1, true, "init, OnFailure, failure"},
		{initKind, N, "", nil, 1, false, "init, Never, failure"},
		{sidecarKind, N, A, nil, 0, true, "sidecar, Never pod, success"},
		{sidecarKind, N, A, nil, 1, true, "sidecar, Never pod, failure"},
		{sidecarKind, O, A, nil, 0, true, "sidecar, OnFailure pod, success"},
		{sidecarKind, A, A, nil, 137, true, "sidecar, Always pod, killed"},
	} {
		if got := restarts(tc.kind, tc.pod, tc.own, tc.rules, tc.code); got != tc.want {
			t.Errorf("%s: restarts = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestKindOfAndStartOrder(t *testing.T) {
	img := func() []*container {
		var cs []*container
		for _, n := range []string{"setup", "migrate", "proxy", "web"} { // the image's order: onboot first
			cs = append(cs, &container{Container: boot.Container{Name: n, Onboot: n == "setup" || n == "migrate"}})
		}
		return cs
	}
	kinds := func(order []*container) string {
		var s []string
		for _, c := range order {
			s = append(s, fmt.Sprintf("%s:%d", c.Name, c.kind))
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		name string
		cfg  []protocol.ContainerConfig
		want string
	}{
		{"an older node: the image's order, sidecars run as apps", []protocol.ContainerConfig{{Name: "setup"}, {Name: "proxy"},
			{Name: "migrate"}, {Name: "web"}}, "setup:1 migrate:1 proxy:0 web:0"},
		{"no configuration", nil, "setup:1 migrate:1 proxy:0 web:0"},
		{"a kubelet's order", []protocol.ContainerConfig{{Name: "setup", Init: true},
			{Name: "proxy", Init: true, RestartPolicy: protocol.RestartAlways}, {Name: "migrate", Init: true}, {Name: "web"}},
			"setup:1 proxy:2 migrate:1 web:0"},
	} {
		// As configure applies the node's configuration (the kinds need each container's config).
		r := &runtime{containers: img()}
		r.applyConfigLocked(&protocol.PodConfig{Containers: tc.cfg})
		if got := kinds(r.order); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestStopOrder(t *testing.T) {
	cs := []*container{testContainer("setup", initKind), testContainer("logs", sidecarKind), testContainer("proxy", sidecarKind),
		testContainer("web", appKind), testContainer("worker", appKind)}
	var got []string
	for _, g := range stopOrder(cs) {
		got = append(got, names(g))
	}
	if want := []string{"setup,web,worker", "proxy", "logs"}; !slices.Equal(got, want) {
		t.Errorf("stop order %q, want %q", got, want)
	}
}

// fakeRuns gives containers runs without processes: a run ends when its fake supervisor gets a signal it obeys.
// Its pids are above any kernel's pid_max, so that a signal sent past the fake reaches no process.
const fakePID = 1 << 30

type fakeRuns struct {
	mu      sync.Mutex
	log     []string
	byPID   map[int]*container
	ignores map[string]syscall.Signal // a container that ignores this signal
	sent    chan string               // if set, gets each signal as logged
}

func (f *fakeRuns) add(c *container, pid int) {
	c.pid, c.ended, c.started = pid, make(chan struct{}), make(chan struct{})
	close(c.started)
	f.byPID[pid] = c
}

func (f *fakeRuns) signal(pid int, sig syscall.Signal) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.byPID[pid]
	f.log = append(f.log, fmt.Sprintf("%s %s", map[syscall.Signal]string{syscall.SIGTERM: "TERM", syscall.SIGKILL: "KILL"}[sig], c.Name))
	if f.sent != nil {
		f.sent <- f.log[len(f.log)-1]
	}
	if f.ignores[c.Name] != sig {
		close(c.ended)
		delete(f.byPID, pid)
	}
}

// TestStopStopsSidecarsAfterApps: on termination the app containers get SIGTERM first, and each sidecar only
// once the apps and the sidecars after it have ended, last first; what ignores SIGTERM gets SIGKILL at the grace
// period's end, and so do the sidecars not yet signalled.
func TestStopStopsSidecarsAfterApps(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ignores map[string]syscall.Signal
		grace   time.Duration
		want    []string
	}{
		{"in order", nil, 10 * time.Second, []string{"TERM web", "TERM worker", "TERM proxy", "TERM logs"}},
		{"an app ignores SIGTERM", map[string]syscall.Signal{"worker": syscall.SIGTERM}, 50 * time.Millisecond,
			[]string{"TERM web", "TERM worker", "KILL worker", "KILL proxy", "KILL logs"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRuntime(io.Discard, boot.ImageConfig{}, "pod")
			f := &fakeRuns{byPID: map[int]*container{}, ignores: tc.ignores}
			r.signal = f.signal
			logs, proxy := testContainer("logs", sidecarKind), testContainer("proxy", sidecarKind)
			web, worker := testContainer("web", appKind), testContainer("worker", appKind)
			r.containers = []*container{logs, proxy, web, worker}
			r.order = r.containers
			for i, c := range r.containers {
				f.add(c, fakePID+i)
			}
			r.stop(t.Context(), tc.grace)
			if !slices.Equal(f.log, tc.want) {
				t.Errorf("signals %q, want %q", f.log, tc.want)
			}
		})
	}
}

// TestStopSidecarsRetiresThem: once the app containers are done, the sidecars are stopped in reverse order and
// do not restart; a pod already stopping is left to stop.
func TestStopSidecarsRetiresThem(t *testing.T) {
	r := newRuntime(io.Discard, boot.ImageConfig{}, "pod")
	r.cfg = &protocol.PodConfig{RestartPolicy: protocol.RestartNever}
	f := &fakeRuns{byPID: map[int]*container{}}
	r.signal = f.signal
	logs, proxy := testContainer("logs", sidecarKind), testContainer("proxy", sidecarKind)
	f.add(logs, fakePID)
	f.add(proxy, fakePID+1)
	r.stopSidecars([]*container{logs, proxy})
	if want := []string{"TERM proxy", "TERM logs"}; !slices.Equal(f.log, want) {
		t.Errorf("signals %q, want %q", f.log, want)
	}
	if !logs.retired || !proxy.retired {
		t.Error("the sidecars were not retired: they would restart")
	}
}

// TestStartedOnlyAfterPostStart: a container with a postStart hook is not started (so what waits for it does not
// start) until the hook has returned, as a kubelet runs the hook before it counts the container started.
func TestStartedOnlyAfterPostStart(t *testing.T) {
	r := newRuntime(io.Discard, boot.ImageConfig{Containers: []boot.Container{{Name: "proxy"}}}, "pod")
	r.cfg = &protocol.PodConfig{}
	c := r.containers[0]
	c.kind = sidecarKind
	started := r.whenStarted(c)
	inHook := make(chan protocol.ContainerStatus, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		st, _ := r.status()
		inHook <- st.Containers[0]
		select {
		case <-started:
			t.Error("the container counted as started while its postStart hook ran")
		default:
		}
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	c.rc.PostStart = &protocol.Hook{HTTPGet: &protocol.HTTPGetAction{Host: "127.0.0.1", Port: port, Path: "/"}}
	ended := make(chan struct{})
	defer close(ended)
	r.running(c)
	go r.afterStart(c, 0, ended)
	if st := <-inHook; st.Started || st.Ready || st.State.State != protocol.Running {
		t.Errorf("status while the hook runs: %+v, want running, not started, not ready", st)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("not started 10 s after its postStart hook returned")
	}
	if st, _ := r.status(); !st.Containers[0].Started || !st.Containers[0].Ready {
		t.Errorf("status after the hook: %+v, want started and ready", st.Containers[0])
	}
}

// TestFailedPostStartStopsTheContainer: a failed postStart hook stops the container at once (SIGTERM), as a
// kubelet kills it, and it never counts as started.
func TestFailedPostStartStopsTheContainer(t *testing.T) {
	r := newRuntime(io.Discard, boot.ImageConfig{Containers: []boot.Container{{Name: "web"}}}, "pod")
	r.cfg = &protocol.PodConfig{}
	c := r.containers[0]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	c.rc.PostStart = &protocol.Hook{HTTPGet: &protocol.HTTPGetAction{Host: "127.0.0.1", Port: port}}
	f := &fakeRuns{byPID: map[int]*container{}}
	r.signal = f.signal
	f.add(c, fakePID)
	r.running(c)
	r.afterStart(c, fakePID, c.ended) // returns once the run ended
	if want := []string{"TERM web"}; !slices.Equal(f.log, want) {
		t.Errorf("signals %q, want %q", f.log, want)
	}
	if st, _ := r.status(); st.Containers[0].Started || !strings.HasPrefix(st.Containers[0].Killed, "FailedPostStartHook") {
		t.Errorf("status %+v, want not started, killed by FailedPostStartHook", st.Containers[0])
	}
}

// TestRunBegunAfterStopIsKilled: a run that begins once the pod is stopping (a restart, an ephemeral container
// added just before) or once its sidecar is retired was not among the runs stop or stopSidecars signalled: it is
// killed at once rather than left running; one that began before is left to them.
func TestRunBegunAfterStopIsKilled(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(r *runtime, c *container)
		want []string
	}{
		{"running", func(*runtime, *container) {}, nil},
		{"pod stopping", func(r *runtime, _ *container) { r.stop(t.Context(), time.Second) }, []string{"KILL web"}},
		{"sidecar retired", func(r *runtime, c *container) { r.stopSidecars([]*container{c}) }, []string{"KILL web"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRuntime(io.Discard, boot.ImageConfig{Containers: []boot.Container{{Name: "web"}}}, "pod")
			r.cfg = &protocol.PodConfig{RestartPolicy: protocol.RestartAlways}
			c := r.containers[0]
			c.kind = sidecarKind
			f := &fakeRuns{byPID: map[int]*container{fakePID: c}}
			r.signal = f.signal
			tc.stop(r, c) // finds no run: the container is between two
			r.beginRun(c, fakePID, nil, make(chan struct{}), make(chan struct{}), nil, nil)
			f.mu.Lock()
			defer f.mu.Unlock()
			if !slices.Equal(f.log, tc.want) {
				t.Errorf("signals %q, want %q", f.log, tc.want)
			}
		})
	}
}

// TestPreStopRunsOnce: a sidecar being stopped because the app containers are done (its preStop hook run, its
// SIGTERM ignored) and then stopped with the pod does not run its preStop hook again: a kubelet runs it once.
func TestPreStopRunsOnce(t *testing.T) {
	var hooks atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hooks.Add(1) }))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	r := newRuntime(io.Discard, boot.ImageConfig{Containers: []boot.Container{{Name: "proxy"}}}, "pod")
	hour := int64(3600)
	r.cfg = &protocol.PodConfig{RestartPolicy: protocol.RestartNever, TerminationGracePeriodSeconds: &hour}
	c := r.containers[0]
	c.kind = sidecarKind
	c.rc.PreStop = &protocol.Hook{HTTPGet: &protocol.HTTPGetAction{Host: "127.0.0.1", Port: port, Path: "/"}}
	f := &fakeRuns{byPID: map[int]*container{}, ignores: map[string]syscall.Signal{"proxy": syscall.SIGTERM}, sent: make(chan string, 4)}
	r.signal = f.signal
	f.add(c, fakePID)
	retired := make(chan struct{})
	go func() {
		defer close(retired)
		r.stopSidecars([]*container{c})
	}()
	if s := <-f.sent; s != "TERM proxy" { // after its hook
		t.Fatalf("signal %q, want TERM proxy", s)
	}
	r.stop(t.Context(), 10*time.Millisecond)
	<-retired
	if n := hooks.Load(); n != 1 {
		t.Errorf("the preStop hook ran %d times, want once", n)
	}
}
