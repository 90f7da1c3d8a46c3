package provider

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ReasonReadinessGatesNotReady is the Ready condition's reason while a readiness gate's condition is not True.
const ReasonReadinessGatesNotReady = "ReadinessGatesNotReady"

// OwnsCondition reports whether the node sets a pod condition of type t: the conditions a kubelet owns. The others
// (a readiness gate's, DisruptionTarget) are set by other controllers; the node keeps them as the API has them.
func OwnsCondition(t corev1.PodConditionType) bool {
	switch t {
	case corev1.PodScheduled, corev1.PodReady, corev1.PodInitialized, corev1.ContainersReady,
		corev1.PodReadyToStartContainers, corev1.PodResizePending, corev1.PodResizeInProgress:
		return true
	}
	return false
}

// withOthersConditions is the node's own conditions of own followed by the conditions of others that the node
// does not own.
func withOthersConditions(own, others []corev1.PodCondition) []corev1.PodCondition {
	var out []corev1.PodCondition
	for _, c := range own {
		if OwnsCondition(c.Type) {
			out = append(out, c)
		}
	}
	for _, c := range others {
		if !OwnsCondition(c.Type) {
			out = append(out, c)
		}
	}
	return out
}

// readyCondition is a pod's Ready condition as a kubelet generates it, from its ContainersReady condition and the
// conditions of its readiness gates: while ContainersReady is not True, its status, reason and message; else
// False with ReasonReadinessGatesNotReady while a gate's condition is missing or not True; else True. The
// transition time is left to the caller.
func readyCondition(gates []corev1.PodReadinessGate, containersReady corev1.PodCondition, conds []corev1.PodCondition) corev1.PodCondition {
	if containersReady.Status != corev1.ConditionTrue {
		return corev1.PodCondition{Type: corev1.PodReady, Status: containersReady.Status,
			Reason: containersReady.Reason, Message: containersReady.Message}
	}
	var unready []string
	for _, g := range gates {
		c := findCondition(conds, g.ConditionType)
		switch {
		case c == nil:
			unready = append(unready, fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", string(g.ConditionType)))
		case c.Status != corev1.ConditionTrue:
			unready = append(unready, fmt.Sprintf("the status of pod readiness gate %q is not \"True\", but %v", string(g.ConditionType), c.Status))
		}
	}
	if len(unready) > 0 {
		return corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse,
			Reason: ReasonReadinessGatesNotReady, Message: strings.Join(unready, ", ")}
	}
	return corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue}
}

func findCondition(conds []corev1.PodCondition, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}

// transitioned is c with its last transition time: old's of the same type when its status is unchanged, else now.
func transitioned(c corev1.PodCondition, old []corev1.PodCondition, now metav1.Time) corev1.PodCondition {
	c.LastTransitionTime = now
	if o := findCondition(old, c.Type); o != nil && o.Status == c.Status {
		c.LastTransitionTime = o.LastTransitionTime
	}
	return c
}

// regate recomputes the Ready condition of a pod's status from its ContainersReady condition and its readiness
// gates' conditions (readyCondition), as a kubelet does when a gate's condition changes. A status without
// ContainersReady, or of a pod that has ended, is left as it is.
func regate(pod *corev1.Pod, now time.Time) {
	s := &pod.Status
	cr := findCondition(s.Conditions, corev1.ContainersReady)
	if cr == nil || terminal(s.Phase) {
		return
	}
	ready := transitioned(readyCondition(pod.Spec.ReadinessGates, *cr, s.Conditions), s.Conditions, metav1.NewTime(now))
	if old := findCondition(s.Conditions, corev1.PodReady); old != nil {
		if old.Status == ready.Status && old.Reason == ready.Reason && old.Message == ready.Message {
			return
		}
		*old = ready
		return
	}
	s.Conditions = append(s.Conditions, ready)
}

// PodConditionsChanged takes note of the conditions others set on a pod (pod as the API has it now): the node
// keeps them beside its own and recomputes the pod's Ready condition from its readiness gates, telling the pod
// controller when the status changed. virtual-kubelet never calls UpdatePod for a change of status alone; the
// node calls this from its pod informer.
func (p *Provider) PodConditionsChanged(pod *corev1.Pod) {
	p.mu.Lock()
	k := key(pod.Namespace, pod.Name)
	cur, ok := p.pods[k]
	if !ok || cur.UID != pod.UID {
		p.mu.Unlock()
		return
	}
	upd := cur.DeepCopy()
	upd.Status.Conditions = withOthersConditions(cur.Status.Conditions, pod.Status.Conditions)
	regate(upd, time.Now())
	if equality.Semantic.DeepEqual(cur.Status, upd.Status) {
		p.mu.Unlock()
		return
	}
	p.pods[k] = upd
	notify := p.notify
	p.mu.Unlock()
	notify(upd.DeepCopy())
}
