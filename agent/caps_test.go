package agent

import (
	"os"
	goruntime "runtime"
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
