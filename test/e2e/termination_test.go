package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testTerminationMessages runs the node conformance specs' termination message cases (Container Runtime, "on
// terminated container") and compares the messages exactly, as the specs do: the file at the default path as root
// and at a custom path as uid 10000, and FallbackToLogsOnError from the log of a failure (no newline added to
// `echo -n`), empty on success, and the file over the log.
func testTerminationMessages(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no := false
	root, nonRoot := int64(0), int64(10000)
	pods := env.Client.CoreV1().Pods("default")
	cases := []struct {
		name   string
		script string
		path   string
		policy corev1.TerminationMessagePolicy
		user   *int64
		phase  corev1.PodPhase
		want   string
	}{
		{"msg-root", "echo -n DONE > /dev/termination-log", "/dev/termination-log", "", &root, corev1.PodSucceeded, "DONE"},
		{"msg-nonroot", "echo -n DONE > /dev/termination-custom-log", "/dev/termination-custom-log", "", &nonRoot, corev1.PodSucceeded, "DONE"},
		{"msg-fallback", "echo -n DONE; false", "/dev/termination-log", corev1.TerminationMessageFallbackToLogsOnError, nil, corev1.PodFailed, "DONE"},
		{"msg-fallback-ok", "echo -n DONE; true", "/dev/termination-log", corev1.TerminationMessageFallbackToLogsOnError, nil, corev1.PodSucceeded, ""},
		{"msg-file-over-log", "echo -n OK > /dev/termination-log; echo DONE; true", "/dev/termination-log",
			corev1.TerminationMessageFallbackToLogsOnError, nil, corev1.PodSucceeded, "OK"},
	}
	for _, tc := range cases {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: tc.name},
			Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no, RestartPolicy: corev1.RestartPolicyNever,
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers: []corev1.Container{{Name: "termination-message-container", Image: reg + "/hello:1",
					Command: []string{"sh", "-c", tc.script}, TerminationMessagePath: tc.path, TerminationMessagePolicy: tc.policy,
					SecurityContext: &corev1.SecurityContext{RunAsUser: tc.user}}}}}
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pods.Delete(ctx, tc.name, metav1.DeleteOptions{}) }) //nolint:errcheck
	}
	for _, tc := range cases {
		var p *corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			var err error
			p, err = pods.Get(ctx, tc.name, metav1.GetOptions{})
			return err == nil && (p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed), nil
		})
		if err != nil {
			t.Errorf("pod %s did not end: %v; status %+v\n%s", tc.name, err, p.Status, nodeLog())
			continue
		}
		if p.Status.Phase != tc.phase || len(p.Status.ContainerStatuses) != 1 {
			t.Errorf("pod %s ended %s, want %s: %+v", tc.name, p.Status.Phase, tc.phase, p.Status)
			continue
		}
		if term := p.Status.ContainerStatuses[0].State.Terminated; term == nil || term.Message != tc.want {
			t.Errorf("pod %s: termination %+v, want the message %q exactly", tc.name, p.Status.ContainerStatuses[0].State, tc.want)
		}
	}
}

// testReadinessWhileTerminating deletes a Ready pod whose preStop hook makes its readiness and liveness probes fail
// and then keeps it terminating for a while, as the node conformance spec "should mark readiness on pods to false
// and disable liveness probes while pod is in progress of terminating" does with a SIGTERM trap: the pod turns not
// Ready while it still exists, and no Event says a liveness probe failed.
func testReadinessWhileTerminating(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no := false
	grace := int64(60)
	pods := env.Client.CoreV1().Pods("default")
	const name = "terminating"
	t.Cleanup(func() { pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}) }) //nolint:errcheck
	cat := func(file string, period int32) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", file}}},
			FailureThreshold: 1, PeriodSeconds: period, InitialDelaySeconds: 2,
			TimeoutSeconds: 10} // an exec under TCG on a loaded machine can take over the default 1 s
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no, TerminationGracePeriodSeconds: &grace,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
				Command:        []string{"sh", "-c", "touch /tmp/ready /tmp/live; trap 'exit 0' TERM; while true; do sleep 1; done"},
				ReadinessProbe: cat("/tmp/ready", 2), LivenessProbe: cat("/tmp/live", 1),
				Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
					Command: []string{"sh", "-c", "rm -f /tmp/ready /tmp/live; sleep 20"}}}}}}}}
	if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, name, nodeLog)
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err // gone before it was seen not ready
		}
		return !podReady(*p), nil
	})
	if err != nil {
		t.Fatalf("a terminating pod whose readiness probe fails stayed Ready: %v\n%s", err, nodeLog())
	}
	// The liveness probe fails too from the preStop hook on, every second until the pod is gone: it must be off.
	err = wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Errorf("the terminating pod was not deleted: %v", err)
	}
	evs, err := env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if strings.Contains(e.Message, "failed liveness probe") || strings.HasPrefix(e.Message, "Liveness probe failed") {
			t.Errorf("a liveness probe of a terminating pod failed: %s %s", e.Reason, e.Message)
		}
	}
}
