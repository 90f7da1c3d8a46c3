package qemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCgroupLimits(t *testing.T) {
	for _, tc := range []struct {
		mem, cpus      int
		memMax, cpuMax string
	}{
		{128, 1, "301989888", "100000 100000"},               // (128+160) MiB
		{8192, 4, "8757706752", "400000 100000"},             // (8192+160) MiB
		{192, 0, "369098752", "100000 100000"},               // at least one vCPU's worth
		{1 << 20, 1000, "1099679399936", "100000000 100000"}, // what would be refused before (fitsNode): still bounded
	} {
		got := cgroupLimits(tc.mem, tc.cpus)
		if got["memory.max"] != tc.memMax || got["cpu.max"] != tc.cpuMax || got["memory.swap.max"] != "0" {
			t.Errorf("cgroupLimits(%d, %d) = %v, want memory.max %s cpu.max %q", tc.mem, tc.cpus, got, tc.memMax, tc.cpuMax)
		}
	}
}

// TestCgroupFiles checks the files a VM's cgroup gets, on a plain directory standing in for cgroupfs.
func TestCgroupFiles(t *testing.T) {
	dir := t.TempDir()
	cg := &cgroups{dir: dir}
	f, err := cg.create("uid-1", 256, 2)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for k, want := range cgroupLimits(256, 2) {
		if b, err := os.ReadFile(filepath.Join(dir, "uid-1", k)); err != nil || string(b) != want {
			t.Errorf("%s = %q (%v), want %q", k, b, err, want)
		}
	}
	var none *cgroups
	if f, err := none.create("uid-1", 256, 2); f != nil || err != nil {
		t.Errorf("a nil cgroups created %v, %v", f, err)
	}
}

// TestRealCgroup starts a process in a VM's cgroup as the backend starts QEMU, where this host has a writable
// cgroup v2 with the memory and cpu controllers.
func TestRealCgroup(t *testing.T) {
	slice := filepath.Join(cgroupRoot, "i2kit-test.slice")
	cgs, err := newCgroups(cgroupRoot, slice)
	if err != nil {
		t.Skipf("no usable cgroup v2 here: %v", err)
	}
	defer os.Remove(slice)
	f, err := cgs.create("uid-test", 128, 1)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "cat /proc/self/cgroup")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	out, err := cmd.Output()
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "0::/i2kit-test.slice/uid-test") {
		t.Errorf("the process ran in %q", out)
	}
	if b, _ := os.ReadFile(filepath.Join(slice, "uid-test", "memory.max")); strings.TrimSpace(string(b)) != cgroupLimits(128, 1)["memory.max"] {
		t.Errorf("memory.max = %q", b)
	}
	if err := cgs.remove("uid-test"); err != nil {
		t.Fatal(err)
	}
}
