package provider

import (
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

// pendingStatus returns a copy of pod whose status says it cannot start: phase Pending, PodScheduled true,
// ContainersReady and Ready false with reason and msg, and the containers waiting: as a kubelet starts the init
// containers first, the first init container waits with reason and msg (which kubectl shows as the pod's STATUS,
// "Init:ErrImagePull"), the others and the app containers with PodInitializing; without init containers, every
// container waits with reason and msg. Initialized is the kubelet's: true without init containers, else false with
// the list of them. The API server's fields, such as qosClass, are kept: an update that drops them is refused.
func pendingStatus(pod *corev1.Pod, hostIP, reason, msg string, now time.Time) *corev1.Pod {
	out := pod.DeepCopy()
	t := metav1.NewTime(now)
	st := &out.Status
	st.Phase = corev1.PodPending
	st.HostIP = hostIP
	if hostIP != "" {
		st.HostIPs = []corev1.HostIP{{IP: hostIP}}
	}
	waiting := func(c corev1.Container, reason, msg string) corev1.ContainerStatus {
		return corev1.ContainerStatus{Name: c.Name, Image: c.Image,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}
	}
	st.InitContainerStatuses, st.ContainerStatuses = nil, nil
	for i, c := range pod.Spec.InitContainers {
		if i == 0 {
			st.InitContainerStatuses = append(st.InitContainerStatuses, waiting(c, reason, msg))
		} else {
			st.InitContainerStatuses = append(st.InitContainerStatuses, waiting(c, reasonPodInitializing, ""))
		}
	}
	for _, c := range pod.Spec.Containers {
		if len(pod.Spec.InitContainers) > 0 {
			st.ContainerStatuses = append(st.ContainerStatuses, waiting(c, reasonPodInitializing, ""))
		} else {
			st.ContainerStatuses = append(st.ContainerStatuses, waiting(c, reason, msg))
		}
	}
	initialized := initializedCondition(pod, st.InitContainerStatuses, st.ContainerStatuses, corev1.PodPending)
	initialized.LastTransitionTime = t
	st.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: t},
		initialized,
		{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, Reason: reason, Message: msg, LastTransitionTime: t},
		{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: reason, Message: msg, LastTransitionTime: t},
	}
	st.Conditions = withOthersConditions(st.Conditions, pod.Status.Conditions) // a readiness gate's, set by others
	return out
}

// Waiting reasons of a container that is not created yet, as a kubelet's: PodInitializing in a pod with init
// containers (until it is created, whether or not they are done), ContainerCreating otherwise.
const (
	reasonPodInitializing   = "PodInitializing"
	reasonContainerCreating = "ContainerCreating"
)

// waitingReason is the reason a container of pod waits with until it is created.
func waitingReason(pod *corev1.Pod) string {
	if len(pod.Spec.InitContainers) > 0 {
		return reasonPodInitializing
	}
	return reasonContainerCreating
}

// terminatedStatus returns a copy of pod with every container terminated, as the pod controller expects after
// DeletePod; containers that never ran end with reason "Deleted" and exit code 0.
func terminatedStatus(pod *corev1.Pod, now time.Time) *corev1.Pod {
	out := pod.DeepCopy()
	t := metav1.NewTime(now)
	out.Status.Phase = corev1.PodFailed
	out.Status.Reason = "Deleted"
	out.Status.Message = "the pod was deleted from the node"
	end := func(cs []corev1.ContainerStatus) {
		for i := range cs {
			c := &cs[i]
			if c.State.Terminated != nil {
				continue
			}
			started := t
			if c.State.Running != nil {
				started = c.State.Running.StartedAt
			}
			c.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				Reason: "Deleted", Message: "the pod was deleted", StartedAt: started, FinishedAt: t,
			}}
			c.Ready = false
		}
	}
	end(out.Status.InitContainerStatuses)
	end(out.Status.ContainerStatuses)
	for i := range out.Status.Conditions {
		if c := &out.Status.Conditions[i]; c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
			c.Status, c.Reason, c.LastTransitionTime = corev1.ConditionFalse, "PodDeleted", t
		}
	}
	return out
}

// podStatus is a pod's status from its running VM and its agent's view of the containers, as a kubelet computes
// it: phase from the containers and the restart policy, the four conditions, and a status per container.
func podStatus(pod *corev1.Pod, hostIP string, v vm.Status, st protocol.PodStatus, imageIDs map[string]string) *corev1.Pod {
	out := pod.DeepCopy()
	s := &out.Status
	started := metav1.NewTime(v.Started)
	s.HostIP, s.HostIPs = hostIP, []corev1.HostIP{{IP: hostIP}}
	s.PodIP, s.PodIPs = v.IP, []corev1.PodIP{{IP: v.IP}}
	s.StartTime = &started
	s.Reason, s.Message = "", ""
	byName := map[string]protocol.ContainerStatus{}
	for _, c := range st.Containers {
		byName[c.Name] = c
	}
	convert := func(cs []corev1.Container) []corev1.ContainerStatus {
		var out []corev1.ContainerStatus
		for _, c := range cs {
			a, ok := byName[c.Name]
			if !ok {
				a = protocol.ContainerStatus{Name: c.Name, State: protocol.ContainerState{State: protocol.Waiting, Reason: reasonContainerCreating}}
			}
			running := a.State.State == protocol.Running
			ready, started := running && a.Ready, running && a.Started
			imageID := imageIDs[c.Name]
			for _, old := range append(append([]corev1.ContainerStatus(nil), pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
				if imageID == "" && old.Name == c.Name {
					imageID = old.ImageID // a pod adopted after a node restart
				}
			}
			cst := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: imageID,
				State: containerState(a.State), RestartCount: int32(a.RestartCount), Ready: ready, Started: &started}
			if a.State.State != protocol.Waiting || a.LastState != nil {
				cst.ContainerID = fmt.Sprintf("i2kit://%s/%s/%d", pod.UID, c.Name, a.RestartCount)
			}
			if a.LastState != nil {
				cst.LastTerminationState = containerState(*a.LastState)
			}
			if w := cst.State.Waiting; w != nil && w.Reason == reasonContainerCreating && len(pod.Spec.InitContainers) > 0 {
				// The agent's default for a container it has not created; a kubelet's is PodInitializing in a pod
				// with init containers.
				cst.State.Waiting = &corev1.ContainerStateWaiting{Reason: reasonPodInitializing}
			}
			out = append(out, cst)
		}
		return out
	}
	s.InitContainerStatuses = convert(pod.Spec.InitContainers)
	s.ContainerStatuses = convert(pod.Spec.Containers)
	// A regular init container that succeeded is Ready, as a kubelet's prober says; a sidecar is Ready as its
	// readiness probe says.
	for i, c := range pod.Spec.InitContainers {
		if cs := &s.InitContainerStatuses[i]; !isSidecar(c) {
			cs.Ready = cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0
		}
	}
	waitInitialization(pod, s.InitContainerStatuses, s.ContainerStatuses)
	s.Phase = podPhase(pod, s.InitContainerStatuses, s.ContainerStatuses)

	now := metav1.Now()
	keep := func(c corev1.PodCondition) corev1.PodCondition { return transitioned(c, pod.Status.Conditions, now) }
	containersReady := containersReadyCondition(pod, s.InitContainerStatuses, s.ContainerStatuses, s.Phase)
	s.Conditions = []corev1.PodCondition{
		keep(corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue}),
		keep(initializedCondition(pod, s.InitContainerStatuses, s.ContainerStatuses, s.Phase)),
		keep(containersReady),
		keep(readyCondition(pod.Spec.ReadinessGates, containersReady, pod.Status.Conditions)),
	}
	// Conditions that others own (readiness gates, disruption targets) are kept as they are.
	s.Conditions = withOthersConditions(s.Conditions, pod.Status.Conditions)
	return out
}

// The helpers below take a pod's statuses as podStatus and pendingStatus make them: inits holds one status per
// pod.Spec.InitContainers and apps one per pod.Spec.Containers, in the spec's order.

// isSidecar reports whether c is a restartable init container: one that runs beside the app containers.
func isSidecar(c corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

// initDone reports whether init container c no longer holds the pod's initialisation back, as a kubelet's
// status/generate.go says: a regular one once it succeeded (Ready), a sidecar once it started.
func initDone(c corev1.Container, cs corev1.ContainerStatus) bool {
	if isSidecar(c) {
		return cs.Started != nil && *cs.Started
	}
	return cs.Ready
}

// appStarted reports whether an app container has run, which means the init containers were done: a sidecar
// restarting later does not take the pod back to initialising.
func appStarted(apps []corev1.ContainerStatus) bool {
	for _, c := range apps {
		if c.State.Running != nil || c.State.Terminated != nil || c.LastTerminationState.Terminated != nil {
			return true
		}
	}
	return false
}

// waitInitialization makes the containers that a kubelet has not created yet wait with PodInitializing, whatever
// the agent says of them: the app containers until the pod is initialised, and the init containers after the
// first one that is not done. A container that runs or ran keeps its state.
func waitInitialization(pod *corev1.Pod, inits, apps []corev1.ContainerStatus) {
	initializing := func(cs *corev1.ContainerStatus) {
		if cs.State.Waiting != nil {
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: reasonPodInitializing}
		}
	}
	if appStarted(apps) {
		return
	}
	blocked := false
	for i, c := range pod.Spec.InitContainers {
		if blocked {
			initializing(&inits[i])
		}
		blocked = blocked || !initDone(c, inits[i])
	}
	if blocked {
		for i := range apps {
			initializing(&apps[i])
		}
	}
}

// initializedCondition is the kubelet's Initialized condition (status/generate.go): true once every init container
// is done or an app container has run, true with reason PodCompleted once the pod succeeded, otherwise false with
// reason ContainersNotInitialized and the init containers not done, "containers with incomplete status: [a b]".
func initializedCondition(pod *corev1.Pod, inits, apps []corev1.ContainerStatus, phase corev1.PodPhase) corev1.PodCondition {
	c := corev1.PodCondition{Type: corev1.PodInitialized, Status: corev1.ConditionTrue}
	var incomplete []string
	for i, ic := range pod.Spec.InitContainers {
		if !initDone(ic, inits[i]) {
			incomplete = append(incomplete, ic.Name)
		}
	}
	switch {
	case phase == corev1.PodSucceeded:
		c.Reason = "PodCompleted"
	case appStarted(apps) || len(incomplete) == 0:
	default:
		c.Status, c.Reason = corev1.ConditionFalse, "ContainersNotInitialized"
		c.Message = "containers with incomplete status: [" + strings.Join(incomplete, " ") + "]"
	}
	return c
}

// containersReadyCondition is the kubelet's ContainersReady condition: true once every app container and every
// sidecar is Ready; false with reason PodCompleted or PodFailed once the pod has ended; otherwise false with reason
// ContainersNotReady and the containers not ready, "containers with unready status: [a b]".
func containersReadyCondition(pod *corev1.Pod, inits, apps []corev1.ContainerStatus, phase corev1.PodPhase) corev1.PodCondition {
	c := corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionFalse}
	var unready []string
	for i, ic := range pod.Spec.InitContainers {
		if isSidecar(ic) && !inits[i].Ready {
			unready = append(unready, ic.Name)
		}
	}
	for _, a := range apps {
		if !a.Ready {
			unready = append(unready, a.Name)
		}
	}
	switch {
	case phase == corev1.PodSucceeded:
		c.Reason = "PodCompleted"
	case phase == corev1.PodFailed:
		c.Reason = "PodFailed"
	case len(unready) > 0:
		c.Reason = "ContainersNotReady"
		c.Message = "containers with unready status: [" + strings.Join(unready, " ") + "]"
	default:
		c.Status = corev1.ConditionTrue
	}
	return c
}

func containerState(s protocol.ContainerState) corev1.ContainerState {
	switch s.State {
	case protocol.Running:
		return corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(s.StartedAt)}}
	case protocol.Terminated:
		return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: int32(s.ExitCode),
			Signal: int32(s.Signal), Reason: s.Reason, Message: s.Message,
			StartedAt: metav1.NewTime(s.StartedAt), FinishedAt: metav1.NewTime(s.FinishedAt)}}
	}
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: s.Reason, Message: s.Message}}
}

// podPhase is the kubelet's (kubelet_pods.go getPhase, with ContainerRestartRules, beta and on): Failed once a
// regular init container failed and will not restart (see shouldRestart); Pending while a regular init container is
// not done, a sidecar has not started before any app container ran, or a container waits to be created; once no
// app container runs, Running while one of those that stopped will restart, else Succeeded if they all succeeded,
// Failed if not (a sidecar that stopped does not count); Running otherwise.
func podPhase(pod *corev1.Pod, inits, apps []corev1.ContainerStatus) corev1.PodPhase {
	var pendingInit, pendingSidecar, failedInitForGood int
	var running, waiting, stopped, stoppedForGood, succeeded int
	for i, c := range pod.Spec.InitContainers {
		cs := inits[i]
		last := cs.LastTerminationState.Terminated
		if isSidecar(c) {
			switch {
			case cs.State.Running != nil:
				running++
				if cs.Started == nil || !*cs.Started {
					pendingSidecar++
				}
			case cs.State.Waiting != nil && last == nil:
				pendingSidecar++
				waiting++
			}
			continue // a sidecar that stopped, or waits to restart, does not count
		}
		code, stopped := stoppedCode(cs)
		switch {
		case !stopped:
			pendingInit++ // running, or not started yet
		case code != 0 && !shouldRestart(pod, c, code):
			failedInitForGood++
		}
	}
	if failedInitForGood > 0 {
		return corev1.PodFailed
	}
	for i, c := range apps {
		spec := pod.Spec.Containers[i]
		code, ok := stoppedCode(c)
		switch {
		case c.State.Running != nil:
			running++
		case !ok:
			waiting++
		default:
			stopped++
			if !shouldRestart(pod, spec, code) {
				stoppedForGood++
			}
			if c.State.Terminated != nil && code == 0 { // a kubelet counts a success only while it shows
				succeeded++
			}
		}
	}
	switch {
	case pendingInit > 0, pendingSidecar > 0 && !appStarted(apps), waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped != stoppedForGood:
		return corev1.PodRunning // a container will restart
	case stopped == succeeded:
		return corev1.PodSucceeded
	default:
		return corev1.PodFailed
	}
}

// stoppedCode returns the exit code of a container that is stopped — terminated, or waiting to restart after a
// run — and whether it is.
func stoppedCode(cs corev1.ContainerStatus) (int32, bool) {
	switch last := cs.LastTerminationState.Terminated; {
	case cs.State.Terminated != nil:
		return cs.State.Terminated.ExitCode, true
	case cs.State.Waiting != nil && last != nil:
		return last.ExitCode, true
	}
	return 0, false
}

// shouldRestart reports whether container c of pod restarts after exiting with code, as a kubelet decides (see
// protocol.ShouldRestart, which the agent follows).
func shouldRestart(pod *corev1.Pod, c corev1.Container, code int32) bool {
	own := ""
	if c.RestartPolicy != nil {
		own = string(*c.RestartPolicy)
	}
	return protocol.ShouldRestart(string(pod.Spec.RestartPolicy), own, restartRules(c), int(code))
}

// restartRules are c's restartPolicyRules as the agent takes them (rules on exit codes; others it cannot match).
func restartRules(c corev1.Container) []protocol.RestartRule {
	var out []protocol.RestartRule
	for _, r := range c.RestartPolicyRules {
		if r.ExitCodes != nil {
			out = append(out, protocol.RestartRule{Action: string(r.Action), Operator: string(r.ExitCodes.Operator),
				Values: slices.Clone(r.ExitCodes.Values)})
		}
	}
	return out
}
