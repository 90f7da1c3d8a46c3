package devregistry

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestBasicAuth(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := Serve(l, BasicAuth("alice", "s3cret"))
	t.Cleanup(func() { srv.Close() })
	bin := filepath.Join(t.TempDir(), "app")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ref := l.Addr().String() + "/private/app:1"
	alice := remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"})
	for _, tc := range []struct {
		name    string
		opts    []remote.Option
		wantErr string
	}{
		{"anonymous", nil, "UNAUTHORIZED"},
		{"wrong password", []remote.Option{remote.WithAuth(&authn.Basic{Username: "alice", Password: "nope"})}, "UNAUTHORIZED"},
		{"right credentials", []remote.Option{alice}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := PushBinary(ref, bin, "", tc.opts...)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(strings.ToUpper(err.Error()), tc.wantErr)) {
				t.Errorf("push: %v, want %q", err, tc.wantErr)
			}
		})
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Image(r); err == nil || !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Errorf("anonymous pull: %v, want UNAUTHORIZED", err)
	}
	img, err := remote.Image(r, alice)
	if err != nil {
		t.Fatal(err)
	}
	if cf, err := img.ConfigFile(); err != nil || cf.Config.Entrypoint[0] != "/app" {
		t.Errorf("pulled config %+v, %v", cf, err)
	}
}
