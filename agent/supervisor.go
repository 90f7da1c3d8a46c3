package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/i2kit/i2kit/agent/boot"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/protocol"
)

// supervisorEnv carries a container's configuration to the agent's own re-execution inside the container's new
// namespaces (see Supervise).
const supervisorEnv = "I2KIT_CONTAINER"

// SupervisorArg is the argument that makes i2kit-agent act as a container's supervisor (see Supervise).
const SupervisorArg = "container-init"

// supervisorSpec is what the agent hands to Supervise.
type supervisorSpec struct {
	boot.Container
	Security *protocol.Security `json:"security,omitempty"`
	Env      []string           `json:"podEnv,omitempty"` // the pod's, over the image's
	Root     string             `json:"root"`
	Hostname string             `json:"hostname"`
	Hosts    []byte             `json:"hosts,omitempty"`  // /etc/hosts, when the node sent one
	Resolv   []byte             `json:"resolv,omitempty"` // /etc/resolv.conf, when the node sent one
	// Mounts are bound into Root in order (see bindVolumes).
	Mounts []bindMount `json:"mounts,omitempty"`
	// Sysctls are the pod's sysctls of the IPC and UTS namespaces, set in the container's own (see
	// inContainerNamespace).
	Sysctls []protocol.Sysctl `json:"sysctls,omitempty"`
	// TTY: the supervisor's standard input, output and error are a terminal, which becomes the main process's
	// controlling terminal (in a session of its own).
	TTY bool `json:"tty,omitempty"`
	// Cgroup: the supervisor runs in the container's own cgroup, which becomes the root of a cgroup namespace of
	// its own, mounted (read-only) at /sys/fs/cgroup as a container runtime mounts it: the container reads its own
	// limits there (memory.max, cpu.max, cpu.weight), as on any node, and sees no other container's cgroup.
	Cgroup bool `json:"cgroup,omitempty"`
}

// bindMount binds Source, a path in the agent's mount namespace, at Target, a path in the container; with
// SubPath, it binds what SubPath resolves to within Source, resolved and bound by descriptor in the supervisor's
// own mount namespace (see volumeSource: a bind from a descriptor opened in another mount namespace is refused by
// the kernel). Create makes the SubPath's missing directories (an emptyDir).
type bindMount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	SubPath  string `json:"subPath,omitempty"`
	Create   bool   `json:"create,omitempty"`
}

// execSpec is a request to the supervisor's control socket: run Argv with the three descriptors sent alongside.
type execSpec struct {
	Argv []string `json:"argv"`
	TTY  bool     `json:"tty"`
}

// execReply is the supervisor's answer: first the pid (or an error), later the exit code.
type execReply struct {
	Pid   int    `json:"pid,omitempty"`
	Exit  *int   `json:"exit,omitempty"`
	Error string `json:"error,omitempty"`
}

// Supervise runs in a container's new namespaces, as the agent re-executed by the runtime with the control
// socket's listener as fd 3. It makes the mount namespace private, mounts /proc, /dev and /sys and binds the
// pod's volumes into the container's root, enters it, and starts the container's command as the container's
// user. It stays as PID 1 of the container's PID namespace, like tini: it forwards signals to the command,
// reaps orphans, and runs the processes that exec asks for on the control socket. It exits with the command's
// exit code (128+signal when a signal ended it), which ends every process of the container. In a pod's shared
// PID namespace (see Pause) it is not PID 1 but a child subreaper, so that it still reaps the container's
// orphans, and the agent ends what is left of the container by its cgroup (see killCgroup). It returns only on
// error.
func Supervise() error {
	// Every process of the container is forked from this thread (see supervisor.forks): its capability bounding
	// set and no_new_privs, which are a thread's, are what the container's processes inherit.
	goruntime.LockOSThread()
	var c supervisorSpec
	if err := json.Unmarshal([]byte(os.Getenv(supervisorEnv)), &c); err != nil {
		return fmt.Errorf("reading container spec, %w", err)
	}
	// The control socket (3) and the started pipe (4) come without close-on-exec: the container's processes must
	// not inherit them (a process holding the control socket could answer the agent's exec requests).
	unix.CloseOnExec(4)
	ctl := os.NewFile(3, "control")
	lis, err := net.FileListener(ctl) // a close-on-exec duplicate
	ctl.Close()
	if err != nil {
		return fmt.Errorf("opening the control socket, %w", err)
	}
	if os.Getpid() != 1 { // in the pod's shared PID namespace: orphans would go to the pause process
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("becoming the container's subreaper, %w", err)
		}
	}
	if c.Cgroup {
		// On this thread, which forks every process of the container: its cgroup, the container's, is the root of
		// the namespace they all share.
		if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
			return fmt.Errorf("making the container's cgroup namespace, %w", err)
		}
	}
	if err := enterRoot(c); err != nil {
		return err
	}
	uid, gid, groups, err := containerUser(c.User, c.Security)
	if err != nil {
		return err
	}
	env := containerEnv(c.Container.Env, c.Env)
	path, err := lookPath(c.Argv[0], env)
	if err != nil {
		return fmt.Errorf("executable %q: %w", c.Argv[0], err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}
	if err := restrictProcesses(c.Security); err != nil {
		return err
	}
	s := &supervisor{waits: map[int]chan int{}, forks: make(chan forkRequest)}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	main, err := syscall.ForkExec(path, c.Argv, &syscall.ProcAttr{Dir: c.WorkingDir, Env: env,
		Files: []uintptr{0, 1, 2}, Sys: &syscall.SysProcAttr{Credential: cred, Setsid: c.TTY, Setctty: c.TTY}})
	if err != nil {
		return fmt.Errorf("starting %q, %w", c.Argv[0], err)
	}
	// The agent counts the container as running from now on: signals are forwarded (a SIGTERM that came before
	// the handlers were in place would have been dropped, the namespace's init ignoring what it does not handle).
	started := os.NewFile(4, "started")
	started.Write([]byte{1}) //nolint:errcheck
	started.Close()
	os.Stdin.Close()
	go s.serve(lis, env, c.WorkingDir, cred)
	for {
		select {
		case f := <-s.forks:
			pid, err := syscall.ForkExec(f.path, f.argv, f.attr)
			if err == nil {
				s.mu.Lock()
				s.waits[pid] = f.wait
				s.mu.Unlock()
			}
			f.reply <- forkResult{pid, err}
		case sig := <-sigs:
			if sig != syscall.SIGCHLD {
				syscall.Kill(main, sig.(syscall.Signal)) //nolint:errcheck
				continue
			}
			if code, done := s.reap(main); done {
				os.Exit(code)
			}
		}
	}
}

// systemMount is a filesystem the supervisor mounts in every container's root, at dst under it; with file, dst is
// a file (a device node bound from the VM's /dev), else a directory. An optional bind is left out when its source
// does not exist (a VM whose kernel lacks POSIX message queues has no /dev/mqueue).
type systemMount struct {
	src, dst, fstype string
	flags            uintptr
	file, optional   bool
}

// containerDevices are the device nodes an unprivileged container has in its /dev, as a container runtime gives
// them (runc's default devices): bound from the VM's /dev, each one alone.
var containerDevices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// devLinks are the symbolic links of a container's /dev (runc's), by name.
var devLinks = map[string]string{
	"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2",
	"ptmx": "pts/ptmx", "core": "/proc/kcore",
}

// systemMounts are the container's /proc, /dev, /sys and, when the container has a cgroup namespace (cgroup), its
// cgroup at /sys/fs/cgroup (mounted after /sys, over which it lies): /sys and the cgroup read-only, except for a
// privileged container, which gets them read-write as on a node.
//
// A privileged container's /dev is the VM's, every device of it. An unprivileged container's is a small tmpfs of
// its own that honours no device node (nodev) but the containerDevices bound into it, with the VM's terminals
// (/dev/pts, for exec's terminals), the pod's shared memory (/dev/shm, a tmpfs all the pod's containers share, as
// the pod sandbox's on a node) and the POSIX message queues (/dev/mqueue): a container cannot reach the VM's disks,
// console or memory through /dev. Together with nodev on its root and volumes (see setUpRoot and the VM's mounts in
// Init), a device node it makes (CAP_MKNOD is in the default set) opens nothing: the devices cgroup a node uses for
// this takes an eBPF program in cgroup v2, which nodev makes unnecessary.
func systemMounts(privileged, cgroup bool) []systemMount {
	const noexec = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC
	sys := uintptr(noexec)
	if !privileged {
		sys |= syscall.MS_RDONLY
	}
	ms := []systemMount{{src: "proc", dst: "proc", fstype: "proc", flags: noexec}}
	if privileged {
		ms = append(ms, systemMount{src: "/dev", dst: "dev", flags: syscall.MS_BIND | syscall.MS_REC})
	} else {
		ms = append(ms, systemMount{src: "tmpfs", dst: "dev", fstype: "tmpfs", flags: syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC})
		for _, d := range containerDevices {
			ms = append(ms, systemMount{src: "/dev/" + d, dst: "dev/" + d, flags: syscall.MS_BIND, file: true})
		}
		ms = append(ms, systemMount{src: "/dev/pts", dst: "dev/pts", flags: syscall.MS_BIND})
		for _, d := range []string{"shm", "mqueue"} {
			ms = append(ms, systemMount{src: "/dev/" + d, dst: "dev/" + d, flags: syscall.MS_BIND, optional: true})
		}
	}
	ms = append(ms, systemMount{src: "sysfs", dst: "sys", fstype: "sysfs", flags: sys})
	if cgroup {
		ms = append(ms, systemMount{src: "cgroup2", dst: "sys/fs/cgroup", fstype: "cgroup2", flags: sys})
	}
	return ms
}

// devOptions are the options of an unprivileged container's /dev tmpfs (runc's).
const devOptions = "mode=755,size=65536k"

// rootFlags are the flags of a container's root mount: nodev unless the container is privileged (see
// systemMounts).
func rootFlags(privileged bool) uintptr {
	if privileged {
		return 0
	}
	return syscall.MS_NODEV
}

// setUpRoot mounts /proc, /dev and /sys into the container's root, binds the pod's volumes (see bindVolumes), and
// makes the root a mount of its own (with its submounts) with rootFlags. The caller is in a private mount
// namespace.
func setUpRoot(c supervisorSpec) error {
	privileged := c.Security != nil && c.Security.Privileged
	for _, m := range systemMounts(privileged, c.Cgroup) {
		if err := mountSystem(c.Root, m); err != nil {
			return fmt.Errorf("mounting /%s, %w", m.dst, err)
		}
	}
	if !privileged {
		dev, err := scopedJoin(c.Root, "dev")
		if err != nil {
			return err
		}
		for name, to := range devLinks {
			if err := os.Symlink(to, filepath.Join(dev, name)); err != nil {
				return fmt.Errorf("linking /dev/%s, %w", name, err)
			}
		}
	}
	if err := bindVolumes(c.Root, c.Mounts); err != nil {
		return err
	}
	// The root becomes a mount of its own (an overlay's flags are the VM's), to take its flags now and, under
	// readOnlyRootFilesystem, to be made read-only once entered.
	if err := syscall.Mount(c.Root, c.Root, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return fmt.Errorf("binding the container root, %w", err)
	}
	if f := rootFlags(privileged); f != 0 {
		if err := syscall.Mount("", c.Root, "", syscall.MS_BIND|syscall.MS_REMOUNT|f, ""); err != nil {
			return fmt.Errorf("remounting the container root, %w", err)
		}
	}
	return nil
}

// mountSystem mounts m under root (see systemMount for an optional one).
func mountSystem(root string, m systemMount) error {
	if m.optional {
		if _, err := os.Stat(m.src); errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	dst, err := scopedJoin(root, m.dst) // an image's dev may be a symbolic link: it is resolved within the root
	if err != nil {
		return err
	}
	if m.file {
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			return err
		}
		f.Close()
	} else if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	opts := ""
	if m.fstype == "tmpfs" && m.dst == "dev" {
		opts = devOptions
	}
	return syscall.Mount(m.src, dst, m.fstype, m.flags, opts)
}

// enterRoot sets up the container's root (see setUpRoot), sets the hostname and the sysctls of the container's
// namespaces, and enters the root.
func enterRoot(c supervisorSpec) error {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private, %w", err)
	}
	if err := setUpRoot(c); err != nil {
		return err
	}
	if err := syscall.Sethostname([]byte(c.Hostname)); err != nil {
		return fmt.Errorf("setting hostname, %w", err)
	}
	// The /proc mounted so far is the agent's; its sysctls of the IPC and UTS namespaces are this process's.
	if err := writeSysctls(procSys, c.Sysctls); err != nil {
		return err
	}
	if err := syscall.Chroot(c.Root); err != nil {
		return fmt.Errorf("entering the container root, %w", err)
	}
	// /etc/hostname is the pod's name inside the container, as a kubelet's bind mount makes it; written from
	// inside the root, so that an image's symlink cannot point it elsewhere.
	if err := os.MkdirAll("/etc", 0o755); err == nil {
		os.WriteFile("/etc/hostname", []byte(c.Hostname+"\n"), 0o644) //nolint:errcheck
		if len(c.Hosts) > 0 {
			os.WriteFile("/etc/hosts", c.Hosts, 0o644) //nolint:errcheck
		}
		if len(c.Resolv) > 0 {
			os.WriteFile("/etc/resolv.conf", c.Resolv, 0o644) //nolint:errcheck
		}
	}
	if err := os.Chdir(c.WorkingDir); err != nil {
		return fmt.Errorf("working directory %s, %w", c.WorkingDir, err)
	}
	if c.Security != nil && c.Security.ReadOnlyRootFilesystem {
		flags := syscall.MS_BIND | syscall.MS_REMOUNT | syscall.MS_RDONLY | rootFlags(c.Security.Privileged)
		if err := syscall.Mount("", "/", "", flags, ""); err != nil {
			return fmt.Errorf("making the root read-only, %w", err)
		}
	}
	return nil
}

// containerEnv is the image's environment with the pod's over it, and PATH and HOME defaulted.
func containerEnv(image, pod []string) []string {
	env := map[string]int{}
	var out []string
	for _, kv := range append(append([]string(nil), image...), pod...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := env[k]; ok {
			out[i] = kv
			continue
		}
		env[k] = len(out)
		out = append(out, kv)
	}
	if _, ok := env["PATH"]; !ok {
		out = append(out, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	if _, ok := env["HOME"]; !ok {
		out = append(out, "HOME=/")
	}
	return out
}

// lookPath finds an executable as a shell would with the container's PATH.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return exec.LookPath(name)
	}
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, d := range filepath.SplitList(p) {
				if path, err := exec.LookPath(filepath.Join(d, name)); err == nil {
					return path, nil
				}
			}
			return "", exec.ErrNotFound
		}
	}
	return exec.LookPath(name)
}

// supervisor reaps the container's processes and tells exec requests their exit codes.
type supervisor struct {
	mu    sync.Mutex // guards waits
	waits map[int]chan int
	// forks carries exec requests to Supervise's loop, which forks on the locked thread and, as it also reaps,
	// registers each wait before the child can be reaped.
	forks chan forkRequest
}

type forkRequest struct {
	path  string
	argv  []string
	attr  *syscall.ProcAttr
	wait  chan int
	reply chan forkResult
}

type forkResult struct {
	pid int
	err error
}

// reap collects every exited child; it reports the main process's exit code once it has exited.
func (s *supervisor) reap(main int) (int, bool) {
	code, done := 0, false
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err != nil || pid <= 0 {
			return code, done
		}
		c := ws.ExitStatus()
		if ws.Signaled() {
			c = 128 + int(ws.Signal())
		}
		if pid == main {
			code, done = c, true
		}
		s.mu.Lock()
		if w, ok := s.waits[pid]; ok {
			w <- c
			delete(s.waits, pid)
		}
		s.mu.Unlock()
	}
}

// serve runs exec requests from the agent: each connection carries one execSpec with the stdin, stdout and stderr
// descriptors, and gets the pid and then the exit code back.
func (s *supervisor) serve(lis net.Listener, env []string, dir string, cred *syscall.Credential) {
	for {
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		go s.exec(conn.(*net.UnixConn), env, dir, cred)
	}
}

func (s *supervisor) exec(conn *net.UnixConn, env []string, dir string, cred *syscall.Credential) {
	defer conn.Close()
	enc := json.NewEncoder(conn)
	buf, oob := make([]byte, 64<<10), make([]byte, syscall.CmsgSpace(3*4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	var fds []int
	if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
		fds, _ = syscall.ParseUnixRights(&msgs[0])
	}
	defer func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}()
	var req execSpec
	if err := json.Unmarshal(buf[:n], &req); err != nil || len(fds) != 3 || len(req.Argv) == 0 {
		enc.Encode(execReply{Error: "bad exec request"}) //nolint:errcheck
		return
	}
	path, err := lookPath(req.Argv[0], env)
	if err != nil {
		enc.Encode(execReply{Error: fmt.Sprintf("executable %q not found in the container: %v", req.Argv[0], err)}) //nolint:errcheck
		return
	}
	sys := &syscall.SysProcAttr{Credential: cred, Setsid: true}
	if req.TTY {
		sys.Setctty, sys.Ctty = true, 0
	}
	wait, reply := make(chan int, 1), make(chan forkResult, 1)
	s.forks <- forkRequest{path: path, argv: req.Argv, wait: wait, reply: reply, attr: &syscall.ProcAttr{Dir: dir, Env: env,
		Files: []uintptr{uintptr(fds[0]), uintptr(fds[1]), uintptr(fds[2])}, Sys: sys}}
	r := <-reply
	pid, err := r.pid, r.err
	if err != nil {
		enc.Encode(execReply{Error: fmt.Sprintf("starting %q: %v", req.Argv[0], err)}) //nolint:errcheck
		return
	}
	for _, fd := range fds {
		syscall.Close(fd)
	}
	fds = nil
	enc.Encode(execReply{Pid: pid}) //nolint:errcheck
	// The agent sends nothing more: end of stream means it stopped waiting (an exec's or a probe's deadline, a
	// client gone), and the process group goes, by the pids of this namespace.
	done := make(chan struct{})
	go func() {
		var b [1]byte
		conn.Read(b[:]) //nolint:errcheck
		select {
		case <-done:
		default:
			syscall.Kill(-pid, syscall.SIGKILL) //nolint:errcheck
			syscall.Kill(pid, syscall.SIGKILL)  //nolint:errcheck
		}
	}()
	code := <-wait
	close(done)
	enc.Encode(execReply{Exit: &code}) //nolint:errcheck
}

// listenControl opens a container's control socket afresh; the supervisor inherits it.
func listenControl(path string) (*os.File, error) {
	os.Remove(path)
	lis, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("opening the control socket, %w", err)
	}
	defer lis.Close()
	lis.SetUnlinkOnClose(false)
	return lis.File()
}

// containerUser is who the container runs as: the image's user, overridden by the security context's runAsUser
// and runAsGroup, with its supplemental groups. (runAsNonRoot was checked before the container was created: see
// verifyRunAsNonRoot.)
func containerUser(image string, sec *protocol.Security) (uid, gid int, groups []uint32, err error) {
	user := image
	if sec != nil && sec.RunAsUser != nil {
		user = strconv.FormatInt(*sec.RunAsUser, 10)
	}
	if uid, gid, err = lookupUser(user); err != nil {
		return 0, 0, nil, err
	}
	if sec != nil && sec.RunAsGroup != nil {
		gid = int(*sec.RunAsGroup)
	}
	groups = []uint32{uint32(gid)}
	if sec != nil {
		for _, g := range sec.SupplementalGroups {
			groups = append(groups, uint32(g))
		}
	}
	return uid, gid, groups, nil
}

// lookupUser resolves "user[:group]" (names or numbers) in the container's /etc/passwd and /etc/group.
func lookupUser(spec string) (uid, gid int, err error) {
	if spec == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(spec, ":")
	uid, primary, err := lookupID("/etc/passwd", u, 2)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: %w", u, err)
	}
	gid = primary
	if hasGroup {
		if gid, _, err = lookupID("/etc/group", g, 2); err != nil {
			return 0, 0, fmt.Errorf("group %q: %w", g, err)
		}
	}
	return uid, gid, nil
}

// lookupID returns the numeric id of name (or name itself when numeric) from a passwd-style file, and, for
// passwd, the user's primary group (field 3; 0 for a uid the file does not list).
func lookupID(file, name string, idField int) (id, group int, err error) {
	n, numErr := strconv.Atoi(name)
	f, err := os.Open(file)
	if err != nil {
		if numErr == nil {
			return n, 0, nil
		}
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) <= idField || (fs[0] != name && (numErr != nil || fs[idField] != name)) {
			continue
		}
		id, err := strconv.Atoi(fs[idField])
		if err != nil {
			return 0, 0, err
		}
		if len(fs) > 3 {
			if g, err := strconv.Atoi(fs[3]); err == nil {
				group = g
			}
		}
		return id, group, nil
	}
	if numErr == nil {
		return n, 0, nil
	}
	return 0, 0, errors.New("not found in " + file)
}
