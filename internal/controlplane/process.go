package controlplane

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/internal/proc"
)

// launch starts a component in a session of its own (so that signals to the caller's process group do not reach
// it and it outlives the caller), with its output in the component's log and its pid in the state directory.
func (p *Plane) launch(component string, args ...string) error {
	logf, err := os.OpenFile(p.LogPath(component), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening %s log, %w", component, err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(p.cfg.BinDir, component), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = p.cfg.StateDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if p.cfg.DieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	// etcd reads every ETCD_* variable as a flag: do not hand it the caller's.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "ETCD_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s, %w", component, err)
	}
	go cmd.Wait() //nolint:errcheck // reaps the child while this process lives; Stop waits on /proc, not on this
	if err := os.WriteFile(p.pidFile(component), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		cmd.Process.Kill() //nolint:errcheck
		return fmt.Errorf("recording %s pid, %w", component, err)
	}
	return nil
}

// running returns the pid of a component recorded in the state directory if that process is alive and still runs
// the component's binary (a recycled pid is not ours).
func (p *Plane) running(component string) (int, bool) {
	b, err := os.ReadFile(p.pidFile(component))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !proc.Alive(pid) || proc.Exe(pid) != component {
		return 0, false
	}
	return pid, true
}

// stopProcess sends SIGTERM, waits up to grace for the process to exit, then sends SIGKILL and waits again.
func stopProcess(ctx context.Context, pid int, grace time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	if waitGone(ctx, pid, grace) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	if waitGone(ctx, pid, 5*time.Second) {
		return nil
	}
	return fmt.Errorf("process %d did not exit after SIGKILL", pid)
}

func waitGone(ctx context.Context, pid int, d time.Duration) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for proc.Alive(pid) {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return false
		case <-tick.C:
		}
	}
	return true
}
