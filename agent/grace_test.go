package agent

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
)

func TestStopDeadlineOnlyMovesEarlier(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name  string
		moves []time.Duration // from now, in order
		want  time.Duration
	}{
		{"first sets", []time.Duration{time.Minute}, time.Minute},
		{"earlier moves", []time.Duration{time.Minute, time.Second}, time.Second},
		{"later stays", []time.Duration{time.Second, time.Minute}, time.Second},
		{"equal stays", []time.Duration{time.Second, time.Second}, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d stopDeadline
			for _, m := range tc.moves {
				d.shorten(now.Add(m))
			}
			if at, _ := d.when(); !at.Equal(now.Add(tc.want)) {
				t.Errorf("deadline %s from now, want %s", at.Sub(now), tc.want)
			}
		})
	}
}

// stopWithSleepHook stops a pod within grace: its container web has a preStop sleep hook of 60 s, and its container
// side an httpGet preStop hook that tells when the hooks run (all a pod's hooks run at once) and hangs. It calls
// meanwhile once the hooks run, and returns the signals web got and how long the stop took.
func stopWithSleepHook(t *testing.T, grace time.Duration, meanwhile func(r *runtime)) ([]string, time.Duration) {
	t.Helper()
	inHook := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, req *http.Request) {
		inHook <- struct{}{}
		<-req.Context().Done() // cut with the hooks
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	r := newRuntime(io.Discard, boot.ImageConfig{}, "pod")
	f := &fakeRuns{byPID: map[int]*container{}}
	r.signal = f.signal
	web, side := testContainer("web", appKind), testContainer("side", appKind)
	web.rc.PreStop = &protocol.Hook{SleepSeconds: 60}
	side.rc.PreStop = &protocol.Hook{HTTPGet: &protocol.HTTPGetAction{Host: "127.0.0.1", Port: port, Path: "/"}}
	r.containers = []*container{web, side}
	r.order = r.containers
	f.add(web, fakePID)
	f.add(side, fakePID+1)
	t0 := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.stop(t.Context(), grace)
	}()
	select {
	case <-inHook:
	case <-time.After(10 * time.Second):
		t.Fatal("the preStop hooks did not run")
	}
	meanwhile(r)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("the stop still runs 20 s after it began (grace %s)", grace)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(f.log), func(s string) bool { return strings.HasSuffix(s, " side") }), time.Since(t0)
}

// TestShortenedStopCutsSleepHook: a stop given 60 s, shortened to 1 s while the container's 60 s preStop sleep hook
// runs (a second delete with a shorter grace period), cuts the hook and stops the container by the new deadline,
// as a kubelet's pod worker does.
func TestShortenedStopCutsSleepHook(t *testing.T) {
	log, took := stopWithSleepHook(t, time.Minute, func(r *runtime) { r.shortenStop(time.Second) })
	if len(log) == 0 || log[0] != "TERM web" {
		t.Errorf("signals %q, want the container stopped", log)
	}
	if took > 10*time.Second {
		t.Errorf("the stop took %s, want about 1 s (the shortened grace period)", took)
	}
}

// TestLongerGraceDoesNotExtendStop: a later power-off request with a longer grace period never delays the stop.
func TestLongerGraceDoesNotExtendStop(t *testing.T) {
	_, took := stopWithSleepHook(t, time.Second, func(r *runtime) { r.shortenStop(time.Minute) })
	if took > 10*time.Second {
		t.Errorf("the stop took %s, want about 1 s (the first grace period)", took)
	}
}

// TestRepeatedPowerOffShortensTheStop: the power-off route moves the stop's deadline on every request, the first
// handing the request on, a later one (the pod's grace period shortened) only moving it earlier.
func TestRepeatedPowerOffShortensTheStop(t *testing.T) {
	rt := newRuntime(io.Discard, boot.ImageConfig{}, "pod")
	poweroff := make(chan time.Duration, 1)
	s := &server{rt: rt, poweroff: poweroff}
	for _, grace := range []string{"60s", "2s", "30s"} {
		w := httptest.NewRecorder()
		s.powerOff(w, httptest.NewRequest(http.MethodPost, "/v1/poweroff?grace="+grace, nil))
		if w.Code != http.StatusAccepted {
			t.Fatalf("grace %s: answered %d", grace, w.Code)
		}
	}
	if g := <-poweroff; g != time.Minute {
		t.Errorf("the power-off handed on grace %s, want the first request's 1m0s", g)
	}
	if at, _ := rt.stopBy.when(); at.IsZero() || time.Until(at) > 2*time.Second {
		t.Errorf("the stop's deadline is %s away, want at most the shortest grace (2 s)", time.Until(at))
	}
}

// TestPowerOffRoundTripShortensTheStop: the host's repeated PowerOff, over a real session, reaches the agent's
// route and moves the stop's deadline to the shorter grace.
func TestPowerOffRoundTripShortensTheStop(t *testing.T) {
	rt := newRuntime(io.Discard, boot.ImageConfig{}, "pod")
	poweroff := make(chan time.Duration, 1)
	h := (&server{rt: rt, poweroff: poweroff}).handler()
	host, guest := net.Pipe()
	go func() {
		sess, err := protocol.Accept(guest)
		if err != nil {
			return
		}
		http.Serve(sess, h) //nolint:errcheck
	}()
	c, err := protocol.NewClient(host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, grace := range []time.Duration{time.Minute, time.Second} {
		if err := c.PowerOff(t.Context(), grace); err != nil {
			t.Fatalf("PowerOff(%s): %v", grace, err)
		}
	}
	if at, _ := rt.stopBy.when(); at.IsZero() || time.Until(at) > time.Second {
		t.Errorf("the stop's deadline is %s away (set: %v), want at most 1 s (the second request's grace)", time.Until(at), !at.IsZero())
	}
}
