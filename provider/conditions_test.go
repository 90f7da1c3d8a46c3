package provider

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/agent/protocol"
)

func TestReadyCondition(t *testing.T) {
	gates := []corev1.PodReadinessGate{{ConditionType: "example.com/a"}, {ConditionType: "example.com/b"}}
	containersReady := corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionTrue}
	notReady := corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady",
		Message: "containers with unready status: [web]"}
	cond := func(t corev1.PodConditionType, s corev1.ConditionStatus) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: s}
	}
	for _, tc := range []struct {
		name            string
		gates           []corev1.PodReadinessGate
		containersReady corev1.PodCondition
		conds           []corev1.PodCondition
		want            corev1.PodCondition
	}{
		{"no gates, ready", nil, containersReady, nil, cond(corev1.PodReady, corev1.ConditionTrue)},
		{"containers not ready: as ContainersReady", gates, notReady,
			[]corev1.PodCondition{cond("example.com/a", corev1.ConditionTrue), cond("example.com/b", corev1.ConditionTrue)},
			corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady",
				Message: "containers with unready status: [web]"}},
		{"gates missing", gates, containersReady, nil, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse,
			Reason: ReasonReadinessGatesNotReady, Message: `corresponding condition of pod readiness gate "example.com/a" does not exist., ` +
				`corresponding condition of pod readiness gate "example.com/b" does not exist.`}},
		{"one gate False", gates, containersReady,
			[]corev1.PodCondition{cond("example.com/a", corev1.ConditionTrue), cond("example.com/b", corev1.ConditionFalse)},
			corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: ReasonReadinessGatesNotReady,
				Message: `the status of pod readiness gate "example.com/b" is not "True", but False`}},
		{"every gate True", gates, containersReady,
			[]corev1.PodCondition{cond("example.com/b", corev1.ConditionTrue), cond("example.com/a", corev1.ConditionTrue)},
			cond(corev1.PodReady, corev1.ConditionTrue)},
	} {
		if got := readyCondition(tc.gates, tc.containersReady, tc.conds); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// readyOf is a pod's Ready condition, or the zero condition.
func readyOf(pod *corev1.Pod) corev1.PodCondition {
	if c := findCondition(pod.Status.Conditions, corev1.PodReady); c != nil {
		return *c
	}
	return corev1.PodCondition{}
}

// TestReadinessGateSetOnARunningPod: a readiness gate's condition set (then unset) on a running pod by another
// controller makes it Ready (then not Ready) at once, and the agent's next report, which the session computes
// from its copy of the pod made when it connected, neither drops the condition nor reverts Ready.
func TestReadinessGateSetOnARunningPod(t *testing.T) {
	p, _, n := newVMProvider(t, fakeImages{})
	t.Cleanup(p.Stop)
	ctx := context.Background()
	pod := plainPod("g")
	pod.Spec.Containers = pod.Spec.Containers[:1]
	pod.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "example.com/lb"}}
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	running := waitPhase(t, p, "g", corev1.PodRunning)
	waitFor(t, "the container ready", func() bool {
		cur, _ := p.GetPod(ctx, "default", "g")
		return cur.Status.ContainerStatuses[0].Ready
	})
	if r := readyOf(running); r.Status != corev1.ConditionFalse || r.Reason != ReasonReadinessGatesNotReady {
		t.Fatalf("Ready %+v before the gate's condition is set", r)
	}
	stale, _ := p.GetPod(ctx, "default", "g") // the session's copy: no gate's condition
	// The session's copy is older still: made before the containers turned ready.
	stale.Status.Conditions = []corev1.PodCondition{{Type: corev1.ContainersReady, Status: corev1.ConditionFalse}}
	since := findCondition(running.Status.Conditions, corev1.ContainersReady).LastTransitionTime

	api := stale.DeepCopy() // the API's pod: the gate's condition set by a controller
	api.Status.Conditions = append(api.Status.Conditions, corev1.PodCondition{Type: "example.com/lb", Status: corev1.ConditionTrue})
	p.PodConditionsChanged(api)
	if r := readyOf(n.last()); r.Status != corev1.ConditionTrue {
		t.Fatalf("notified Ready %+v after the gate's condition turned True", r)
	}

	v := p.vmFor("uid-g")
	report := protocol.PodStatus{Seq: 2, Configured: true, Containers: []protocol.ContainerStatus{{Name: "web", Ready: true, Started: true,
		State: protocol.ContainerState{State: protocol.Running, StartedAt: time.Now()}}}}
	p.agentChanged(stale, v, report)
	got, _ := p.GetPod(ctx, "default", "g")
	if r := readyOf(got); r.Status != corev1.ConditionTrue {
		t.Errorf("Ready %+v after the agent's next report", r)
	}
	if c := findCondition(got.Status.Conditions, "example.com/lb"); c == nil || c.Status != corev1.ConditionTrue {
		t.Errorf("the gate's condition was dropped: %+v", got.Status.Conditions)
	}
	if c := findCondition(got.Status.Conditions, corev1.ContainersReady); !c.LastTransitionTime.Equal(&since) {
		t.Errorf("ContainersReady moved from %v to %v without a transition", since, c.LastTransitionTime)
	}

	api.Status.Conditions[len(api.Status.Conditions)-1].Status = corev1.ConditionFalse
	p.PodConditionsChanged(api)
	if r := readyOf(n.last()); r.Status != corev1.ConditionFalse || r.Reason != ReasonReadinessGatesNotReady {
		t.Errorf("notified Ready %+v after the gate's condition turned False", r)
	}
}

// TestUpdatePodKeepsOthersConditions: an update of the pod (a relabel) takes the conditions others own from the
// API's pod and leaves the node's own as the node computed them.
func TestUpdatePodKeepsOthersConditions(t *testing.T) {
	p, _, _ := newVMProvider(t, fakeImages{})
	t.Cleanup(p.Stop)
	ctx := context.Background()
	pod := plainPod("u")
	pod.Spec.Containers = pod.Spec.Containers[:1]
	pod.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "example.com/lb"}}
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "u", corev1.PodRunning)
	waitFor(t, "the container ready", func() bool {
		cur, _ := p.GetPod(ctx, "default", "u")
		return cur.Status.ContainerStatuses[0].Ready
	})
	api := pod.DeepCopy()
	api.Labels = map[string]string{"version": "v2"}
	api.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse},
		{Type: "example.com/lb", Status: corev1.ConditionTrue}}
	if err := p.UpdatePod(ctx, api); err != nil {
		t.Fatal(err)
	}
	got, _ := p.GetPod(ctx, "default", "u")
	if got.Labels["version"] != "v2" || got.Status.Phase != corev1.PodRunning || readyOf(got).Status != corev1.ConditionTrue {
		t.Errorf("after the update: labels %v, status %+v", got.Labels, got.Status)
	}
}

// TestStoreKeepsOthersConditions: a status computed in the background from an older copy of the pod keeps the
// conditions others set meanwhile, and its Ready condition follows them.
func TestStoreKeepsOthersConditions(t *testing.T) {
	p, _, n := newTestProvider()
	t.Cleanup(p.Stop)
	pod := plainPod("s")
	pod.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "example.com/lb"}}
	ready := corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{
		{Type: corev1.ContainersReady, Status: corev1.ConditionTrue},
		{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: ReasonReadinessGatesNotReady}}}
	computed := pod.DeepCopy()
	computed.Status = ready
	cur := computed.DeepCopy()
	cur.Status.Conditions = append(cur.Status.Conditions, corev1.PodCondition{Type: "example.com/lb", Status: corev1.ConditionTrue})
	p.store(cur)
	if !p.storeIfCurrent(pod, computed) {
		t.Fatal("the pod is current")
	}
	got := n.last()
	if c := findCondition(got.Status.Conditions, "example.com/lb"); c == nil {
		t.Errorf("the gate's condition was dropped: %+v", got.Status.Conditions)
	}
	if r := readyOf(got); r.Status != corev1.ConditionTrue {
		t.Errorf("Ready %+v with its gate True", r)
	}
}
