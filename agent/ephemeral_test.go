package agent

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
)

// TestAddEphemeralRefuses: the requests the agent refuses before it unpacks anything, with the status the host
// reads (409: not now; 400: never).
func TestAddEphemeralRefuses(t *testing.T) {
	image := boot.ImageConfig{Containers: []boot.Container{{Name: "web", Argv: []string{"nginx"}}}}
	unconfigured := newRuntime(io.Discard, image, "pod")
	configured := newRuntime(io.Discard, image, "pod")
	configured.cfg = &protocol.PodConfig{RestartPolicy: protocol.RestartAlways}
	stopping := newRuntime(io.Discard, image, "pod")
	stopping.cfg, stopping.stopping = &protocol.PodConfig{}, true
	taken := newRuntime(io.Discard, image, "pod")
	taken.cfg = &protocol.PodConfig{}
	taken.ephemerals = []*container{{Container: boot.Container{Name: "debugger"}}}
	for _, tc := range []struct {
		name   string
		rt     *runtime
		ec     protocol.EphemeralContainer
		status int
	}{
		{"before the pod is configured", unconfigured, ephemeral("debugger", ""), http.StatusConflict},
		{"while the pod stops", stopping, ephemeral("debugger", ""), http.StatusConflict},
		{"a container's name", configured, ephemeral("web", ""), http.StatusConflict},
		{"an ephemeral container's name", taken, ephemeral("debugger", ""), http.StatusConflict},
		{"a target the pod lacks", configured, ephemeral("debugger", "db"), http.StatusBadRequest},
		{"a name that is no DNS label", configured, ephemeral("../../etc", ""), http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line, _ := json.Marshal(tc.ec)
			body := io.MultiReader(bytes.NewReader(append(line, '\n')), strings.NewReader("not a tar"))
			w := httptest.NewRecorder()
			(&server{rt: tc.rt}).addEphemeral(w, httptest.NewRequest(http.MethodPost, "/v1/ephemeral", body))
			if w.Code != tc.status {
				t.Errorf("status %d (%s), want %d", w.Code, strings.TrimSpace(w.Body.String()), tc.status)
			}
			if len(tc.rt.adding) != 0 {
				t.Errorf("names still reserved: %v", tc.rt.adding)
			}
		})
	}
}

func ephemeral(name, target string) protocol.EphemeralContainer {
	return protocol.EphemeralContainer{ContainerConfig: protocol.ContainerConfig{Name: name}, TargetContainerName: target}
}

func TestEphemeralImage(t *testing.T) {
	c := ephemeralImage("d", protocol.ImageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}})
	if strings.Join(c.Argv, " ") != "/entry sh" || c.WorkingDir != "/" || c.Env[0] != "PATH=/bin" {
		t.Errorf("ephemeralImage = %+v", c)
	}
	// The pod's command replaces the image's, as for every container.
	if argv := containerArgv(c, protocol.ContainerConfig{Args: []string{"-c", "x"}}); strings.Join(argv, " ") != "/entry -c x" {
		t.Errorf("argv with args = %q", argv)
	}
}
