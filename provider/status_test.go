package provider

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

func TestPodStatusFromAgent(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	running := protocol.ContainerState{State: protocol.Running, StartedAt: t0}
	exited := func(code int) protocol.ContainerState {
		reason := "Completed"
		if code != 0 {
			reason = "Error"
		}
		return protocol.ContainerState{State: protocol.Terminated, ExitCode: code, Reason: reason, StartedAt: t0, FinishedAt: t0.Add(time.Second)}
	}
	backoff := protocol.ContainerState{State: protocol.Waiting, Reason: "CrashLoopBackOff"}
	for _, tc := range []struct {
		name      string
		policy    corev1.RestartPolicy
		init      []protocol.ContainerState // one init container when set
		app       protocol.ContainerState
		last      *protocol.ContainerState
		restarts  int
		phase     corev1.PodPhase
		ready     bool
		initDone  bool
		wantState string
	}{
		{"running", corev1.RestartPolicyAlways, nil, running, nil, 0, corev1.PodRunning, true, true, "running"},
		{"creating", corev1.RestartPolicyAlways, nil, protocol.ContainerState{State: protocol.Waiting, Reason: "ContainerCreating"}, nil, 0, corev1.PodPending, false, true, "waiting"},
		{"crash loop", corev1.RestartPolicyAlways, nil, backoff, new(exited(3)), 2, corev1.PodRunning, false, true, "waiting"},
		{"never, failed", corev1.RestartPolicyNever, nil, exited(3), nil, 0, corev1.PodFailed, false, true, "terminated"},
		{"never, succeeded", corev1.RestartPolicyNever, nil, exited(0), nil, 0, corev1.PodSucceeded, false, true, "terminated"},
		{"onfailure, succeeded", corev1.RestartPolicyOnFailure, nil, exited(0), nil, 0, corev1.PodSucceeded, false, true, "terminated"},
		{"onfailure, restarting", corev1.RestartPolicyOnFailure, nil, exited(1), nil, 0, corev1.PodRunning, false, true, "terminated"},
		{"always, exited 0 restarts", corev1.RestartPolicyAlways, nil, exited(0), nil, 0, corev1.PodRunning, false, true, "terminated"},
		{"init running", corev1.RestartPolicyAlways, []protocol.ContainerState{running}, protocol.ContainerState{State: protocol.Waiting, Reason: "PodInitializing"}, nil, 0, corev1.PodPending, false, false, "waiting"},
		{"init failed, never", corev1.RestartPolicyNever, []protocol.ContainerState{exited(1)}, protocol.ContainerState{State: protocol.Waiting, Reason: "PodInitializing"}, nil, 0, corev1.PodFailed, false, false, "waiting"},
		{"init done", corev1.RestartPolicyAlways, []protocol.ContainerState{exited(0)}, running, nil, 0, corev1.PodRunning, true, true, "running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := plainPod("p")
			pod.Spec.RestartPolicy = tc.policy
			pod.Spec.Containers = pod.Spec.Containers[:1]
			running := tc.app.State == protocol.Running // no probes: ready and started once running
			st := protocol.PodStatus{Configured: true, Containers: []protocol.ContainerStatus{{Name: "web", State: tc.app, LastState: tc.last,
				RestartCount: tc.restarts, Ready: running, Started: running}}}
			if tc.init != nil {
				pod.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: "x"}}
				st.Containers = append(st.Containers, protocol.ContainerStatus{Name: "setup", State: tc.init[0]})
			}
			got := podStatus(pod, "198.18.0.10", vm.Status{IP: "10.0.0.2", Started: t0, State: vm.Running}, st,
				map[string]string{"web": "reg/web@sha256:abc"})
			s := got.Status
			if s.Phase != tc.phase {
				t.Errorf("phase %s, want %s", s.Phase, tc.phase)
			}
			cond := map[corev1.PodConditionType]corev1.ConditionStatus{}
			for _, c := range s.Conditions {
				cond[c.Type] = c.Status
			}
			if (cond[corev1.PodReady] == corev1.ConditionTrue) != tc.ready || (cond[corev1.ContainersReady] == corev1.ConditionTrue) != tc.ready {
				t.Errorf("conditions %v, want ready %v", cond, tc.ready)
			}
			if (cond[corev1.PodInitialized] == corev1.ConditionTrue) != tc.initDone || cond[corev1.PodScheduled] != corev1.ConditionTrue {
				t.Errorf("conditions %v, want initialized %v", cond, tc.initDone)
			}
			cs := s.ContainerStatuses[0]
			state := map[bool]string{cs.State.Running != nil: "running", cs.State.Terminated != nil: "terminated", cs.State.Waiting != nil: "waiting"}[true]
			if state != tc.wantState || cs.RestartCount != int32(tc.restarts) || cs.ImageID != "reg/web@sha256:abc" || cs.Ready != tc.ready {
				t.Errorf("container status %+v", cs)
			}
			if tc.last != nil && (cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != int32(tc.last.ExitCode)) {
				t.Errorf("last state %+v", cs.LastTerminationState)
			}
			if s.PodIP != "10.0.0.2" || s.HostIP != "198.18.0.10" || s.StartTime == nil || !s.StartTime.Equal(&metav1.Time{Time: t0}) {
				t.Errorf("addresses/start %s %s %v", s.PodIP, s.HostIP, s.StartTime)
			}
		})
	}
}
