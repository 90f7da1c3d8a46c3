package agent

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSubPathMountResistsSymlinkSwap races a container that swaps a subPath's directory for a symlink out of the
// volume (renameat2 RENAME_EXCHANGE, atomic) against the agent's resolving and the supervisor's binding of that
// subPath, as the agent and supervisor do it, in a private mount namespace. A "host" file outside the volume must
// never be visible at the mount point. It needs root.
func TestSubPathMountResistsSymlinkSwap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount namespaces)")
	}
	base := t.TempDir()
	vol, host, ctr := filepath.Join(base, "vol"), filepath.Join(base, "host"), filepath.Join(base, "ctr")
	for _, d := range []string{filepath.Join(vol, "sub"), host, ctr} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(vol, "sub", "inside"), nil, 0o644)        //nolint:errcheck
	os.WriteFile(filepath.Join(host, "host-secret"), nil, 0o644)         //nolint:errcheck
	if err := os.Symlink(host, filepath.Join(vol, "evil")); err != nil { // a container would write "../.." and the like
		t.Fatal(err)
	}

	var stop atomic.Bool
	swaps := make(chan int)
	go func() { // the sibling container
		n := 0
		for !stop.Load() {
			if unix.Renameat2(unix.AT_FDCWD, filepath.Join(vol, "sub"), unix.AT_FDCWD, filepath.Join(vol, "evil"), unix.RENAME_EXCHANGE) == nil {
				n++
			}
		}
		swaps <- n
	}()

	type result struct {
		mounts, escapes int
		err             error
	}
	var r result
	r.err = inMountNamespace(func() error {
		target := filepath.Join(ctr, "mnt")
		for i := 0; i < 50000 && r.mounts < 300 && r.escapes == 0; i++ {
			// Resolved and bound as the supervisor does; refused when resolved while it was the symlink.
			if err := bindVolume(ctr, bindMount{Source: vol, SubPath: "sub", Create: true, Target: "/mnt"}); err != nil {
				continue
			}
			r.mounts++
			if _, err := os.Lstat(filepath.Join(target, "host-secret")); err == nil {
				r.escapes++
			}
			if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
				return err
			}
		}
		return nil
	})
	stop.Store(true)
	n := <-swaps
	if errors.Is(r.err, unix.EPERM) {
		t.Skipf("no mount namespace here: %v", r.err)
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("%d mounts during %d swaps, %d escaped", r.mounts, n, r.escapes)
	if r.escapes > 0 {
		t.Fatalf("a subPath mount showed the file outside the volume (%d of %d mounts)", r.escapes, r.mounts)
	}
	if r.mounts == 0 || n == 0 {
		t.Fatalf("%d mounts during %d swaps: the race was not run", r.mounts, n)
	}
}
