package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/protocol"
)

// inContainer is a process that container c's supervisor started on request (see Supervise).
type inContainer struct {
	conn *net.UnixConn // to the supervisor; shutting down our side asks it to kill the process
	dec  *json.Decoder // the supervisor's replies; the next is the exit code
}

// startIn asks c's supervisor to run argv with stdio as its standard input, output and error (the same terminal
// thrice for a TTY); stdio is closed here once sent. It returns the process, or a code (126: the supervisor could
// not run it) and why. The connection, which the caller closes, carries the exit code later (see wait).
func (r *runtime) startIn(ctx context.Context, c *container, conn **net.UnixConn, argv []string, tty bool, stdio [3]*os.File) (*inContainer, int, error) {
	defer func() {
		for _, f := range stdio {
			f.Close() // a TTY's slave thrice: closing again is harmless
		}
	}()
	r.mu.Lock()
	ctl, running := c.ctl, c.pid != 0
	r.mu.Unlock()
	if !running {
		return nil, -1, fmt.Errorf("container %s is not running", c.Name)
	}
	cn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: ctl, Net: "unix"})
	if err != nil {
		return nil, -1, fmt.Errorf("reaching container %s, %w", c.Name, err)
	}
	*conn = cn
	spec, _ := json.Marshal(execSpec{Argv: argv, TTY: tty})
	rights := unix.UnixRights(int(stdio[0].Fd()), int(stdio[1].Fd()), int(stdio[2].Fd()))
	if _, _, err := cn.WriteMsgUnix(spec, rights, nil); err != nil {
		return nil, -1, fmt.Errorf("asking container %s to run the command, %w", c.Name, err)
	}
	dec := json.NewDecoder(cn)
	var started execReply
	if dl, ok := ctx.Deadline(); ok {
		cn.SetReadDeadline(dl) //nolint:errcheck
	}
	if err := dec.Decode(&started); err != nil {
		return nil, -1, fmt.Errorf("running the command in %s, %w", c.Name, err)
	}
	cn.SetReadDeadline(time.Time{}) //nolint:errcheck
	if started.Error != "" {
		return nil, 126, errors.New(started.Error)
	}
	return &inContainer{conn: cn, dec: dec}, 0, nil
}

// wait returns the process's exit code once it ends (-1 if the supervisor's answer is lost); when ctx ends first,
// the supervisor kills the process group: only it knows the process's pid in the container's PID namespace.
func (p *inContainer) wait(ctx context.Context) int {
	exited := make(chan int, 1)
	go func() {
		var e execReply
		if p.dec.Decode(&e) != nil || e.Exit == nil {
			exited <- -1
			return
		}
		exited <- *e.Exit
	}()
	select {
	case code := <-exited:
		return code
	case <-ctx.Done():
		p.conn.CloseWrite() //nolint:errcheck // the supervisor's cue (see supervisor.exec)
		return <-exited
	}
}

// execIn runs req in container c through its supervisor and streams it over frames until it exits.
func (r *runtime) execIn(ctx context.Context, c *container, req protocol.ExecRequest, br *bufio.Reader, fw *protocol.FrameWriter) (int, error) {
	// The child's ends are sent to the supervisor and closed there; ours stream over the frames.
	var child [3]*os.File
	var in io.WriteCloser // nil: stdin is not streamed
	var outs []*os.File
	var pty *os.File
	if req.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return -1, err
		}
		defer master.Close()
		child = [3]*os.File{slave, slave, slave}
		pty, in, outs = master, master, []*os.File{master}
	} else {
		devnull, err := os.Open(os.DevNull)
		if err != nil {
			return -1, err
		}
		child[0] = devnull
		if req.Stdin {
			pr, pw, err := os.Pipe()
			if err != nil {
				return -1, err
			}
			devnull.Close()
			child[0], in = pr, pw
		}
		for i := 1; i <= 2; i++ {
			pr, pw, err := os.Pipe()
			if err != nil {
				return -1, err
			}
			child[i] = pw
			outs = append(outs, pr)
		}
	}
	var conn *net.UnixConn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	proc, code, err := r.startIn(ctx, c, &conn, req.Command, req.TTY, child)
	if err != nil {
		if pty == nil {
			for _, f := range outs {
				f.Close()
			}
			if in != nil {
				in.Close()
			}
		}
		return code, err
	}

	var copies sync.WaitGroup
	for i, f := range outs {
		ch := protocol.Stdout
		if i == 1 {
			ch = protocol.Stderr
		}
		copies.Add(1)
		go func() {
			defer copies.Done()
			io.Copy(fw.Channel(ch), f) //nolint:errcheck // a TTY's master ends with EIO once the slave is gone
		}()
	}
	go readInput(br, in, pty)

	code = proc.wait(ctx)
	// Output still in flight is copied; a background child that keeps the pipes open does not hold the exec.
	done := make(chan struct{})
	go func() { copies.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		for _, f := range outs {
			f.Close()
		}
	}
	if in != nil && pty == nil {
		in.Close()
	}
	return code, nil
}

// readInput applies the client's frames: stdin to in, resizes to the terminal.
func readInput(br *bufio.Reader, in io.WriteCloser, pty *os.File) {
	for {
		ch, p, err := protocol.ReadFrame(br)
		if err != nil {
			return
		}
		switch ch {
		case protocol.Stdin:
			if in != nil {
				in.Write(p) //nolint:errcheck
			}
		case protocol.CloseStdin:
			if in != nil && pty == nil {
				in.Close()
			}
		case protocol.ResizeCh:
			var sz protocol.Resize
			if pty != nil && json.Unmarshal(p, &sz) == nil {
				unix.IoctlSetWinsize(int(pty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: sz.Height, Col: sz.Width}) //nolint:errcheck
			}
		}
	}
}

// openPTY opens a new pseudo-terminal pair from /dev/ptmx.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("opening a terminal, %w", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("unlocking the terminal, %w", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("numbering the terminal, %w", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("opening the terminal, %w", err)
	}
	return m, s, nil
}

// attachTo streams a container's main process: its output as it is logged, and its stdin when the container
// keeps one open. It returns when the run ends (with its exit code) or ctx does.
func (r *runtime) attachTo(ctx context.Context, c *container, req protocol.AttachRequest, br *bufio.Reader, fw *protocol.FrameWriter) (int, error) {
	r.mu.Lock()
	run, ended, stdin, tty, running := c.run, c.ended, c.stdin, c.tty, c.pid != 0
	r.mu.Unlock()
	if !running {
		return -1, fmt.Errorf("container %s is not running", c.Name)
	}
	if req.Stdin && stdin == nil {
		return -1, fmt.Errorf("container %s does not keep stdin open (stdin: true in its spec)", c.Name)
	}
	if req.TTY && tty == nil {
		return -1, fmt.Errorf("container %s has no terminal (tty: true in its spec)", c.Name)
	}
	recs, cancel := run.Subscribe()
	defer cancel()
	if req.Stdin || req.TTY {
		var in io.WriteCloser // nil: input is dropped, resizes still apply
		switch {
		case req.Stdin && c.rc.StdinOnce && !c.rc.TTY:
			// The main process reads EOF once this attach closes its input or ends.
			in = stdin
			defer stdin.Close()
		case req.Stdin:
			in = nopCloser{stdin} // stdin stays open for the next attach
		}
		if !req.TTY {
			tty = nil
		}
		go readInput(br, in, tty)
	}
	for {
		select {
		case rec, ok := <-recs:
			if !ok {
				return r.exitCode(c), nil
			}
			ch := protocol.Stdout
			if rec.Stream == "stderr" {
				ch = protocol.Stderr
			}
			b := rec.Content
			if !rec.Partial {
				b = append(b, '\n')
			}
			if err := fw.Write(ch, b); err != nil {
				return -1, err
			}
		case <-ended:
			return r.exitCode(c), nil
		case <-ctx.Done():
			return -1, ctx.Err()
		}
	}
}

func (r *runtime) exitCode(c *container) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.status.State.State == protocol.Terminated {
		return c.status.State.ExitCode
	}
	return 0
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// portForward copies between conn and localhost:port, the pod's network namespace being the VM's.
func portForward(conn io.ReadWriteCloser, br *bufio.Reader, port int) {
	defer conn.Close()
	target, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		target, err = net.DialTimeout("tcp", net.JoinHostPort("::1", strconv.Itoa(port)), 5*time.Second)
	}
	if err != nil {
		return
	}
	defer target.Close()
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(target, br) //nolint:errcheck
		if tc, ok := target.(*net.TCPConn); ok {
			tc.CloseWrite() //nolint:errcheck
		}
		done <- struct{}{}
	}()
	go func() { io.Copy(conn, target); done <- struct{}{} }() //nolint:errcheck
	<-done
}
