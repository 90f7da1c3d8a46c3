package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/agent/crilog"
	"github.com/i2kit/i2kit/agent/protocol"
)

// terminationLogMax is what a kubelet keeps of a termination message, and fallbackLines of a log instead.
const (
	terminationLogMax = 4096
	fallbackLines     = 80
	fallbackBytes     = 2048
)

// runHook runs a lifecycle hook in (or, for httpGet, against) container c, within ctx.
func (r *runtime) runHook(ctx context.Context, c *container, h *protocol.Hook) error {
	switch {
	case len(h.Exec) > 0:
		code, out, err := r.runIn(ctx, c, h.Exec)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("command %q exited with %d: %s", strings.Join(h.Exec, " "), code, strings.TrimSpace(string(out)))
		}
		return nil
	case h.HTTPGet != nil:
		return probeHTTP(ctx, h.HTTPGet, podIP(), time.Until(deadlineOr(ctx, time.Now().Add(30*time.Second))))
	case h.SleepSeconds > 0:
		select {
		case <-time.After(time.Duration(h.SleepSeconds) * time.Second):
		case <-ctx.Done():
		}
		return nil
	}
	return errors.New("the hook has no handler")
}

func deadlineOr(ctx context.Context, def time.Time) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return def
}

// running records that c's run has started: it runs, and is started (and ready) at once only without a postStart
// hook and without a startup probe (and readiness probe); else afterStart and the probes say when.
func (r *runtime) running(c *container) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.status.State = protocol.ContainerState{State: protocol.Running, StartedAt: time.Now()}
	c.status.Started = c.rc.Startup == nil && c.rc.PostStart == nil
	c.status.Ready = c.status.Started && c.rc.Readiness == nil
	c.status.Killed = ""
	r.changedLocked()
}

// afterStart runs c's postStart hook, then its probes for the run that ends when ended is closed, as a kubelet
// does: a kubelet runs the hook before it counts the container started and before it probes it, so a container
// that waits for another's start (see startPod) waits for its hook too.
func (r *runtime) afterStart(c *container, pid int, ended <-chan struct{}) {
	if c.rc.PostStart != nil {
		if !r.postStart(c, pid, ended) {
			return
		}
		r.mu.Lock()
		select {
		case <-ended:
			r.mu.Unlock()
			return
		default:
		}
		c.status.Started = c.rc.Startup == nil
		c.status.Ready = c.status.Started && c.rc.Readiness == nil
		r.changedLocked()
		r.mu.Unlock()
	}
	r.probe(c, ended)
}

// postStart runs c's postStart hook and reports whether it succeeded; a failure kills the container, as on a
// kubelet (it then restarts per its restart policy).
func (r *runtime) postStart(c *container, pid int, ended <-chan struct{}) bool {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-ended:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := r.runHook(ctx, c, c.rc.PostStart)
	if err == nil || ctx.Err() != nil {
		return err == nil
	}
	r.say("i2kit-agent: container %s: postStart hook failed: %v", c.Name, err)
	r.mu.Lock()
	c.status.LastProbeFailure = "PostStartHook failed: " + err.Error()
	c.status.ProbeFailures++
	c.status.Killed = fmt.Sprintf("FailedPostStartHook: container %s is killed", c.Name)
	r.changedLocked()
	r.mu.Unlock()
	r.kill(pid, syscall.SIGTERM)
	r.killAfter(pid, ended, 30*time.Second)
	return false
}

// terminationLogFile is where c's termination message is kept across its runs, bind-mounted at its path.
func terminationLogFile(c *container) string {
	return filepath.Join(ContainersDir, c.Name, "termination-log")
}

// terminationMessage is what c said about its end: its termination message file, or with
// FallbackToLogsOnError and a failure, the end of its log.
func terminationMessage(c *container, code int) string {
	if c.rc.TerminationMessagePath == "" {
		return ""
	}
	b, _ := os.ReadFile(terminationLogFile(c))
	if len(b) > terminationLogMax {
		b = b[:terminationLogMax]
	}
	if len(b) > 0 || c.rc.TerminationMessagePolicy != "FallbackToLogsOnError" || code == 0 || c.logs == nil {
		return string(b)
	}
	var sb strings.Builder
	c.logs.Read(context.Background(), &sb, crilog.Options{Tail: fallbackLines, LimitBytes: fallbackBytes}) //nolint:errcheck
	return sb.String()
}
