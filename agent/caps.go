package agent

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/protocol"
)

// capabilityNumbers maps capability names (without "CAP_") to their numbers, as in linux/capability.h.
var capabilityNumbers = map[string]int{
	"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
	"SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11,
	"NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17,
	"SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
	"SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29,
	"AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
	"BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}

// restrictProcesses applies a container's security context to the calling thread, and so to whatever it executes:
// the capability bounding set limited to sec.Capabilities (nil: every capability), and no_new_privs with
// sec.NoNewPrivileges. A privileged container is not restricted, whatever the other fields say: its processes
// have every capability, as on a node, and what they can reach is the VM, the pod's own. The caller is locked to
// its thread and the only one that forks.
func restrictProcesses(sec *protocol.Security) error {
	if sec == nil || sec.Privileged {
		return nil
	}
	if sec.Capabilities != nil {
		if err := limitCapabilities(sec.Capabilities); err != nil {
			return err
		}
	}
	if sec.NoNewPrivileges {
		return setNoNewPrivs()
	}
	return nil
}

// setNoNewPrivs sets no_new_privs on the calling thread, so that whatever it executes inherits it. The caller
// is locked to its thread and the only one that forks.
func setNoNewPrivs() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting no_new_privs, %w", err)
	}
	return nil
}

// limitCapabilities drops from the calling thread's bounding set — and so from everything it executes — every
// capability not in keep. The caller is locked to its thread and the only one that forks. Processes it runs as
// root get no more than keep; the supervisor keeps its own effective capabilities (it still sets users).
func limitCapabilities(keep []string) error {
	want := map[int]bool{}
	for _, name := range keep {
		n, ok := capabilityNumbers[strings.TrimPrefix(strings.ToUpper(name), "CAP_")]
		if !ok {
			return fmt.Errorf("unknown capability %q", name)
		}
		want[n] = true
	}
	for c := 0; c <= 63; c++ {
		if want[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if err == unix.EINVAL { // past the kernel's last capability
				return nil
			}
			return fmt.Errorf("dropping capability %d, %w", c, err)
		}
	}
	return nil
}
