package provider

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

// events drains what a FakeRecorder holds.
func events(rec *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// podReadyCondition returns a pod's Ready condition status.
func podReadyCondition(pod *corev1.Pod) corev1.ConditionStatus {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status
		}
	}
	return ""
}

// agentRunning is an agent's status of pod "a" (testPod) with its containers running since started; web is ready
// as given.
func agentRunning(started time.Time, webReady bool) protocol.PodStatus {
	run := protocol.ContainerState{State: protocol.Running, StartedAt: started}
	return protocol.PodStatus{Configured: true, Containers: []protocol.ContainerStatus{
		{Name: "init", State: protocol.ContainerState{State: protocol.Terminated, Reason: "Completed", StartedAt: started, FinishedAt: started}},
		{Name: "web", State: run, Ready: webReady, Started: true},
		{Name: "sidecar", State: run, Ready: true, Started: true},
	}}
}

// runningPodVM is a test provider with pod "a" stored and its VM running, as agentChanged finds them.
func runningPodVM() (*Provider, *record.FakeRecorder, *notifications, *corev1.Pod, *podVM) {
	p, rec, n := newTestProvider()
	pod := testPod("a")
	p.store(pod.DeepCopy())
	v := p.vmOf(pod)
	v.mu.Lock()
	v.vm = vm.Status{UID: string(pod.UID), State: vm.Running, IP: "10.0.0.2"}
	v.mu.Unlock()
	return p, rec, n, pod, v
}

// TestAgentChangedWhileDeleting: while a pod is being deleted and its VM runs, the agent's statuses still reach the
// pod (its readiness probe fails as it terminates: the pod is no longer Ready), with the probes' Events, and
// without the Events of a container's start, end or kill, which belong to the delete.
func TestAgentChangedWhileDeleting(t *testing.T) {
	p, rec, n, pod, v := runningPodVM()
	started := time.Now().Add(-time.Minute)
	p.agentChanged(pod, v, agentRunning(started, true))
	if got := podReadyCondition(n.last()); got != corev1.ConditionTrue {
		t.Fatalf("before the delete: Ready %s, want True", got)
	}
	events(rec)

	now := metav1.Now()
	pod.DeletionTimestamp = &now
	v.mu.Lock()
	v.deleting = true
	v.mu.Unlock()
	st := agentRunning(started.Add(time.Second), false) // a restart the delete caught: no Started Event
	st.Containers[1].ProbeFailures, st.Containers[1].LastProbeFailure = 1, "Readiness probe failed: cat: /tmp/ready: No such file"
	st.Containers[1].Killed = "Container web failed liveness probe, will be restarted"
	p.agentChanged(pod, v, st)
	if got := podReadyCondition(n.last()); got != corev1.ConditionFalse {
		t.Errorf("while deleting, after the readiness probe failed: Ready %s, want False", got)
	}
	evs := events(rec)
	if len(evs) != 1 || !strings.HasPrefix(evs[0], "Warning Unhealthy Readiness probe failed") {
		t.Errorf("events while deleting %q, want the Unhealthy one only", evs)
	}

	// A VM no longer running (powering off) reports nothing more.
	v.mu.Lock()
	v.vm.State = vm.Stopping
	v.mu.Unlock()
	before := len(n.pods)
	p.agentChanged(pod, v, agentRunning(started, true))
	if len(n.pods) != before {
		t.Error("a status of a VM that is stopping reached the pod")
	}
}

// TestAgentChangedProbeWarning: a probe warning the agent counted becomes a kubelet's ProbeWarning Event, once per
// new count.
func TestAgentChangedProbeWarning(t *testing.T) {
	p, rec, _, pod, v := runningPodVM()
	started := time.Now().Add(-time.Minute)
	p.agentChanged(pod, v, agentRunning(started, true))
	events(rec)
	const msg = `Liveness probe warning: Probe terminated redirects, Response body: <a href="http://0.0.0.0/">Found</a>.`
	for i, count := range []int{1, 1, 3} {
		st := agentRunning(started, true)
		st.Containers[1].ProbeWarnings, st.Containers[1].LastProbeWarning = count, msg
		p.agentChanged(pod, v, st)
		evs := events(rec)
		want := 1
		if i == 1 {
			want = 0 // the same count: no new warning
		}
		if len(evs) != want || want == 1 && evs[0] != "Warning ProbeWarning "+msg {
			t.Errorf("count %d: events %q, want %d ProbeWarning", count, evs, want)
		}
	}
}

// TestGuestTextIsBounded: what a hostile guest says in a probe's output reaches the Event cut to maxGuestText.
func TestGuestTextIsBounded(t *testing.T) {
	p, rec, _, pod, v := runningPodVM()
	started := time.Now().Add(-time.Minute)
	p.agentChanged(pod, v, agentRunning(started, true))
	events(rec)
	st := agentRunning(started, true)
	st.Containers[1].ProbeFailures, st.Containers[1].LastProbeFailure = 1, strings.Repeat("é", 1<<20)
	p.agentChanged(pod, v, st)
	evs := events(rec)
	if len(evs) != 1 || len(evs[0]) > maxGuestText+len("Warning Unhealthy ") || !utf8.ValidString(evs[0]) {
		t.Errorf("an Unhealthy Event of %d bytes (valid UTF-8 %v), want at most %d of message", len(evs[0]), utf8.ValidString(evs[0]), maxGuestText)
	}
}
