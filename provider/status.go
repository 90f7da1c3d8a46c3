package provider

import (
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

// pendingStatus returns a copy of pod whose status says it cannot start: phase Pending, PodScheduled true, the
// other conditions false with reason, and every container waiting with reason and message (which kubectl shows
// as the pod's STATUS). The API server's fields, such as qosClass, are kept: an update that drops them is refused.
func pendingStatus(pod *corev1.Pod, hostIP, reason, msg string, now time.Time) *corev1.Pod {
	out := pod.DeepCopy()
	t := metav1.NewTime(now)
	st := &out.Status
	st.Phase = corev1.PodPending
	st.HostIP = hostIP
	if hostIP != "" {
		st.HostIPs = []corev1.HostIP{{IP: hostIP}}
	}
	st.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: t},
		{Type: corev1.PodInitialized, Status: corev1.ConditionFalse, Reason: reason, Message: msg, LastTransitionTime: t},
		{Type: corev1.ContainersReady, Status: corev1.ConditionFalse, Reason: reason, Message: msg, LastTransitionTime: t},
		{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: reason, Message: msg, LastTransitionTime: t},
	}
	st.Conditions = withOthersConditions(st.Conditions, pod.Status.Conditions) // a readiness gate's, set by others
	waiting := func(cs []corev1.Container) []corev1.ContainerStatus {
		var out []corev1.ContainerStatus
		for _, c := range cs {
			out = append(out, corev1.ContainerStatus{
				Name:  c.Name,
				Image: c.Image,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}},
			})
		}
		return out
	}
	st.InitContainerStatuses = waiting(pod.Spec.InitContainers)
	st.ContainerStatuses = waiting(pod.Spec.Containers)
	return out
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
				a = protocol.ContainerStatus{Name: c.Name, State: protocol.ContainerState{State: protocol.Waiting, Reason: "ContainerCreating"}}
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
			out = append(out, cst)
		}
		return out
	}
	s.InitContainerStatuses = convert(pod.Spec.InitContainers)
	s.ContainerStatuses = convert(pod.Spec.Containers)
	s.Phase = podPhase(pod, s.InitContainerStatuses, s.ContainerStatuses)

	initialized, ready := true, true
	for _, c := range s.InitContainerStatuses {
		if t := c.State.Terminated; t == nil || t.ExitCode != 0 {
			initialized = false
		}
	}
	for _, c := range s.ContainerStatuses {
		ready = ready && c.Ready
	}
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now}
		for _, old := range pod.Status.Conditions {
			if old.Type == t && (old.Status == corev1.ConditionTrue) == ok {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		if !ok {
			c.Status, c.Reason = corev1.ConditionFalse, reason
		}
		return c
	}
	notReady := "ContainersNotReady"
	switch s.Phase {
	case corev1.PodSucceeded:
		notReady = "PodCompleted"
	case corev1.PodFailed:
		notReady = "PodFailed"
	}
	containersReady := cond(corev1.ContainersReady, ready, notReady)
	s.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, true, ""),
		cond(corev1.PodInitialized, initialized, "ContainersNotInitialized"),
		containersReady,
		// Readiness gates: the pod is Ready only once every gate's condition, set by others, is True too.
		transitioned(readyCondition(pod.Spec.ReadinessGates, containersReady, pod.Status.Conditions), pod.Status.Conditions, now),
	}
	// Conditions that others own (readiness gates, disruption targets) are kept as they are.
	s.Conditions = withOthersConditions(s.Conditions, pod.Status.Conditions)
	return out
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

// podPhase is the kubelet's: Pending until the init containers succeed and the containers start; Succeeded or
// Failed once every container has terminated for good under the restart policy; Running otherwise.
func podPhase(pod *corev1.Pod, inits, apps []corev1.ContainerStatus) corev1.PodPhase {
	policy := pod.Spec.RestartPolicy
	for _, c := range inits {
		if t := c.State.Terminated; t != nil && t.ExitCode == 0 {
			continue
		}
		if t := c.State.Terminated; t != nil && policy == corev1.RestartPolicyNever {
			return corev1.PodFailed
		}
		return corev1.PodPending // initialising, or restarting a failed init container
	}
	var running, waiting, succeeded, failed int
	for _, c := range apps {
		switch {
		case c.State.Running != nil:
			running++
		case c.State.Terminated != nil && c.State.Terminated.ExitCode == 0:
			succeeded++
		case c.State.Terminated != nil:
			failed++
		case c.LastTerminationState.Terminated != nil:
			running++ // waiting to restart: the pod runs on
		default:
			waiting++
		}
	}
	switch {
	case waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case failed > 0 && policy == corev1.RestartPolicyNever:
		return corev1.PodFailed
	case failed == 0 && policy != corev1.RestartPolicyAlways:
		return corev1.PodSucceeded
	default:
		return corev1.PodRunning // terminated containers that will restart
	}
}
