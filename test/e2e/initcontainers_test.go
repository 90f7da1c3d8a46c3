package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/utils/ptr"
)

// testInitContainerStatuses checks the statuses a kubelet reports for init containers, as Kubernetes' InitContainer
// node conformance specs do: a pod whose first init container fails under restartPolicy Never shows, in every
// watch event, its app container and the later init container waiting with PodInitializing, and ends Failed with
// Initialized false and the kubelet's message; a pod with a regular init container and a sidecar (an init container
// with restartPolicy Always) becomes Running and Ready, its completed init container Ready, its sidecar running,
// started and Ready.
func testInitContainerStatuses(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no := false
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() {
		for _, n := range []string{"init-fails", "with-sidecar"} {
			pods.Delete(ctx, n, metav1.DeleteOptions{}) //nolint:errcheck
		}
	})
	base := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no,
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}}}
	}

	fails := base("init-fails")
	fails.Spec.RestartPolicy = corev1.RestartPolicyNever
	fails.Spec.InitContainers = []corev1.Container{
		{Name: "init1", Image: reg + "/hello:1", Command: []string{"sh", "-c", "exit 3"}},
		{Name: "init2", Image: reg + "/hello:1", Command: []string{"sh", "-c", "true"}},
	}
	fails.Spec.Containers = []corev1.Container{{Name: "run1", Image: reg + "/hello:1", Command: []string{"sh", "-c", "true"}}}
	created, err := pods.Create(ctx, fails, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	w, err := pods.Watch(wctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", "init-fails").String(),
		ResourceVersion: created.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var last *corev1.Pod
	for ev := range w.ResultChan() {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok {
			t.Fatalf("watch event %s: %+v", ev.Type, ev.Object)
		}
		last = p
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Waiting == nil || cs.State.Waiting.Reason != "PodInitializing" {
				t.Errorf("app container %s is not waiting with PodInitializing while init1 fails: %+v", cs.Name, cs.State)
			}
		}
		if ics := p.Status.InitContainerStatuses; len(ics) == 2 {
			if w := ics[1].State.Waiting; w == nil || w.Reason != "PodInitializing" {
				t.Errorf("init2 is not waiting with PodInitializing after the failing init1: %+v", ics[1].State)
			}
			if w := ics[0].State.Waiting; w != nil && w.Reason != "PodInitializing" {
				t.Errorf("init1 waits with %q, want PodInitializing", w.Reason)
			}
		}
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			break
		}
	}
	if last == nil || last.Status.Phase != corev1.PodFailed {
		var st any
		if last != nil {
			st = last.Status
		}
		t.Fatalf("pod init-fails did not fail: %+v\n%s", st, nodeLog())
	}
	if c := podCondition(last, corev1.PodInitialized); c.Status != corev1.ConditionFalse || c.Reason != "ContainersNotInitialized" ||
		c.Message != "containers with incomplete status: [init1 init2]" {
		t.Errorf("Initialized condition of the failed pod = %+v, want False ContainersNotInitialized with the kubelet's message", c)
	}
	if ics := last.Status.InitContainerStatuses; len(ics) != 2 || ics[0].State.Terminated == nil || ics[0].State.Terminated.ExitCode != 3 || ics[0].Ready {
		t.Errorf("init container statuses of the failed pod = %+v, want init1 terminated with 3, not ready", ics)
	}
	if cs := last.Status.ContainerStatuses; len(cs) != 1 || cs[0].State.Waiting == nil {
		t.Errorf("the app container of the failed pod = %+v, want still waiting", cs)
	}

	sidecar := base("with-sidecar")
	sidecar.Spec.InitContainers = []corev1.Container{
		{Name: "setup", Image: reg + "/hello:1", Command: []string{"sh", "-c", "true"}},
		{Name: "proxy", Image: reg + "/hello:1", Command: []string{"sleep", "3600"}, RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)},
	}
	sidecar.Spec.Containers = []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}
	if _, err := pods.Create(ctx, sidecar, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := waitRunning(t, "with-sidecar", nodeLog)
	for _, ct := range []corev1.PodConditionType{corev1.PodInitialized, corev1.ContainersReady} {
		if c := podCondition(p, ct); c.Status != corev1.ConditionTrue {
			t.Errorf("%s condition of the pod with a sidecar = %+v", ct, c)
		}
	}
	ics := p.Status.InitContainerStatuses
	if len(ics) != 2 {
		t.Fatalf("init container statuses = %+v", ics)
	}
	if s := ics[0]; s.State.Terminated == nil || s.State.Terminated.ExitCode != 0 || !s.Ready {
		t.Errorf("the completed init container setup = %s, want terminated with 0 and Ready", describeStatus(s))
	}
	if s := ics[1]; s.State.Running == nil || !ptr.Deref(s.Started, false) || !s.Ready {
		t.Errorf("the sidecar proxy = %s, want running, started and Ready", describeStatus(s))
	}
}

// podCondition returns p's condition of type ct, or an empty one.
func podCondition(p *corev1.Pod, ct corev1.PodConditionType) corev1.PodCondition {
	for _, c := range p.Status.Conditions {
		if c.Type == ct {
			return c
		}
	}
	return corev1.PodCondition{}
}

func describeStatus(s corev1.ContainerStatus) string {
	return fmt.Sprintf("%+v ready=%v started=%v restarts=%d", s.State, s.Ready, ptr.Deref(s.Started, false), s.RestartCount)
}
