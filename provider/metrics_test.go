package provider

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/record"

	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
)

// fakeMetrics records what the provider tells its Metrics.
type fakeMetrics struct {
	mu sync.Mutex
	r  recorded
}

// recorded is what a fakeMetrics was told.
type recorded struct {
	launched, launchFailed int
	ready                  []time.Duration
	published              []error
	sessionFailures        map[string]int
}

func (f *fakeMetrics) VMLaunched(time.Duration) { f.mu.Lock(); f.r.launched++; f.mu.Unlock() }
func (f *fakeMetrics) VMLaunchFailed()          { f.mu.Lock(); f.r.launchFailed++; f.mu.Unlock() }
func (f *fakeMetrics) PodReady(d time.Duration) {
	f.mu.Lock()
	f.r.ready = append(f.r.ready, d)
	f.mu.Unlock()
}
func (f *fakeMetrics) ImagePublished(_ time.Duration, err error) {
	f.mu.Lock()
	f.r.published = append(f.r.published, err)
	f.mu.Unlock()
}
func (f *fakeMetrics) AgentSessionFailed(stage string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.r.sessionFailures == nil {
		f.r.sessionFailures = map[string]int{}
	}
	f.r.sessionFailures[stage]++
}

// snapshot returns a copy of what was recorded.
func (f *fakeMetrics) snapshot() recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := recorded{launched: f.r.launched, launchFailed: f.r.launchFailed, ready: append([]time.Duration(nil), f.r.ready...),
		published: append([]error(nil), f.r.published...), sessionFailures: map[string]int{}}
	for k, v := range f.r.sessionFailures {
		out.sessionFailures[k] = v
	}
	return out
}

func newMetricsProvider(t *testing.T, wrap func(*fakeBackend) vm.Backend) (*Provider, *fakeBackend, *fakeMetrics) {
	t.Helper()
	m := &fakeMetrics{}
	p := New(Config{NodeName: "i2kit", InternalIP: "198.18.0.10", Events: record.NewFakeRecorder(100), Metrics: m})
	t.Cleanup(p.Stop)
	b := &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}
	var backend vm.Backend = b
	if wrap != nil {
		backend = wrap(b)
	}
	p.UseBackend(backend, fakeImages{})
	return p, b, m
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 5*time.Second, true,
		func(context.Context) (bool, error) { return cond(), nil })
	if err != nil {
		t.Fatalf("waiting for %s", what)
	}
}

// TestMetricsOfALaunchedPod: a pod this process launches is timed from Launch to its agent's answer and from its
// creation to Ready, once each; it counts in its phase and its session is open; deleting it is no session failure.
func TestMetricsOfALaunchedPod(t *testing.T) {
	p, _, m := newMetricsProvider(t, nil)
	pod := plainPod("a")
	pod.CreationTimestamp = metav1.NewTime(time.Now().Add(-3 * time.Second))
	if err := p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "a", corev1.PodRunning)
	waitFor(t, "the pod Ready and its session open", func() bool {
		s := m.snapshot()
		return s.launched == 1 && len(s.ready) == 1 && p.AgentSessions() == 1
	})
	s := m.snapshot()
	if s.ready[0] < 3*time.Second {
		t.Errorf("creation to Ready %s, want at least the pod's 3 s of age", s.ready[0])
	}
	if got := p.PodPhases(); len(got) != 1 || got["Running"] != 1 {
		t.Errorf("PodPhases %v, want Running: 1", got)
	}
	if err := p.DeletePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	s = m.snapshot()
	if p.AgentSessions() != 0 || len(p.PodPhases()) != 0 {
		t.Errorf("after delete: %d sessions, phases %v", p.AgentSessions(), p.PodPhases())
	}
	if s.launched != 1 || len(s.ready) != 1 || s.launchFailed != 0 || len(s.sessionFailures) != 0 {
		t.Errorf("recorded %+v; want one launch, one Ready, no failure", s)
	}
}

// TestMetricsLeaveAdoptedVMsUntimed: a VM running before the node started was launched by another process: its
// launch and readiness are not this process's to time.
func TestMetricsLeaveAdoptedVMsUntimed(t *testing.T) {
	p, b, m := newMetricsProvider(t, nil)
	b.set(vm.Status{UID: "uid-a", IP: "10.0.0.9", State: vm.Running, Started: time.Now()})
	pod := plainPod("a")
	pod.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Hour))
	if err := p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "a", corev1.PodRunning)
	waitFor(t, "the session open", func() bool { return p.AgentSessions() == 1 })
	if s := m.snapshot(); s.launched != 0 || len(s.ready) != 0 {
		t.Errorf("an adopted VM was timed: %+v", s)
	}
}

// refusingBackend refuses every launch.
type refusingBackend struct{ *fakeBackend }

func (refusingBackend) Launch(context.Context, vm.Plan) (vm.Status, error) {
	return vm.Status{}, errors.New("no capacity")
}

func TestMetricsCountALaunchThatFails(t *testing.T) {
	p, _, m := newMetricsProvider(t, func(b *fakeBackend) vm.Backend { return refusingBackend{b} })
	if err := p.CreatePod(context.Background(), plainPod("a")); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "a", corev1.PodFailed)
	if s := m.snapshot(); s.launchFailed != 1 || s.launched != 0 {
		t.Errorf("recorded %+v; want one failed launch", s)
	}
}

// publishingBackend publishes images (as the aws backend does), failing while fail is set.
type publishingBackend struct {
	*fakeBackend
	fail bool
}

func (b publishingBackend) Publish(context.Context, *vmimage.Image) (string, error) {
	if b.fail {
		return "", errors.New("snapshot quota")
	}
	return "ami-1", nil
}

func TestMetricsTimePublications(t *testing.T) {
	for _, fail := range []bool{false, true} {
		p, _, m := newMetricsProvider(t, func(b *fakeBackend) vm.Backend { return publishingBackend{b, fail} })
		if err := p.CreatePod(context.Background(), plainPod("a")); err != nil {
			t.Fatal(err)
		}
		want := corev1.PodRunning
		if fail {
			want = corev1.PodFailed
		}
		waitPhase(t, p, "a", want)
		s := m.snapshot()
		if len(s.published) != 1 || (s.published[0] != nil) != fail || (s.launchFailed == 1) != fail {
			t.Errorf("publication failing %v: recorded %+v", fail, s)
		}
	}
}

// cuttableBackend hands out agent connections the test may cut.
type cuttableBackend struct {
	*fakeBackend
	conns chan net.Conn
}

func (b cuttableBackend) DialAgent(ctx context.Context, uid string) (net.Conn, error) {
	c, err := b.fakeBackend.DialAgent(ctx, uid)
	if err == nil {
		b.conns <- c
	}
	return c, err
}

// TestMetricsCountALostSession: a session that breaks while its pod runs is a failure (lost); the session is
// reopened and counts as open again.
func TestMetricsCountALostSession(t *testing.T) {
	conns := make(chan net.Conn, 10)
	p, _, m := newMetricsProvider(t, func(b *fakeBackend) vm.Backend { return cuttableBackend{b, conns} })
	if err := p.CreatePod(context.Background(), plainPod("a")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session open", func() bool { return p.AgentSessions() == 1 })
	(<-conns).Close()
	waitFor(t, "the lost session counted", func() bool { return m.snapshot().sessionFailures[StageLost] == 1 })
	waitFor(t, "the session reopened", func() bool { return p.AgentSessions() == 1 && len(conns) == 1 })
	if s := m.snapshot(); s.launched != 1 {
		t.Errorf("a reconnection timed the launch again: %+v", s)
	}
}

// TestMetricsDeletionIsNoLostSession: a session that breaks because the pod is being deleted (its agent powers
// the VM off before the node ends the session) is no failure.
func TestMetricsDeletionIsNoLostSession(t *testing.T) {
	conns := make(chan net.Conn, 10)
	p, _, m := newMetricsProvider(t, func(b *fakeBackend) vm.Backend { return cuttableBackend{b, conns} })
	if err := p.CreatePod(context.Background(), plainPod("a")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session open", func() bool { return p.AgentSessions() == 1 })
	v := p.vmFor("uid-a")
	v.mu.Lock()
	v.deleting = true // as stopVM sets it before asking the agent to power off
	v.mu.Unlock()
	(<-conns).Close()
	waitFor(t, "the session reopened", func() bool { return len(conns) == 1 })
	if s := m.snapshot(); len(s.sessionFailures) != 0 {
		t.Errorf("a deletion counted as session failures %v", s.sessionFailures)
	}
}
