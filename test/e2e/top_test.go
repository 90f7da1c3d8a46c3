package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/internal/cachedir"
	"github.com/i2kit/i2kit/test/harness"
)

// metricsServerPort is where the test's metrics-server listens, on the node IP: the aggregator reaches it
// through an Endpoints object, which may not name a loopback address.
const metricsServerPort = 26460

// testKubectlTop runs a real metrics-server (v0.8.0, built by make metrics-server) registered as the
// metrics.k8s.io API, and checks that `kubectl top pod` shows a pod VM's CPU and memory, scraped from the node's
// /metrics/resource.
func testKubectlTop(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	bin := filepath.Join(cachedir.Root(), "tools", "metrics-server-v0.8.0", "metrics-server")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("metrics-server is not built (make metrics-server; make e2e does it): %v", err)
	}
	kc := env.Plane.KubeconfigPath()
	var out bytes.Buffer
	ms := exec.Command(bin, "--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
		"--secure-port", fmt.Sprint(metricsServerPort), "--bind-address", harness.NodeIP, "--cert-dir", t.TempDir(),
		"--kubelet-insecure-tls", "--kubelet-preferred-address-types=InternalIP", "--kubelet-use-node-status-port",
		"--metric-resolution=15s")
	ms.Stdout, ms.Stderr = &out, &out
	ms.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ms.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms.Process.Kill(); ms.Wait() }) //nolint:errcheck
	api := env.WriteFile(t, "metrics-api.yaml", fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{name: https, port: 443, targetPort: %[1]d}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: metrics-server, namespace: kube-system}
subsets:
- addresses: [{ip: %[2]s}]
  ports: [{name: https, port: %[1]d}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  service: {name: metrics-server, namespace: kube-system, port: 443}
  group: metrics.k8s.io
  version: v1beta1
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
`, metricsServerPort, harness.NodeIP))
	kubectl(t, "apply", "-f", api)
	t.Cleanup(func() { env.KubectlRun(ctx, "delete", "-f", api, "--ignore-not-found") }) //nolint:errcheck

	no := false
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "top"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}}}
	if _, err := env.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Client.CoreV1().Pods("default").Delete(ctx, "top", metav1.DeleteOptions{}) }) //nolint:errcheck
	waitRunning(t, "top", nodeLog)
	var got string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		got, _ = env.KubectlRun(ctx, "top", "pod", "top", "--no-headers")
		f := strings.Fields(got)
		return len(f) == 3 && f[0] == "top" && strings.HasSuffix(f[1], "m") && strings.HasSuffix(f[2], "Mi"), nil
	})
	if err != nil {
		t.Fatalf("kubectl top pod top = %q: %v\nmetrics-server:\n%s", got, err, tail(out.String(), 30))
	}
	t.Logf("kubectl top pod: %s", strings.TrimSpace(got))
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
