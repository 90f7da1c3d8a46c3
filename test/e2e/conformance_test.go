package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testKubeletDetails covers three behaviours of Kubernetes' node conformance specs, each as a kubelet shows it:
//   - an HTTP liveness probe redirected to another host succeeds with a ProbeWarning Event, and the container is
//     not restarted (container_probe.go, "should *not* be restarted with a non-local redirect http liveness probe");
//   - a subPathExpr that fails to expand keeps the container waiting with CreateContainerConfigError until an
//     update of the annotation it reads fixes it (expansion.go, "should verify that a failing subpath expansion can
//     be modified during the lifecycle of a container");
//   - an emptyDir subPath that does not exist yet is made with the volume's mode and the fsGroup's group
//     (empty_dir.go, fsGroup specs);
//   - a sidecar whose readiness probe fails keeps the pod not Ready and is never restarted for it
//     (container_probe.go, "with readiness probe that fails should never be ready and never restart").
func testKubeletDetails(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	pods := env.Client.CoreV1().Pods("default")
	no := false
	mk := func(p *corev1.Pod) {
		t.Helper()
		p.Spec.NodeName, p.Spec.AutomountServiceAccountToken = nodeName, &no
		p.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pods.Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}) }) //nolint:errcheck
	}

	// A container's own restartPolicy and restartPolicyRules (ContainerRestartRules): Never in an Always pod ends
	// the pod at its first failure; a rule on exit code 42 restarts a Never container in a Never pod.
	never := corev1.ContainerRestartPolicyNever
	mk(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "own-never"}, Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyAlways,
		Containers: []corev1.Container{{Name: "main", Image: reg + "/hello:1", Command: []string{"sh", "-c", "exit 1"}, RestartPolicy: &never}}}})
	mk(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rule-42"}, Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
		Containers: []corev1.Container{{Name: "main", Image: reg + "/hello:1", Command: []string{"sh", "-c", "exit 42"}, RestartPolicy: &never,
			RestartPolicyRules: []corev1.ContainerRestartRule{{Action: corev1.ContainerRestartRuleActionRestart,
				ExitCodes: &corev1.ContainerRestartRuleOnExitCodes{Operator: corev1.ContainerRestartRuleOnExitCodesOpIn, Values: []int32{42}}}}}}}})
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		own, err1 := pods.Get(ctx, "own-never", metav1.GetOptions{})
		rule, err2 := pods.Get(ctx, "rule-42", metav1.GetOptions{})
		return err1 == nil && err2 == nil && own.Status.Phase == corev1.PodFailed && len(own.Status.ContainerStatuses) == 1 &&
			own.Status.ContainerStatuses[0].RestartCount == 0 && len(rule.Status.ContainerStatuses) == 1 &&
			rule.Status.ContainerStatuses[0].RestartCount > 0, nil
	})
	if err != nil {
		own, _ := pods.Get(ctx, "own-never", metav1.GetOptions{})
		rule, _ := pods.Get(ctx, "rule-42", metav1.GetOptions{})
		t.Errorf("container restart policies: own-never %s %+v, rule-42 %s %+v: %v\n%s", own.Status.Phase, own.Status.ContainerStatuses,
			rule.Status.Phase, rule.Status.ContainerStatuses, err, nodeLog())
	}

	// A liveness probe redirected to another host.
	mk(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "redirected"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
		Name: "web", Image: reg + "/hello:1",
		LivenessProbe: &corev1.Probe{PeriodSeconds: 1, FailureThreshold: 1, InitialDelaySeconds: 1, TimeoutSeconds: 5,
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/redirect?loc=" + "http%3A%2F%2F0.0.0.0%2F",
				Port: intstr.FromInt32(8080)}}}}}}})
	waitRunning(t, "redirected", nodeLog)
	waitEvent(t, "redirected", "ProbeWarning")
	if p, err := pods.Get(ctx, "redirected", metav1.GetOptions{}); err != nil || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the container with a redirected liveness probe restarted (or %v): %+v", err, p.Status.ContainerStatuses)
	}

	// A subPathExpr fixed by an annotation update.
	mk(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "subpath-expr", Annotations: map[string]string{"mysubpath": "/absolute"}},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
				Env: []corev1.EnvVar{{Name: "POD_SUBPATH", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{
					FieldPath: "metadata.annotations['mysubpath']"}}}},
				VolumeMounts: []corev1.VolumeMount{{Name: "work", MountPath: "/sub", SubPathExpr: "$(POD_SUBPATH)"}}}}}})
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, "subpath-expr", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Waiting == nil {
			return false, nil
		}
		return p.Status.ContainerStatuses[0].State.Waiting.Reason == "CreateContainerConfigError", nil
	})
	if err != nil {
		t.Fatalf("a subPathExpr expanding to an absolute path: no CreateContainerConfigError: %v\n%s", err, nodeLog())
	}
	if _, err := pods.Patch(ctx, "subpath-expr", types.MergePatchType, []byte(`{"metadata":{"annotations":{"mysubpath":"mypath"}}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "subpath-expr", nodeLog)

	// An emptyDir subPath that does not exist yet, under fsGroup.
	group := int64(1234)
	mk(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "fsgroup-subpath"},
		Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{FSGroup: &group},
			Volumes: []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
				VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/mnt", SubPath: "not/there"}}}}}})
	waitRunning(t, "fsgroup-subpath", nodeLog)
	out := strings.TrimSpace(kubectl(t, "exec", "fsgroup-subpath", "--", "stat", "-c", "%A %g", "/mnt"))
	if perm, gid, _ := strings.Cut(out, " "); gid != "1234" || len(perm) != 10 || perm[6] != 's' {
		t.Errorf("an fsGroup emptyDir's new subPath = %q, want group 1234 and setgid (the volume's mode and group)", out)
	}

	// A sidecar that never gets ready.
	always := corev1.ContainerRestartPolicyAlways
	mk(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sidecar-unready"}, Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "side", Image: reg + "/hello:1", RestartPolicy: &always,
			ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
				TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(81)}}}}},
		Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}}})
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, "sidecar-unready", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning && len(p.Status.ContainerStatuses) == 1 &&
			p.Status.ContainerStatuses[0].State.Running != nil, nil
	})
	if err != nil {
		t.Fatalf("pod sidecar-unready: its app container is not running: %v\n%s", err, nodeLog())
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		p, err := pods.Get(ctx, "sidecar-unready", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if podReady(*p) || len(p.Status.InitContainerStatuses) != 1 || p.Status.InitContainerStatuses[0].RestartCount != 0 ||
			p.Status.InitContainerStatuses[0].Ready {
			t.Fatalf("a sidecar whose readiness probe fails: pod Ready %v, sidecar %+v", podReady(*p), p.Status.InitContainerStatuses)
		}
	}
}
