package e2e

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testShortenedGrace deletes a running pod whose preStop hook sleeps 100 s within a grace period of 100 s, then
// deletes it again with a grace period of 5 s while the hook sleeps, as a user hurrying a stuck delete does: a
// kubelet takes the shorter grace period, cuts the hook and kills the container by the new deadline, so the pod is
// gone well within 30 s of the second delete (the node conformance spec "reduce GracePeriodSeconds during runtime"
// relies on the same deadline).
func testShortenedGrace(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no := false
	grace := int64(100)
	pods := env.Client.CoreV1().Pods("default")
	const name = "shortened-grace"
	t.Cleanup(func() { pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}) }) //nolint:errcheck
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no, TerminationGracePeriodSeconds: &grace,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
				Command:   []string{"sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"},
				Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 100}}}}}}}
	if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, name, nodeLog)
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The hook runs: the pod stays, terminating, for a while.
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.DeletionTimestamp != nil, err
	})
	if err != nil {
		t.Fatalf("the deleted pod did not stay terminating while its preStop hook sleeps: %v\n%s", err, nodeLog())
	}
	short := int64(5)
	t0 := time.Now()
	if err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &short}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("the pod was not gone 30 s after its grace period was shortened to 5 s (%s since): %v\n%s",
			time.Since(t0).Round(time.Second), err, nodeLog())
	}
}
