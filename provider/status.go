package provider

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
