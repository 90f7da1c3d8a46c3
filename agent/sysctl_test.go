package agent

import (
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/protocol"
)

// TestWriteSysctls writes sysctls under a directory standing for /proc/sys, whose files exist beforehand as the
// kernel's do.
func TestWriteSysctls(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sysctls []protocol.Sysctl
		want    map[string]string // file under the root: content after
		wantErr string
	}{
		{"none", nil, nil, ""},
		{"one", []protocol.Sysctl{{Name: "kernel.shm_rmid_forced", Value: "1"}}, map[string]string{"kernel/shm_rmid_forced": "1"}, ""},
		{"a dot within an element", []protocol.Sysctl{{Name: "net.ipv4.conf.eth0/1.rp_filter", Value: "2"}},
			map[string]string{"net/ipv4/conf/eth0.1/rp_filter": "2"}, ""},
		{"node-level, in order", []protocol.Sysctl{{Name: "vm.max_map_count", Value: "262144"}, {Name: "kernel.msgmax", Value: "65536"}},
			map[string]string{"vm/max_map_count": "262144", "kernel/msgmax": "65536"}, ""},
		{"a value replaces the old one", []protocol.Sysctl{{Name: "net.ipv4.ip_local_port_range", Value: "1024 2048"}},
			map[string]string{"net/ipv4/ip_local_port_range": "1024 2048"}, ""},
		{"no such sysctl", []protocol.Sysctl{{Name: "kernel.nope", Value: "1"}}, nil, "setting sysctl kernel.nope: this kernel has no such sysctl"},
		{"dot-dot", []protocol.Sysctl{{Name: "../x", Value: "1"}}, nil, `sysctl "../x": not a sysctl name`},
		{"dot-dot inside", []protocol.Sysctl{{Name: "kernel/../../x", Value: "1"}}, nil, `sysctl "kernel/../../x": not a sysctl name`},
		{"dots inside", []protocol.Sysctl{{Name: "kernel...x", Value: "1"}}, nil, "not a sysctl name"},
		{"absolute", []protocol.Sysctl{{Name: "/etc/passwd", Value: "1"}}, nil, "not a sysctl name"},
		{"empty", []protocol.Sysctl{{Name: "", Value: "1"}}, nil, "not a sysctl name"},
		{"too long", []protocol.Sysctl{{Name: strings.Repeat("a.", 127) + "a", Value: "1"}}, nil, "not a sysctl name"},
		{"a bad name sets none", []protocol.Sysctl{{Name: "kernel.shm_rmid_forced", Value: "1"}, {Name: "a/../b", Value: "1"}},
			map[string]string{"kernel/shm_rmid_forced": "0"}, "not a sysctl name"},
		{"a symlink out of the root", []protocol.Sysctl{{Name: "link.x", Value: "1"}}, nil, "setting sysctl link.x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			outside := t.TempDir()
			for _, f := range []string{"kernel/shm_rmid_forced", "kernel/msgmax", "vm/max_map_count", "net/ipv4/conf/eth0.1/rp_filter",
				"net/ipv4/ip_local_port_range"} {
				os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755) //nolint:errcheck
				if err := os.WriteFile(filepath.Join(root, f), []byte("0"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			os.WriteFile(filepath.Join(outside, "x"), []byte("0"), 0o644) //nolint:errcheck
			if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
				t.Fatal(err)
			}
			err := writeSysctls(root, tc.sysctls)
			if (err == nil) != (tc.wantErr == "") || err != nil && !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("writeSysctls = %v, want %q", err, tc.wantErr)
			}
			for f, want := range tc.want {
				if b, _ := os.ReadFile(filepath.Join(root, f)); string(b) != want {
					t.Errorf("%s = %q, want %q", f, b, want)
				}
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "x")); string(b) != "0" {
				t.Errorf("a file outside the root was written: %q", b)
			}
		})
	}
}

func TestInContainerNamespace(t *testing.T) {
	for name, want := range map[string]bool{
		"kernel.shm_rmid_forced": true, "kernel.shmmax": true, "kernel.msgmax": true, "kernel.sem": true,
		"fs.mqueue.msg_max": true, "kernel.hostname": true, "kernel.domainname": true,
		"net.ipv4.tcp_syncookies": false, "vm.max_map_count": false, "kernel.pid_max": false, "fs.file-max": false,
	} {
		if got := inContainerNamespace(name); got != want {
			t.Errorf("inContainerNamespace(%s) = %v, want %v", name, got, want)
		}
	}
}

// TestWriteSysctlsInTheKernel sets kernel.shm_rmid_forced in /proc/sys on a thread in an IPC namespace of its own,
// as a container's supervisor does, and reads it back there; the thread ends with its goroutine.
func TestWriteSysctlsInTheKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a new IPC namespace needs root")
	}
	type result struct {
		before, after string
		err           error
	}
	read := func() string {
		b, _ := os.ReadFile(filepath.Join(procSys, "kernel/shm_rmid_forced"))
		return strings.TrimSpace(string(b))
	}
	outer := read()
	done := make(chan result, 1)
	go func() {
		goruntime.LockOSThread() // never unlocked: the thread and its namespace end with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWIPC); err != nil {
			done <- result{err: err}
			return
		}
		before := read()
		err := writeSysctls(procSys, []protocol.Sysctl{{Name: "kernel.shm_rmid_forced", Value: "1"}})
		done <- result{before, read(), err}
	}()
	r := <-done
	if r.err != nil {
		t.Skipf("no new IPC namespace or sysctl here: %v", r.err)
	}
	if r.after != "1" {
		t.Errorf("kernel.shm_rmid_forced = %q after the write (was %q), want 1", r.after, r.before)
	}
	if got := read(); got != outer {
		t.Errorf("kernel.shm_rmid_forced of this process's IPC namespace went from %q to %q", outer, got)
	}
}
