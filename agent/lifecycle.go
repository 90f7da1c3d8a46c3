package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// postStart runs c's postStart hook; a failure kills the container, as on a kubelet (it then restarts per the
// pod's policy).
func (r *runtime) postStart(c *container, pid int, ended <-chan struct{}) {
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
		return
	}
	r.say("i2kit-agent: container %s: postStart hook failed: %v", c.Name, err)
	r.mu.Lock()
	c.status.LastProbeFailure = "PostStartHook failed: " + err.Error()
	c.status.ProbeFailures++
	c.status.Killed = fmt.Sprintf("FailedPostStartHook: container %s is killed", c.Name)
	r.changedLocked()
	r.mu.Unlock()
	r.killAfter(pid, ended, 30*time.Second)
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
