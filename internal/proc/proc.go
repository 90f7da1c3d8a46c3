// Package proc reads process state from /proc: what the control plane harness and the qemu backend need to
// tell a live process of theirs from a zombie or a recycled pid.
package proc

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Alive reports whether pid exists and is not a zombie (kill -0 succeeds on zombies).
func Alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// Exe is the base name of the binary pid runs ("" when it is gone), to tell a recycled pid from ours.
func Exe(pid int) string {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return ""
	}
	return filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
}
