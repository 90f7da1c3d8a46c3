package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testPodUpdates checks that updates to a running pod are resolved against the pod as it is now, as on a kubelet
// (the node conformance specs of downwardAPI volumes, readiness gates and activeDeadlineSeconds): a relabel reaches
// its downwardAPI volume and is never reverted by the node's status writes; a readiness gate's condition patched
// by another controller makes the pod Ready, then not Ready; a lowered activeDeadlineSeconds ends it Failed with
// reason DeadlineExceeded.
func testPodUpdates(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() {
		for _, name := range []string{"relabelled", "gated", "deadline"} {
			pods.Delete(ctx, name, metav1.DeleteOptions{}) //nolint:errcheck
		}
	})
	base := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"version": "v1"}},
			Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false),
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers:  []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}}}
	}
	// update applies change to the pod as the API has it now, again on a conflict, as the specs' pod client does.
	update := func(name string, change func(*corev1.Pod)) {
		t.Helper()
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			p, err := pods.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			change(p)
			_, err = pods.Update(ctx, p, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) {
				return false, nil
			}
			return err == nil, err
		})
		if err != nil {
			t.Fatalf("updating pod %s: %v", name, err)
		}
	}

	// A relabel reaches the downwardAPI volume, and stays while the node writes the pod's status: a second
	// container that exits every few seconds keeps the status changing.
	relabelled := base("relabelled")
	relabelled.Spec.Containers = append(relabelled.Spec.Containers, corev1.Container{Name: "ticker", Image: reg + "/hello:1",
		Command: []string{"sh", "-c", "sleep 2; exit 1"}})
	relabelled.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "podinfo", MountPath: "/etc/podinfo"}}
	relabelled.Spec.Volumes = []corev1.Volume{{Name: "podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
		Items: []corev1.DownwardAPIVolumeFile{{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}}}}}}
	if _, err := pods.Create(ctx, relabelled, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := waitPhase(t, "relabelled", corev1.PodRunning, nodeLog)
	if got := kubectl(t, "exec", "relabelled", "-c", "web", "--", "cat", "/etc/podinfo/labels"); strings.TrimSpace(got) != `version="v1"` {
		t.Errorf("/etc/podinfo/labels = %q before the relabel", got)
	}
	update("relabelled", func(p *corev1.Pod) { p.Labels["version"] = "v2" })
	restarts := func(p *corev1.Pod) int32 {
		for _, cs := range p.Status.ContainerStatuses {
			if cs.Name == "ticker" {
				return cs.RestartCount
			}
		}
		return 0
	}
	before := restarts(p)
	var got string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		got, _ = env.KubectlRun(ctx, "exec", "relabelled", "-c", "web", "--", "cat", "/etc/podinfo/labels")
		return strings.TrimSpace(got) == `version="v2"`, nil
	})
	if err != nil {
		t.Errorf("after the relabel /etc/podinfo/labels = %q: %v\n%s", got, err, nodeLog())
	}
	// Two more status changes written by the node: the labels are still the user's.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err = pods.Get(ctx, "relabelled", metav1.GetOptions{})
		return err == nil && restarts(p) >= before+2, nil
	})
	if err != nil {
		t.Fatalf("ticker did not restart twice: %v; status %+v", err, p.Status)
	}
	if p.Labels["version"] != "v2" {
		t.Errorf("the node's status writes reverted the relabel: labels %v", p.Labels)
	}
	if got := kubectl(t, "exec", "relabelled", "-c", "web", "--", "cat", "/etc/podinfo/labels"); strings.TrimSpace(got) != `version="v2"` {
		t.Errorf("/etc/podinfo/labels = %q after the node's status writes", got)
	}

	// Readiness gates, as the spec "should support pod readiness gates" sets them: a status patch per condition.
	const gate1, gate2 = "k8s.io/test-condition1", "k8s.io/test-condition2"
	gated := base("gated")
	gated.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: gate1}, {ConditionType: gate2}}
	if _, err := pods.Create(ctx, gated, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, "gated", corev1.PodRunning, nodeLog)
	setGate := func(gate string, status corev1.ConditionStatus) {
		t.Helper()
		patch := fmt.Sprintf(`{"status":{"conditions":[{"type":%q,"status":%q}]}}`, gate, status)
		if _, err := pods.Patch(ctx, "gated", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			t.Fatal(err)
		}
	}
	// waitReady waits for the Ready condition to be ready and its message to hold msg; the spec allows 10 s.
	waitReady := func(what string, ready bool, msg string) {
		t.Helper()
		var p *corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
			var err error
			p, err = pods.Get(ctx, "gated", metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady {
					return (c.Status == corev1.ConditionTrue) == ready && strings.Contains(c.Message, msg), nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("%s: Ready is not %v (message holding %q): %v; conditions %+v\n%s", what, ready, msg, err, p.Status.Conditions, nodeLog())
		}
	}
	waitReady("no gate set", false, gate1)
	setGate(gate1, corev1.ConditionTrue)
	waitReady("one gate True", false, fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", gate2))
	setGate(gate2, corev1.ConditionTrue)
	waitReady("both gates True", true, "")
	setGate(gate1, corev1.ConditionFalse)
	waitReady("a gate False", false, fmt.Sprintf("the status of pod readiness gate %q is not \"True\", but False", gate1))
	p, err = pods.Get(ctx, "gated", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kept := 0
	for _, c := range p.Status.Conditions {
		if c.Type == gate1 || c.Type == gate2 {
			kept++
		}
	}
	if kept != 2 {
		t.Errorf("the gates' conditions were not kept: %+v", p.Status.Conditions)
	}

	// activeDeadlineSeconds lowered on a running pod, as the spec "should allow activeDeadlineSeconds to be updated".
	if _, err := pods.Create(ctx, base("deadline"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, "deadline", corev1.PodRunning, nodeLog)
	update("deadline", func(p *corev1.Pod) { p.Spec.ActiveDeadlineSeconds = new(int64(5)) })
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err = pods.Get(ctx, "deadline", metav1.GetOptions{})
		if err != nil || p.Status.Phase != corev1.PodFailed {
			return false, nil
		}
		if p.Status.Reason != "DeadlineExceeded" {
			return false, fmt.Errorf("failed with reason %q, want DeadlineExceeded", p.Status.Reason)
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("pod with a lowered deadline: %v; status %+v\n%s", err, p.Status, nodeLog())
	}
}
