package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/agent/boot"

	"github.com/i2kit/i2kit/agent/crilog"
	"github.com/i2kit/i2kit/agent/protocol"
)

// ContainersDir holds each container's overlay (upper, work), its root and its control socket.
const ContainersDir = "/run/i2kit/containers"

// LogsDir holds each container's logs, one file per run, in the CRI format kubectl reads.
const LogsDir = "/run/i2kit/logs"

// CgroupDir is where the agent mounts cgroup v2; each container gets a cgroup named after it.
const CgroupDir = "/sys/fs/cgroup"

// logMaxSize is the size at which a run's log file rotates; a run keeps one rotated file.
const logMaxSize = 10 << 20

// Back-off between restarts, as a kubelet's: the first restart is at once, then 10 s doubling to 5 min, reset
// after 10 min of running.
const (
	backoffInitial = 10 * time.Second
	backoffMax     = 5 * time.Minute
	backoffReset   = 10 * time.Minute
)

// runtime runs the pod's containers. A container runs in its own mount, PID, UTS and IPC namespaces under a
// supervisor (see Supervise), on an overlay of its read-only image with a writable upper layer, in a cgroup of
// its own, sharing the VM's network as containers share a pod's. A pod with ShareProcessNamespace has one PID
// namespace for all its containers, under a pause process (see Pause).
type runtime struct {
	console  io.Writer
	image    boot.ImageConfig
	hostname string
	// mirrorOutput copies the containers' output to the console, a prefixed line at a time. Only for a pod
	// configured from its image, booted without a node, whose console is all there is: under a node the console
	// is the host's to log, and a container's output would fill it at the container's will (the container's log
	// files are the source of kubectl logs). The agent's own lines always go to the console.
	mirrorOutput bool

	sayMu sync.Mutex // serialises console lines

	mu         sync.Mutex
	cfg        *protocol.PodConfig
	containers []*container // image order: onboot first
	order      []*container // start order (see startOrder), set by configure
	seq        uint64
	changed    chan struct{} // closed and replaced at every change
	stopping   bool
	stopCh     chan struct{}         // closed when stopping is set
	stopBy     stopDeadline          // when the pod's stop must be over (see shortenStop)
	rootsDone  chan struct{}         // closed once prepareRoots is over
	volumes    map[string]*podVolume // by name, each under VolumesDir once made
	pause      *os.Process           // the pause process, with ShareProcessNamespace (see startPause)
	pidns      *os.File              // its PID namespace, which every container's supervisor starts in
	services   services              // the ClusterIP forwarding rules
	// signal, when set, replaces syscall.Kill for the runs' supervisors (tests).
	signal func(pid int, sig syscall.Signal)
	// resizeMu serialises the writes of containers' cgroup values (resize, applyRunResources).
	resizeMu sync.Mutex
	// ephemerals are the ephemeral containers added since (see addEphemeral), adding the names being added.
	ephemerals []*container
	adding     map[string]bool
}

// container is one container of the pod and its current run.
type container struct {
	boot.Container
	rc   protocol.ContainerConfig
	root string
	ctl  string // the supervisor's control socket
	// rootErr is why the root could not be prepared (see prepareRoots).
	rootErr error
	// createErr is why the container cannot be created from the pod's configuration (no command, a user that
	// breaks runAsNonRoot); set once by configure, it never starts.
	createErr error
	cgroup    string // "" without cgroups
	logs      *crilog.Dir
	kind      containerKind // set by configure, before any run
	// ephemeral marks an ephemeral container (never restarted); target is the container whose PID namespace it
	// joins, nil for none.
	ephemeral bool
	target    *container

	// guarded by runtime.mu
	status protocol.ContainerStatus
	pid    int           // the supervisor's, while a run is on
	run    *crilog.Run   // the current run's log
	ended  chan struct{} // closed when the current run ends
	// started is closed once the current run's supervisor forwards signals (it has started the main process) or
	// has failed: a signal sent before might be lost.
	started chan struct{}
	stdin   *os.File      // the main process's stdin, when rc.Stdin
	tty     *os.File      // the main process's terminal (master side), when rc.TTY
	wake    chan struct{} // cuts a back-off short when the pod stops
	// retired is set when a sidecar is stopped because the pod's app containers are done: it does not restart.
	retired bool
	// restartNow says a resize stopped the current run: the next starts at once, whatever the restart policy.
	restartNow bool
	// preStopRun says the current run's preStop hook has been run (see terminate): a kubelet runs it once.
	preStopRun bool
}

func newRuntime(console io.Writer, image boot.ImageConfig, hostname string) *runtime {
	r := &runtime{console: console, image: image, hostname: hostname, changed: make(chan struct{}),
		volumes: map[string]*podVolume{}, rootsDone: make(chan struct{}), stopCh: make(chan struct{})}
	for _, c := range image.Containers {
		r.containers = append(r.containers, &container{Container: c, wake: make(chan struct{}),
			status: protocol.ContainerStatus{Name: c.Name, State: protocol.ContainerState{State: protocol.Waiting, Reason: "ContainerCreating"}}})
	}
	return r
}

// changedLocked records a change: watchers wake.
func (r *runtime) changedLocked() {
	r.seq++
	close(r.changed)
	r.changed = make(chan struct{})
}

// status returns the pod's status and a channel closed at its next change.
func (r *runtime) status() (protocol.PodStatus, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := protocol.PodStatus{Seq: r.seq, Configured: r.cfg != nil}
	for _, c := range append(slices.Clone(r.containers), r.ephemerals...) {
		cs := c.status
		if cs.LastState != nil {
			ls := *cs.LastState
			cs.LastState = &ls
		}
		st.Containers = append(st.Containers, cs)
	}
	return st, r.changed
}

func (r *runtime) find(name string) *container {
	for _, c := range r.containers {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// configure applies the pod's runtime configuration, makes the pod's volumes and starts the containers in a
// kubelet's order (see startPod); it runs once, later calls only replace the service table.
func (r *runtime) configure(cfg protocol.PodConfig) error {
	switch cfg.RestartPolicy {
	case protocol.RestartAlways, protocol.RestartOnFailure, protocol.RestartNever:
	case "":
		cfg.RestartPolicy = protocol.RestartAlways
	default:
		return fmt.Errorf("restartPolicy %q is not one of Always, OnFailure, Never", cfg.RestartPolicy)
	}
	for _, cc := range cfg.Containers {
		if r.find(cc.Name) == nil {
			return fmt.Errorf("container %q is not in the image", cc.Name)
		}
	}
	if err := validateVolumes(cfg); err != nil {
		return err
	}
	r.mu.Lock()
	if r.cfg != nil {
		r.mu.Unlock()
		// A node that restarted configures again: only the service table may have changed meanwhile.
		return r.services.set(cfg.Services)
	}
	r.applyConfigLocked(&cfg)
	r.changedLocked()
	r.mu.Unlock()
	t0 := time.Now()
	if err := r.services.set(cfg.Services); err != nil {
		// The containers run; what they reach through Services fails, and the console says why.
		r.say("i2kit-agent: service forwarding: %v", err)
	} else {
		r.say("i2kit-agent: %d service ports forwarded (%s)", len(cfg.Services), time.Since(t0).Round(time.Millisecond))
	}
	if err := writeSysctls(procSys, cfg.Sysctls); err != nil {
		return r.cannotCreate(r.containers, err)
	}
	if err := r.makeVolumes(cfg.Volumes); err != nil {
		return r.cannotCreate(r.containers, err)
	}
	if cfg.ShareProcessNamespace {
		if err := r.startPause(); err != nil {
			return r.cannotCreate(r.containers, err)
		}
	}
	for _, c := range r.containers {
		if err := r.prepare(c); err != nil {
			return r.cannotCreate([]*container{c}, err)
		}
	}
	go startPod(r, r.order, r.stopCh)
	return nil
}

// applyConfigLocked takes the node's configuration of the pod's containers: each container's runtime config, its
// kind (which needs the config: the node marks init containers) and the start order. Called with r.mu held.
func (r *runtime) applyConfigLocked(cfg *protocol.PodConfig) {
	r.cfg = cfg
	for _, cc := range cfg.Containers {
		c := r.find(cc.Name)
		c.rc, c.Argv = cc, containerArgv(c.Container, cc)
		res := cc.Resources()
		c.status.Resources = &res
		checkCreate(c)
	}
	var byConfig bool
	r.order, byConfig = startOrder(r.containers, cfg.Containers)
	for _, c := range r.containers {
		c.kind = kindOf(c, byConfig) // after c.rc: the kind is the config's
	}
}

// checkCreate refuses, as a kubelet does before it creates a container, one without a command or whose user breaks
// runAsNonRoot: c keeps the error (createErr) and waits with its reason.
func checkCreate(c *container) {
	if len(c.Argv) == 0 {
		c.createErr = errors.New("no command specified: the image has no entrypoint or cmd and the pod gives no command")
		c.status.State = protocol.ContainerState{State: protocol.Waiting, Reason: "CreateContainerError", Message: c.createErr.Error()}
	} else if err := verifyRunAsNonRoot(c.User, c.rc.Security); err != nil {
		c.createErr = err
		c.status.State = protocol.ContainerState{State: protocol.Waiting, Reason: "CreateContainerConfigError", Message: err.Error()}
	}
}

// cannotCreate says on the console why containers cannot be created, leaves them waiting with
// CreateContainerError and the reason, and returns err.
func (r *runtime) cannotCreate(cs []*container, err error) error {
	r.say("i2kit-agent: %v", err)
	for _, c := range cs {
		r.setState(c, protocol.ContainerState{State: protocol.Waiting, Reason: "CreateContainerError", Message: err.Error()})
	}
	return err
}

// prepare mounts a container's root (its image under a writable overlay), makes its cgroup with the limits, and
// opens its log directory.
func (r *runtime) prepare(c *container) error {
	<-r.rootsDone
	if c.rootErr != nil {
		return c.rootErr
	}
	// A resize may come meanwhile (the pod is configured): it writes c's resources and reads its cgroup under
	// runtime.mu, and waits for resizeMu, so that the cgroup is made with the latest resources.
	r.resizeMu.Lock()
	defer r.resizeMu.Unlock()
	r.mu.Lock()
	res := c.rc.Resources()
	r.mu.Unlock()
	cg, err := makeCgroup(c.Name, res)
	if err != nil {
		r.say("i2kit-agent: container %s runs without a cgroup: %v", c.Name, err)
	}
	r.mu.Lock()
	c.cgroup = cg
	r.mu.Unlock()
	return nil
}

// prepareRoots mounts every container's root (its image under a writable overlay) and opens its logs, which
// need nothing from the pod's runtime configuration: done at boot, while the node connects, it is off the path
// from configuration to running containers. rootsDone is closed when it is over.
func (r *runtime) prepareRoots() {
	defer close(r.rootsDone)
	for _, c := range r.containers {
		c.rootErr = r.prepareRoot(c)
	}
}

func (r *runtime) prepareRoot(c *container) error {
	return r.mountRoot(c, filepath.Join(boot.ImagesDir, c.Name))
}

// mountRoot mounts c's root, lower under a writable overlay, and opens its logs.
func (r *runtime) mountRoot(c *container, lower string) error {
	dir := filepath.Join(ContainersDir, c.Name)
	c.root = filepath.Join(dir, "root")
	c.ctl = filepath.Join(dir, "ctl.sock")
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	if err := syscall.Mount("overlay", c.root, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mounting the root of %s, %w", c.Name, err)
	}
	logs, err := crilog.Open(filepath.Join(LogsDir, c.Name), logMaxSize)
	if err != nil {
		return fmt.Errorf("opening the logs of %s, %w", c.Name, err)
	}
	r.mu.Lock()
	c.logs = logs
	r.mu.Unlock()
	return nil
}

// makeCgroup creates a container's cgroup with its resources (see applyResources).
func makeCgroup(name string, res protocol.Resources) (string, error) {
	if _, err := os.Stat(filepath.Join(CgroupDir, "cgroup.controllers")); err != nil {
		return "", errors.New("cgroup v2 is not mounted")
	}
	dir := filepath.Join(CgroupDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, applyResources(dir, res, false)
}

func (r *runtime) setState(c *container, s protocol.ContainerState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.status.State = s
	r.changedLocked()
}

// supervise runs c and restarts it as restarts says, with a kubelet's back-off, until it is done, the pod stops,
// or c is retired. It reports whether c's last run succeeded.
func (r *runtime) supervise(c *container) bool {
	if c.createErr != nil {
		r.say("i2kit-agent: container %s: %v", c.Name, c.createErr)
		return false // its Waiting state says why; the pod's spec cannot change
	}
	backoff := time.Duration(0)
	for attempt := 0; ; attempt++ {
		r.mu.Lock()
		stopping := r.stopping || c.retired
		r.mu.Unlock()
		if stopping { // an ephemeral container added as the pod stopped; else see beginRun
			return false
		}
		start := time.Now()
		code, reason, err := r.runOnce(c, attempt)
		now := time.Now()
		msg := ""
		if err != nil {
			code, reason, msg = 128, "StartError", err.Error()
			r.say("i2kit-agent: container %s: %v", c.Name, err)
		} else {
			r.say("i2kit-agent: container %s exited with code %d", c.Name, code)
		}
		if err == nil {
			msg = terminationMessage(c, code)
		}
		term := protocol.ContainerState{State: protocol.Terminated, ExitCode: code, Reason: reason, Message: msg,
			StartedAt: start, FinishedAt: now}
		r.mu.Lock()
		c.status.State = term
		policy, stopping, resized := r.cfg.RestartPolicy, r.stopping || c.retired, c.restartNow
		c.restartNow = false
		r.changedLocked()
		r.mu.Unlock()
		restart := resized || restarts(c.kind, policy, c.rc.RestartPolicy, c.rc.RestartRules, code)
		if stopping || !restart || c.ephemeral {
			return code == 0
		}
		if now.Sub(start) > backoffReset {
			backoff = 0
		}
		if backoff > 0 && !resized { // a resize's restart is the node's doing, not a crash: no back-off
			r.mu.Lock()
			last := term
			c.status.LastState = &last
			c.status.State = protocol.ContainerState{State: protocol.Waiting, Reason: "CrashLoopBackOff",
				Message: fmt.Sprintf("back-off %s restarting failed container=%s", backoff, c.Name)}
			r.changedLocked()
			r.mu.Unlock()
			select {
			case <-time.After(backoff): // the guest's own supervisor: nothing else waits on this goroutine
			case <-c.wake:
			}
		}
		if !resized {
			backoff = min(max(2*backoff, backoffInitial), backoffMax)
		}
		r.mu.Lock()
		last := term
		c.status.LastState = &last
		c.status.RestartCount++
		stopping = r.stopping || c.retired
		r.mu.Unlock()
		if stopping {
			return false
		}
	}
}

// runOnce runs c once and waits for it. Its output goes to the run's log (see containerOutput).
func (r *runtime) runOnce(c *container, attempt int) (code int, reason string, err error) {
	run, err := c.logs.NewRun(attempt)
	if err != nil {
		return 0, "", err
	}
	defer run.Close()
	lis, err := listenControl(c.ctl)
	if err != nil {
		return 0, "", err
	}
	defer lis.Close()
	mounts, err := r.bindMounts(c)
	if err != nil {
		return 0, "", err
	}
	r.applyRunResources(c)
	if path := c.rc.TerminationMessagePath; path != "" {
		// Each run starts with an empty message file of its own, bind-mounted where the container writes it.
		if err := prepareTerminationLog(terminationLogFile(c)); err != nil {
			return 0, "", err
		}
		mounts = append(mounts, bindMount{Source: terminationLogFile(c), Target: path})
	}
	r.mu.Lock()
	hosts, resolv, hostname, pidns := r.cfg.Hosts, r.cfg.ResolvConf, r.hostname, r.pidns
	if r.cfg.Hostname != "" {
		hostname = r.cfg.Hostname
	}
	var sysctls []protocol.Sysctl
	for _, s := range r.cfg.Sysctls {
		if inContainerNamespace(s.Name) {
			sysctls = append(sysctls, s)
		}
	}
	r.mu.Unlock()
	if c.target != nil && pidns == nil { // an ephemeral container joins its target's (see addEphemeral)
		ns, err := r.targetPIDNamespace(c.target)
		if err != nil {
			return 0, "", err
		}
		defer ns.Close()
		pidns = ns
	}
	spec, _ := json.Marshal(supervisorSpec{Container: c.Container, Security: c.rc.Security, Env: c.rc.Env, Root: c.root, Hostname: hostname,
		Hosts: hosts, Resolv: resolv, Mounts: mounts, TTY: c.rc.TTY, Sysctls: sysctls,
		Cgroup: c.cgroup != ""})
	cmd := exec.Command("/proc/self/exe", SupervisorArg)
	cmd.Args[0] = "i2kit-init" // what ps shows as the container's PID 1
	cmd.Env = []string{supervisorEnv + "=" + string(spec)}
	startedR, startedW, err := os.Pipe() // the supervisor writes a byte once the main process runs
	if err != nil {
		return 0, "", err
	}
	defer startedR.Close()
	cmd.ExtraFiles = []*os.File{lis, startedW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: containerCloneflags(pidns != nil)}
	if c.cgroup != "" {
		cg, err := os.Open(c.cgroup)
		if err == nil {
			defer cg.Close()
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
		}
	}
	var wg sync.WaitGroup
	var stdinW, tty *os.File // what attach writes to; the terminal's master, with rc.TTY
	var outputs []*os.File   // the child's ends, closed here once it started
	console := &consoleLines{r: r, prefix: "[" + c.Name + "] "}
	if c.rc.TTY {
		master, slave, err := openPTY()
		if err != nil {
			return 0, "", err
		}
		defer master.Close()
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		outputs, tty = []*os.File{slave}, master
		if c.rc.Stdin {
			stdinW = master
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A terminal merges the streams: it is logged as stdout, as a kubelet logs it. Reads end (EIO) once
			// every process has closed the terminal.
			io.Copy(r.containerOutput(run.Stream("stdout"), console), master) //nolint:errcheck
		}()
	} else {
		if c.rc.Stdin {
			pr, pw, err := os.Pipe()
			if err != nil {
				return 0, "", err
			}
			defer pr.Close()
			cmd.Stdin, stdinW = pr, pw
		}
		for _, stream := range []string{"stdout", "stderr"} {
			pr, pw, err := os.Pipe()
			if err != nil {
				return 0, "", err
			}
			outputs = append(outputs, pw)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer pr.Close()
				io.Copy(r.containerOutput(run.Stream(stream), console), pr) //nolint:errcheck
			}()
		}
		cmd.Stdout, cmd.Stderr = outputs[0], outputs[1]
	}
	ooms := oomKills(c.cgroup)
	err = startInPIDNamespace(cmd, pidns)
	startedW.Close()
	for _, f := range outputs {
		f.Close()
	}
	if err != nil {
		wg.Wait()
		if stdinW != nil {
			stdinW.Close()
		}
		return 0, "", fmt.Errorf("starting %s, %w", c.Name, err)
	}
	ended, started := make(chan struct{}), make(chan struct{})
	r.beginRun(c, cmd.Process.Pid, run, ended, started, stdinW, tty)
	// Running once the supervisor says the main process runs, or ended (EOF: it failed before, and says why).
	startedR.Read(make([]byte, 1)) //nolint:errcheck
	close(started)
	r.running(c)
	go r.afterStart(c, cmd.Process.Pid, ended) // postStart, then the probes until the run ends
	err = cmd.Wait()
	if pidns != nil {
		killCgroup(c.cgroup) // before the output is drained: what is left holds it open
	}
	wg.Wait()
	r.mu.Lock()
	c.pid, c.stdin, c.tty = 0, nil, nil
	c.status.Ready, c.status.Started = false, false
	close(ended)
	r.mu.Unlock()
	if stdinW != nil {
		stdinW.Close()
	}
	code = 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
	} else if err != nil {
		return 0, "", err
	}
	switch {
	case oomKills(c.cgroup) > ooms:
		return code, "OOMKilled", nil
	case code == 0:
		return 0, "Completed", nil
	default:
		return code, "Error", nil
	}
}

// beginRun records c's new run: its supervisor's pid, its log, its channels and its stdin and terminal. A run that
// begins once the pod is stopping, or once c (a sidecar) is retired, began after stop or stopSidecars looked for the
// runs to signal, and would run on, never signalled (a sidecar would keep its pod from completing): it is killed at
// once, as a kubelet starts nothing in a pod it is stopping.
func (r *runtime) beginRun(c *container, pid int, run *crilog.Run, ended, started chan struct{}, stdin, tty *os.File) {
	r.mu.Lock()
	c.pid, c.run, c.ended, c.started, c.stdin, c.tty = pid, run, ended, started, stdin, tty
	c.preStopRun = false
	late := r.stopping || c.retired
	r.mu.Unlock()
	if late {
		r.say("i2kit-agent: container %s started as the pod stopped: killed", c.Name)
		r.kill(pid, syscall.SIGKILL)
	}
}

// oomKills reads how many processes the OOM killer ended in a cgroup.
func oomKills(cgroup string) int {
	if cgroup == "" {
		return 0
	}
	b, _ := os.ReadFile(filepath.Join(cgroup, "memory.events"))
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// stop ends every container within grace (or by an earlier deadline, see shortenStop), in a kubelet's order (see stopOrder and terminate): preStop hooks, then
// SIGTERM, then SIGKILL to what still runs after grace. Restarts stop. The pause process, if any, ends last.
func (r *runtime) stop(ctx context.Context, grace time.Duration) {
	defer r.stopPause() // once every container has ended
	r.mu.Lock()
	if !r.stopping {
		r.stopping = true
		close(r.stopCh)
		r.changedLocked() // whoever waits for a container to start gives up
	}
	for _, c := range r.containers {
		wakeUp(c)
	}
	for _, c := range r.ephemerals {
		wakeUp(c)
	}
	order := r.order
	if order == nil { // never configured
		order = r.containers
	}
	order = append(slices.Clone(order), r.ephemerals...) // stopped with the app containers
	r.mu.Unlock()
	r.stopBy.shorten(time.Now().Add(grace)) // an earlier deadline (a repeated power-off, see shortenStop) stays
	r.terminate(ctx, stopOrder(order), &r.stopBy)
}

// wakeUp cuts c's back-off short, for good: it is stopping. Called with runtime.mu held.
func wakeUp(c *container) {
	select {
	case <-c.wake:
	default:
		close(c.wake)
	}
}

func (r *runtime) say(format string, args ...any) {
	r.sayMu.Lock()
	defer r.sayMu.Unlock()
	fmt.Fprintf(r.console, format+"\n", args...)
}

// containerOutput is where a container's output stream goes: its log, and the console only with mirrorOutput.
func (r *runtime) containerOutput(log io.Writer, console *consoleLines) io.Writer {
	if !r.mirrorOutput {
		return log
	}
	return io.MultiWriter(log, console)
}

// consoleLines copies a container's output to the console, a prefixed line at a time.
type consoleLines struct {
	r      *runtime
	prefix string
	buf    []byte
}

func (w *consoleLines) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			if len(w.buf) > 4096 {
				w.r.say("%s%s", w.prefix, w.buf)
				w.buf = w.buf[:0]
			}
			return len(p), nil
		}
		w.r.say("%s%s", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

// containerArgv is what a container runs: the pod's command and args over the image's entrypoint and cmd, merged
// as a kubelet does (command drops the image's cmd; args alone follow the image's entrypoint).
func containerArgv(img boot.Container, rc protocol.ContainerConfig) []string {
	switch {
	case len(rc.Command) > 0:
		return append(slices.Clone(rc.Command), rc.Args...)
	case len(rc.Args) > 0:
		return append(slices.Clone(img.Entrypoint), rc.Args...)
	}
	return img.Argv
}

// verifyRunAsNonRoot refuses, as a kubelet does before creating a container, a container with runAsNonRoot whose
// user is root, or whose image user is a name: which uid a name stands for is the image's business, so a
// kubelet cannot verify it and neither do we.
func verifyRunAsNonRoot(imageUser string, sec *protocol.Security) error {
	if sec == nil || !sec.RunAsNonRoot {
		return nil
	}
	if sec.RunAsUser != nil {
		if *sec.RunAsUser == 0 {
			return errors.New("container's runAsUser breaks non-root policy")
		}
		return nil
	}
	u, _, _ := strings.Cut(imageUser, ":")
	if u == "" {
		return errors.New("container has runAsNonRoot and image will run as root")
	}
	uid, err := strconv.Atoi(u)
	switch {
	case err != nil:
		return fmt.Errorf("container has runAsNonRoot and image has non-numeric user (%s), cannot verify user is non-root", u)
	case uid == 0:
		return errors.New("container has runAsNonRoot and image will run as root")
	}
	return nil
}

// fsGroup is the pod's fsGroup, -1 without one.
func (r *runtime) fsGroup() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cfg == nil || r.cfg.FSGroup == nil {
		return -1
	}
	return int(*r.cfg.FSGroup)
}
