package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/protocol"
)

// procSys is where the kernel's sysctls are.
const procSys = "/proc/sys"

// sysctlName is a sysctl's name as the API validates it: elements of lowercase letters, digits, "-" and "_",
// starting and ending with a letter or digit, separated by dots or slashes; at most sysctlNameMax characters.
var sysctlName = regexp.MustCompile(`^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$`)

const sysctlNameMax = 253

// sysctlPath is the path of the sysctl name (see protocol.Sysctl) relative to /proc/sys. A name that is not a
// sysctl's is refused: no element of the path it gives can be empty, "." or "..".
func sysctlPath(name string) (string, error) {
	if len(name) > sysctlNameMax || !sysctlName.MatchString(name) {
		return "", fmt.Errorf("sysctl %q: not a sysctl name", name)
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.':
			return '/'
		case '/':
			return '.'
		}
		return r
	}, name), nil
}

// inContainerNamespace reports whether the sysctl belongs to the IPC or UTS namespace, which each container has
// its own of (a new namespace starts with the kernel's defaults, not the VM's values): those are set again in
// the container's (see Supervise).
func inContainerNamespace(name string) bool {
	if name == "kernel.hostname" || name == "kernel.domainname" {
		return true
	}
	for _, p := range []string{"kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue."} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// writeSysctls sets each sysctl by writing its value to its file under root (procSys), in order, after checking
// every name: a bad name sets none. The file is opened within root by the kernel (openat2 with RESOLVE_BENEATH,
// no symlinks), never created. The error names the sysctl and says why the kernel refused it.
func writeSysctls(root string, sysctls []protocol.Sysctl) error {
	paths := make([]string, len(sysctls))
	for i, s := range sysctls {
		p, err := sysctlPath(s.Name)
		if err != nil {
			return err
		}
		paths[i] = p
	}
	if len(sysctls) == 0 {
		return nil
	}
	dir, err := os.OpenFile(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s, %w", root, err)
	}
	defer dir.Close()
	for i, s := range sysctls {
		if err := writeSysctl(dir, paths[i], s.Value); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("setting sysctl %s: this kernel has no such sysctl", s.Name)
			}
			return fmt.Errorf("setting sysctl %s to %q, %w", s.Name, s.Value, err)
		}
	}
	return nil
}

func writeSysctl(dir *os.File, path, value string) error {
	fd, err := unix.Openat2(int(dir.Fd()), path, &unix.OpenHow{Flags: unix.O_WRONLY | unix.O_TRUNC | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return &fs.PathError{Op: "openat2", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	// One write, as sysctl(8) does: the kernel parses the value from the start of each write.
	_, err = f.Write([]byte(value))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
