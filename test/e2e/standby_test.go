package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/test/harness"
)

// TestStandbyTakesOver runs two replicas of one qemu node with leader election, as `replicas: 2` of the chart would
// on one host: the first leads and runs a pod as a VM while the second stands by (answering only its health
// endpoint); the leader is killed with SIGKILL and the standby takes the lease within 30 s, serves the kubelet API,
// and adopts the VM — the pod stays Running with the same IP and the same QEMU process, no VM launched twice.
func TestStandbyTakesOver(t *testing.T) {
	ctx := context.Background()
	reg := localRegistry(t)
	const nodeName, port, leaseNS = "i2kit-ha", 10256, "default"
	runDir := filepath.Join(t.TempDir(), "run")
	t.Cleanup(func() { killVMs(runDir) }) // after both replicas have stopped
	images := filepath.Join(t.TempDir(), "images")
	t.Cleanup(func() {
		env.Client.CoordinationV1().Leases(leaseNS).Delete(ctx, nodeName, metav1.DeleteOptions{}) //nolint:errcheck
	})
	replica := func(identity, healthz string) *harness.Node {
		return env.StartNode(t, nodeName, port, "--backend", "qemu", "--insecure-registry", reg,
			"--qemu-runtime-dir", runDir, "--qemu-bridge", "i2kitha", "--pod-cidr", "10.94.0.0/24", "--image-store", images,
			"--leader-elect", "--leader-elect-namespace", leaseNS, "--leader-elect-identity", identity,
			"--healthz-address", healthz)
	}
	holder := func() string {
		l, err := env.Client.CoordinationV1().Leases(leaseNS).Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	healthy := func(addr string) bool {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && string(b) == "ok"
	}

	a := replica("replica-a", "127.0.0.1:10266")
	if _, err := env.WaitNodeReady(ctx, nodeName, 30*time.Second); err != nil {
		t.Fatalf("node not Ready: %v\n%s", err, a.Log())
	}
	if h := holder(); h != "replica-a" {
		t.Fatalf("lease holder %q, want replica-a (the only replica)", h)
	}
	b := replica("replica-b", "127.0.0.1:10267")
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return healthy("127.0.0.1:10267") && strings.Contains(b.Log(), "standing by"), nil
	})
	if err != nil {
		t.Fatalf("the standby does not answer /healthz and stand by: %v\n%s", err, b.Log())
	}
	if !healthy("127.0.0.1:10266") {
		t.Errorf("the leader does not answer /healthz on its healthzAddress")
	}

	pods := env.Client.CoreV1().Pods("default")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "ha-hello"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false),
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}}}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pods.Delete(ctx, pod.Name, metav1.DeleteOptions{}) }) //nolint:errcheck
	before := waitRunning(t, pod.Name, a.Log)
	vms := qemuPids(t, runDir, 1)
	if strings.Contains(b.Log(), "starting i2kit node") {
		t.Fatalf("the standby started the node while replica-a led:\n%s", b.Log())
	}

	a.Kill()
	killed := time.Now()
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		if holder() != "replica-b" {
			return false, nil
		}
		// The standby serves the kubelet API once it runs the node and has synced the pod (the Node object still
		// says Ready: it is the dead leader's until its heartbeat lease runs out).
		_, err := env.KubectlRun(ctx, "logs", pod.Name, "--tail=1")
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("the standby did not take over within 30 s of the leader's SIGKILL: holder %q: %v\n%s", holder(), err, b.Log())
	}
	t.Logf("the standby took over and served the pod's logs %s after the leader was killed", time.Since(killed).Round(time.Millisecond))

	after := waitRunning(t, pod.Name, b.Log)
	if after.Status.PodIP != before.Status.PodIP || after.UID != before.UID {
		t.Errorf("pod %s/%s before the takeover, %s/%s after: want the same pod and IP", before.UID, before.Status.PodIP, after.UID, after.Status.PodIP)
	}
	if got := qemuPids(t, runDir, 1); fmt.Sprint(got) != fmt.Sprint(vms) {
		t.Errorf("VMs before the takeover %v, after %v: want the same QEMU, adopted", vms, got)
	}
	if !regexp.MustCompile(`adopted=1\b`).MatchString(b.Log()) {
		t.Errorf("the new leader's log does not say it adopted the one VM:\n%s", b.Log())
	}
	testKubectl(t, *after)

	if err := pods.Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		return err != nil && len(qemuPids(t, runDir, -1)) == 0, nil
	})
	if err != nil {
		t.Fatalf("the pod's VM did not end after the pod was deleted: %v\n%s", err, b.Log())
	}
	if err := b.Stop(t, 30*time.Second); err != nil {
		t.Fatalf("stopping the new leader: %v\n%s", err, b.Log())
	}
	if h := holder(); h != "" {
		t.Errorf("lease held by %q after the leader stopped, want released", h)
	}
}
