package agent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ContainerInit runs in a container's new namespaces, as the agent re-executed by the runtime: it makes the mount
// namespace private, mounts /proc, /dev and /sys into the container's root, enters it, takes the container's user
// and executes its command, which thereby becomes PID 1 of the container. It returns only on error.
func ContainerInit() error {
	var c containerSpec
	if err := json.Unmarshal([]byte(os.Getenv(containerInitEnv)), &c); err != nil {
		return fmt.Errorf("reading container spec, %w", err)
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private, %w", err)
	}
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
	}{
		{"proc", "proc", "proc", syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC},
		{"/dev", "dev", "", syscall.MS_BIND | syscall.MS_REC},
		{"sysfs", "sys", "sysfs", syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC},
	} {
		dst := filepath.Join(c.Root, m.dst)
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := syscall.Mount(m.src, dst, m.fstype, m.flags, ""); err != nil {
			return fmt.Errorf("mounting /%s, %w", m.dst, err)
		}
	}
	if err := syscall.Sethostname([]byte(c.Hostname)); err != nil {
		return fmt.Errorf("setting hostname, %w", err)
	}
	if err := syscall.Chroot(c.Root); err != nil {
		return fmt.Errorf("entering the container root, %w", err)
	}
	if err := os.Chdir(c.WorkingDir); err != nil {
		return fmt.Errorf("working directory %s, %w", c.WorkingDir, err)
	}
	uid, gid, err := lookupUser(c.User)
	if err != nil {
		return err
	}
	os.Clearenv()
	for _, kv := range c.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			os.Setenv(k, v) //nolint:errcheck
		}
	}
	if os.Getenv("PATH") == "" {
		os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") //nolint:errcheck
	}
	if os.Getenv("HOME") == "" {
		os.Setenv("HOME", "/") //nolint:errcheck
	}
	path, err := exec.LookPath(c.Argv[0])
	if err != nil {
		return fmt.Errorf("executable %q: %w", c.Argv[0], err)
	}
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("setting groups, %w", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("setting gid %d, %w", gid, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("setting uid %d, %w", uid, err)
	}
	return syscall.Exec(path, c.Argv, os.Environ())
}

// lookupUser resolves "user[:group]" (names or numbers) in the container's /etc/passwd and /etc/group.
func lookupUser(spec string) (uid, gid int, err error) {
	if spec == "" {
		return 0, 0, nil
	}
	u, g, hasGroup := strings.Cut(spec, ":")
	uid, primary, err := lookupID("/etc/passwd", u, 2)
	if err != nil {
		return 0, 0, fmt.Errorf("user %q: %w", u, err)
	}
	gid = primary
	if hasGroup {
		if gid, _, err = lookupID("/etc/group", g, 2); err != nil {
			return 0, 0, fmt.Errorf("group %q: %w", g, err)
		}
	}
	return uid, gid, nil
}

// lookupID returns the numeric id of name (or name itself when numeric) from a passwd-style file, and, for
// passwd, the user's primary group (field 3; 0 for a uid the file does not list).
func lookupID(file, name string, idField int) (id, group int, err error) {
	n, numErr := strconv.Atoi(name)
	f, err := os.Open(file)
	if err != nil {
		if numErr == nil {
			return n, 0, nil
		}
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) <= idField || (fs[0] != name && (numErr != nil || fs[idField] != name)) {
			continue
		}
		id, err := strconv.Atoi(fs[idField])
		if err != nil {
			return 0, 0, err
		}
		if len(fs) > 3 {
			if g, err := strconv.Atoi(fs[3]); err == nil {
				group = g
			}
		}
		return id, group, nil
	}
	if numErr == nil {
		return n, 0, nil
	}
	return 0, 0, errors.New("not found in " + file)
}
