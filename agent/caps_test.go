package agent

import (
	"fmt"
	"os"
	goruntime "runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/i2kit/i2kit/agent/protocol"
)

func TestSystemMounts(t *testing.T) {
	for _, privileged := range []bool{false, true} {
		var sys *systemMount
		for _, m := range systemMounts(privileged, true) {
			if m.dst == "sys" {
				sys = &m
			}
		}
		if sys == nil {
			t.Fatalf("privileged %v: no /sys", privileged)
		}
		if ro := sys.flags&syscall.MS_RDONLY != 0; ro == privileged {
			t.Errorf("privileged %v: /sys read-only %v, want %v", privileged, ro, !privileged)
		}
	}
}

// TestSystemMountsOfDev: a privileged container's /dev is the VM's; an unprivileged one's is a nodev tmpfs with the
// standard devices bound into it one by one, the terminals, shared memory and message queues, and nothing else
// of the VM's.
func TestSystemMountsOfDev(t *testing.T) {
	devMounts := func(privileged bool) []string {
		var out []string
		for _, m := range systemMounts(privileged, false) {
			if m.dst == "dev" || strings.HasPrefix(m.dst, "dev/") {
				out = append(out, fmt.Sprintf("%s %s %s nodev=%t rec=%t file=%t", m.src, m.dst, m.fstype,
					m.flags&syscall.MS_NODEV != 0, m.flags&syscall.MS_REC != 0, m.file))
			}
		}
		return out
	}
	if got, want := devMounts(true), []string{"/dev dev  nodev=false rec=true file=false"}; !slices.Equal(got, want) {
		t.Errorf("privileged: %q, want %q", got, want)
	}
	want := []string{"tmpfs dev tmpfs nodev=true rec=false file=false"}
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty"} {
		want = append(want, fmt.Sprintf("/dev/%s dev/%s  nodev=false rec=false file=true", d, d))
	}
	for _, d := range []string{"pts", "shm", "mqueue"} {
		want = append(want, fmt.Sprintf("/dev/%s dev/%s  nodev=false rec=false file=false", d, d))
	}
	if got := devMounts(false); !slices.Equal(got, want) {
		t.Errorf("unprivileged:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if rootFlags(false)&syscall.MS_NODEV == 0 || rootFlags(true) != 0 {
		t.Errorf("root flags %x (unprivileged), %x (privileged); want nodev, none", rootFlags(false), rootFlags(true))
	}
}

// TestRestrictProcesses applies security contexts on threads of their own (each ends with its goroutine, locked
// and never unlocked) and reads what the thread's children would inherit: the bounding set and no_new_privs.
func TestRestrictProcesses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("dropping capabilities from the bounding set needs root")
	}
	full := threadStatus(t, nil)
	if full["CapBnd"] == "0000000000000000" {
		t.Skip("this process has an empty bounding set")
	}
	for _, tc := range []struct {
		name       string
		sec        *protocol.Security
		wantBnd    string // "" is this process's own, untouched
		wantNoPriv string
	}{
		{"none", nil, "", "0"},
		{"default set", &protocol.Security{Capabilities: []string{"CHOWN", "KILL"}}, "0000000000000021", "0"},
		{"no new privileges", &protocol.Security{Capabilities: []string{}, NoNewPrivileges: true}, "0000000000000000", "1"},
		{"privileged", &protocol.Security{Privileged: true}, "", "0"},
		{"privileged wins over capabilities and no_new_privs", &protocol.Security{Privileged: true, Capabilities: []string{},
			NoNewPrivileges: true}, "", "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := threadStatus(t, tc.sec)
			want := tc.wantBnd
			if want == "" {
				want = full["CapBnd"]
			}
			if st["CapBnd"] != want || st["NoNewPrivs"] != tc.wantNoPriv {
				t.Errorf("CapBnd %s NoNewPrivs %s, want %s and %s", st["CapBnd"], st["NoNewPrivs"], want, tc.wantNoPriv)
			}
		})
	}
}

// threadStatus applies sec on a fresh thread and returns that thread's /proc status fields.
func threadStatus(t *testing.T, sec *protocol.Security) map[string]string {
	t.Helper()
	type result struct {
		st  map[string]string
		err error
	}
	done := make(chan result, 1)
	go func() {
		goruntime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := restrictProcesses(sec); err != nil {
			done <- result{err: err}
			return
		}
		b, err := os.ReadFile("/proc/thread-self/status")
		st := map[string]string{}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok {
				st[k] = strings.TrimSpace(v)
			}
		}
		done <- result{st, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.st
}
