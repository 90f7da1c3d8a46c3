package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/internal/devregistry"
	"github.com/i2kit/i2kit/internal/proc"
	"github.com/i2kit/i2kit/provider"
	"github.com/i2kit/i2kit/provider/qemu"
	"github.com/i2kit/i2kit/test/harness"
)

// localRegistry serves examples/hello as <host>/hello:1 from an in-process registry on loopback: no outside
// registry is reachable here.
func localRegistry(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := devregistry.Serve(l)
	t.Cleanup(func() { srv.Close() })
	bin := buildStatic(t, "github.com/i2kit/i2kit/examples/hello")
	if err := devregistry.PushBinary(l.Addr().String()+"/hello:1", bin, "/bin/busybox"); err != nil {
		t.Fatal(err)
	}
	return l.Addr().String()
}

// buildStatic builds the Go command pkg as a static linux/amd64 binary, for an image, and returns its path.
func buildStatic(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), path.Base(pkg))
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, pkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v: %s", pkg, err, out)
	}
	return bin
}

// TestPodsRunAsVMs runs a 3-replica Deployment on a node with the qemu backend: every pod becomes a VM whose IP
// answers HTTP; deleting the Deployment ends the VMs and leaves no TAP or runtime directory; a pod a VM cannot
// honour is refused with a reason and an Event.
func TestPodsRunAsVMs(t *testing.T) {
	ctx := context.Background()
	reg := localRegistry(t)
	const nodeName = "i2kit-vm"
	runDir := filepath.Join(t.TempDir(), "run")
	t.Cleanup(func() { killVMs(runDir) }) // after the node has stopped (cleanups run last-in first-out)
	images := filepath.Join(t.TempDir(), "images")
	startNode := func() *harness.Node {
		return env.StartNode(t, nodeName, 10252, "--backend", "qemu", "--insecure-registry", reg,
			"--qemu-runtime-dir", runDir, "--qemu-bridge", "i2kite2e", "--pod-cidr", "10.90.0.0/24", "--image-store", images)
	}
	n := startNode()
	if _, err := env.WaitNodeReady(ctx, nodeName, 10*time.Second); err != nil {
		t.Fatalf("node not ready: %v\n%s", err, n.Log())
	}
	d := deployment("hello-vm", true)
	no := false
	d.Spec.Template.Spec.AutomountServiceAccountToken = &no
	d.Spec.Template.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": nodeName}
	d.Spec.Template.Spec.Containers[0].Image = reg + "/hello:1"
	t0 := time.Now()
	createDeployment(t, d)
	var ps []corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 3*time.Minute, true, func(context.Context) (bool, error) {
		ps = pods(t, "hello-vm")
		if len(ps) != 3 {
			return false, nil
		}
		for _, p := range ps {
			if p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || !podReady(p) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("3 pods Running and Ready: %v%s\n%s", err, summarize(ps), n.Log())
	}
	t.Logf("3 pod VMs Ready %s after the Deployment was created", time.Since(t0).Round(time.Millisecond))
	// Without a readiness probe a pod is Ready once its containers started, as on any node: the server may take
	// a moment more to listen.
	c := &http.Client{Timeout: 2 * time.Second}
	for _, p := range ps {
		var body string
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
			resp, err := c.Get("http://" + net.JoinHostPort(p.Status.PodIP, "8080") + "/")
			if err != nil {
				return false, nil
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			return true, nil
		})
		if err != nil || body != "hello from "+p.Name+"\n" {
			t.Errorf("pod %s at %s answered %q: %v", p.Name, p.Status.PodIP, body, err)
		}
		waitEvent(t, p.Name, "Started")
	}
	testKubectl(t, ps[0])
	testRestartPolicy(t, nodeName, reg+"/hello:1", runDir)

	// Restarting the node with the pods running loses none and launches none twice: the VMs are adopted.
	before := qemuPids(t, runDir, 3)
	if err := n.Stop(t, 30*time.Second); err != nil {
		t.Fatalf("stopping the node: %v", err)
	}
	n = startNode()
	if _, err := env.WaitNodeReady(ctx, nodeName, 10*time.Second); err != nil {
		t.Fatalf("restarted node not ready: %v\n%s", err, n.Log())
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		n := 0
		for _, p := range pods(t, "hello-vm") {
			if p.Status.Phase == corev1.PodRunning && podReady(p) {
				n++
			}
		}
		return n == 3, nil
	})
	if err != nil {
		t.Fatalf("pods after the node restarted: %v%s\n%s", err, summarize(pods(t, "hello-vm")), n.Log())
	}
	after := qemuPids(t, runDir, 3)
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("VMs before the restart %v, after %v: want the same, adopted", before, after)
	}
	for _, p := range pods(t, "hello-vm") {
		for _, q := range ps {
			if p.Name == q.Name && p.Status.PodIP != q.Status.PodIP {
				t.Errorf("pod %s IP changed from %s to %s across the restart", p.Name, q.Status.PodIP, p.Status.PodIP)
			}
		}
	}
	// The adopted VMs still serve kubectl once the restarted node has synced its pods (the Node object says
	// Ready before that: it is the previous process's), and a VM killed by hand shows at once.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := env.KubectlRun(ctx, "logs", ps[1].Name, "--tail=1")
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("kubectl logs after the node restarted: %v\n%s", err, n.Log())
	}
	testKubectl(t, ps[1])
	pid, _ := strconv.Atoi(after[string(ps[2].UID)])
	testKilledVM(t, ps[2], pid)

	// Deleting the Deployment ends the VMs within the pods' grace period (30 s): the pods go, and with them every
	// QEMU process, TAP and runtime directory.
	running := qemuPids(t, runDir, -1) // the killed VM's pod may not be replaced yet
	t0 = time.Now()
	if err := env.Client.AppsV1().Deployments("default").Delete(ctx, "hello-vm", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		ents, _ := os.ReadDir(runDir)
		return len(pods(t, "hello-vm")) == 0 && len(ents) == 0, nil
	})
	if err != nil {
		ents, _ := os.ReadDir(runDir)
		t.Fatalf("after delete: %d pods, %d VM directories: %v", len(pods(t, "hello-vm")), len(ents), err)
	}
	if took := time.Since(t0); took > 30*time.Second {
		t.Errorf("the VMs took %s to end, more than the grace period", took)
	} else {
		t.Logf("deleting the Deployment ended its VMs in %s", took.Round(time.Millisecond))
	}
	for uid, p := range running {
		if pid, _ := strconv.Atoi(p); proc.Alive(pid) {
			t.Errorf("QEMU %d of pod %s still runs after delete", pid, uid)
		}
	}
	for uid := range running {
		// The bridge stays by design; other tests' TAPs are theirs.
		if _, err := net.InterfaceByName(qemu.TAPName(uid)); err == nil {
			t.Errorf("TAP %s of pod %s left behind", qemu.TAPName(uid), uid)
		}
	}

	// A pod asking for the host's network is refused with the reason.
	hostNet := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "host-net"},
		Spec: corev1.PodSpec{NodeName: nodeName, HostNetwork: true, AutomountServiceAccountToken: &no,
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}},
	}
	if _, err := env.Client.CoreV1().Pods("default").Create(ctx, hostNet, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer env.Client.CoreV1().Pods("default").Delete(ctx, "host-net", metav1.DeleteOptions{}) //nolint:errcheck
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := env.Client.CoreV1().Pods("default").Get(ctx, "host-net", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodFailed && p.Status.Reason == provider.ReasonUnsupported &&
			strings.Contains(p.Status.Message, "hostNetwork"), nil
	})
	if err != nil {
		t.Fatalf("hostNetwork pod not refused with its reason: %v", err)
	}
	waitEvent(t, "host-net", provider.ReasonUnsupported)
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// qemuPids maps each VM directory under runDir to its QEMU pid; want (unless -1) is how many there must be.
func qemuPids(t *testing.T, runDir string, want int) map[string]string {
	t.Helper()
	out := map[string]string{}
	files, _ := filepath.Glob(filepath.Join(runDir, "*", "qemu.pid"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		out[filepath.Base(filepath.Dir(f))] = strings.TrimSpace(string(b))
	}
	if want >= 0 && len(out) != want {
		t.Errorf("%d VMs in %s, want %d", len(out), runDir, want)
	}
	return out
}
