package qemu

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent"
	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/internal/proc"
	"github.com/i2kit/i2kit/provider/vm"
)

// Config places the backend.
type Config struct {
	// RuntimeDir holds one directory per pod UID: the VM's record, QEMU's pid file and console socket, and the
	// console log. It is rebuilt from what runs when the backend starts.
	RuntimeDir string
	// Bridge is the host bridge the pods' TAPs join; its address is the first of PodCIDR.
	Bridge  string
	PodCIDR string
	// QEMU is the binary; qemu-system-x86_64 by default.
	QEMU string
}

var _ vm.Backend = (*Backend)(nil)

// Backend runs pod VMs as QEMU microVMs on this machine. A VM's lifetime is the backend's, never a request's:
// QEMU runs in a session of its own and survives a restart of the node, which adopts it.
type Backend struct {
	cfg    Config
	net    *network
	kvm    bool
	tsc    int
	notify func(vm.Status)

	mu  sync.Mutex
	vms map[string]*machine
}

type machine struct {
	mu      sync.Mutex
	st      vm.Status
	dir     string
	tap     string
	exited  chan struct{}
	console net.Conn
}

// New prepares the bridge and adopts the VMs that still run from RuntimeDir; records of VMs that are gone are
// cleaned up. notify receives every status change; it must not block for long.
func New(cfg Config, notify func(vm.Status)) (*Backend, error) {
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if _, err := exec.LookPath(cfg.QEMU); err != nil {
		return nil, fmt.Errorf("qemu backend: %w (make deps installs qemu-system-x86)", err)
	}
	n, err := newNetwork(cfg.Bridge, cfg.PodCIDR)
	if err != nil {
		return nil, err
	}
	if err := n.ensureBridge(); err != nil {
		return nil, fmt.Errorf("qemu backend: bridge %s, %w", cfg.Bridge, err)
	}
	if err := os.MkdirAll(cfg.RuntimeDir, 0o700); err != nil {
		return nil, err
	}
	b := &Backend{cfg: cfg, net: n, kvm: HostHasKVM(), tsc: HostTSCkHz(), notify: notify, vms: map[string]*machine{}}
	b.adopt()
	return b, nil
}

// adopt rebuilds the VM table from the runtime directory: live QEMU processes are adopted, never relaunched.
func (b *Backend) adopt() {
	ents, _ := os.ReadDir(b.cfg.RuntimeDir)
	for _, e := range ents {
		dir := filepath.Join(b.cfg.RuntimeDir, e.Name())
		raw, err := os.ReadFile(filepath.Join(dir, "vm.json"))
		var st vm.Status
		if err == nil {
			err = json.Unmarshal(raw, &st)
		}
		if err != nil || !isQEMU(st.Pid) {
			b.net.delTap(TAPName(e.Name())) //nolint:errcheck
			os.RemoveAll(dir)
			continue
		}
		v := &machine{st: st, dir: dir, tap: TAPName(st.UID), exited: make(chan struct{})}
		b.vms[st.UID] = v
		go b.watchConsole(v)
		go b.waitPidfd(v)
	}
}

// List returns every VM's status.
func (b *Backend) List() []vm.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]vm.Status, 0, len(b.vms))
	for _, v := range b.vms {
		v.mu.Lock()
		out = append(out, v.st)
		v.mu.Unlock()
	}
	return out
}

// Get returns a VM's status.
func (b *Backend) Get(uid string) (vm.Status, error) {
	b.mu.Lock()
	v, ok := b.vms[uid]
	b.mu.Unlock()
	if !ok {
		return vm.Status{}, fmt.Errorf("%w: %s", vm.ErrNotFound, uid)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st, nil
}

// Launch starts the VM for a pod. It is idempotent per UID: a second call returns the VM the first made.
func (b *Backend) Launch(s vm.Spec) (vm.Status, error) {
	b.mu.Lock()
	if v, ok := b.vms[s.UID]; ok {
		b.mu.Unlock()
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.st, nil
	}
	ip, err := b.allocateLocked()
	if err != nil {
		b.mu.Unlock()
		return vm.Status{}, err
	}
	dir := filepath.Join(b.cfg.RuntimeDir, s.UID)
	v := &machine{dir: dir, tap: TAPName(s.UID), exited: make(chan struct{}),
		st: vm.Status{UID: s.UID, Namespace: s.Namespace, Name: s.Name, IP: ip.String(), State: vm.Booting, Started: time.Now()}}
	b.vms[s.UID] = v
	b.mu.Unlock()

	if err := b.start(v, s); err != nil {
		b.mu.Lock()
		delete(b.vms, s.UID)
		b.mu.Unlock()
		b.net.delTap(v.tap) //nolint:errcheck
		os.RemoveAll(dir)
		return vm.Status{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st, nil
}

func (b *Backend) start(v *machine, s vm.Spec) error {
	if err := os.MkdirAll(v.dir, 0o700); err != nil {
		return err
	}
	if err := b.net.addTap(v.tap); err != nil {
		return err
	}
	// The pod's name is its hostname, as on any node; a pod name is a DNS subdomain, safe on a command line.
	cmdline := s.Cmdline + " " + b.net.kernelIP(net.ParseIP(v.st.IP)) + " " + agent.HostnameParam + "=" + s.Name
	args := Args(VM{Kernel: s.Kernel, Initramfs: s.Initramfs, Cmdline: cmdline, Disks: s.Disks,
		MemoryMiB: s.MemoryMiB, CPUs: s.CPUs, KVM: b.kvm, TSCkHz: b.tsc})
	args = withConsoleSocket(args, filepath.Join(v.dir, "console.sock"))
	args = append(args,
		// the agent's channel (package agent/protocol): a virtio-serial port served on a unix socket
		"-device", "virtio-serial-device,max_ports=2",
		"-chardev", "socket,id=agent,path="+filepath.Join(v.dir, "agent.sock")+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name="+protocol.PortName,
		"-netdev", fmt.Sprintf("tap,id=net0,ifname=%s,script=no,downscript=no,vhost=off", v.tap),
		"-device", "virtio-net-device,netdev=net0,mac="+macFor(s.UID),
		"-pidfile", filepath.Join(v.dir, "qemu.pid"))
	logf, err := os.Create(filepath.Join(v.dir, "qemu.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(b.cfg.QEMU, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives the node: a restarted node adopts it
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("starting qemu, %w", err)
	}
	v.mu.Lock()
	v.st.Pid = cmd.Process.Pid
	v.mu.Unlock()
	b.record(v)
	go func() {
		err := cmd.Wait()
		b.exited(v, err)
	}()
	go b.watchConsole(v)
	return nil
}

// withConsoleSocket serves the guest's serial console on a unix socket instead of QEMU's stdio, so that the
// backend — or a restarted one — can read it and send the agent "poweroff".
func withConsoleSocket(args []string, sock string) []string {
	out := make([]string, 0, len(args)+2)
	for i := 0; i < len(args); i++ {
		if args[i] == "-serial" && i+1 < len(args) {
			// QEMU itself logs the console, so that nothing is lost while no backend is connected (a restart).
			log := filepath.Join(filepath.Dir(sock), "console.log")
			out = append(out, "-chardev", "socket,id=console,path="+sock+",server=on,wait=off,logfile="+log+",logappend=on",
				"-serial", "chardev:console")
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// watchConsole reads the guest console (QEMU logs it to console.log) and marks the VM Running at the agent's
// ready marker.
func (b *Backend) watchConsole(v *machine) {
	sock := filepath.Join(v.dir, "console.sock")
	var conn net.Conn
	for {
		var err error
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		select {
		case <-v.exited:
			return
		case <-time.After(20 * time.Millisecond): // QEMU is still creating the socket
		}
	}
	v.mu.Lock()
	v.console = conn
	v.mu.Unlock()
	// The console is read to its end, whatever it holds: a backend that stopped reading would stall the guest.
	r := bufio.NewReaderSize(conn, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if bytes.Contains(line, []byte(agent.ReadyMarker)) {
			b.update(v, func(st *vm.Status) {
				if st.State == vm.Booting {
					st.State, st.Ready = vm.Running, time.Now()
				}
			})
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// DialAgent connects to the agent's virtio-serial port. QEMU serves one connection at a time: a second waits
// until the first is closed.
func (b *Backend) DialAgent(ctx context.Context, uid string) (net.Conn, error) {
	b.mu.Lock()
	v, ok := b.vms[uid]
	b.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %s", vm.ErrNotFound, uid)
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", filepath.Join(v.dir, "agent.sock"))
}

// waitPidfd waits for an adopted QEMU (not our child) to exit.
func (b *Backend) waitPidfd(v *machine) {
	v.mu.Lock()
	pid := v.st.Pid
	v.mu.Unlock()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		b.exited(v, fmt.Errorf("process %d is gone", pid))
		return
	}
	defer unix.Close(fd)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
			break
		}
	}
	b.exited(v, errors.New("qemu exited"))
}

// exited records the end of a VM's QEMU: Terminated when asked to stop, Failed otherwise.
func (b *Backend) exited(v *machine, err error) {
	select {
	case <-v.exited:
		return
	default:
	}
	b.update(v, func(st *vm.Status) {
		if st.State == vm.Stopping {
			st.State, st.Reason = vm.Terminated, "Deleted"
			return
		}
		st.State, st.Reason = vm.Failed, "VMExited"
		st.Message = "the pod's VM exited unexpectedly"
		if err != nil {
			st.Message += ": " + err.Error()
		}
		if tail := tailFile(filepath.Join(v.dir, "qemu.log"), 3); tail != "" {
			st.Message += ": " + tail
		}
	})
	close(v.exited)
}

// Terminate stops a pod's VM: the agent is asked to stop the containers within grace and power off; QEMU is
// killed when it has not ended after grace. The TAP and the runtime directory are removed. Terminate may be
// called repeatedly; once the VM is gone it returns ErrNotFound.
func (b *Backend) Terminate(ctx context.Context, uid string, grace time.Duration) error {
	b.mu.Lock()
	v, ok := b.vms[uid]
	b.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", vm.ErrNotFound, uid)
	}
	booting := false
	b.update(v, func(st *vm.Status) {
		booting = st.State == vm.Booting
		if st.State == vm.Booting || st.State == vm.Running {
			st.State = vm.Stopping
		}
	})
	// A VM whose agent is not up runs no container yet (they start once the node configures a Running VM):
	// nothing needs the grace period, and nothing would hear a power-off request.
	if booting {
		grace = 0
	}
	v.mu.Lock()
	conn, pid := v.console, v.st.Pid
	v.mu.Unlock()
	if conn != nil && grace > 0 {
		// The agent gets most of the grace period for the containers; the rest is for it to power off.
		fmt.Fprintf(conn, "poweroff %d\n", int((grace * 4 / 5).Seconds())) //nolint:errcheck
	}
	select {
	case <-v.exited:
	case <-time.After(grace):
	case <-ctx.Done():
	}
	select {
	case <-v.exited:
	default:
		syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck
		<-v.exited
	}
	if conn != nil {
		conn.Close()
	}
	if err := b.net.delTap(v.tap); err != nil {
		return err
	}
	b.mu.Lock()
	delete(b.vms, uid)
	b.mu.Unlock()
	return os.RemoveAll(v.dir)
}

func (b *Backend) update(v *machine, f func(*vm.Status)) {
	v.mu.Lock()
	before := v.st
	f(&v.st)
	st := v.st
	v.mu.Unlock()
	if st != before {
		b.record(v)
		b.notify(st)
	}
}

// record writes the VM's status to its runtime directory, from which a restarted backend adopts it.
func (b *Backend) record(v *machine) {
	v.mu.Lock()
	raw, _ := json.Marshal(v.st)
	v.mu.Unlock()
	tmp := filepath.Join(v.dir, "vm.json.tmp")
	if os.WriteFile(tmp, raw, 0o600) == nil {
		os.Rename(tmp, filepath.Join(v.dir, "vm.json")) //nolint:errcheck
	}
}

func (b *Backend) allocateLocked() (net.IP, error) {
	used := map[string]bool{b.net.gw.String(): true}
	for _, v := range b.vms {
		used[v.st.IP] = true
	}
	for i := uint32(2); i < b.net.size()-1; i++ {
		ip := nthIP(b.net.cidr, i)
		if !used[ip.String()] {
			return ip, nil
		}
	}
	return nil, fmt.Errorf("pod CIDR %s is exhausted", b.net.cidr)
}

// isQEMU reports whether pid is a live QEMU process; a recycled pid is not ours.
func isQEMU(pid int) bool { return proc.Alive(pid) && strings.Contains(proc.Exe(pid), "qemu") }

func tailFile(p string, n int) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
