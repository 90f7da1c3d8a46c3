package agent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

// supervisorProc is a container's supervisor process (see Supervise) as the agent holds it: started, waiting for
// its configuration on spec, with the agent's ends of its files.
type supervisorProc struct {
	cmd     *exec.Cmd
	spec    *os.File   // the configuration goes here, then it is closed
	started *os.File   // a byte (or EOF, when it failed) once the main process runs
	stdin   *os.File   // the main process's stdin, nil when it reads /dev/null
	outs    []*os.File // its stdout and stderr, or the terminal's master alone
	tty     bool       // outs[0] is a terminal's master, which is also stdin
	pidns   bool       // it is in the pod's shared PID namespace, not one of its own
}

// spawnSupervisor starts container c's supervisor, in the pod's PID namespace pidns (nil: one of its own) and
// cgroup (none when ""), with a terminal or pipes for its standard files (stdin: a pipe for attach). The control
// socket is made anew.
func spawnSupervisor(c *container, tty, stdin bool, pidns *os.File, cgroup string) (*supervisorProc, error) {
	sp := &supervisorProc{tty: tty, pidns: pidns != nil}
	var child []*os.File // the supervisor's ends, closed here once it started
	defer func() {
		for _, f := range child {
			f.Close()
		}
	}()
	fail := func(err error) (*supervisorProc, error) {
		sp.close()
		return nil, err
	}
	lis, err := listenControl(c.ctl)
	if err != nil {
		return fail(err)
	}
	child = append(child, lis)
	startedR, startedW, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	sp.started, child = startedR, append(child, startedW)
	specR, specW, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	sp.spec, child = specW, append(child, specR)
	cmd := exec.Command("/proc/self/exe", SupervisorArg)
	cmd.Args[0] = "i2kit-init" // what ps shows as the container's PID 1
	cmd.Env = []string{}
	cmd.ExtraFiles = []*os.File{lis, startedW, specR}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: containerCloneflags(pidns != nil)}
	if cgroup != "" {
		if cg, err := os.Open(cgroup); err == nil {
			defer cg.Close()
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
		}
	}
	if tty {
		master, slave, err := openPTY()
		if err != nil {
			return fail(err)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		sp.outs, child = []*os.File{master}, append(child, slave)
		if stdin {
			sp.stdin = master
		}
	} else {
		if stdin {
			pr, pw, err := os.Pipe()
			if err != nil {
				return fail(err)
			}
			cmd.Stdin, sp.stdin, child = pr, pw, append(child, pr)
		}
		var ws []*os.File
		for range 2 {
			pr, pw, err := os.Pipe()
			if err != nil {
				return fail(err)
			}
			sp.outs, ws, child = append(sp.outs, pr), append(ws, pw), append(child, pw)
		}
		cmd.Stdout, cmd.Stderr = ws[0], ws[1]
	}
	if err := startInPIDNamespace(cmd, pidns); err != nil {
		return fail(fmt.Errorf("starting the supervisor of %s, %w", c.Name, err))
	}
	sp.cmd = cmd
	return sp, nil
}

// joinCgroup moves the supervisor, which has not started the main process yet, into cgroup.
func (sp *supervisorProc) joinCgroup(cgroup string) error {
	if cgroup == "" {
		return nil
	}
	return os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(strconv.Itoa(sp.cmd.Process.Pid)), 0)
}

// kill ends a supervisor that will not be used, and reaps it.
func (sp *supervisorProc) kill() {
	sp.cmd.Process.Kill() //nolint:errcheck
	sp.close()
	sp.cmd.Wait() //nolint:errcheck
}

// close closes the agent's ends.
func (sp *supervisorProc) close() {
	for _, f := range append([]*os.File{sp.spec, sp.started, sp.stdin}, sp.outs...) {
		if f != nil {
			f.Close()
		}
	}
}
