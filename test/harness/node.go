package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Node is an `i2kit node` process started by a test.
type Node struct {
	Name    string
	Port    int
	Started time.Time
	cmd     *exec.Cmd
	log     *syncBuffer
	done    chan struct{}
	err     error
}

// StartNode runs `i2kit node` with the plane's admin kubeconfig, NodeIP and the given extra flags, and stops it
// (SIGTERM) when the test ends.
func (e *Env) StartNode(t testing.TB, name string, port int, extra ...string) *Node {
	t.Helper()
	args := append([]string{"node", "--kubeconfig", e.Plane.KubeconfigPath(), "--node-name", name,
		"--internal-ip", NodeIP, "--port", strconv.Itoa(port)}, extra...)
	n := &Node{Name: name, Port: port, cmd: exec.Command(e.I2kit, args...), log: &syncBuffer{}, done: make(chan struct{})}
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	n.Started = time.Now()
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("starting i2kit node: %v", err)
	}
	go func() { n.err = n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		n.Stop(t, 30*time.Second)
		if t.Failed() {
			t.Logf("i2kit node log:\n%s", n.log.String())
		}
		e.DeleteNode(t, name)
	})
	return n
}

// Stop sends SIGTERM and waits for the exit; it returns the process's error (nil for exit code 0).
func (n *Node) Stop(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-n.done:
		return n.err
	default:
	}
	n.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	select {
	case <-n.done:
		return n.err
	case <-time.After(timeout):
		n.cmd.Process.Kill() //nolint:errcheck
		<-n.done
		return fmt.Errorf("i2kit node did not stop within %s of SIGTERM", timeout)
	}
}

// Kill ends the node with SIGKILL, as a crash would (nothing is released or cleaned up), and waits for the exit.
func (n *Node) Kill() {
	n.cmd.Process.Kill() //nolint:errcheck // already gone is fine
	<-n.done
}

// Log is the node's output so far.
func (n *Node) Log() string { return n.log.String() }

// WaitNodeReady waits until the Node exists with condition Ready=True and returns it.
func (e *Env) WaitNodeReady(ctx context.Context, name string, timeout time.Duration) (*corev1.Node, error) {
	var node *corev1.Node
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		n, err := e.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				node = n
				return true, nil
			}
		}
		return false, nil
	})
	return node, err
}

// Kubectl runs the plane's kubectl with the admin kubeconfig and returns its stdout.
func (e *Env) KubectlRun(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, e.Kubectl, append([]string{"--kubeconfig", e.Plane.KubeconfigPath()}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// WriteFile writes a file in the run's scratch directory and returns its path.
func (e *Env) WriteFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(e.Dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// DeleteNode removes a Node and its Lease, so that a stopped node takes no pods of later tests.
func (e *Env) DeleteNode(t testing.TB, name string) {
	t.Helper()
	ctx := context.Background()
	if err := e.Client.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("deleting node %s: %v", name, err)
	}
	err := e.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("deleting lease %s: %v", name, err)
	}
}
