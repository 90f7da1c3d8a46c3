package provider

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/agent/protocol"
)

// TestEphemeralStatuses: an ephemeral container's status as a kubelet reports it, from what the node and the
// agent know of it.
func TestEphemeralStatuses(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{EphemeralContainers: []corev1.EphemeralContainer{
		{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: "busybox"}, TargetContainerName: "web"}}}}
	pod.UID = "u1"
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	running := protocol.ContainerStatus{Name: "debugger", Ephemeral: true, Ready: true,
		State: protocol.ContainerState{State: protocol.Running, StartedAt: t0}}
	exited := protocol.ContainerStatus{Name: "debugger", Ephemeral: true,
		State: protocol.ContainerState{State: protocol.Terminated, ExitCode: 0, Reason: "Completed", StartedAt: t0, FinishedAt: t0.Add(time.Second)}}
	for _, tc := range []struct {
		name                  string
		view                  ephemeralView
		waiting, term, reason string
		running               bool
		id                    bool
	}{
		{name: "not seen yet", view: ephemeralView{}, waiting: "ContainerCreating"},
		{name: "its image is fetched", view: ephemeralView{runs: map[string]ephemeralRun{"debugger": {busy: true,
			state: protocol.ContainerState{State: protocol.Waiting, Reason: "ContainerCreating"}}}}, waiting: "ContainerCreating"},
		{name: "its pull failed", view: ephemeralView{runs: map[string]ephemeralRun{"debugger": {
			state: protocol.ContainerState{State: protocol.Waiting, Reason: "ErrImagePull", Message: "x"}}}}, waiting: "ErrImagePull"},
		{name: "an older agent", view: ephemeralView{runs: map[string]ephemeralRun{"debugger": {final: true,
			state: ephemeralTerminated(ephemeralUnsupported("debugger", olderAgent))}}}, term: ReasonUnsupported},
		{name: "a node without a backend", view: ephemeralView{unsupported: noEphemeral}, term: ReasonUnsupported},
		{name: "sent, not yet reported", view: ephemeralView{runs: map[string]ephemeralRun{"debugger": {sent: true,
			state: protocol.ContainerState{State: protocol.Waiting, Reason: "ContainerCreating"}}}}, waiting: "ContainerCreating"},
		{name: "running", view: ephemeralView{runs: map[string]ephemeralRun{"debugger": {sent: true, imageID: "busybox@sha256:1"}},
			agent: map[string]protocol.ContainerStatus{"debugger": running}}, running: true, id: true},
		{name: "ended", view: ephemeralView{runs: map[string]ephemeralRun{"debugger": {sent: true}},
			agent: map[string]protocol.ContainerStatus{"debugger": exited}}, term: "Completed", id: true},
		{name: "a status of the agent not sent by this node is not taken", view: ephemeralView{
			agent: map[string]protocol.ContainerStatus{"debugger": running}}, waiting: "ContainerCreating"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ephemeralStatuses(pod, tc.view)
			if len(got) != 1 || got[0].Name != "debugger" || got[0].Image != "busybox" {
				t.Fatalf("statuses %+v", got)
			}
			s := got[0]
			if s.Ready {
				t.Error("an ephemeral container is never ready")
			}
			switch {
			case tc.waiting != "":
				if s.State.Waiting == nil || s.State.Waiting.Reason != tc.waiting {
					t.Errorf("state %+v, want waiting %s", s.State, tc.waiting)
				}
			case tc.running:
				if s.State.Running == nil || !s.State.Running.StartedAt.Time.Equal(t0) || s.Started == nil || !*s.Started {
					t.Errorf("state %+v, want running since %s", s.State, t0)
				}
			default:
				if s.State.Terminated == nil || s.State.Terminated.Reason != tc.term {
					t.Errorf("state %+v, want terminated %s", s.State, tc.term)
				}
			}
			if (s.ContainerID != "") != tc.id {
				t.Errorf("containerID %q", s.ContainerID)
			}
		})
	}
}
