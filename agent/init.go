package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/agent/boot"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/protocol"
)

// Init performs PID 1's duties: mount the basic filesystems, mount every container image read-only under
// boot.ImagesDir, serve the protocol on the agent's virtio-serial port, and run the pod's containers — at once with
// the image's configuration, or, when the kernel command line has boot.ConfigParam=channel, once the node sends the
// pod's runtime configuration. With boot.ConfigParam=boot.CloudConfig (a cloud instance, see cloud.go) it reads
// the instance metadata service instead of the command line and serves the protocol over TLS on the network
// instead of the virtio-serial port, and the node sends the configuration as with channel. It prints boot.ReadyMarker to the console (a debug aid), then waits for a power-off
// request over the protocol, stops the containers within the grace period and powers the VM off. It returns only
// on error.
func Init(console io.ReadWriter) error {
	// Every filesystem a container can write to is nodev (see systemMounts): /run holds the containers' upper
	// layers and the pod's volumes. /dev/shm is the pod's shared memory, as a pod sandbox's on a node (64 MiB, the
	// container runtimes' size).
	const nodev = syscall.MS_NOSUID | syscall.MS_NODEV
	for _, m := range []struct {
		src, dst, fstype, opts string
		flags                  uintptr
	}{
		{"proc", "/proc", "proc", "", syscall.MS_NOSUID}, {"sysfs", "/sys", "sysfs", "", syscall.MS_NOSUID},
		{"devtmpfs", "/dev", "devtmpfs", "", syscall.MS_NOSUID},
		{"devpts", "/dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620", syscall.MS_NOSUID},
		{"shm", "/dev/shm", "tmpfs", "mode=1777,size=65536k", nodev | syscall.MS_NOEXEC},
		{"mqueue", "/dev/mqueue", "mqueue", "", nodev | syscall.MS_NOEXEC},
		{"tmpfs", "/run", "tmpfs", "", nodev}, {"tmpfs", "/tmp", "tmpfs", "", nodev},
		{"cgroup2", CgroupDir, "cgroup2", "", syscall.MS_NOSUID},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount(m.src, m.dst, m.fstype, m.flags, m.opts); err != nil && !errors.Is(err, syscall.EBUSY) {
			if m.fstype == "cgroup2" || m.fstype == "mqueue" { // a kernel without them still runs pods
				fmt.Fprintf(console, "i2kit-agent: mounting %s: %v\n", m.dst, err)
				continue
			}
			return fmt.Errorf("mounting %s, %w", m.dst, err)
		}
	}
	os.Remove("/dev/ptmx")
	os.Symlink("pts/ptmx", "/dev/ptmx")                                                               //nolint:errcheck // the devpts instance's own multiplexer
	os.WriteFile(filepath.Join(CgroupDir, "cgroup.subtree_control"), []byte("+cpu +memory +pids"), 0) //nolint:errcheck
	b, err := os.ReadFile(boot.ConfigPath)
	if err != nil {
		return fmt.Errorf("reading image configuration, %w", err)
	}
	var cfg boot.ImageConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("decoding %s, %w", boot.ConfigPath, err)
	}
	loadModules(console, cfg.Modules)
	mounted, err := mountImages(cfg)
	if err != nil {
		return err
	}
	if err := linkUp("lo"); err != nil {
		return fmt.Errorf("bringing up lo, %w", err)
	}
	mode := cmdlineParam(boot.ConfigParam, "")
	hostname := cmdlineParam(boot.HostnameParam, "pod")
	var cloud cloudInstance
	if mode == boot.CloudConfig {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cloud, err = cloudBoot(ctx, console, newIMDS(imdsBase), func() (tls.Certificate, error) { return newAgentKey(time.Now()) })
		cancel()
		if err != nil {
			return err
		}
		hostname = cloud.hostname("pod")
	}
	if cmdlineParam("ip", "dhcp") != "dhcp" { // the node's static address (a cloud's network is its own)
		go func() { // twice, a second apart, as RFC 5227 announces
			for i := range 2 {
				if err := announceAddress("eth0"); err != nil {
					fmt.Fprintf(console, "i2kit-agent: %v\n", err)
				}
				if i == 0 {
					time.Sleep(time.Second)
				}
			}
		}()
	}
	rt := newRuntime(console, cfg, hostname)
	byNode := mode == "channel" || mode == boot.CloudConfig
	rt.mirrorOutput = !byNode
	go rt.prepareRoots()
	poweroff := make(chan time.Duration, 1)
	srv := &server{rt: rt, poweroff: poweroff, stats: statsSource{Proc: "/proc", Cgroup: CgroupDir}}
	if mode == boot.CloudConfig {
		addr := ":" + strconv.Itoa(cloud.md.UserData.AgentPort)
		if _, err := cloud.serve(addr, srv.handler(), blockMetadata, rt.say); err != nil {
			return err
		}
	} else {
		go srv.serveChannel()
	}
	if !byNode {
		if err := rt.configure(protocol.PodConfig{RestartPolicy: protocol.RestartAlways}); err != nil {
			return err
		}
	}
	// A debug aid: nothing reads the console to control the VM. Readiness is the protocol's handshake.
	rt.say("%s %s", boot.ReadyMarker, strings.Join(mounted, " "))
	grace := <-poweroff // POST /v1/poweroff
	fmt.Fprintf(console, "i2kit-agent: stopping the containers (grace %s)\n", grace)
	rt.stop(context.Background(), grace)
	fmt.Fprintln(console, "i2kit-agent: powering off")
	syscall.Sync()
	return syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}

// mountImages finds each disk by its erofs UUID among the virtio block devices and mounts it read-only at
// boot.ImagesDir/<container>, and at boot.ImageVolumesDir/<volume> for an image volume. It returns "name=entry,entry,..." per container, listing the image root.
func mountImages(cfg boot.ImageConfig) ([]string, error) {
	byUUID, err := waitDisks(cfg.Disks, 5*time.Second)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range cfg.Containers {
		if c.Disk < 0 || c.Disk >= len(cfg.Disks) {
			return nil, fmt.Errorf("container %s: disk %d out of range", c.Name, c.Disk)
		}
		dst := filepath.Join(boot.ImagesDir, c.Name)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return nil, err
		}
		dev := byUUID[cfg.Disks[c.Disk].UUID]
		if err := syscall.Mount(dev, dst, "erofs", syscall.MS_RDONLY|syscall.MS_NODEV, ""); err != nil {
			return nil, fmt.Errorf("mounting %s at %s, %w", dev, dst, err)
		}
		ents, _ := os.ReadDir(dst)
		names := make([]string, 0, len(ents))
		for _, e := range ents {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		out = append(out, c.Name+"="+strings.Join(names, ","))
	}
	for _, v := range cfg.Volumes {
		if v.Disk < 0 || v.Disk >= len(cfg.Disks) || v.Name == "" || v.Name == "." || v.Name == ".." || strings.ContainsRune(v.Name, '/') {
			return nil, fmt.Errorf("image volume %q: bad name or disk %d out of range", v.Name, v.Disk)
		}
		// Read-only as a container runtime mounts an image volume (erofs is read-only anyway), not noexec: a pod
		// may run tools an image volume brings.
		dst := filepath.Join(boot.ImageVolumesDir, v.Name)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return nil, err
		}
		dev := byUUID[cfg.Disks[v.Disk].UUID]
		if err := syscall.Mount(dev, dst, "erofs", syscall.MS_RDONLY|syscall.MS_NODEV, ""); err != nil {
			return nil, fmt.Errorf("mounting %s at %s, %w", dev, dst, err)
		}
	}
	return out, nil
}

// waitDisks maps every wanted UUID to a block device — a whole virtio, SCSI/SATA or NVMe disk (separate disks on
// QEMU) or one of its partitions (the single disk of raw-bios/raw-efi images) — waiting for devices that the
// kernel is still probing.
func waitDisks(disks []boot.Disk, timeout time.Duration) (map[string]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		found := map[string]string{}
		devs, _ := filepath.Glob("/sys/class/block/*")
		for _, d := range devs {
			n := filepath.Base(d)
			if !strings.HasPrefix(n, "vd") && !strings.HasPrefix(n, "sd") && !strings.HasPrefix(n, "nvme") && !strings.HasPrefix(n, "xvd") {
				continue
			}
			dev := "/dev/" + filepath.Base(d)
			if u, err := ErofsUUID(dev); err == nil {
				found[u] = dev
			}
		}
		var missing []string
		for _, d := range disks {
			if _, ok := found[d.UUID]; !ok {
				missing = append(missing, d.UUID)
			}
		}
		if len(missing) == 0 {
			return found, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("image disks not found: %v (have %v)", missing, found)
		}
		time.Sleep(20 * time.Millisecond) // the guest kernel is still probing devices
	}
}

// ErofsUUID reads the UUID of the erofs filesystem on dev (superblock at 1024, UUID at offset 48).
func ErofsUUID(dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sb := make([]byte, 80)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return "", err
	}
	if sb[0] != 0xe2 || sb[1] != 0xe1 || sb[2] != 0xf5 || sb[3] != 0xe0 { // EROFS_SUPER_MAGIC_V1, little endian
		return "", errors.New("not erofs")
	}
	return boot.FormatUUID(sb[48:64]), nil
}

// loadModules loads kernel modules in order. A module that fails to load is reported and skipped: what needs it
// (a disk, the network) then fails with its own, clearer error.
func loadModules(console io.Writer, mods []string) {
	for _, m := range mods {
		f, err := os.Open(m)
		if err != nil {
			fmt.Fprintf(console, "i2kit-agent: module %s: %v\n", m, err)
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			fmt.Fprintf(console, "i2kit-agent: loading module %s: %v\n", m, err)
		}
	}
}

// linkUp sets a network interface up.
func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// cmdlineParam returns a key=value parameter of the kernel command line, or def.
func cmdlineParam(key, def string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, key+"="); ok && v != "" {
			return v
		}
	}
	return def
}
