package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// kubectl runs kubectl against the test's control plane.
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := env.KubectlRun(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// background starts a long-running kubectl whose output is collected; stop ends it.
type background struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	seen chan struct{} // closed and replaced at every write
}

func startKubectl(t *testing.T, args ...string) *background {
	t.Helper()
	b := &background{seen: make(chan struct{})}
	b.cmd = exec.Command(env.Kubectl, append([]string{"--kubeconfig", env.Plane.KubeconfigPath()}, args...)...)
	b.cmd.Stdout, b.cmd.Stderr = b, b
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.stop)
	return b
}

func (b *background) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.out.Write(p)
	close(b.seen)
	b.seen = make(chan struct{})
	return len(p), nil
}

// waitFor waits until the output contains s.
func (b *background) waitFor(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		b.mu.Lock()
		out, seen := b.out.String(), b.seen
		b.mu.Unlock()
		if strings.Contains(out, s) {
			return
		}
		select {
		case <-seen:
		case <-deadline:
			t.Fatalf("kubectl %s: %q not in its output after %s:\n%s", strings.Join(b.cmd.Args[3:], " "), s, timeout, out)
		}
	}
}

func (b *background) has(s string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Contains(b.out.String(), s)
}

func (b *background) stop() {
	if b.cmd.Process != nil {
		b.cmd.Process.Kill() //nolint:errcheck
		b.cmd.Wait()         //nolint:errcheck
	}
}

// testKubectl checks that kubectl works on a pod VM as on any node: logs, logs -f, exec, exec -it, port-forward.
func testKubectl(t *testing.T, pod corev1.Pod) {
	name := pod.Name
	if out := kubectl(t, "logs", name); !strings.Contains(out, "hello: listening on :8080 as "+name) {
		t.Errorf("kubectl logs %s = %q, want the server's start line", name, out)
	}
	out := kubectl(t, "logs", name, "--timestamps", "--tail=1")
	if ts, line, _ := strings.Cut(out, " "); strings.Count(out, "\n") != 1 || !strings.Contains(line, "hello: ") {
		t.Errorf("kubectl logs --timestamps --tail=1 = %q", out)
	} else if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		t.Errorf("kubectl logs --timestamps: %v", err)
	}

	follow := startKubectl(t, "logs", "-f", name)
	follow.waitFor(t, "listening on :8080", 30*time.Second)
	resp, err := http.Get("http://" + net.JoinHostPort(pod.Status.PodIP, "8080") + "/followed")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	follow.waitFor(t, "GET /followed", 30*time.Second)
	follow.stop()

	attach := startKubectl(t, "attach", name)
	attach.waitFor(t, "If you don't see a command prompt", 30*time.Second)
	for i := 0; i < 50; i++ { // attach shows what is written from now on: keep asking until a request shows
		resp, err := http.Get("http://" + net.JoinHostPort(pod.Status.PodIP, "8080") + "/attached")
		if err == nil {
			resp.Body.Close()
		}
		if attach.has("GET /attached") {
			break
		}
	}
	attach.waitFor(t, "GET /attached", 30*time.Second)
	attach.stop()

	if out := kubectl(t, "exec", name, "--", "cat", "/etc/hostname"); strings.TrimSpace(out) != name {
		t.Errorf("kubectl exec cat /etc/hostname = %q, want %q", out, name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = env.KubectlRun(ctx, "exec", name, "--", "sh", "-c", "exit 7")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("kubectl exec of a command exiting 7: %v, want exit code 7", err)
	}
	if out, err := env.KubectlRun(ctx, "exec", "-i", name, "--", "cat"); err != nil || out != "" {
		t.Errorf("kubectl exec -i cat with empty stdin = %q, %v", out, err)
	}
	testExecTTY(t, name)

	pf := startKubectl(t, "port-forward", "pod/"+name, "18080:8080")
	pf.waitFor(t, "Forwarding from 127.0.0.1:18080", 30*time.Second)
	resp, err = http.Get("http://127.0.0.1:18080/")
	if err != nil {
		t.Fatalf("through kubectl port-forward: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from "+name+"\n" {
		t.Errorf("through kubectl port-forward: %q", body)
	}
	pf.stop()

	// The node's stats come from the agents: the pod is in /stats/summary with its memory and CPU.
	raw := kubectl(t, "get", "--raw", "/api/v1/nodes/"+pod.Spec.NodeName+"/proxy/stats/summary")
	var sum statsv1alpha1.Summary
	if err := json.Unmarshal([]byte(raw), &sum); err != nil {
		t.Fatalf("stats/summary: %v: %s", err, raw)
	}
	found := false
	for _, ps := range sum.Pods {
		if ps.PodRef.Name != name {
			continue
		}
		found = true
		if ps.Memory == nil || ps.Memory.WorkingSetBytes == nil || *ps.Memory.WorkingSetBytes == 0 || ps.CPU == nil ||
			ps.CPU.UsageCoreNanoSeconds == nil || *ps.CPU.UsageCoreNanoSeconds == 0 || len(ps.Containers) != 1 {
			t.Errorf("stats of pod %s: %s", name, raw)
		}
	}
	if !found {
		t.Errorf("pod %s not in stats/summary: %s", name, raw)
	}
	if m := kubectl(t, "get", "--raw", "/api/v1/nodes/"+pod.Spec.NodeName+"/proxy/metrics/resource"); !strings.Contains(m, `container_memory_working_set_bytes{namespace="default",pod="`+name+`",container="web"}`) {
		t.Errorf("metrics/resource has no working set for pod %s:\n%s", name, m)
	}
}

// testExecTTY drives `kubectl exec -it` from a pseudo-terminal, as a user at a shell does.
func testExecTTY(t *testing.T, name string) {
	got, err := driveTTY(t, "echo $((6*7))-tty; tty; exit 0\n", "exec", "-it", name, "--", "sh")
	if err != nil || !strings.Contains(got, "42-tty") || !strings.Contains(got, "/dev/pts/") {
		t.Errorf("kubectl exec -it sh: %v; the terminal showed %q", err, got)
	}
}

// driveTTY runs kubectl with args on a pseudo-terminal, as a user at a shell does, types input, and returns what
// the terminal showed once kubectl has exited (or a minute has passed).
func driveTTY(t *testing.T, input string, args ...string) (string, error) {
	t.Helper()
	master, slave, err := openPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	cmd := exec.Command(env.Kubectl, append([]string{"--kubeconfig", env.Plane.KubeconfigPath()}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	defer cmd.Process.Kill() //nolint:errcheck
	var mu sync.Mutex
	var out bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReader(master)
		buf := make([]byte, 4096)
		for {
			n, err := r.Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	io.WriteString(master, input) //nolint:errcheck
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err = <-waited:
	case <-time.After(60 * time.Second):
		err = errors.New("timed out")
	}
	master.Close()
	<-done
	mu.Lock()
	defer mu.Unlock()
	return out.String(), err
}

func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		return nil, nil, err
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		return nil, nil, err
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	return m, s, err
}

// testRestartPolicy runs containers that exit 3 under each restart policy: Always restarts them with the
// restart count rising and the last state kept (kubectl logs --previous shows the run before); Never leaves the
// pod Failed with the exit code; OnFailure with a command that succeeds ends Succeeded.
func testRestartPolicy(t *testing.T, nodeName, image, runDir string) {
	ctx := context.Background()
	no := false
	var uids []string
	mk := func(name string, policy corev1.RestartPolicy, script string) {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: nodeName, RestartPolicy: policy, AutomountServiceAccountToken: &no,
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers:  []corev1.Container{{Name: "c", Image: image, Command: []string{"sh", "-c", script}}}},
		}
		if strings.HasPrefix(name, "oom-") {
			p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")}
		}
		p, err := env.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		uids = append(uids, string(p.UID))
	}
	defer func() {
		for _, name := range []string{"crash-always", "crash-never", "ok-onfailure", "oom-never"} {
			env.Client.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}) //nolint:errcheck
		}
		// Terminal pods leave the API at once; their VMs end in the background.
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			for _, uid := range uids {
				if _, err := os.Stat(filepath.Join(runDir, uid)); err == nil {
					return false, nil
				}
			}
			return true, nil
		})
		if err != nil {
			t.Errorf("the restart-policy pods were not deleted: %v", err)
		}
	}()
	mk("crash-always", corev1.RestartPolicyAlways, "echo run at $(cat /proc/uptime); exit 3")
	mk("crash-never", corev1.RestartPolicyNever, "echo once; exit 3")
	mk("ok-onfailure", corev1.RestartPolicyOnFailure, "echo done")
	mk("oom-never", corev1.RestartPolicyNever, "tail /dev/zero") // tail keeps the one endless line: memory grows

	get := func(name string) *corev1.Pod {
		p, err := env.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	waitPod := func(name, what string, timeout time.Duration, ok func(*corev1.Pod) bool) *corev1.Pod {
		var p *corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
			p = get(name)
			return ok(p), nil
		})
		if err != nil {
			t.Fatalf("pod %s: %s: %v; status %+v", name, what, err, p.Status)
		}
		return p
	}
	p := waitPod("crash-always", "restartCount ≥ 2", 3*time.Minute, func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 2
	})
	cs := p.Status.ContainerStatuses[0]
	if last := cs.LastTerminationState.Terminated; last == nil || last.ExitCode != 3 || last.Reason != "Error" {
		t.Errorf("crash-always last state = %+v, want terminated with exit code 3, reason Error", cs.LastTerminationState)
	}
	if p.Status.Phase != corev1.PodRunning {
		t.Errorf("crash-always phase %s, want Running (it restarts)", p.Status.Phase)
	}
	waitEvent(t, "crash-always", "BackOff")
	if out := kubectl(t, "logs", "crash-always", "--previous"); !strings.Contains(out, "run at ") {
		t.Errorf("kubectl logs --previous = %q", out)
	}

	p = waitPod("crash-never", "Failed", 2*time.Minute, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if term := p.Status.ContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 3 || p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("crash-never container = %+v, want terminated with exit code 3 and no restart", p.Status.ContainerStatuses[0])
	}
	if out := kubectl(t, "logs", "crash-never"); strings.TrimSpace(out) != "once" {
		t.Errorf("kubectl logs of an ended container = %q, want once", out)
	}
	// A container over its memory limit is killed by the guest's OOM killer in its cgroup and reported so.
	p = waitPod("oom-never", "Failed", 2*time.Minute, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if term := p.Status.ContainerStatuses[0].State.Terminated; term == nil || term.Reason != "OOMKilled" || term.ExitCode != 137 {
		t.Errorf("oom-never container = %+v, want OOMKilled with exit code 137", p.Status.ContainerStatuses[0])
	}
	p = waitPod("ok-onfailure", "Succeeded", 2*time.Minute, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
	if term := p.Status.ContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 0 || term.Reason != "Completed" {
		t.Errorf("ok-onfailure container = %+v, want Completed", p.Status.ContainerStatuses[0])
	}
}

// testKilledVM kills a pod's QEMU by hand: the pod's status says so within 5 s.
func testKilledVM(t *testing.T, pod corev1.Pod, pid int) {
	ctx := context.Background()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	var p *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		p, err = env.Client.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		return err == nil && p.UID == pod.UID && p.Status.Phase == corev1.PodFailed && p.Status.Reason == "VMExited", nil
	})
	if err != nil {
		t.Fatalf("pod %s after its QEMU (pid %d) was killed: %v; status %+v", pod.Name, pid, err, p.Status)
	}
	t.Logf("a killed QEMU showed in the pod's status after %s", time.Since(t0).Round(time.Millisecond))
}
