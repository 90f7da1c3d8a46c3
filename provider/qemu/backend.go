package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/internal/proc"
	"github.com/i2kit/i2kit/provider/vm"
)

// Config places the backend.
type Config struct {
	// RuntimeDir holds one directory per pod UID: the VM's record, QEMU's pid file, log and console log, and the
	// agent's channel socket. The backend's inventory is rebuilt from it when the backend starts.
	RuntimeDir string
	// Bridge is the host bridge the pods' TAPs join; its address is the first of PodCIDR.
	Bridge  string
	PodCIDR string
	// QEMU is the binary; qemu-system-x86_64 by default.
	QEMU string
}

// cgroupRoot is where cgroup v2 is mounted; each VM's QEMU runs in cgroupSlice/<pod UID> under it.
const (
	cgroupRoot  = "/sys/fs/cgroup"
	cgroupSlice = "i2kit.slice"
)

// Format is the image format the qemu backend boots: an uncompressed kernel, the agent's initramfs and one disk
// per container image.
const Format = "direct"

var (
	_ vm.Backend           = (*Backend)(nil)
	_ vm.HostPortForwarder = (*Backend)(nil)
)

// Backend runs pod VMs as QEMU microVMs on this machine. A VM's lifetime is the backend's, never a request's:
// QEMU runs in a session of its own and survives a restart of the node, whose new backend adopts it.
type Backend struct {
	cfg    Config
	net    *network
	filter *tapFilter // keeps each TAP to its VM's MAC and IPv4 address
	ports  *portForwarder
	kvm    bool
	tsc    int
	cg     *cgroups // nil where the host offers no writable cgroup v2
	notify func(vm.Status)

	mu  sync.Mutex
	vms map[string]*machine
}

// machine is one VM. Its state moves Running → Stopping → Terminated, or to Failed when QEMU exits on its own.
type machine struct {
	dir    string
	tap    string
	exited chan struct{} // closed once QEMU has exited
	// launched is closed once Launch has started QEMU or failed (failed says which); adopted VMs have it closed.
	launched chan struct{}
	failed   bool

	mu  sync.Mutex
	rec record
}

// record is what the runtime directory keeps of a VM (vm.json): its status, QEMU's pid and the host ports
// forwarded to it, which a restarted backend forwards again.
type record struct {
	vm.Status
	Pid       int           `json:"pid"`
	HostPorts []vm.HostPort `json:"hostPorts,omitempty"`
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
	filter := newTapFilter(cfg.Bridge)
	if err := filter.ensure(); err != nil {
		return nil, fmt.Errorf("qemu backend: filtering the pods' TAPs, %w", err)
	}
	ports, err := newPortForwarder(cfg.Bridge, n.cidr)
	if err != nil {
		return nil, fmt.Errorf("qemu backend, %w", err)
	}
	if err := ports.ensure(); err != nil {
		return nil, fmt.Errorf("qemu backend: forwarding host ports, %w", err)
	}
	if err := os.MkdirAll(cfg.RuntimeDir, 0o700); err != nil {
		return nil, err
	}
	b := &Backend{cfg: cfg, net: n, filter: filter, ports: ports, kvm: HostHasKVM(), tsc: HostTSCkHz(), notify: notify, vms: map[string]*machine{}}
	if b.cg, err = newCgroups(cgroupRoot, filepath.Join(cgroupRoot, cgroupSlice)); err != nil {
		log.L.WithError(err).Warn("qemu backend: VMs run without a cgroup of their own (no memory or CPU limit beyond QEMU's -m and -smp)")
	}
	b.adopt()
	return b, nil
}

// Format is the image format the backend boots.
func (b *Backend) Format() string { return Format }

// ForwardsHostPorts says that Launch forwards Plan.HostPorts to the VM (portForwarder).
func (b *Backend) ForwardsHostPorts() {}

// adopt rebuilds the VM table from the runtime directory: live QEMU processes are adopted, never relaunched, and
// their TAPs' filters and host ports re-ensured; the filters and host ports of VMs that are gone are removed.
func (b *Backend) adopt() {
	ents, _ := os.ReadDir(b.cfg.RuntimeDir)
	keep, keepPorts := map[string]bool{}, map[string]bool{}
	for _, e := range ents {
		dir := filepath.Join(b.cfg.RuntimeDir, e.Name())
		raw, err := os.ReadFile(filepath.Join(dir, "vm.json"))
		var rec record
		if err == nil {
			err = json.Unmarshal(raw, &rec)
		}
		if err != nil || rec.UID != e.Name() || !isQEMU(rec.Pid) {
			b.net.delTap(TAPName(e.Name()))    //nolint:errcheck
			b.filter.remove(TAPName(e.Name())) //nolint:errcheck
			b.ports.remove(e.Name())           //nolint:errcheck
			b.cg.remove(e.Name())              //nolint:errcheck
			os.RemoveAll(dir)
			continue
		}
		v := &machine{rec: rec, dir: dir, tap: TAPName(rec.UID), exited: make(chan struct{}), launched: make(chan struct{})}
		close(v.launched)
		keep[v.tap], keepPorts[rec.UID] = true, true
		if err := b.filter.allow(v.tap, macFor(rec.UID), net.ParseIP(rec.IP)); err != nil {
			log.L.WithError(err).WithField("uid", rec.UID).Error("qemu backend: an adopted VM's TAP is not filtered: its pod may spoof other pods' addresses")
		}
		if err := b.ports.add(rec.UID, net.ParseIP(rec.IP), rec.HostPorts); err != nil {
			log.L.WithError(err).WithField("uid", rec.UID).Error("qemu backend: an adopted VM's host ports are not forwarded")
		}
		b.vms[rec.UID] = v
		go b.waitPidfd(v)
		go b.recordConsole(v)
	}
	if err := b.filter.retain(keep); err != nil {
		log.L.WithError(err).Warn("qemu backend: removing the filters of TAPs that are gone")
	}
	if err := b.ports.retain(keepPorts); err != nil {
		log.L.WithError(err).Warn("qemu backend: removing the host ports of VMs that are gone")
	}
}

// List returns every VM's status.
func (b *Backend) List(context.Context) ([]vm.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]vm.Status, 0, len(b.vms))
	for _, v := range b.vms {
		out = append(out, v.status())
	}
	return out, nil
}

// Get returns a VM's status.
func (b *Backend) Get(_ context.Context, uid string) (vm.Status, error) {
	v, err := b.machine(uid)
	if err != nil {
		return vm.Status{}, err
	}
	return v.status(), nil
}

func (b *Backend) machine(uid string) (*machine, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.vms[uid]
	if !ok {
		return nil, fmt.Errorf("%w: %s", vm.ErrNotFound, uid)
	}
	return v, nil
}

func (v *machine) status() vm.Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.rec.Status
}

// Launch starts the VM for a pod. It is idempotent per UID: a second call returns the VM the first made. A launch
// that fails half way leaves no process, TAP or directory behind.
func (b *Backend) Launch(ctx context.Context, p vm.Plan) (vm.Status, error) {
	if p.Image == nil || p.Image.Format != Format {
		return vm.Status{}, fmt.Errorf("launching VM: the qemu backend boots %s images", Format)
	}
	if err := ctx.Err(); err != nil {
		return vm.Status{}, fmt.Errorf("launching VM, %w", err)
	}
	b.mu.Lock()
	if v, ok := b.vms[p.UID]; ok {
		b.mu.Unlock()
		select { // a launch under way: its result is this one's
		case <-v.launched:
		case <-ctx.Done():
			return vm.Status{}, fmt.Errorf("launching VM, %w", ctx.Err())
		}
		if v.failed {
			return vm.Status{}, fmt.Errorf("launching VM: a concurrent launch failed")
		}
		return v.status(), nil
	}
	if err := hostPortConflict(p.HostPorts, b.hostPortsLocked()); err != nil {
		b.mu.Unlock()
		return vm.Status{}, fmt.Errorf("launching VM, %w", err)
	}
	ip, err := b.allocateLocked()
	if err != nil {
		b.mu.Unlock()
		return vm.Status{}, err
	}
	dir := filepath.Join(b.cfg.RuntimeDir, p.UID)
	v := &machine{dir: dir, tap: TAPName(p.UID), exited: make(chan struct{}), launched: make(chan struct{}),
		rec: record{Status: vm.Status{UID: p.UID, Namespace: p.Namespace, Name: p.Name, IP: ip.String(), State: vm.Booting, Started: time.Now()},
			HostPorts: slices.Clone(p.HostPorts)}}
	b.vms[p.UID] = v
	b.mu.Unlock()

	if err := b.start(v, p, ip); err != nil {
		b.mu.Lock()
		delete(b.vms, p.UID)
		b.mu.Unlock()
		b.net.delTap(v.tap)    //nolint:errcheck
		b.filter.remove(v.tap) //nolint:errcheck
		b.ports.remove(p.UID)  //nolint:errcheck
		b.cg.remove(p.UID)     //nolint:errcheck
		os.RemoveAll(dir)
		v.failed = true
		close(v.launched)
		return vm.Status{}, fmt.Errorf("launching VM, %w", err)
	}
	close(v.launched)
	return v.status(), nil
}

func (b *Backend) start(v *machine, p vm.Plan, ip net.IP) error {
	if err := os.MkdirAll(v.dir, 0o700); err != nil {
		return err
	}
	if err := b.net.addTap(v.tap); err != nil {
		return err
	}
	if err := b.filter.allow(v.tap, macFor(p.UID), ip); err != nil { // before QEMU opens the TAP
		return err
	}
	if err := b.ports.add(p.UID, ip, p.HostPorts); err != nil { // the ports lead to the VM from its first packet
		return err
	}
	if err := b.net.claimAddress(ip, macFor(p.UID)); err != nil {
		return err
	}
	img := p.Image
	cmdline := boot.Cmdline(img.Spec.Kernel.Cmdline, boot.Params{Hostname: p.Name, Channel: true,
		Network: &boot.Network{IP: ip, Gateway: b.net.gw, Mask: b.net.cidr.Mask}})
	args := Args(VM{Kernel: img.Kernel, Initramfs: img.Initramfs, Cmdline: cmdline, Disks: img.DiskPaths(),
		MemoryMiB: p.MemoryMiB, CPUs: p.CPUs, KVM: b.kvm, TSCkHz: b.tsc, Dir: v.dir, TAP: v.tap, MAC: macFor(p.UID).String()})
	logf, err := os.Create(filepath.Join(v.dir, "qemu.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(b.cfg.QEMU, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives the node: a restarted node adopts it
	cg, err := b.cg.create(p.UID, p.MemoryMiB, p.CPUs)
	if err != nil {
		logf.Close()
		return err
	}
	if cg != nil { // QEMU starts in its cgroup (clone3 CLONE_INTO_CGROUP): it never runs unbounded
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
		defer cg.Close()
	}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("starting qemu, %w", err)
	}
	b.update(v, func(r *record) {
		r.Pid, r.ID = cmd.Process.Pid, strconv.Itoa(cmd.Process.Pid)
		r.State = vm.Running // the machine runs; the agent's handshake says when it serves
	})
	go func() {
		err := cmd.Wait()
		b.exited(v, err)
	}()
	go b.recordConsole(v)
	return nil
}

// recordConsole keeps the VM's console in its runtime directory (recordConsole) until QEMU exits.
func (b *Backend) recordConsole(v *machine) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-v.exited
		cancel()
	}()
	recordConsole(ctx, v.dir)
	cancel()
}

// DialAgent connects to the agent's virtio-serial port, waiting (within ctx) for QEMU to create its socket. QEMU
// serves one connection at a time: a second waits until the first is closed. Bytes sent before the guest opens the
// port wait in the socket.
func (b *Backend) DialAgent(ctx context.Context, uid string) (net.Conn, error) {
	v, err := b.machine(uid)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		conn, err := d.DialContext(ctx, "unix", filepath.Join(v.dir, "agent.sock"))
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			return conn, err
		}
		select { // QEMU is still creating the socket
		case <-v.exited:
			return nil, fmt.Errorf("dialling the agent of VM %s: the VM has exited", uid)
		case <-ctx.Done():
			return nil, fmt.Errorf("dialling the agent of VM %s, %w", uid, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// waitPidfd waits for an adopted QEMU (not our child) to exit.
func (b *Backend) waitPidfd(v *machine) {
	v.mu.Lock()
	pid := v.rec.Pid
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

// exited records the end of a VM's QEMU: Terminated when asked to stop, Failed otherwise (the guest powered
// itself off without being asked, crashed, or QEMU was killed).
func (b *Backend) exited(v *machine, err error) {
	select {
	case <-v.exited:
		return
	default:
	}
	b.update(v, func(r *record) {
		if r.State == vm.Stopping {
			r.State, r.Reason = vm.Terminated, "Deleted"
			return
		}
		r.State, r.Reason = vm.Failed, "VMExited"
		r.Message = "the pod's VM exited unexpectedly"
		if err != nil {
			r.Message += ": " + err.Error()
		}
		if tail := tailFile(filepath.Join(v.dir, "qemu.log"), 3); tail != "" {
			r.Message += ": " + tail
		}
	})
	close(v.exited)
}

// Terminate ends a pod's VM at once — QEMU is killed unless it has exited — and removes its TAP, the TAP's filter
// and its runtime directory. It may be called repeatedly; once the VM is gone it returns ErrNotFound.
func (b *Backend) Terminate(ctx context.Context, uid string) error {
	v, err := b.machine(uid)
	if err != nil {
		return err
	}
	b.update(v, func(r *record) {
		if !r.State.Exited() {
			r.State = vm.Stopping
		}
	})
	v.mu.Lock()
	pid := v.rec.Pid
	v.mu.Unlock()
	select {
	case <-v.exited:
	default:
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck
		}
		select {
		case <-v.exited:
		case <-ctx.Done():
			return fmt.Errorf("terminating VM %s, %w", uid, ctx.Err())
		}
	}
	if err := b.net.delTap(v.tap); err != nil {
		return fmt.Errorf("terminating VM %s: removing its TAP, %w", uid, err)
	}
	if err := b.filter.remove(v.tap); err != nil {
		return fmt.Errorf("terminating VM %s: removing its TAP's filter, %w", uid, err)
	}
	if err := b.ports.remove(uid); err != nil {
		return fmt.Errorf("terminating VM %s, %w", uid, err)
	}
	if err := b.cg.remove(uid); err != nil {
		return fmt.Errorf("terminating VM %s, %w", uid, err)
	}
	b.mu.Lock()
	if b.vms[uid] == v {
		delete(b.vms, uid)
	}
	b.mu.Unlock()
	if err := os.RemoveAll(v.dir); err != nil {
		return fmt.Errorf("terminating VM %s, %w", uid, err)
	}
	return nil
}

func (b *Backend) update(v *machine, f func(*record)) {
	v.mu.Lock()
	before := v.rec
	f(&v.rec)
	after := v.rec
	v.mu.Unlock()
	if after.Status != before.Status || after.Pid != before.Pid { // f never changes HostPorts
		b.record(v)
	}
	if after.Status != before.Status {
		b.notify(after.Status)
	}
}

// record writes the VM's record to its runtime directory, from which a restarted backend adopts it.
func (b *Backend) record(v *machine) {
	v.mu.Lock()
	raw, _ := json.Marshal(v.rec)
	v.mu.Unlock()
	tmp := filepath.Join(v.dir, "vm.json.tmp")
	if os.WriteFile(tmp, raw, 0o600) == nil {
		os.Rename(tmp, filepath.Join(v.dir, "vm.json")) //nolint:errcheck
	}
}

// hostPortsLocked returns the host ports every VM holds, by its pod's namespace/name; a VM holds them until
// Terminate, also after it exited.
func (b *Backend) hostPortsLocked() map[string][]vm.HostPort {
	out := map[string][]vm.HostPort{}
	for _, v := range b.vms {
		v.mu.Lock()
		if len(v.rec.HostPorts) > 0 {
			out[v.rec.Namespace+"/"+v.rec.Name] = v.rec.HostPorts
		}
		v.mu.Unlock()
	}
	return out
}

func (b *Backend) allocateLocked() (net.IP, error) {
	used := map[string]bool{b.net.gw.String(): true}
	for _, v := range b.vms {
		used[v.status().IP] = true
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
