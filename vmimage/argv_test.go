package vmimage

import (
	"reflect"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestRunConfig(t *testing.T) {
	img := &v1.Config{Entrypoint: []string{"/entry"}, Cmd: []string{"--default"}, Env: []string{"PATH=/bin", "A=1"},
		WorkingDir: "/app", User: "1000:1000"}
	for _, tc := range []struct {
		name string
		cfg  *v1.Config
		c    Container
		want containerRun
	}{
		{"image defaults", img, Container{},
			containerRun{Entrypoint: []string{"/entry"}, Argv: []string{"/entry", "--default"}, Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/app", User: "1000:1000"}},
		{"args replace cmd", img, Container{Args: []string{"--x"}},
			containerRun{Entrypoint: []string{"/entry"}, Argv: []string{"/entry", "--x"}, Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/app", User: "1000:1000"}},
		{"command replaces entrypoint and cmd", img, Container{Command: []string{"/bin/sh"}},
			containerRun{Entrypoint: []string{"/entry"}, Argv: []string{"/bin/sh"}, Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/app", User: "1000:1000"}},
		{"command and args", img, Container{Command: []string{"/bin/sh"}, Args: []string{"-c", "true"}},
			containerRun{Entrypoint: []string{"/entry"}, Argv: []string{"/bin/sh", "-c", "true"}, Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/app", User: "1000:1000"}},
		{"env overrides by name, in place", img, Container{Env: []string{"A=2", "B=3"}, WorkingDir: "/srv"},
			containerRun{Entrypoint: []string{"/entry"}, Argv: []string{"/entry", "--default"}, Env: []string{"PATH=/bin", "A=2", "B=3"}, WorkingDir: "/srv", User: "1000:1000"}},
		{"no image config", nil, Container{Command: []string{"/x"}},
			containerRun{Argv: []string{"/x"}, WorkingDir: "/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := runConfig(tc.cfg, tc.c); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("runConfig = %+v, want %+v", got, tc.want)
			}
		})
	}
}
