package agent

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/agent/protocol"
)

// statsSource is where the stats collector reads the kernel's figures; tests point it at a fake tree.
type statsSource struct {
	Proc   string // "/proc" in production
	Cgroup string // "/sys/fs/cgroup" (cgroup v2) in production
}

// statsTarget is one container to report: its cgroup is Cgroup/Name, its writable layer UpperDir and its logs
// LogDir ("" for none).
type statsTarget struct {
	Name             string
	StartedAt        time.Time
	UpperDir, LogDir string
}

// userHZ is the kernel's USER_HZ, the unit of /proc/stat's CPU times: 100 on every Linux architecture we run.
const userHZ = 100

// collect reads the VM's and the targets' resource use at now. It never fails: a file that is missing or cannot
// be parsed counts as zeros, since a container may be starting or gone while we read.
func (s statsSource) collect(now time.Time, targets []statsTarget) protocol.Stats {
	st := protocol.Stats{
		Time:       now,
		CPU:        protocol.CPUStats{UsageNanos: s.vmCPU()},
		Memory:     s.vmMemory(),
		Network:    s.vmNetwork(),
		Containers: make([]protocol.ContainerStats, 0, len(targets)),
	}
	for _, t := range targets {
		cg := filepath.Join(s.Cgroup, t.Name)
		cpu := statsReadKV(filepath.Join(cg, "cpu.stat"))
		st.Containers = append(st.Containers, protocol.ContainerStats{
			Name:       t.Name,
			StartedAt:  t.StartedAt,
			CPU:        protocol.CPUStats{UsageNanos: cpu["usage_usec"] * 1000},
			Memory:     statsCgroupMemory(cg),
			RootfsUsed: statsDiskUsage(t.UpperDir),
			LogsUsed:   statsDiskUsage(t.LogDir),
		})
	}
	return st
}

// vmCPU is the VM's busy CPU time in nanoseconds from /proc/stat's aggregate "cpu" line: user, nice, system, irq,
// softirq and steal (guest time is already counted in user and nice; idle and iowait are not busy).
func (s statsSource) vmCPU() uint64 {
	f, err := os.Open(filepath.Join(s.Proc, "stat"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "cpu" {
			continue
		}
		// cpu user nice system idle iowait irq softirq steal guest guest_nice
		var ticks uint64
		for _, i := range []int{1, 2, 3, 6, 7, 8} {
			if i < len(fields) {
				v, _ := strconv.ParseUint(fields[i], 10, 64)
				ticks += v
			}
		}
		return ticks * uint64(time.Second/userHZ)
	}
	return 0
}

// vmMemory reads /proc/meminfo: usage is what is not free, the working set leaves out inactive file pages (which
// the kernel reclaims first), RSS is the anonymous pages.
func (s statsSource) vmMemory() protocol.MemoryStats {
	mi := statsReadKV(filepath.Join(s.Proc, "meminfo"))
	usage := statsFloorSub(mi["MemTotal"], mi["MemFree"])
	return protocol.MemoryStats{
		Usage:      usage,
		WorkingSet: statsFloorSub(usage, mi["Inactive(file)"]),
		RSS:        mi["AnonPages"],
		Available:  mi["MemAvailable"],
	}
}

// vmNetwork reads every interface's counters but lo's from /proc/net/dev, in the file's order.
func (s statsSource) vmNetwork() []protocol.InterfaceStats {
	f, err := os.Open(filepath.Join(s.Proc, "net", "dev"))
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []protocol.InterfaceStats
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// The two header lines have a '|' before any ':'; a counter may touch the colon ("eth0:123").
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.Contains(name, "|") {
			continue
		}
		name = strings.TrimSpace(name)
		fields := strings.Fields(rest)
		if name == "lo" || name == "" || len(fields) < 16 {
			continue
		}
		n := func(i int) uint64 { v, _ := strconv.ParseUint(fields[i], 10, 64); return v }
		// Receive: bytes packets errs drop fifo frame compressed multicast; Transmit: bytes packets errs ...
		out = append(out, protocol.InterfaceStats{Name: name, RxBytes: n(0), RxErrors: n(2), TxBytes: n(8), TxErrors: n(10)})
	}
	return out
}

// statsCgroupMemory reads a cgroup v2 directory's memory use as the kubelet does: memory.current less
// inactive_file is the working set, anon the RSS; Available is memory.max less the working set when the cgroup has
// a limit.
func statsCgroupMemory(cg string) protocol.MemoryStats {
	current := statsReadUint(filepath.Join(cg, "memory.current"))
	ms := statsReadKV(filepath.Join(cg, "memory.stat"))
	m := protocol.MemoryStats{
		Usage:      current,
		WorkingSet: statsFloorSub(current, ms["inactive_file"]),
		RSS:        ms["anon"],
	}
	if limit := statsReadUint(filepath.Join(cg, "memory.max")); limit > 0 { // "max" parses as 0: no limit
		m.Available = statsFloorSub(limit, m.WorkingSet)
	}
	return m
}

// statsDiskUsage is the bytes of the regular files under dir, each hard-linked file once. Files that vanish while
// we walk, and directories we cannot read, are skipped.
func statsDiskUsage(dir string) uint64 {
	if dir == "" {
		return 0
	}
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var total uint64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil // a failed ReadDir of a directory still skips only that directory
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok && sys.Nlink > 1 {
			k := inode{uint64(sys.Dev), uint64(sys.Ino)}
			if seen[k] {
				return nil
			}
			seen[k] = true
		}
		total += uint64(fi.Size())
		return nil
	})
	return total
}

// statsReadKV reads a "key value [kB]" file (/proc/meminfo, cpu.stat, memory.stat) into a map, a trailing colon
// dropped from keys and kB turned into bytes. It returns an empty map when the file cannot be read.
func statsReadKV(path string) map[string]uint64 {
	out := map[string]uint64{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		if len(fields) > 2 && fields[2] == "kB" {
			v *= 1024
		}
		out[strings.TrimSuffix(fields[0], ":")] = v
	}
	return out
}

// statsReadUint reads a file holding one number, such as memory.current; anything else ("max", a missing file)
// is 0.
func statsReadUint(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return v
}

// statsFloorSub is a-b, or 0 when b > a.
func statsFloorSub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}
