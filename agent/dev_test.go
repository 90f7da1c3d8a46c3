package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/protocol"
)

// inMountNamespace runs fn on a thread that enters a private mount namespace of its own and is never unlocked: it
// ends with fn's goroutine, and its mounts with it. It returns fn's error, or why the namespace could not be made.
func inMountNamespace(fn func() error) error {
	done := make(chan error)
	go func() {
		goruntime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			done <- err
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

// devNames lists the names in a directory, sorted.
func devNames(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names, nil
}

// opensDevice makes a device node (that of /dev/null) at path and reports whether it can be opened.
func opensDevice(path string) (bool, error) {
	if err := unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		return false, fmt.Errorf("mknod %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, os.ErrPermission) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	f.Close()
	return true, nil
}

// TestContainerRootHoldsOnlyItsDevices sets up container roots as the supervisor does, on a tmpfs as the
// container's overlay, in a private mount namespace: an unprivileged container's /dev holds the standard devices,
// which work, and nothing else of the VM's; a device node it makes, in /dev or in its root, opens nothing. A
// privileged container's /dev is the VM's, and its device nodes open. It needs root.
func TestContainerRootHoldsOnlyItsDevices(t *testing.T) {
	for _, privileged := range []bool{false, true} {
		t.Run(fmt.Sprintf("privileged=%t", privileged), func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("needs root (mount namespaces)")
			}
			root := t.TempDir()
			err := inMountNamespace(func() error {
				if err := unix.Mount("tmpfs", root, "tmpfs", 0, ""); err != nil { // an overlay's flags: none
					return err
				}
				if err := setUpRoot(supervisorSpec{Root: root, Security: &protocol.Security{Privileged: privileged}}); err != nil {
					return fmt.Errorf("setting up the root: %w", err)
				}
				got, err := devNames(filepath.Join(root, "dev"))
				if err != nil {
					return err
				}
				var want []string
				if privileged {
					if want, err = devNames("/dev"); err != nil {
						return err
					}
				} else {
					want = append(want, containerDevices...)
					for _, d := range []string{"pts", "shm", "mqueue"} {
						if _, err := os.Stat("/dev/" + d); err == nil {
							want = append(want, d)
						}
					}
					for name := range devLinks {
						want = append(want, name)
					}
					slices.Sort(want)
				}
				if !slices.Equal(got, want) {
					return fmt.Errorf("/dev holds %q, want %q", got, want)
				}
				if err := os.WriteFile(filepath.Join(root, "dev/null"), []byte("x"), 0); err != nil {
					return fmt.Errorf("writing /dev/null: %w", err)
				}
				dirs := []string{"", "dev"}
				if privileged {
					dirs = dirs[:1] // its dev is the VM's (here the host's)
				}
				for _, dir := range dirs {
					path := filepath.Join(root, dir, "made")
					opens, err := opensDevice(path)
					if err != nil {
						return err
					}
					if opens != privileged {
						return fmt.Errorf("a device node made at /%s opens: %t, want %t", filepath.Join(dir, "made"), opens, privileged)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
