package agent

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestContainerCloneflags(t *testing.T) {
	own, shared := containerCloneflags(false), containerCloneflags(true)
	for _, f := range []uintptr{syscall.CLONE_NEWNS, syscall.CLONE_NEWUTS, syscall.CLONE_NEWIPC} {
		if own&f == 0 || shared&f == 0 {
			t.Errorf("namespace flag %#x missing: own %#x, shared %#x", f, own, shared)
		}
	}
	if own&syscall.CLONE_NEWPID == 0 || shared&syscall.CLONE_NEWPID != 0 {
		t.Errorf("CLONE_NEWPID: own %#x (want it), shared %#x (want none)", own, shared)
	}
}

// TestStartInPIDNamespace starts processes in the PID namespace of another (as the runtime does in a pause
// process's) and checks that they get that namespace's pids, while the caller's later children stay in its own.
func TestStartInPIDNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("entering a PID namespace needs root")
	}
	holder := exec.Command("sleep", "60")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := holder.Start(); err != nil {
		t.Skipf("no new PID namespace here: %v", err)
	}
	t.Cleanup(func() {
		holder.Process.Kill() //nolint:errcheck
		holder.Wait()         //nolint:errcheck
	})
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", holder.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ownPid := func(cmd *exec.Cmd, start func() error) int {
		t.Helper()
		var out bytes.Buffer
		cmd.Stdout = &out
		if err := start(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(out.String()))
		if err != nil {
			t.Fatalf("sh printed %q", out.String())
		}
		return pid
	}
	for want := 2; want <= 3; want++ { // the holder is 1; each start runs on a thread of its own
		cmd := exec.Command("sh", "-c", "echo $$")
		if got := ownPid(cmd, func() error { return startInPIDNamespace(cmd, ns) }); got != want {
			t.Errorf("pid in the namespace = %d, want %d (pid here %d)", got, want, cmd.Process.Pid)
		}
	}
	cmd := exec.Command("sh", "-c", "echo $$")
	if got := ownPid(cmd, cmd.Start); got != cmd.Process.Pid {
		t.Errorf("a later plain start got pid %d in its namespace, %d here: it entered another namespace", got, cmd.Process.Pid)
	}
}
