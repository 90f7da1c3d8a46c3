// Package vmrunner makes the local EC2's instances real: an ec2.Runner whose instances are QEMU VMs booted by
// firmware from copies of their image's snapshots, attached as NVMe volumes as on Nitro, with one NIC on a bridge
// per subnet where the runner answers DHCP (the instance's private address) and serves the instance metadata
// service (IMDSv2) at 169.254.169.254. It needs root (bridges, TAPs, port 67 and 80) and is meant for tests and
// development, in a network namespace of their own; it is never linked into the node.
//
// Use:
//
//	r, err := vmrunner.New(vmrunner.Config{StateDir: dir})
//	srv := ec2.New(ec2.Options{Runner: r, ...})
//	r.Attach(srv) // IMDS reads live metadata options (ModifyInstanceMetadataOptions)
//	defer r.Close()
//
// Where it differs from EC2: the NIC is virtio-net, not ENA (QEMU has no ENA); instance types' memory and vCPUs
// are capped (Config); the volume IDs in the NVMe serials are derived, not the devcloud's; nothing enforces EC2's
// source/destination check, so a guest that forges ARP answers could take another instance's address on the same
// subnet, and with it that instance's metadata (the runner is for tests of our own guests). One runner per network
// namespace: it binds 169.254.169.254:80 and one 0.0.0.0:67 per bridge.
package vmrunner

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/provider/qemu"
)

// Config configures a Runner. Only StateDir is required.
type Config struct {
	// StateDir holds one directory per running instance (its volumes, QEMU's log and pid file), removed at Stop.
	StateDir string
	// QEMU is the emulator binary; default qemu-system-x86_64 from PATH.
	QEMU string
	// OVMF is the UEFI firmware for uefi and uefi-preferred images; default /usr/share/ovmf/OVMF.fd. Legacy-bios
	// images boot QEMU's SeaBIOS.
	OVMF string
	// BridgePrefix starts the name of each subnet's bridge (a hash of the CIDR follows); at most 8 characters,
	// default "i2kec2".
	BridgePrefix string
	// MaxMemoryMiB and MaxCPUs cap what an instance type asks for (a t3.micro's 1 GiB, 2 vCPUs): the machine
	// runs several VMs at once. Defaults 512 and 1.
	MaxMemoryMiB int64
	MaxCPUs      int
	// LeaseTime is the DHCP lease; default one hour (the address is the instance's for its life anyway).
	LeaseTime time.Duration
	// KVM selects hardware virtualisation: "" detects it (qemu.HostHasKVM), "on" or "off" force it.
	KVM string
}

// Instances is where the runner reads an instance's live state: *ec2.Server.
type Instances interface {
	Instance(id string) (ec2.InstanceInfo, bool)
}

// Runner is an ec2.Runner of QEMU VMs. Safe for concurrent use.
type Runner struct {
	cfg  Config
	kvm  bool
	meta *imds

	mu      sync.Mutex
	live    Instances
	vms     map[string]*vm     // by instance ID
	byIP    map[string]*vm     // by private IPv4
	byMAC   map[string]*vm     // by MAC address
	subnets map[string]*subnet // by CIDR
	http    *http.Server       // the metadata service, once a bridge carries its address
	closed  bool
}

var _ ec2.Runner = (*Runner)(nil)

// vm is one running instance.
type vm struct {
	inst   ec2.Instance
	mac    net.HardwareAddr
	tap    string
	dir    string
	subnet *subnet
	cmd    *exec.Cmd
	done   chan struct{} // closed when QEMU has exited
	// stopping is set (under Runner.mu) once Stop began: QEMU's exit is then not the guest's doing.
	stopping bool
}

// New returns a Runner; it touches no network until the first instance starts.
func New(cfg Config) (*Runner, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("vmrunner: Config.StateDir is required")
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.OVMF == "" {
		cfg.OVMF = "/usr/share/ovmf/OVMF.fd"
	}
	if cfg.BridgePrefix == "" {
		cfg.BridgePrefix = "i2kec2"
	}
	if len(cfg.BridgePrefix) > 8 {
		return nil, fmt.Errorf("vmrunner: bridge prefix %q is longer than 8 characters", cfg.BridgePrefix)
	}
	if cfg.MaxMemoryMiB == 0 {
		cfg.MaxMemoryMiB = 512
	}
	if cfg.MaxCPUs == 0 {
		cfg.MaxCPUs = 1
	}
	if cfg.LeaseTime == 0 {
		cfg.LeaseTime = time.Hour
	}
	var kvm bool
	switch cfg.KVM {
	case "":
		kvm = qemu.HostHasKVM()
	case "on":
		kvm = true
	case "off":
	default:
		return nil, fmt.Errorf("vmrunner: KVM %q is not on, off or empty", cfg.KVM)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("vmrunner: creating the state directory, %w", err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("vmrunner: making the token key, %w", err)
	}
	r := &Runner{cfg: cfg, kvm: kvm, vms: map[string]*vm{}, byIP: map[string]*vm{}, byMAC: map[string]*vm{},
		subnets: map[string]*subnet{}}
	r.meta = &imds{key: key, now: time.Now, lookup: r.view, setTTL: setConnTTL}
	return r, nil
}

// Attach makes the metadata service read each instance's live options from s (the server the runner serves);
// without it, the options the instance was launched with apply for its life.
func (r *Runner) Attach(s Instances) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.live = s
}

// Start makes the instance's volumes, network and VM, and returns once QEMU runs (EC2's running does not wait for
// the guest). On error, whatever it made is removed.
func (r *Runner) Start(ctx context.Context, inst ec2.Instance) (err error) {
	ip := net.ParseIP(inst.PrivateIP).To4()
	_, cidr, cerr := net.ParseCIDR(inst.SubnetCIDR)
	if ip == nil || cerr != nil || cidr.IP.To4() == nil || !cidr.Contains(ip) {
		return fmt.Errorf("starting instance %s, private address %q not in subnet %q", inst.ID, inst.PrivateIP, inst.SubnetCIDR)
	}
	v := &vm{inst: inst, mac: macFor(inst.ID), tap: tapName(inst.ID), dir: filepath.Join(r.cfg.StateDir, inst.ID),
		done: make(chan struct{})}
	if err := os.Mkdir(v.dir, 0o700); err != nil {
		return fmt.Errorf("starting instance %s, %w", inst.ID, err)
	}
	if err := r.register(v, cidr); err != nil {
		_ = os.RemoveAll(v.dir)
		return fmt.Errorf("starting instance %s, %w", inst.ID, err)
	}
	defer func() {
		if err != nil {
			r.release(v)
		}
	}()
	disks, err := r.makeDisks(ctx, v)
	if err != nil {
		return fmt.Errorf("starting instance %s, %w", inst.ID, err)
	}
	if err := addTAP(v.tap, v.subnet.bridge); err != nil {
		return fmt.Errorf("starting instance %s, %w", inst.ID, err)
	}
	m := machine{MemoryMiB: min(max(inst.MemoryMiB, 256), r.cfg.MaxMemoryMiB), CPUs: min(max(inst.VCPUs, 1), r.cfg.MaxCPUs),
		KVM: r.kvm, Disks: disks, TAP: v.tap, MAC: v.mac.String(), PIDFile: filepath.Join(v.dir, "qemu.pid")}
	if inst.BootMode != "legacy-bios" {
		m.Firmware = r.cfg.OVMF // uefi, uefi-preferred; the devcloud registers no image without a boot mode
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("starting instance %s, %w", inst.ID, err)
	}
	return r.launch(v, m)
}

// register records the instance for DHCP and the metadata service, making its subnet's bridge if needed.
func (r *Runner) register(v *vm, cidr *net.IPNet) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("the runner is closed")
	}
	if _, ok := r.vms[v.inst.ID]; ok {
		return errors.New("already started")
	}
	if _, ok := r.byIP[v.inst.PrivateIP]; ok {
		return fmt.Errorf("address %s is another instance's", v.inst.PrivateIP)
	}
	sn, err := r.subnetLocked(cidr)
	if err != nil {
		return err
	}
	v.subnet = sn
	r.vms[v.inst.ID], r.byIP[v.inst.PrivateIP], r.byMAC[v.mac.String()] = v, v, v
	return nil
}

// subnetLocked returns the subnet's bridge, making it (and the metadata service, the first time) if needed.
func (r *Runner) subnetLocked(cidr *net.IPNet) (*subnet, error) {
	if sn, ok := r.subnets[cidr.String()]; ok {
		return sn, nil
	}
	sn := &subnet{bridge: bridgeName(r.cfg.BridgePrefix, cidr.String()), cidr: cidr, gw: firstAddr(cidr)}
	if err := makeBridge(sn.bridge, cidr, sn.gw); err != nil {
		return nil, err
	}
	pc, err := listenDHCP(sn.bridge)
	if err != nil {
		_ = delLink(sn.bridge)
		return nil, err
	}
	sn.dhcp = pc
	if r.http == nil {
		if err := r.serveMetadataLocked(); err != nil {
			_ = pc.Close()
			_ = delLink(sn.bridge)
			return nil, err
		}
	}
	r.subnets[cidr.String()] = sn
	go serveDHCP(pc, sn.gw, func(mac string) (dhcpLease, bool) { return r.lease(sn, mac) })
	return sn, nil
}

// serveMetadataLocked listens on 169.254.169.254:80 (now on a bridge) and serves the metadata service.
func (r *Runner) serveMetadataLocked() error {
	ln, err := net.Listen("tcp4", net.JoinHostPort(imdsAddr, "80"))
	if err != nil {
		return fmt.Errorf("listening for the metadata service, %w", err)
	}
	r.http = &http.Server{Handler: r.meta, ConnContext: withConn, ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
	go func(s *http.Server) { _ = s.Serve(ln) }(r.http)
	return nil
}

// makeDisks copies each volume's content into a sparse file of its size, the root volume first.
func (r *Runner) makeDisks(ctx context.Context, v *vm) ([]nvmeDisk, error) {
	disks := slices.Clone(v.inst.Disks)
	slices.SortStableFunc(disks, func(a, b ec2.Disk) int {
		return boolInt(b.DeviceName == v.inst.RootDeviceName) - boolInt(a.DeviceName == v.inst.RootDeviceName)
	})
	var out []nvmeDisk
	for i, d := range disks {
		p := filepath.Join(v.dir, fmt.Sprintf("vol%d.img", i))
		var src io.ReaderAt = zeroReader{}
		if d.Content != nil {
			src = d.Content
		}
		if err := writeSparse(ctx, p, src, d.SizeBytes); err != nil {
			return nil, err
		}
		out = append(out, nvmeDisk{Path: p, Serial: volumeSerial(v.inst.ID, d.DeviceName)})
	}
	return out, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// volumeSerial is the NVMe serial of an instance's volume: "vol" and 17 hex digits, as an EBS volume ID without its
// dash (the devcloud has no volume IDs of its own; this one is stable per instance and device).
func volumeSerial(id, device string) string {
	return "vol" + hashHex("vol/" + id + "/" + device)[:17]
}

// launch starts QEMU in a session of its own (the instance's life is not a request's) and watches it exit.
func (r *Runner) launch(v *vm, m machine) error {
	logf, err := os.OpenFile(filepath.Join(v.dir, "qemu.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("starting instance %s, %w", v.inst.ID, err)
	}
	defer logf.Close()
	cmd := exec.Command(r.cfg.QEMU, buildArgs(m)...)
	cmd.Stdout = v.inst.Console
	if cmd.Stdout == nil {
		cmd.Stdout = io.Discard
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting instance %s, %w", v.inst.ID, err)
	}
	r.mu.Lock()
	v.cmd = cmd
	r.mu.Unlock()
	go func() {
		werr := cmd.Wait()
		close(v.done)
		r.mu.Lock()
		stopping := v.stopping
		r.mu.Unlock()
		if stopping || v.inst.Exited == nil {
			return
		}
		reason := "the guest powered off"
		if werr != nil {
			reason = fmt.Sprintf("QEMU exited (%v): %s", werr, tail(filepath.Join(v.dir, "qemu.log"), 512))
		}
		v.inst.Exited(reason)
	}()
	return nil
}

// Stop ends the instance's VM and removes its TAP and directory. Stopping an unknown instance is a no-op.
func (r *Runner) Stop(ctx context.Context, id string) error {
	r.mu.Lock()
	v, ok := r.vms[id]
	if ok {
		v.stopping = true
	}
	r.mu.Unlock()
	if !ok {
		return nil
	}
	if err := r.kill(ctx, v); err != nil {
		return fmt.Errorf("stopping instance %s, %w", id, err)
	}
	r.release(v)
	return nil
}

// kill ends QEMU and waits for it to be reaped.
func (r *Runner) kill(ctx context.Context, v *vm) error {
	r.mu.Lock()
	cmd := v.cmd
	r.mu.Unlock()
	if cmd == nil {
		return nil
	}
	// The process, not its group: QEMU has no children, and Go signals through a pidfd, which cannot reach another
	// process that reused the ID of an already reaped QEMU.
	_ = cmd.Process.Kill()
	select {
	case <-v.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// release forgets the instance and removes its TAP and directory.
func (r *Runner) release(v *vm) {
	r.mu.Lock()
	if r.vms[v.inst.ID] == v {
		delete(r.vms, v.inst.ID)
		delete(r.byIP, v.inst.PrivateIP)
		delete(r.byMAC, v.mac.String())
	}
	r.mu.Unlock()
	_ = delLink(v.tap)
	_ = os.RemoveAll(v.dir)
}

// Close stops every instance, the metadata service and the DHCP servers, and deletes the bridges.
func (r *Runner) Close() error {
	r.mu.Lock()
	r.closed = true
	vms := make([]string, 0, len(r.vms))
	for id := range r.vms {
		vms = append(vms, id)
	}
	r.mu.Unlock()
	var errs []error
	for _, id := range vms {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		errs = append(errs, r.Stop(ctx, id))
		cancel()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.http != nil {
		errs = append(errs, r.http.Close())
		r.http = nil
	}
	for k, sn := range r.subnets {
		errs = append(errs, sn.dhcp.Close(), delLink(sn.bridge))
		delete(r.subnets, k)
	}
	return errors.Join(errs...)
}

// lease is the DHCP lease of the instance with that MAC address on subnet sn, whose bridge the request came in by:
// the MAC is the guest's word, and a guest must not learn another subnet's instance's address that way.
func (r *Runner) lease(sn *subnet, mac string) (dhcpLease, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.byMAC[mac]
	if !ok || v.subnet != sn {
		return dhcpLease{}, false
	}
	return dhcpLease{IP: net.ParseIP(v.inst.PrivateIP).To4(), Mask: v.subnet.cidr.Mask, Router: v.subnet.gw,
		Hostname: "ip-" + strings.ReplaceAll(v.inst.PrivateIP, ".", "-"), Time: r.cfg.LeaseTime}, true
}

// view is the metadata service's view of the instance at a private address, with its live options.
func (r *Runner) view(ip string) (imdsView, bool) {
	r.mu.Lock()
	v, ok := r.byIP[ip]
	live := r.live
	r.mu.Unlock()
	if !ok {
		return imdsView{}, false
	}
	in := v.inst
	out := imdsView{ID: in.ID, ImageID: in.ImageID, InstanceType: in.InstanceType, AvailabilityZone: in.AvailabilityZone,
		PrivateIP: in.PrivateIP, MAC: v.mac.String(), UserData: in.UserData, Metadata: in.Metadata, Tags: in.Tags}
	if live != nil {
		if info, ok := live.Instance(in.ID); ok {
			out.Metadata, out.Tags = info.Metadata, info.Tags
		}
	}
	return out, true
}

// tail returns the last n bytes of a file, for an error message.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	_, _ = f.ReadAt(b, off)
	return strings.TrimSpace(string(b))
}

// zeroReader reads as zeros: a volume without content.
type zeroReader struct{}

func (zeroReader) ReadAt(p []byte, _ int64) (int, error) {
	clear(p)
	return len(p), nil
}
