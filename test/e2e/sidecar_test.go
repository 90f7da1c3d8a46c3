package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testSidecars runs pods whose app container reaches, from its postStart hook, a sidecar (a restartable init
// container) that serves only 3 s after it starts and says so with a startup probe. As on a kubelet, the app
// container starts only once the sidecar is started, so its hook reaches the sidecar: no FailedPostStartHook, no
// restart, the pod Ready. A pod with restartPolicy Never whose app container ends completes (Succeeded) although
// its sidecar would serve for ever: the sidecar is stopped once the app is done.
func testSidecars(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() {
		for _, n := range []string{"sidecar-hook", "sidecar-job"} {
			pods.Delete(ctx, n, metav1.DeleteOptions{}) //nolint:errcheck
		}
	})
	always := corev1.ContainerRestartPolicyAlways
	sidecar := corev1.Container{Name: "proxy", Image: reg + "/hello:1", RestartPolicy: &always,
		Command: []string{"sh", "-c", "sleep 3; exec /app"}, Env: []corev1.EnvVar{{Name: "PORT", Value: "9090"}},
		StartupProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/startup", Port: intstr.FromInt32(9090)}},
			PeriodSeconds: 1, FailureThreshold: 60}}
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false),
				Tolerations:    []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				InitContainers: []corev1.Container{sidecar}}}
	}

	hook := pod("sidecar-hook")
	hook.Spec.Containers = []corev1.Container{{Name: "web", Image: reg + "/hello:1", Lifecycle: &corev1.Lifecycle{
		PostStart: &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/poststart", Port: intstr.FromInt32(9090)}}}}}
	job := pod("sidecar-job")
	job.Spec.RestartPolicy = corev1.RestartPolicyNever
	// The job runs long enough for its exec hook to run in it; the hook fails unless the sidecar serves.
	job.Spec.Containers = []corev1.Container{{Name: "job", Image: reg + "/hello:1", Command: []string{"sh", "-c", "sleep 2; echo done"},
		Lifecycle: &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
			Command: []string{"wget", "-q", "-O", "/dev/null", "http://127.0.0.1:9090/poststart-exec"}}}}}}
	for _, p := range []*corev1.Pod{hook, job} {
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	p := waitRunning(t, "sidecar-hook", nodeLog)
	if cs := p.Status.ContainerStatuses; len(cs) != 1 || cs[0].RestartCount != 0 {
		t.Errorf("the app container restarted: %+v", cs)
	}
	if out := kubectl(t, "logs", "sidecar-hook", "-c", "proxy"); !strings.Contains(out, "GET /poststart ") {
		t.Errorf("the postStart hook did not reach the sidecar; its log:\n%s", out)
	}
	noFailedPostStart(t, "sidecar-hook")

	p = waitPhase(t, "sidecar-job", corev1.PodSucceeded, nodeLog)
	if cs := p.Status.ContainerStatuses; len(cs) != 1 || cs[0].State.Terminated == nil || cs[0].State.Terminated.ExitCode != 0 {
		t.Errorf("the job container: %+v, want terminated with 0", cs)
	}
	if out := kubectl(t, "logs", "sidecar-job", "-c", "proxy"); !strings.Contains(out, "GET /poststart-exec ") {
		t.Errorf("the exec postStart hook did not reach the sidecar; its log:\n%s", out)
	}
	noFailedPostStart(t, "sidecar-job")
}

// noFailedPostStart fails the test if a postStart hook of pod failed: a kubelet's FailedPostStartHook Event, or
// one that says so in its message (a Killing "FailedPostStartHook", an Unhealthy "PostStartHook failed").
func noFailedPostStart(t *testing.T, pod string) {
	t.Helper()
	var l *corev1.EventList
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		l, err = env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("listing the Events of %s: %v", pod, err)
	}
	for _, e := range l.Items {
		if e.Reason == "FailedPostStartHook" || strings.Contains(e.Message, "PostStartHook") {
			t.Errorf("pod %s: a postStart hook failed: %s %s", pod, e.Reason, e.Message)
		}
	}
}
