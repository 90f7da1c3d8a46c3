package qemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cgroupOverheadMiB is what QEMU itself may use beyond the guest's memory: its own code and heap, the TCG
// translation cache (16 MiB, args.go) and device buffers.
const cgroupOverheadMiB = 160

// cgroupPeriod is cpu.max's period in microseconds.
const cgroupPeriod = 100000

// cgroupLimits are the cgroup v2 files and values that bound one VM's QEMU: its memory (the guest's plus QEMU's
// overhead; beyond it the kernel reclaims, then kills QEMU alone, never another process of the host), swap
// (none), CPU time (its vCPUs' worth per period) and processes (QEMU's threads). A pure function: table-tested.
func cgroupLimits(memoryMiB, cpus int) map[string]string {
	if cpus < 1 {
		cpus = 1
	}
	return map[string]string{
		"memory.max":      strconv.FormatInt(int64(memoryMiB+cgroupOverheadMiB)<<20, 10),
		"memory.swap.max": "0",
		"cpu.max":         fmt.Sprintf("%d %d", cpus*cgroupPeriod, cgroupPeriod),
		"pids.max":        strconv.Itoa(64 + 4*cpus),
	}
}

// cgroups places each VM's QEMU in a cgroup v2 of its own under dir (e.g. /sys/fs/cgroup/i2kit.slice/<uid>).
// A nil *cgroups does nothing: the host has no writable cgroup v2 with the memory and cpu controllers.
type cgroups struct {
	dir string
}

// newCgroups prepares dir under the cgroup v2 root (root/cgroup.controllers must offer memory and cpu) and
// enables the controllers the VMs' cgroups need. It returns an error saying why when it cannot.
func newCgroups(root, dir string) (*cgroups, error) {
	ctrl, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("no cgroup v2 at %s, %w", root, err)
	}
	have := strings.Fields(string(ctrl))
	var enable []string
	for _, c := range []string{"memory", "cpu", "pids"} {
		if !contains(have, c) {
			if c == "pids" {
				continue
			}
			return nil, fmt.Errorf("cgroup v2 at %s lacks the %s controller (offers %q)", root, c, strings.TrimSpace(string(ctrl)))
		}
		enable = append(enable, "+"+c)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating cgroup %s, %w", dir, err)
	}
	for _, d := range []string{root, dir} {
		if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0o644); err != nil {
			return nil, fmt.Errorf("enabling %s in cgroup %s, %w", strings.Join(enable, " "), d, err)
		}
	}
	return &cgroups{dir: dir}, nil
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// create makes the cgroup of a VM with its limits and returns an open descriptor of it, for starting QEMU in it
// (SysProcAttr.CgroupFD); the caller closes it. A file the kernel does not offer (no swap accounting, no pids
// controller) is skipped; the memory and cpu limits are required.
func (c *cgroups) create(uid string, memoryMiB, cpus int) (*os.File, error) {
	if c == nil {
		return nil, nil
	}
	d := filepath.Join(c.dir, uid)
	if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("creating cgroup %s, %w", d, err)
	}
	for k, v := range cgroupLimits(memoryMiB, cpus) {
		err := os.WriteFile(filepath.Join(d, k), []byte(v), 0o644)
		if err != nil && (k == "memory.max" || k == "cpu.max" || !errors.Is(err, os.ErrNotExist)) {
			c.remove(uid) //nolint:errcheck
			return nil, fmt.Errorf("setting %s of cgroup %s, %w", k, d, err)
		}
	}
	f, err := os.OpenFile(d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		c.remove(uid) //nolint:errcheck
		return nil, fmt.Errorf("opening cgroup %s, %w", d, err)
	}
	return f, nil
}

// remove removes a VM's cgroup, which must be empty (its QEMU has exited); one that is gone is no error.
func (c *cgroups) remove(uid string) error {
	if c == nil {
		return nil
	}
	if err := unix.Rmdir(filepath.Join(c.dir, uid)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing cgroup of %s, %w", uid, err)
	}
	return nil
}
