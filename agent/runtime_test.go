package agent

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/i2kit/i2kit/agent/boot"

	"github.com/i2kit/i2kit/agent/protocol"
)

func TestContainerArgv(t *testing.T) {
	img := boot.Container{Argv: []string{"/entry", "cmd"}, Entrypoint: []string{"/entry"}}
	for _, tc := range []struct {
		name string
		rc   protocol.ContainerConfig
		want []string
	}{
		{"image's", protocol.ContainerConfig{}, []string{"/entry", "cmd"}},
		{"command drops cmd", protocol.ContainerConfig{Command: []string{"/bin/sh"}}, []string{"/bin/sh"}},
		{"command and args", protocol.ContainerConfig{Command: []string{"/bin/sh"}, Args: []string{"-c", "x"}}, []string{"/bin/sh", "-c", "x"}},
		{"args follow the entrypoint", protocol.ContainerConfig{Args: []string{"--v"}}, []string{"/entry", "--v"}},
	} {
		if got := containerArgv(img, tc.rc); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := containerArgv(boot.Container{}, protocol.ContainerConfig{Args: []string{"x"}}); !slices.Equal(got, []string{"x"}) {
		t.Errorf("args without an entrypoint: got %q", got)
	}
}

func TestVerifyRunAsNonRoot(t *testing.T) {
	id := func(v int64) *int64 { return &v }
	nonRoot := func(uid *int64) *protocol.Security { return &protocol.Security{RunAsNonRoot: true, RunAsUser: uid} }
	for _, tc := range []struct {
		name    string
		user    string
		sec     *protocol.Security
		wantErr string
	}{
		{"no policy", "", nil, ""},
		{"policy off", "", &protocol.Security{}, ""},
		{"image root by default", "", nonRoot(nil), "container has runAsNonRoot and image will run as root"},
		{"image uid 0", "0:0", nonRoot(nil), "container has runAsNonRoot and image will run as root"},
		{"image uid", "1000", nonRoot(nil), ""},
		{"image user name", "nobody", nonRoot(nil), "container has runAsNonRoot and image has non-numeric user (nobody), cannot verify user is non-root"},
		{"runAsUser wins over a name", "nobody", nonRoot(id(1000)), ""},
		{"runAsUser 0", "1000", nonRoot(id(0)), "container's runAsUser breaks non-root policy"},
	} {
		err := verifyRunAsNonRoot(tc.user, tc.sec)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.wantErr {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.wantErr)
		}
	}
}

// TestContainerOutputStaysOffTheConsole: under a node, a container's output goes to its log only, and the agent's
// own lines to the console; a pod booted from its image alone mirrors the output to the console, prefixed.
func TestContainerOutputStaysOffTheConsole(t *testing.T) {
	for _, mirror := range []bool{false, true} {
		var console, log bytes.Buffer
		r := newRuntime(&console, boot.ImageConfig{}, "pod")
		r.mirrorOutput = mirror
		w := r.containerOutput(&log, &consoleLines{r: r, prefix: "[web] "})
		io.WriteString(w, "secret output\nmore")           //nolint:errcheck
		io.WriteString(w, strings.Repeat("x", 10000)+"\n") //nolint:errcheck
		r.say("i2kit-agent: a line of the agent's")
		if !strings.HasPrefix(log.String(), "secret output\nmore") {
			t.Errorf("mirror %v: the log has %.40q", mirror, log.String())
		}
		if !strings.Contains(console.String(), "i2kit-agent: a line of the agent's\n") {
			t.Errorf("mirror %v: the agent's line is not on the console: %.100q", mirror, console.String())
		}
		if got := strings.Contains(console.String(), "secret output"); got != mirror {
			t.Errorf("mirror %v: the container's output on the console: %v (%.100q)", mirror, got, console.String())
		}
		if mirror && !strings.Contains(console.String(), "[web] secret output\n") {
			t.Errorf("mirrored output is not prefixed: %.100q", console.String())
		}
	}
}
