package agent

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// PauseArg is the argument that makes i2kit-agent act as the pause process of a pod whose containers share a PID
// namespace (see Pause).
const PauseArg = "pause"

// Pause is PID 1 of a pod's shared PID namespace, as a kubelet's pause container is: it holds the namespace and
// reaps the orphans of every container. It ignores every signal it can, so that no container can end it (SIGKILL
// from a PID namespace's own processes does not reach its PID 1); the agent ends it, and with it whatever is left
// in the namespace, with SIGKILL. It never returns.
func Pause() {
	// Go's runtime would exit on SIGTERM, SIGINT or SIGHUP and crash on SIGQUIT or SIGABRT; ignoring all but
	// SIGCHLD (asynchronous preemption's SIGURG included: one goroutine has nothing to preempt) keeps PID 1 up.
	signal.Ignore()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	for range sigs {
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if err != nil || pid <= 0 {
				break
			}
		}
	}
}

// startPause starts the pod's pause process (see Pause) in a new PID namespace and keeps that namespace open for
// startInPIDNamespace. stopPause ends it.
func (r *runtime) startPause() error {
	cmd := exec.Command("/proc/self/exe", PauseArg)
	cmd.Args[0] = "/pause" // what ps shows as PID 1 in the containers, as on a kubelet's node
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the pod's pause process, %w", err)
	}
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", cmd.Process.Pid))
	if err != nil {
		cmd.Process.Kill() //nolint:errcheck
		cmd.Wait()         //nolint:errcheck
		return fmt.Errorf("opening the pod's PID namespace, %w", err)
	}
	r.mu.Lock()
	r.pause, r.pidns = cmd.Process, ns
	r.mu.Unlock()
	go func() {
		err := cmd.Wait()
		r.mu.Lock()
		stopping := r.stopping
		r.mu.Unlock()
		if !stopping { // the namespace is gone with its PID 1: the containers end and cannot start again
			r.say("i2kit-agent: the pod's pause process ended: %v", err)
		}
	}()
	return nil
}

// stopPause ends the pause process, if any, which ends every process still in the shared PID namespace.
func (r *runtime) stopPause() {
	r.mu.Lock()
	p := r.pause
	r.mu.Unlock()
	if p != nil {
		p.Kill() //nolint:errcheck
	}
}

// startInPIDNamespace starts cmd in the PID namespace ns, or where cmd says when ns is nil. setns(2) with
// CLONE_NEWPID moves only the children that the calling thread forks later, and Go forks from the calling
// thread: the start runs on a goroutine locked to its thread and never unlocked, so that the thread ends with it
// and no other goroutine forks from it. Go's runtime never clones a new thread from a locked one, which
// CLONE_NEWPID would make fail.
func startInPIDNamespace(cmd *exec.Cmd, ns *os.File) error {
	if ns == nil {
		return cmd.Start()
	}
	done := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWPID); err != nil {
			done <- fmt.Errorf("entering the pod's PID namespace, %w", err)
			return
		}
		done <- cmd.Start()
	}()
	return <-done
}

// containerCloneflags are the namespaces a container's supervisor starts in: a mount, UTS and IPC namespace of
// its own, and a PID namespace of its own unless the pod shares one.
func containerCloneflags(sharedPID bool) uintptr {
	flags := uintptr(syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC)
	if !sharedPID {
		flags |= syscall.CLONE_NEWPID
	}
	return flags
}

// killCgroup kills every process left in a container's cgroup once its supervisor has ended. In a PID namespace
// of its own a container's processes end with its supervisor (the namespace's PID 1); in the pod's shared one
// they would outlive it, as the pause process's children, holding the run's output open. So a container runtime
// kills them by the container's cgroup. Without a cgroup they last until the pod stops.
func killCgroup(dir string) {
	if dir == "" {
		return
	}
	if os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0) == nil {
		return
	}
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs")) // before Linux 5.14: no cgroup.kill
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck
		}
	}
}
