package vm

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/i2kit/i2kit/provider/qemu"
	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/provider/vm/vmtest"
	"github.com/i2kit/i2kit/vmimage"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

// TestQEMUBackendConformance runs the backend conformance kit against the qemu backend with real VMs, on a bridge
// in this test's network namespace.
func TestQEMUBackendConformance(t *testing.T) {
	vmlinux, err := kernel.Vmlinux()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := vmimage.OpenStore(filepath.Join(dir, "store"), 10, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	bl := &vmimage.Builder{Store: st, Source: &vmimage.Source{AllowLocalLayouts: true}, Kernel: vmlinux, Agent: buildAgent(t, dir)}
	img, err := bl.Ensure(context.Background(), &vmimage.Spec{Services: []vmimage.Container{{Name: "web", Image: "oci:" + ociLayout(t, dir)}}}, qemu.Format)
	if err != nil {
		t.Fatal(err)
	}
	cfg := qemu.Config{RuntimeDir: filepath.Join(dir, "run"), Bridge: "i2kt0", PodCIDR: "10.89.0.0/24"}
	vmtest.Run(t, vmtest.Harness{
		New: func(t *testing.T, notify func(vm.Status)) vm.Backend {
			b, err := qemu.New(cfg, notify)
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
		Plan: func(uid string) vm.Plan {
			return vm.Plan{UID: uid, Namespace: "default", Name: "pod-" + uid, Image: img, MemoryMiB: 128, CPUs: 1}
		},
		KillOutside: func(t *testing.T, st vm.Status) {
			pid, err := strconv.Atoi(st.ID)
			if err != nil {
				t.Fatalf("VM ID %q is not a pid", st.ID)
			}
			syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck
		},
		Leftovers: func(t *testing.T, uid string) []string {
			var out []string
			if _, err := os.Stat(filepath.Join(cfg.RuntimeDir, uid)); err == nil {
				out = append(out, "runtime directory "+uid)
			}
			if _, err := net.InterfaceByName(qemu.TAPName(uid)); err == nil {
				out = append(out, "TAP "+qemu.TAPName(uid))
			}
			ents, _ := filepath.Glob("/proc/[0-9]*/cmdline")
			for _, e := range ents {
				if b, _ := os.ReadFile(e); strings.Contains(string(b), filepath.Join(cfg.RuntimeDir, uid)) {
					out = append(out, "process "+e)
				}
			}
			return out
		},
		BootTimeout: 2 * time.Minute,
	})
}
