package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/i2kit/i2kit/provider/qemu"
	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

// statuses collects a backend's notifications.
type statuses chan vm.Status

func (s statuses) wait(t *testing.T, uid string, want vm.State, timeout time.Duration) vm.Status {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case st := <-s:
			if st.UID == uid && st.State == want {
				return st
			}
		case <-deadline:
			t.Fatalf("VM %s not %s within %s", uid, want, timeout)
		}
	}
}

func httpGet(t *testing.T, url string, timeout time.Duration) string {
	t.Helper()
	c := &http.Client{Timeout: time.Second}
	var err error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var resp *http.Response
		if resp, err = c.Get(url); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(b)
		}
	}
	t.Fatalf("GET %s: %v", url, err)
	return ""
}

// TestQEMUBackendLifecycle launches pod VMs with the qemu backend on a bridge in this test's network namespace:
// launch is idempotent, the pod IP answers HTTP from the host, a restarted backend adopts the running VM, a QEMU
// killed by hand is reported Failed, and Terminate powers a VM off and leaves no process, TAP or directory.
func TestQEMUBackendLifecycle(t *testing.T) {
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
	img, err := bl.Ensure(context.Background(), &vmimage.Spec{Services: []vmimage.Container{{Name: "web", Image: "oci:" + ociLayout(t, dir)}}}, "direct")
	if err != nil {
		t.Fatal(err)
	}
	disks := img.DiskPaths()
	spec := func(uid string) vm.Spec {
		return vm.Spec{UID: uid, Namespace: "default", Name: "pod-" + uid, Kernel: img.Kernel, Initramfs: img.Initramfs,
			Cmdline: img.Spec.Kernel.Cmdline, Disks: disks, MemoryMiB: 128, CPUs: 1}
	}
	cfg := qemu.Config{RuntimeDir: filepath.Join(dir, "run"), Bridge: "i2kt0", PodCIDR: "10.89.0.0/24"}
	events := make(statuses, 100)
	b, err := qemu.New(cfg, func(s vm.Status) { events <- s })
	if err != nil {
		t.Fatal(err)
	}

	first, err := b.Launch(spec("a"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := b.Launch(spec("a"))
	if err != nil || again.Pid != first.Pid || again.IP != first.IP {
		t.Fatalf("second Launch: %+v, %v; want the first VM %+v", again, err, first)
	}
	running := events.wait(t, "a", vm.Running, 60*time.Second)
	t.Logf("VM a Running %s after Launch, IP %s", running.Ready.Sub(running.Started).Round(time.Millisecond), running.IP)
	if got := httpGet(t, "http://"+net.JoinHostPort(running.IP, "8080")+"/", 20*time.Second); got != "hello from pod-a\n" {
		t.Fatalf("pod answered %q", got)
	}

	// A new backend over the same runtime directory adopts the VM: same process, still Running.
	events2 := make(statuses, 100)
	b2, err := qemu.New(cfg, func(s vm.Status) { events2 <- s })
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := b2.Get("a")
	if err != nil || adopted.Pid != first.Pid || adopted.State != vm.Running {
		t.Fatalf("adopted VM: %+v, %v", adopted, err)
	}

	// QEMU killed by hand: reported Failed within 5 s.
	t0 := time.Now()
	syscall.Kill(first.Pid, syscall.SIGKILL) //nolint:errcheck
	failed := events2.wait(t, "a", vm.Failed, 5*time.Second)
	t.Logf("killed VM reported %s (%s) after %s", failed.State, failed.Reason, time.Since(t0).Round(time.Millisecond))
	if err := b2.Terminate(context.Background(), "a", time.Second); err != nil {
		t.Fatal(err)
	}
	if err := b2.Terminate(context.Background(), "a", time.Second); !errors.Is(err, vm.ErrNotFound) {
		t.Errorf("second Terminate: %v, want ErrNotFound", err)
	}

	// A VM asked to stop powers off within the grace period and leaves nothing behind.
	second, err := b2.Launch(spec("b"))
	if err != nil {
		t.Fatal(err)
	}
	events2.wait(t, "b", vm.Running, 60*time.Second)
	t0 = time.Now()
	if err := b2.Terminate(context.Background(), "b", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	term := events2.wait(t, "b", vm.Terminated, time.Second)
	t.Logf("VM b %s (%s) %s after Terminate", term.State, term.Reason, time.Since(t0).Round(time.Millisecond))
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/exe", second.Pid)); err == nil {
		t.Errorf("QEMU %d still runs", second.Pid)
	}
	ents, _ := os.ReadDir(cfg.RuntimeDir)
	if len(ents) != 0 {
		t.Errorf("runtime directory not empty: %v", ents)
	}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if strings.HasPrefix(i.Name, "i2k") && i.Name != "i2kt0" {
			t.Errorf("TAP %s left behind", i.Name)
		}
	}
}
