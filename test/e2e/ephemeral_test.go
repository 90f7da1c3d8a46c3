package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testEphemeralContainers adds an ephemeral container to a running pod as kubectl debug does (the pod's
// ephemeralcontainers subresource), targeting its web container, and checks what a user of kubectl debug sees: the
// container running, its log, and the target's processes in its ps.
func testEphemeralContainers(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no := false
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() { pods.Delete(ctx, "debug-me", metav1.DeleteOptions{}) }) //nolint:errcheck
	if _, err := pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "debug-me"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "debug-me", nodeLog)

	p, err := pods.Get(ctx, "debug-me", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
		EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: reg + "/hello:1",
			Command: []string{"sh", "-c", "echo hi; sleep 3600"}, TerminationMessagePolicy: corev1.TerminationMessageReadFile},
		TargetContainerName: "web"})
	if _, err := pods.UpdateEphemeralContainers(ctx, "debug-me", p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var last corev1.ContainerStatus
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, "debug-me", metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, cs := range p.Status.EphemeralContainerStatuses {
			if cs.Name == "debugger" {
				last = cs
				if cs.State.Terminated != nil {
					return false, errors.New("it terminated")
				}
				return cs.State.Running != nil, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("ephemeral container debugger not running: %v; status %+v\n%s", err, last, nodeLog())
	}
	if last.Ready {
		t.Error("an ephemeral container reports ready; a kubelet never does")
	}
	var logs string
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		logs, _ = env.KubectlRun(ctx, "logs", "debug-me", "-c", "debugger")
		return strings.TrimSpace(logs) == "hi", nil
	})
	if err != nil {
		t.Errorf("kubectl logs debug-me -c debugger = %q, want hi", logs)
	}
	// In web's PID namespace: web's /app, and the debugger's own sleep.
	if ps := kubectl(t, "exec", "debug-me", "-c", "debugger", "--", "ps"); !strings.Contains(ps, "/app") || !strings.Contains(ps, "sleep 3600") {
		t.Errorf("ps in the ephemeral container targeting web shows no /app of web, or not its own sleep:\n%s", ps)
	}
	// The namespace is web's: web sees the debugger's processes too, as on a kubelet.
	if ps := kubectl(t, "exec", "debug-me", "-c", "web", "--", "ps"); !strings.Contains(ps, "sleep 3600") {
		t.Errorf("ps in web shows no sleep of the ephemeral container that joined its PID namespace:\n%s", ps)
	}
	evs, err := env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=debug-me"})
	if err == nil {
		seen := map[string]bool{}
		for _, e := range evs.Items {
			if strings.Contains(e.Message, "container debugger") || strings.Contains(e.Message, `image "`+reg+`/hello:1"`) {
				seen[e.Reason] = true
			}
		}
		for _, r := range []string{"Pulling", "Pulled", "Created", "Started"} {
			if !seen[r] {
				t.Errorf("no %s Event for the ephemeral container; events %+v", r, seen)
			}
		}
	}
}
