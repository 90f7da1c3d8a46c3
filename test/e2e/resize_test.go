package e2e

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testResize resizes a running pod in place through the resize subresource, as Kubernetes' pod_resize specs do: a
// burstable container (cpu 20m/30m, memory 35Mi/45Mi) gets a 50Mi memory limit and a 35m cpu limit without a
// restart; its status reports exactly the spec's resources, no resize condition is left, and inside the container
// its own cgroup at /sys/fs/cgroup holds the new limits. Then a resize to more memory than the pod's VM has is
// PodResizePending with reason Infeasible, and the status keeps what was applied.
func testResize(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no := false
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() { pods.Delete(ctx, "resize", metav1.DeleteOptions{}) }) //nolint:errcheck
	req := func(cpuReq, cpuLim, memReq, memLim string) corev1.ResourceRequirements {
		return corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpuReq), corev1.ResourceMemory: resource.MustParse(memReq)},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpuLim), corev1.ResourceMemory: resource.MustParse(memLim)}}
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "resize"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no, RestartPolicy: corev1.RestartPolicyOnFailure,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "c1", Image: reg + "/hello:1", Command: []string{"sleep", "3600"},
				Resources: req("20m", "30m", "35Mi", "45Mi")}}}}
	if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "resize", nodeLog)
	cgroup := func(file string) string {
		return strings.TrimSpace(kubectl(t, "exec", "resize", "-c", "c1", "--", "head", "-n", "1", "/sys/fs/cgroup/"+file))
	}
	// waitResized waits until the container's status resources are want (compared as the specs compare them),
	// no resize condition is left, the status has observed the pod's generation (what the specs wait on first)
	// and the pod is Ready.
	waitResized := func(want corev1.ResourceRequirements) *corev1.Pod {
		t.Helper()
		var got *corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			var err error
			if got, err = pods.Get(ctx, "resize", metav1.GetOptions{}); err != nil || len(got.Status.ContainerStatuses) != 1 {
				return false, nil
			}
			cs := got.Status.ContainerStatuses[0]
			if got.Status.ObservedGeneration < got.Generation {
				return false, nil
			}
			if cs.Resources == nil || !reflect.DeepEqual(*cs.Resources, want) || !reflect.DeepEqual(cs.AllocatedResources, want.Requests) {
				return false, nil
			}
			for _, c := range got.Status.Conditions {
				if c.Type == corev1.PodResizePending || c.Type == corev1.PodResizeInProgress {
					return false, nil
				}
			}
			return podReady(*got), nil
		})
		if err != nil {
			t.Fatalf("resources not %+v: %v; status %+v\n%s", want, err, got.Status, nodeLog())
		}
		return got
	}
	waitResized(req("20m", "30m", "35Mi", "45Mi"))
	// memory.max is the limit in bytes; cpu.max the quota for 30m; cpu.weight from 20m's 20 shares.
	for file, want := range map[string]string{"memory.max": "47185920", "cpu.max": "3000 100000", "cpu.weight": "1"} {
		if got := cgroup(file); got != want {
			t.Errorf("%s before the resize: %q, want %q", file, got, want)
		}
	}

	patch := func(cpuLim, memReq, memLim string) {
		t.Helper()
		body := fmt.Sprintf(`{"spec":{"containers":[{"name":"c1","resources":{"requests":{"memory":%q},"limits":{"cpu":%q,"memory":%q}}}]}}`,
			memReq, cpuLim, memLim)
		if _, err := pods.Patch(ctx, "resize", types.StrategicMergePatchType, []byte(body), metav1.PatchOptions{}, "resize"); err != nil {
			t.Fatalf("patching resize: %v", err)
		}
	}
	patch("35m", "35Mi", "50Mi")
	resized := waitResized(req("20m", "35m", "35Mi", "50Mi"))
	if n := resized.Status.ContainerStatuses[0].RestartCount; n != 0 {
		t.Errorf("restartCount %d after a resize that needs no restart", n)
	}
	for file, want := range map[string]string{"memory.max": "52428800", "cpu.max": "3500 100000"} {
		if got := cgroup(file); got != want {
			t.Errorf("%s after the resize: %q, want %q", file, got, want)
		}
	}

	// More memory than the VM has (it was sized at boot for 45Mi): infeasible, nothing applied.
	patch("35m", "4Gi", "4Gi")
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		if got, err = pods.Get(ctx, "resize", metav1.GetOptions{}); err != nil {
			return false, nil
		}
		for _, c := range got.Status.Conditions {
			if c.Type == corev1.PodResizePending {
				return c.Reason == corev1.PodReasonInfeasible && strings.HasPrefix(c.Message, "Node didn't have enough capacity: memory"), nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no PodResizePending Infeasible: %v; conditions %+v\n%s", err, got.Status.Conditions, nodeLog())
	}
	if cs := got.Status.ContainerStatuses[0]; cs.Resources == nil || !reflect.DeepEqual(*cs.Resources, req("20m", "35m", "35Mi", "50Mi")) {
		t.Errorf("status resources %+v after an infeasible resize, want those applied", cs.Resources)
	}
	if got := cgroup("memory.max"); got != "52428800" {
		t.Errorf("memory.max %q after an infeasible resize", got)
	}
}
