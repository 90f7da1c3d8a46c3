package node

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// apiPod is a running pod as the API has it after a user relabelled it (v2) and a controller set its readiness
// gate's condition True.
func apiPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", UID: "uid-web",
			Labels: map[string]string{"version": "v2"}, Annotations: map[string]string{"note": "v2"}},
		Spec: corev1.PodSpec{NodeName: "i2kit", Containers: []corev1.Container{{Name: "web", Image: "nginx"}},
			ReadinessGates: []corev1.PodReadinessGate{{ConditionType: "example.com/gate"}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending, QOSClass: corev1.PodQOSBestEffort, Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
			{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady"},
			{Type: "example.com/gate", Status: corev1.ConditionTrue},
		}},
	}
}

// nodeCopy is the node's copy of the pod, made before the relabel and the gate: labels v1, no gate's condition,
// and a new status (running, Ready).
func nodeCopy() *corev1.Pod {
	pod := apiPod()
	pod.Labels = map[string]string{"version": "v1"}
	pod.Annotations = map[string]string{"note": "v1"}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, QOSClass: corev1.PodQOSBestEffort, PodIP: "10.0.0.2",
		PodIPs: []corev1.PodIP{{IP: "10.0.0.2"}}, Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue},
		}}
	return pod
}

// TestStatusWriteKeepsOthersChanges: the pod controller's UpdateStatus with a stale copy of the pod changes the
// pod's status only: the labels and annotations stay the API's, the readiness gate's condition (which the node
// does not own) stays, the node's fields and conditions are written. A plain UpdateStatus reverts the first two.
func TestStatusWriteKeepsOthersChanges(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(apiPod())
	if _, err := statusWriter(client).CoreV1().Pods("default").UpdateStatus(ctx, nodeCopy(), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels["version"] != "v2" || got.Annotations["note"] != "v2" {
		t.Errorf("metadata reverted: labels %v, annotations %v", got.Labels, got.Annotations)
	}
	conds := map[corev1.PodConditionType]corev1.ConditionStatus{}
	for _, c := range got.Status.Conditions {
		conds[c.Type] = c.Status
	}
	if conds["example.com/gate"] != corev1.ConditionTrue {
		t.Errorf("the readiness gate's condition was dropped: %v", conds)
	}
	if conds[corev1.PodReady] != corev1.ConditionTrue || conds[corev1.ContainersReady] != corev1.ConditionTrue ||
		got.Status.Phase != corev1.PodRunning || got.Status.PodIP != "10.0.0.2" {
		t.Errorf("the node's status was not written: %+v", got.Status)
	}
	var patches []k8stesting.PatchAction
	for _, a := range client.Actions() {
		switch a := a.(type) {
		case k8stesting.PatchAction:
			patches = append(patches, a)
		case k8stesting.UpdateAction:
			t.Errorf("the status was written with %s %s", a.GetVerb(), a.GetSubresource())
		}
	}
	if len(patches) != 1 || patches[0].GetSubresource() != "status" {
		t.Fatalf("patches %v, want one of the status", patches)
	}
	if p := string(patches[0].GetPatch()); !strings.Contains(p, `"metadata":{"uid":"uid-web"}`) || strings.Contains(p, "labels") {
		t.Errorf("patch %s: want the UID as its only metadata", p)
	}
}

// TestStatusWriteOfAnotherPod: a status for a pod the API has no more (replaced by one of the same name) is
// NotFound, which the pod controller ignores, and writes nothing; a status that changes nothing sends nothing.
func TestStatusWriteOfAnotherPod(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(apiPod())
	pods := statusWriter(client).CoreV1().Pods("default")
	old := nodeCopy()
	old.UID = "uid-before"
	if _, err := pods.UpdateStatus(ctx, old, metav1.UpdateOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("status of a replaced pod: err %v, want NotFound", err)
	}
	same := nodeCopy()
	same.Status = apiPod().Status
	if _, err := pods.UpdateStatus(ctx, same, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, a := range client.Actions() {
		if a.GetVerb() != "get" {
			t.Errorf("unexpected %s %s", a.GetVerb(), a.GetSubresource())
		}
	}
}

func TestOthersChanged(t *testing.T) {
	with := func(conds ...corev1.PodCondition) *corev1.Pod {
		return &corev1.Pod{Status: corev1.PodStatus{Conditions: conds}}
	}
	gate := func(s corev1.ConditionStatus) corev1.PodCondition {
		return corev1.PodCondition{Type: "example.com/gate", Status: s}
	}
	ready := func(s corev1.ConditionStatus) corev1.PodCondition {
		return corev1.PodCondition{Type: corev1.PodReady, Status: s}
	}
	for _, tc := range []struct {
		name     string
		old, new *corev1.Pod
		want     bool
	}{
		{"gate set", with(ready("False")), with(ready("False"), gate("True")), true},
		{"gate flipped", with(gate("True")), with(gate("False")), true},
		{"gate removed", with(gate("True")), with(), true},
		{"node's own changed", with(ready("False"), gate("True")), with(ready("True"), gate("True")), false},
		{"resync", with(gate("True")), with(gate("True")), false},
		{"disruption target", with(), with(corev1.PodCondition{Type: corev1.DisruptionTarget, Status: "True"}), true},
	} {
		if got := othersChanged(tc.old, tc.new); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestStatusWriteKeepsClaimStatuses: the resource claims' statuses, which the control plane sets after the node
// copied the pod, stay as the API has them: the node's stale copy does not patch them away.
func TestStatusWriteKeepsClaimStatuses(t *testing.T) {
	ctx := context.Background()
	api := apiPod()
	claim := "web-gpu-abc"
	api.Status.ResourceClaimStatuses = []corev1.PodResourceClaimStatus{{Name: "gpu", ResourceClaimName: &claim}}
	api.Status.ExtendedResourceClaimStatus = &corev1.PodExtendedResourceClaimStatus{ResourceClaimName: "web-extended"}
	client := fake.NewClientset(api)
	if _, err := statusWriter(client).CoreV1().Pods("default").UpdateStatus(ctx, nodeCopy(), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := got.Status.ResourceClaimStatuses; len(s) != 1 || s[0].ResourceClaimName == nil || *s[0].ResourceClaimName != claim {
		t.Errorf("resourceClaimStatuses %+v, want the API's", s)
	}
	if e := got.Status.ExtendedResourceClaimStatus; e == nil || e.ResourceClaimName != "web-extended" {
		t.Errorf("extendedResourceClaimStatus %+v, want the API's", e)
	}
	if got.Status.Phase != corev1.PodRunning {
		t.Errorf("the node's status was not written: %+v", got.Status)
	}
}

// TestStatusWriteObservesTheGeneration: the node's status carries the generation of the pod it was computed from, as
// a kubelet's does: status.observedGeneration and that of the conditions the node owns; others' conditions keep
// theirs, and a write from an older copy does not lower status.observedGeneration.
func TestStatusWriteObservesTheGeneration(t *testing.T) {
	ctx := context.Background()
	api := apiPod()
	api.Generation = 2
	api.Status.Conditions[2].ObservedGeneration = 7 // the gate's, its controller's
	client := fake.NewClientset(api)
	pods := statusWriter(client).CoreV1().Pods("default")
	write := func(gen int64) *corev1.Pod {
		t.Helper()
		cp := nodeCopy()
		cp.Generation = gen
		if _, err := pods.UpdateStatus(ctx, cp, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	got := write(2)
	if got.Status.ObservedGeneration != 2 {
		t.Errorf("status.observedGeneration = %d, want 2", got.Status.ObservedGeneration)
	}
	for _, c := range got.Status.Conditions {
		want := int64(2)
		if c.Type == "example.com/gate" {
			want = 7
		}
		if c.ObservedGeneration != want {
			t.Errorf("condition %s observedGeneration = %d, want %d", c.Type, c.ObservedGeneration, want)
		}
	}
	if got := write(1); got.Status.ObservedGeneration != 2 {
		t.Errorf("an older copy's write set status.observedGeneration to %d, want it kept at 2", got.Status.ObservedGeneration)
	}
}
