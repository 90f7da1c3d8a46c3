package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/i2kit/i2kit/agent/protocol"
)

// Real files' formats, as a 6.x kernel writes them.
const (
	testProcStat = `cpu  843267 21476 141720 951335 4330 0 5963 6549 0 0
cpu0 422849 10531 71581 473538 2560 0 2818 3216 0 0
cpu1 420418 10945 70139 477797 1770 0 3145 3333 0 0
intr 95623511 0 9 0 0 0 0 0 0 0 0 0 0 156 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 176512309
btime 1718000000
processes 231554
procs_running 2
procs_blocked 0
softirq 27436114 0 5627712 1 1238112 0 0 38 11019290 0 9550961
`
	testMeminfo = `MemTotal:        2035148 kB
MemFree:          912340 kB
MemAvailable:    1523212 kB
Buffers:           10240 kB
Cached:           612344 kB
SwapCached:            0 kB
Active:           402112 kB
Inactive:         488020 kB
Active(anon):       2048 kB
Inactive(anon):   265472 kB
Active(file):     400064 kB
Inactive(file):   222548 kB
Unevictable:           0 kB
Mlocked:               0 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Dirty:               120 kB
Writeback:             0 kB
AnonPages:        267520 kB
Mapped:            98304 kB
Shmem:              1024 kB
KReclaimable:      30212 kB
Slab:              60424 kB
SReclaimable:      30212 kB
SUnreclaim:        30212 kB
KernelStack:        2240 kB
PageTables:         4096 kB
CommitLimit:     1017572 kB
Committed_AS:     812344 kB
VmallocTotal:   34359738367 kB
VmallocUsed:       12288 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
DirectMap4k:       81920 kB
`
	testNetDev = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  710877   4207    0    0    0     0          0         0   710877    4207    0    0    0     0       0          0
  eth0: 729451681   34214    3    0    0     0          0         0  2701632   28162    1    0    0     0       0          0
  eth1:1234567890123   99    0    0    0     0          0         0      42       1    0    0    0     0       0          0
`
	testCPUStat = `usage_usec 1523456
user_usec 1100000
system_usec 423456
core_sched.force_idle_usec 0
nr_periods 0
nr_throttled 0
throttled_usec 0
nr_bursts 0
burst_usec 0
`
	testMemoryStat = `anon 1232896
file 4096000
kernel 401408
kernel_stack 32768
pagetables 65536
sec_pagetables 0
percpu 0
sock 0
vmalloc 0
shmem 0
zswap 0
zswapped 0
file_mapped 2048000
file_dirty 0
file_writeback 0
swapcached 0
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 1220608
active_anon 12288
inactive_file 3072000
active_file 1024000
unevictable 0
slab_reclaimable 180000
slab_unreclaimable 120000
slab 300000
workingset_refault_anon 0
workingset_refault_file 12
workingset_activate_anon 0
workingset_activate_file 3
workingset_restore_anon 0
workingset_restore_file 0
workingset_nodereclaim 0
pgscan 0
pgsteal 0
pgfault 23456
pgmajfault 12
pgrefill 0
pgactivate 34
pgdeactivate 0
pglazyfree 0
pglazyfreed 0
thp_fault_alloc 0
thp_collapse_alloc 0
`
)

// statsWriteTree writes files (path relative to root → content) under root.
func statsWriteTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCollectStats(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	started := now.Add(-time.Minute)
	const kB = 1024
	vmMemory := protocol.MemoryStats{
		Usage:      (2035148 - 912340) * kB,
		WorkingSet: (2035148 - 912340 - 222548) * kB,
		RSS:        267520 * kB,
		Available:  1523212 * kB,
	}
	// user+nice+system+irq+softirq+steal ticks of 10 ms.
	const vmCPU = (843267 + 21476 + 141720 + 0 + 5963 + 6549) * 10_000_000
	vmNet := []protocol.InterfaceStats{
		{Name: "eth0", RxBytes: 729451681, RxErrors: 3, TxBytes: 2701632, TxErrors: 1},
		{Name: "eth1", RxBytes: 1234567890123, TxBytes: 42},
	}
	proc := map[string]string{"stat": testProcStat, "meminfo": testMeminfo, "net/dev": testNetDev}

	tests := []struct {
		name    string
		proc    map[string]string
		cgroup  map[string]string
		data    map[string]string // files under the tree holding upper and log dirs
		targets func(data string) []statsTarget
		want    func(s *protocol.Stats)
	}{{
		name: "full tree",
		proc: proc,
		cgroup: map[string]string{
			"app/cpu.stat": testCPUStat, "app/memory.current": "4300800\n", "app/memory.stat": testMemoryStat,
			"app/memory.max": "max\n",
			// A limited container whose inactive file pages exceed what memory.current says (a racy read).
			"side/cpu.stat": "usage_usec 7\nuser_usec 5\nsystem_usec 2\n", "side/memory.current": "1000\n",
			"side/memory.stat": "anon 600\ninactive_file 4096\n", "side/memory.max": "268435456\n",
		},
		data: map[string]string{
			"app/upper/etc/hosts": strings.Repeat("h", 100), "app/upper/var/lib/db": strings.Repeat("d", 5000),
			"app/upper/empty": "", "app/logs/0.log": strings.Repeat("l", 300), "app/logs/1.log": "xyz",
		},
		targets: func(data string) []statsTarget {
			return []statsTarget{
				{Name: "app", StartedAt: started,
					UpperDir: filepath.Join(data, "app/upper"), LogDir: filepath.Join(data, "app/logs")},
				{Name: "side", StartedAt: started},
			}
		},
		want: func(s *protocol.Stats) {
			s.CPU.UsageNanos = vmCPU
			s.Memory = vmMemory
			s.Network = vmNet
			s.Containers = []protocol.ContainerStats{{
				Name: "app", StartedAt: started,
				CPU:        protocol.CPUStats{UsageNanos: 1523456_000},
				Memory:     protocol.MemoryStats{Usage: 4300800, WorkingSet: 4300800 - 3072000, RSS: 1232896},
				RootfsUsed: 5100,
				LogsUsed:   303,
			}, {
				Name: "side", StartedAt: started,
				CPU:    protocol.CPUStats{UsageNanos: 7000},
				Memory: protocol.MemoryStats{Usage: 1000, WorkingSet: 0, RSS: 600, Available: 268435456},
			}}
		},
	}, {
		name: "nothing to read",
		targets: func(data string) []statsTarget {
			return []statsTarget{{Name: "gone", StartedAt: started,
				UpperDir: filepath.Join(data, "nope"), LogDir: filepath.Join(data, "nope2")}}
		},
		want: func(s *protocol.Stats) {
			s.Containers = []protocol.ContainerStats{{Name: "gone", StartedAt: started}}
		},
	}, {
		name: "garbled files",
		proc: map[string]string{"stat": "intr 1 2 3\n", "meminfo": "MemTotal: lots kB\n", "net/dev": "garbage\n  eth0: 1 2 3\n"},
		cgroup: map[string]string{
			"c/cpu.stat": "usage_usec\n", "c/memory.current": "", "c/memory.stat": "anon x\n", "c/memory.max": "\n",
		},
		targets: func(string) []statsTarget { return []statsTarget{{Name: "c"}} },
		want: func(s *protocol.Stats) {
			s.Containers = []protocol.ContainerStats{{Name: "c"}}
		},
	}, {
		name: "no containers",
		proc: proc,
		want: func(s *protocol.Stats) {
			s.CPU.UsageNanos = vmCPU
			s.Memory = vmMemory
			s.Network = vmNet
			s.Containers = []protocol.ContainerStats{}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			src := statsSource{Proc: filepath.Join(root, "proc"), Cgroup: filepath.Join(root, "cgroup")}
			data := filepath.Join(root, "data")
			statsWriteTree(t, src.Proc, tt.proc)
			statsWriteTree(t, src.Cgroup, tt.cgroup)
			statsWriteTree(t, data, tt.data)
			var targets []statsTarget
			if tt.targets != nil {
				targets = tt.targets(data)
			}
			got := src.collect(now, targets)
			want := protocol.Stats{Time: now}
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("collect:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestDiskUsageCountsHardLinksOnceAndSkipsOthers(t *testing.T) {
	dir := t.TempDir()
	statsWriteTree(t, dir, map[string]string{"a": "12345", "sub/b": "123"})
	if err := os.Link(filepath.Join(dir, "a"), filepath.Join(dir, "sub/a-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a", filepath.Join(dir, "sym")); err != nil {
		t.Fatal(err)
	}
	if got := statsDiskUsage(dir); got != 8 {
		t.Errorf("statsDiskUsage = %d, want 8", got)
	}
	if got := statsDiskUsage(""); got != 0 {
		t.Errorf("statsDiskUsage(\"\") = %d, want 0", got)
	}
}

func TestDiskUsageSkipsUnreadableDirectories(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads every directory")
	}
	dir := t.TempDir()
	statsWriteTree(t, dir, map[string]string{"a": "12345", "locked/b": "123"})
	if err := os.Chmod(filepath.Join(dir, "locked"), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(dir, "locked"), 0o755) })
	if got := statsDiskUsage(dir); got != 5 {
		t.Errorf("statsDiskUsage = %d, want 5", got)
	}
}
