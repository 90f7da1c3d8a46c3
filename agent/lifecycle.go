package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/agent/crilog"
	"github.com/i2kit/i2kit/agent/protocol"
)

// What a kubelet keeps of a termination message: the last terminationLogMax bytes of its file, or, with
// FallbackToLogsOnError, the last fallbackBytes bytes of the log's last fallbackLines lines.
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
		_, err := probeHTTP(ctx, h.HTTPGet, podIP(), time.Until(deadlineOr(ctx, time.Now().Add(30*time.Second))))
		return err
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

// prepareTerminationLog empties the termination message file at path for a new run, creating it, and makes it
// writable by anyone, as a kubelet does: the container may run as any user, and the umask would otherwise leave
// a file only root can write.
func prepareTerminationLog(path string) error {
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		return fmt.Errorf("creating the termination message file, %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		return fmt.Errorf("making the termination message file writable, %w", err)
	}
	return nil
}

// terminationMessage is what c said about its end, as a kubelet reads it: the end of its termination message
// file, or, with FallbackToLogsOnError, a failure (code != 0) and an empty file, the end of its log, as written.
func terminationMessage(c *container, code int) string {
	if c.rc.TerminationMessagePath == "" {
		return ""
	}
	return readTerminationMessage(terminationLogFile(c), c.rc.TerminationMessagePolicy == "FallbackToLogsOnError" && code != 0, c.logs)
}

// readTerminationMessage reads the last terminationLogMax bytes of the file at path; when that is empty and
// fallback is set, the last fallbackBytes bytes of the last fallbackLines lines of logs (nil: none) instead.
// The container wrote the file and the log: neither is read beyond those bounds.
func readTerminationMessage(path string, fallback bool, logs *crilog.Dir) string {
	msg, err := readTail(path, terminationLogMax)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Sprintf("Error on reading termination log %s: %v", path, err)
	}
	if len(msg) > 0 || !fallback || logs == nil {
		return string(msg)
	}
	tail := &lastBytes{max: fallbackBytes}
	if err := logs.Read(context.Background(), tail, crilog.Options{Tail: fallbackLines}); err != nil {
		return fmt.Sprintf("Error on reading termination message from logs: %v", err)
	}
	return string(tail.bytes())
}

// readTail reads at most the last max bytes of the file at path.
func readTail(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if size := fi.Size(); size > max {
		if _, err := f.Seek(size-max, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(io.LimitReader(f, max))
}

// lastBytes keeps the last max bytes written to it.
type lastBytes struct {
	b   []byte
	max int
}

func (w *lastBytes) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) >= w.max {
		w.b = append(w.b[:0], p[len(p)-w.max:]...)
		return n, nil
	}
	if drop := len(w.b) + len(p) - w.max; drop > 0 {
		w.b = append(w.b[:0], w.b[drop:]...)
	}
	w.b = append(w.b, p...)
	return n, nil
}

func (w *lastBytes) bytes() []byte { return w.b }
