package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	vknode "github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/i2kit/i2kit/provider"
)

// statusWriter wraps the API client handed to virtual-kubelet so that its pod controller writes a pod's status as
// a kubelet's status manager does. virtual-kubelet sends UpdateStatus with the provider's copy of the whole pod:
// the pods/status strategy keeps the API's spec but takes the copy's labels, annotations and conditions, so a
// copy made before a user's relabel (or a readiness gate's condition patch) reverts it. Here UpdateStatus GETs the
// pod, keeps the conditions others own as the API has them, and sends a strategic-merge patch of the status only
// (conditions merge by type), preconditioned on the pod's UID; never metadata. Every other call passes through.
func statusWriter(c kubernetes.Interface) kubernetes.Interface { return statusClient{c} }

type statusClient struct{ kubernetes.Interface }

func (c statusClient) CoreV1() typedcorev1.CoreV1Interface { return statusCoreV1{c.Interface.CoreV1()} }

type statusCoreV1 struct{ typedcorev1.CoreV1Interface }

func (c statusCoreV1) Pods(namespace string) typedcorev1.PodInterface {
	return statusPods{c.CoreV1Interface.Pods(namespace)}
}

type statusPods struct{ typedcorev1.PodInterface }

// UpdateStatus writes pod's status as a patch against the pod the API has now; see statusWriter. A pod whose UID
// is not pod's (deleted, or replaced by one of the same name) is NotFound, which the pod controller ignores.
func (c statusPods) UpdateStatus(ctx context.Context, pod *corev1.Pod, opts metav1.UpdateOptions) (*corev1.Pod, error) {
	cur, err := c.Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if pod.UID != "" && cur.UID != pod.UID {
		return nil, apierrors.NewNotFound(corev1.Resource("pods"), pod.Name)
	}
	st := mergeStatus(cur.Status, pod.Status)
	observe(&st, pod.Generation, cur.Status.ObservedGeneration)
	patch, unchanged, err := statusPatch(cur.UID, cur.Status, st)
	if err != nil {
		return nil, err
	}
	if unchanged {
		return cur, nil
	}
	return c.Patch(ctx, pod.Name, types.StrategicMergePatchType, patch,
		metav1.PatchOptions{DryRun: opts.DryRun, FieldManager: opts.FieldManager}, "status")
}

// mergeStatus is the status the node writes: the node's, with the conditions the node does not own
// (provider.OwnsCondition) and the resource claims' statuses (the control plane's: DRA's controllers and the
// scheduler set them) as the API has them, as a kubelet's status manager merges them. The conditions keep the
// API's order, so that an unchanged status makes an empty patch.
func mergeStatus(api, node corev1.PodStatus) corev1.PodStatus {
	out := *node.DeepCopy()
	out.ResourceClaimStatuses = api.ResourceClaimStatuses
	out.ExtendedResourceClaimStatus = api.ExtendedResourceClaimStatus
	out.NodeAllocatableResourceClaimStatuses = api.NodeAllocatableResourceClaimStatuses
	out.Conditions = nil
	own := map[corev1.PodConditionType]int{}
	for i, c := range node.Conditions {
		if provider.OwnsCondition(c.Type) {
			own[c.Type] = i
		}
	}
	for _, c := range api.Conditions {
		if !provider.OwnsCondition(c.Type) {
			out.Conditions = append(out.Conditions, c)
		} else if i, ok := own[c.Type]; ok {
			out.Conditions = append(out.Conditions, node.Conditions[i])
			delete(own, c.Type)
		}
	}
	for _, c := range node.Conditions {
		if _, ok := own[c.Type]; ok {
			out.Conditions = append(out.Conditions, c)
		}
	}
	return out
}

// observe stamps a status the node writes with gen, the generation of the pod it was computed from, as a kubelet's
// status manager does (PodObservedGenerationTracking, GA): status.observedGeneration, never below prev (what the API
// has), and the observedGeneration of each condition the node owns. Clients wait on it: an in-place resize is
// actuated once observedGeneration reaches the resize's generation and no resize condition is left. A pod copy
// without a generation (0) stamps nothing.
func observe(st *corev1.PodStatus, gen, prev int64) {
	if gen == 0 {
		return
	}
	st.ObservedGeneration = max(gen, prev)
	for i := range st.Conditions {
		if provider.OwnsCondition(st.Conditions[i].Type) {
			st.Conditions[i].ObservedGeneration = gen
		}
	}
}

// statusPatch is the strategic-merge patch from old to updated, with uid as the patch's precondition, and whether
// it changes nothing.
func statusPatch(uid types.UID, old, updated corev1.PodStatus) ([]byte, bool, error) {
	from, err := json.Marshal(corev1.Pod{Status: old})
	if err != nil {
		return nil, false, fmt.Errorf("encoding the pod's status, %w", err)
	}
	// Only the new side has the UID: it shows in the patch, and the API server refuses the patch for another pod.
	to, err := json.Marshal(corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: uid}, Status: updated})
	if err != nil {
		return nil, false, fmt.Errorf("encoding the pod's status, %w", err)
	}
	patch, err := strategicpatch.CreateTwoWayMergePatch(from, to, corev1.Pod{})
	if err != nil {
		return nil, false, fmt.Errorf("making the pod's status patch, %w", err)
	}
	return patch, bytes.Equal(patch, fmt.Appendf(nil, `{"metadata":{"uid":%q}}`, uid)), nil
}

// watchPodConditions is a NodeOpt that calls changed with a pod whenever virtual-kubelet's pod informer sees the
// conditions others own (a readiness gate's, provider.OwnsCondition) change. virtual-kubelet tells the provider of
// spec and metadata changes only (UpdatePod); a kubelet recomputes Ready when a readiness gate's condition changes.
func watchPodConditions(changed func(*corev1.Pod)) nodeutil.NodeOpt {
	return nodeutil.WithPodControllerConfigOverrides(func(pc *vknode.PodControllerConfig) error {
		if pc.PodInformer == nil {
			return errors.New("virtual-kubelet built the pod controller without a pod informer")
		}
		_, err := pc.PodInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			UpdateFunc: func(oldObj, newObj any) {
				old, ok1 := oldObj.(*corev1.Pod)
				pod, ok2 := newObj.(*corev1.Pod)
				if ok1 && ok2 && othersChanged(old, pod) {
					changed(pod)
				}
			},
		})
		return err
	})
}

// othersChanged reports whether the conditions that the node does not own differ between two versions of a pod.
func othersChanged(old, pod *corev1.Pod) bool {
	return !equality.Semantic.DeepEqual(othersConditions(old), othersConditions(pod))
}

// othersConditions are a pod's conditions that the node does not own.
func othersConditions(pod *corev1.Pod) []corev1.PodCondition {
	var out []corev1.PodCondition
	for _, c := range pod.Status.Conditions {
		if !provider.OwnsCondition(c.Type) {
			out = append(out, c)
		}
	}
	return out
}
