package provider

import (
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

// initReport is what the agent reports of one init container, and whether the pod's spec makes it a sidecar
// (restartPolicy Always).
type initReport struct {
	state    protocol.ContainerState
	last     *protocol.ContainerState
	restarts int
	sidecar  bool
	started  bool
	ready    bool
}

// describe says a container status in a table's words: its state, the waiting reason, and "ready" if Ready.
func describe(cs corev1.ContainerStatus) string {
	s := map[bool]string{cs.State.Running != nil: "running", cs.State.Terminated != nil: "terminated", cs.State.Waiting != nil: "waiting"}[true]
	if w := cs.State.Waiting; w != nil {
		s += " " + w.Reason
	}
	if cs.Ready {
		s += " ready"
	}
	return s
}

// condition says a pod condition as "Status Reason Message", leaving out what is empty.
func condition(s corev1.PodStatus, t corev1.PodConditionType) string {
	for _, c := range s.Conditions {
		if c.Type == t {
			return strings.TrimSpace(strings.Join(strings.Fields(fmt.Sprintf("%s %s", c.Status, c.Reason)), " ") + " " + c.Message)
		}
	}
	return "missing"
}

// TestPodStatusFromAgent checks the pod status computed from the agent's report against what a kubelet reports
// (pkg/kubelet kubelet_pods.go getPhase and convertToAPIContainerStatuses, prober UpdatePodStatus, status/generate.go):
// the phase, the Initialized and ContainersReady conditions with their reasons and messages, and each container's
// state and Ready — app containers wait with PodInitializing until the init containers are done, a completed init
// container is Ready, a sidecar (an init container with restartPolicy Always) counts once started.
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
	creating := protocol.ContainerState{State: protocol.Waiting, Reason: "ContainerCreating"}
	// What the agent reports of a container it cannot create (set when the pod is configured, before it starts any).
	badConfig := protocol.ContainerState{State: protocol.Waiting, Reason: "CreateContainerConfigError", Message: "container has runAsNonRoot and image will run as root"}
	afterFailedInit := protocol.ContainerState{State: protocol.Waiting, Reason: "PodInitializing", Message: "init container init2 failed"}
	regular := func(s protocol.ContainerState) initReport { // the agent's report without probes: ready once running
		r := s.State == protocol.Running
		return initReport{state: s, started: r, ready: r}
	}
	sidecar := func(s protocol.ContainerState, started, ready bool) initReport {
		return initReport{state: s, sidecar: true, started: started, ready: ready}
	}
	crashing := func(code, restarts int, sidecar bool) initReport {
		return initReport{state: backoff, last: new(exited(code)), restarts: restarts, sidecar: sidecar}
	}
	const (
		webUnready = "False ContainersNotReady containers with unready status: [web]"
		both       = "False ContainersNotInitialized containers with incomplete status: [init1 init2]"
	)
	for _, tc := range []struct {
		name        string
		policy      corev1.RestartPolicy
		init        []initReport // init1, init2, … in order
		app         protocol.ContainerState
		last        *protocol.ContainerState
		restarts    int
		phase       corev1.PodPhase
		initialized string   // the Initialized condition
		ready       string   // the ContainersReady condition; Ready says the same (no readiness gates)
		inits       []string // each init container's status, described
		want        string   // the app container's status, described
	}{
		{name: "running", policy: corev1.RestartPolicyAlways, app: running,
			phase: corev1.PodRunning, initialized: "True", ready: "True", want: "running ready"},
		{name: "creating", policy: corev1.RestartPolicyAlways, app: creating,
			phase: corev1.PodPending, initialized: "True", ready: webUnready, want: "waiting ContainerCreating"},
		{name: "crash loop", policy: corev1.RestartPolicyAlways, app: backoff, last: new(exited(3)), restarts: 2,
			phase: corev1.PodRunning, initialized: "True", ready: webUnready, want: "waiting CrashLoopBackOff"},
		{name: "never, failed", policy: corev1.RestartPolicyNever, app: exited(3),
			phase: corev1.PodFailed, initialized: "True", ready: "False PodFailed", want: "terminated"},
		{name: "never, succeeded", policy: corev1.RestartPolicyNever, app: exited(0),
			phase: corev1.PodSucceeded, initialized: "True PodCompleted", ready: "False PodCompleted", want: "terminated"},
		{name: "onfailure, succeeded", policy: corev1.RestartPolicyOnFailure, app: exited(0),
			phase: corev1.PodSucceeded, initialized: "True PodCompleted", ready: "False PodCompleted", want: "terminated"},
		{name: "onfailure, restarting", policy: corev1.RestartPolicyOnFailure, app: exited(1),
			phase: corev1.PodRunning, initialized: "True", ready: webUnready, want: "terminated"},
		{name: "always, exited 0 restarts", policy: corev1.RestartPolicyAlways, app: exited(0),
			phase: corev1.PodRunning, initialized: "True", ready: webUnready, want: "terminated"},

		// Init containers: until they are done, the app container and the init containers after the first one
		// not done wait with PodInitializing, whatever the agent's default says.
		{name: "inits not started", policy: corev1.RestartPolicyAlways, init: []initReport{regular(creating), regular(creating)}, app: creating,
			phase: corev1.PodPending, initialized: both, ready: webUnready,
			inits: []string{"waiting PodInitializing", "waiting PodInitializing"}, want: "waiting PodInitializing"},
		{name: "first init running", policy: corev1.RestartPolicyAlways, init: []initReport{regular(running), regular(creating)}, app: creating,
			phase: corev1.PodPending, initialized: both, ready: webUnready,
			inits: []string{"running", "waiting PodInitializing"}, want: "waiting PodInitializing"},
		{name: "init running, app cannot be created", policy: corev1.RestartPolicyAlways, init: []initReport{regular(running), regular(badConfig)}, app: badConfig,
			phase: corev1.PodPending, initialized: both, ready: webUnready,
			inits: []string{"running", "waiting PodInitializing"}, want: "waiting PodInitializing"},
		{name: "init failed, always, restarting", policy: corev1.RestartPolicyAlways, init: []initReport{crashing(1, 3, false), regular(creating)}, app: creating,
			phase: corev1.PodPending, initialized: both, ready: webUnready,
			inits: []string{"waiting CrashLoopBackOff", "waiting PodInitializing"}, want: "waiting PodInitializing"},
		{name: "init failed, always, exited", policy: corev1.RestartPolicyAlways, init: []initReport{regular(exited(1)), regular(creating)}, app: creating,
			phase: corev1.PodPending, initialized: both, ready: webUnready,
			inits: []string{"terminated", "waiting PodInitializing"}, want: "waiting PodInitializing"},
		{name: "init failed, never", policy: corev1.RestartPolicyNever, init: []initReport{regular(exited(0)), regular(exited(1))}, app: afterFailedInit,
			phase: corev1.PodFailed, initialized: "False ContainersNotInitialized containers with incomplete status: [init2]", ready: "False PodFailed",
			inits: []string{"terminated ready", "terminated"}, want: "waiting PodInitializing"},
		{name: "first init failed, never", policy: corev1.RestartPolicyNever, init: []initReport{regular(exited(1)), regular(creating)}, app: afterFailedInit,
			phase: corev1.PodFailed, initialized: both, ready: "False PodFailed",
			inits: []string{"terminated", "waiting PodInitializing"}, want: "waiting PodInitializing"},
		{name: "inits done, app creating", policy: corev1.RestartPolicyAlways, init: []initReport{regular(exited(0)), regular(exited(0))}, app: creating,
			phase: corev1.PodPending, initialized: "True", ready: webUnready,
			inits: []string{"terminated ready", "terminated ready"}, want: "waiting PodInitializing"},
		{name: "inits done", policy: corev1.RestartPolicyAlways, init: []initReport{regular(exited(0)), regular(exited(0))}, app: running,
			phase: corev1.PodRunning, initialized: "True", ready: "True",
			inits: []string{"terminated ready", "terminated ready"}, want: "running ready"},
		{name: "inits done, app succeeded", policy: corev1.RestartPolicyNever, init: []initReport{regular(exited(0)), regular(exited(0))}, app: exited(0),
			phase: corev1.PodSucceeded, initialized: "True PodCompleted", ready: "False PodCompleted",
			inits: []string{"terminated ready", "terminated ready"}, want: "terminated"},

		// Sidecars: one counts for the phase and initialisation once started, and for readiness as its probe says.
		{name: "sidecar started, app running", policy: corev1.RestartPolicyAlways, init: []initReport{regular(exited(0)), sidecar(running, true, true)}, app: running,
			phase: corev1.PodRunning, initialized: "True", ready: "True",
			inits: []string{"terminated ready", "running ready"}, want: "running ready"},
		{name: "sidecar not ready", policy: corev1.RestartPolicyAlways, init: []initReport{regular(exited(0)), sidecar(running, true, false)}, app: running,
			phase: corev1.PodRunning, initialized: "True", ready: "False ContainersNotReady containers with unready status: [init2]",
			inits: []string{"terminated ready", "running"}, want: "running ready"},
		{name: "sidecar not started", policy: corev1.RestartPolicyAlways, init: []initReport{regular(exited(0)), sidecar(running, false, false)}, app: creating,
			phase: corev1.PodPending, initialized: "False ContainersNotInitialized containers with incomplete status: [init2]",
			ready: "False ContainersNotReady containers with unready status: [init2 web]",
			inits: []string{"terminated ready", "running"}, want: "waiting PodInitializing"},
		{name: "sidecar first, not started", policy: corev1.RestartPolicyAlways, init: []initReport{sidecar(running, false, false), regular(creating)}, app: creating,
			phase: corev1.PodPending, initialized: both, ready: "False ContainersNotReady containers with unready status: [init1 web]",
			inits: []string{"running", "waiting PodInitializing"}, want: "waiting PodInitializing"},
		{name: "sidecar restarting after the app started", policy: corev1.RestartPolicyAlways, init: []initReport{regular(exited(0)), crashing(1, 1, true)}, app: running,
			phase: corev1.PodRunning, initialized: "True", ready: "False ContainersNotReady containers with unready status: [init2]",
			inits: []string{"terminated ready", "waiting CrashLoopBackOff"}, want: "running ready"},
		{name: "sidecar restarted, not started again, app running", policy: corev1.RestartPolicyAlways,
			init: []initReport{regular(exited(0)), {state: running, last: new(exited(1)), restarts: 1, sidecar: true}}, app: running,
			phase: corev1.PodRunning, initialized: "True", ready: "False ContainersNotReady containers with unready status: [init2]",
			inits: []string{"terminated ready", "running"}, want: "running ready"},
		{name: "sidecar stopped after the app succeeded", policy: corev1.RestartPolicyNever, init: []initReport{regular(exited(0)), sidecar(exited(143), false, false)}, app: exited(0),
			phase: corev1.PodSucceeded, initialized: "True PodCompleted", ready: "False PodCompleted",
			inits: []string{"terminated ready", "terminated"}, want: "terminated"},
		{name: "sidecar still running, app succeeded", policy: corev1.RestartPolicyNever, init: []initReport{sidecar(running, true, true)}, app: exited(0),
			phase: corev1.PodRunning, initialized: "True", ready: webUnready,
			inits: []string{"running ready"}, want: "terminated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := plainPod("p")
			pod.Spec.RestartPolicy = tc.policy
			pod.Spec.Containers = pod.Spec.Containers[:1]
			running := tc.app.State == protocol.Running // no probes: ready and started once running
			st := protocol.PodStatus{Configured: true, Containers: []protocol.ContainerStatus{{Name: "web", State: tc.app, LastState: tc.last,
				RestartCount: tc.restarts, Ready: running, Started: running}}}
			always := corev1.ContainerRestartPolicyAlways
			for i, r := range tc.init {
				c := corev1.Container{Name: fmt.Sprintf("init%d", i+1), Image: "x"}
				if r.sidecar {
					c.RestartPolicy = &always
				}
				pod.Spec.InitContainers = append(pod.Spec.InitContainers, c)
				st.Containers = append(st.Containers, protocol.ContainerStatus{Name: c.Name, State: r.state, LastState: r.last,
					RestartCount: r.restarts, Started: r.started, Ready: r.ready})
			}
			got := podStatus(pod, "198.18.0.10", vm.Status{IP: "10.0.0.2", Started: t0, State: vm.Running}, st,
				map[string]string{"web": "reg/web@sha256:abc"})
			s := got.Status
			if s.Phase != tc.phase {
				t.Errorf("phase %s, want %s", s.Phase, tc.phase)
			}
			if c := condition(s, corev1.PodInitialized); c != tc.initialized {
				t.Errorf("Initialized %q, want %q", c, tc.initialized)
			}
			if c := condition(s, corev1.ContainersReady); c != tc.ready {
				t.Errorf("ContainersReady %q, want %q", c, tc.ready)
			}
			if c := condition(s, corev1.PodReady); c != tc.ready {
				t.Errorf("Ready %q, want %q", c, tc.ready)
			}
			if c := condition(s, corev1.PodScheduled); c != "True" {
				t.Errorf("PodScheduled %q", c)
			}
			cs := s.ContainerStatuses[0]
			if d := describe(cs); d != tc.want || cs.RestartCount != int32(tc.restarts) || cs.ImageID != "reg/web@sha256:abc" {
				t.Errorf("container status %q, want %q: %+v", d, tc.want, cs)
			}
			if tc.last != nil && (cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != int32(tc.last.ExitCode)) {
				t.Errorf("last state %+v", cs.LastTerminationState)
			}
			if len(s.InitContainerStatuses) != len(tc.init) {
				t.Fatalf("%d init container statuses, want %d", len(s.InitContainerStatuses), len(tc.init))
			}
			for i, ics := range s.InitContainerStatuses {
				r := tc.init[i]
				if d := describe(ics); d != tc.inits[i] || ics.RestartCount != int32(r.restarts) {
					t.Errorf("init container %s: %q restarts %d, want %q restarts %d", ics.Name, d, ics.RestartCount, tc.inits[i], r.restarts)
				}
				if r.last != nil && (ics.LastTerminationState.Terminated == nil || ics.LastTerminationState.Terminated.ExitCode != int32(r.last.ExitCode)) {
					t.Errorf("init container %s: last state %+v", ics.Name, ics.LastTerminationState)
				}
			}
			if s.PodIP != "10.0.0.2" || s.HostIP != "198.18.0.10" || s.StartTime == nil || !s.StartTime.Equal(&metav1.Time{Time: t0}) {
				t.Errorf("addresses/start %s %s %v", s.PodIP, s.HostIP, s.StartTime)
			}
		})
	}
}

// TestPendingStatus checks the status of a pod that cannot start yet against a kubelet's: a pod without init
// containers is Initialized and its containers wait with the reason; with init containers, the first init container
// carries the reason, the others and the app containers wait with PodInitializing, and Initialized is False with the
// kubelet's message.
func TestPendingStatus(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name        string
		inits       int
		reason, msg string
		initialized string
		want        []string // init containers', then app containers' waiting reason and message
	}{
		{name: "building", reason: "ContainerCreating", msg: "building the pod's VM image", initialized: "True",
			want: []string{"ContainerCreating building the pod's VM image", "ContainerCreating building the pod's VM image"}},
		{name: "building, init containers", inits: 2, reason: "PodInitializing", msg: "building the pod's VM image",
			initialized: "False ContainersNotInitialized containers with incomplete status: [init1 init2]",
			want:        []string{"PodInitializing building the pod's VM image", "PodInitializing", "PodInitializing", "PodInitializing"}},
		{name: "pull failed, init containers", inits: 1, reason: "ErrImagePull", msg: "manifest unknown",
			initialized: "False ContainersNotInitialized containers with incomplete status: [init1]",
			want:        []string{"ErrImagePull manifest unknown", "PodInitializing", "PodInitializing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := plainPod("p")
			for i := range tc.inits {
				pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: fmt.Sprintf("init%d", i+1), Image: "x"})
			}
			s := pendingStatus(pod, "198.18.0.10", tc.reason, tc.msg, now).Status
			if s.Phase != corev1.PodPending {
				t.Errorf("phase %s", s.Phase)
			}
			if c := condition(s, corev1.PodInitialized); c != tc.initialized {
				t.Errorf("Initialized %q, want %q", c, tc.initialized)
			}
			if c := condition(s, corev1.PodReady); c != "False "+tc.reason+" "+tc.msg {
				t.Errorf("Ready %q, want the reason and message", c)
			}
			var got []string
			for _, cs := range append(append([]corev1.ContainerStatus(nil), s.InitContainerStatuses...), s.ContainerStatuses...) {
				if w := cs.State.Waiting; w == nil {
					got = append(got, describe(cs))
				} else {
					got = append(got, strings.TrimSpace(w.Reason+" "+w.Message))
				}
			}
			if strings.Join(got, "; ") != strings.Join(tc.want, "; ") {
				t.Errorf("containers wait with %q, want %q", got, tc.want)
			}
			for _, c := range s.Conditions {
				if c.LastTransitionTime.IsZero() {
					t.Errorf("condition %s has no transition time", c.Type)
				}
			}
		})
	}
}

// TestReadyConditionWithReadinessGates checks the Ready condition's reason and message against a kubelet's
// (status/generate.go GeneratePodReadyCondition) when the containers are ready and a readiness gate is not.
func TestReadyConditionWithReadinessGates(t *testing.T) {
	ready := corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionTrue}
	pod := plainPod("p")
	pod.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "example.com/a"}, {ConditionType: "example.com/b"}}
	pod.Status.Conditions = []corev1.PodCondition{{Type: "example.com/a", Status: corev1.ConditionFalse}}
	want := `False ReadinessGatesNotReady the status of pod readiness gate "example.com/a" is not "True", but False, ` +
		`corresponding condition of pod readiness gate "example.com/b" does not exist.`
	if got := condition(corev1.PodStatus{Conditions: []corev1.PodCondition{readyCondition(pod.Spec.ReadinessGates, ready, pod.Status.Conditions)}}, corev1.PodReady); got != want {
		t.Errorf("Ready %q\nwant %q", got, want)
	}
	pod.Status.Conditions = []corev1.PodCondition{{Type: "example.com/a", Status: corev1.ConditionTrue}, {Type: "example.com/b", Status: corev1.ConditionTrue}}
	if c := readyCondition(pod.Spec.ReadinessGates, ready, pod.Status.Conditions); c.Status != corev1.ConditionTrue || c.Reason != "" {
		t.Errorf("Ready with every gate true = %+v", c)
	}
}

// TestPodPhaseWithContainerRestartPolicies: the phase as a kubelet with ContainerRestartRules (beta, on) computes
// it, for the cases of Kubernetes' node specs (container_restart_policy.go): a container whose own policy or rule
// will not restart it ends the pod; one that will restart keeps it Running.
func TestPodPhaseWithContainerRestartPolicies(t *testing.T) {
	never, always := corev1.ContainerRestartPolicyNever, corev1.ContainerRestartPolicyAlways
	exited := func(code int32) corev1.ContainerStatus {
		return corev1.ContainerStatus{Name: "main", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}}}
	}
	restarting := func(code int32) corev1.ContainerStatus {
		return corev1.ContainerStatus{Name: "main", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}}}
	}
	rule42 := []corev1.ContainerRestartRule{{Action: corev1.ContainerRestartRuleActionRestart,
		ExitCodes: &corev1.ContainerRestartRuleOnExitCodes{Operator: corev1.ContainerRestartRuleOnExitCodesOpIn, Values: []int32{42}}}}
	for _, tc := range []struct {
		name   string
		pod    corev1.RestartPolicy
		own    *corev1.ContainerRestartPolicy
		rules  []corev1.ContainerRestartRule
		status corev1.ContainerStatus
		want   corev1.PodPhase
	}{
		{"own Never in an Always pod: exit 1 ends it", corev1.RestartPolicyAlways, &never, nil, exited(1), corev1.PodFailed},
		{"own Never in an Always pod: exit 0", corev1.RestartPolicyAlways, &never, nil, exited(0), corev1.PodSucceeded},
		{"own Always in a Never pod restarts", corev1.RestartPolicyNever, &always, nil, restarting(1), corev1.PodRunning},
		{"a rule that matches restarts", corev1.RestartPolicyNever, &never, rule42, restarting(42), corev1.PodRunning},
		{"a rule that does not match", corev1.RestartPolicyNever, &never, rule42, exited(1), corev1.PodFailed},
		{"the pod's Always", corev1.RestartPolicyAlways, nil, nil, restarting(1), corev1.PodRunning},
		{"the pod's Never", corev1.RestartPolicyNever, nil, nil, exited(1), corev1.PodFailed},
		{"the pod's OnFailure after a success", corev1.RestartPolicyOnFailure, nil, nil, exited(0), corev1.PodSucceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := plainPod("p")
			pod.Spec.RestartPolicy = tc.pod
			pod.Spec.Containers = []corev1.Container{{Name: "main", Image: "busybox", RestartPolicy: tc.own, RestartPolicyRules: tc.rules}}
			if got := podPhase(pod, nil, []corev1.ContainerStatus{tc.status}); got != tc.want {
				t.Errorf("phase %s, want %s", got, tc.want)
			}
		})
	}
}
