// Package devregistry is a throw-away, in-memory OCI registry for local clusters and tests, where no outside
// registry may be reachable, and a way to seed it with images made from static binaries.
package devregistry

import (
	"archive/tar"
	"bytes"
	"crypto/subtle"
	"io"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Serve serves a registry over plain HTTP on l until the returned server is closed.
func Serve(l net.Listener, opts ...Option) *http.Server {
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	for _, o := range opts {
		h = o(h)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l) //nolint:errcheck
	return srv
}

// Option changes how Serve serves the registry.
type Option func(http.Handler) http.Handler

// BasicAuth makes the registry demand HTTP basic auth as user with password, for every request: others get 401
// with a Basic challenge and the registry API's UNAUTHORIZED error, as a private registry answers. Push with
// remote.WithAuth(&authn.Basic{...}).
func BasicAuth(user, password string) Option {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			u, p, ok := r.BasicAuth()
			if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
				w.Header().Set("WWW-Authenticate", `Basic realm="i2kit dev registry"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}`+"\n") //nolint:errcheck
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// Applets are the commands a shell-carrying image links to its busybox.
var Applets = []string{"sh", "cat", "ls", "echo", "env", "hostname", "id", "ps", "sleep", "true", "false", "wget", "kill", "mkdir", "rm", "head", "tail", "grep", "wc", "stty", "dd", "uname", "stat"}

// PushBinary pushes to ref (a plain-HTTP registry) a one-layer linux/amd64 image whose entrypoint is the static
// binary at path, installed as /app. With busybox (the path of a static busybox, "" for none) the image also has
// /bin/busybox and /bin/<applet> links to it, so that kubectl exec finds a shell and the usual tools. opts go to
// remote.Write (remote.WithAuth for a registry that demands credentials).
func PushBinary(ref, path, busybox string, opts ...remote.Option) error {
	body, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "app", Mode: 0o755, Size: int64(len(body))}); err != nil {
		return err
	}
	if _, err := tw.Write(body); err != nil {
		return err
	}
	env := []string{"PATH=/"}
	if busybox != "" {
		bb, err := os.ReadFile(busybox)
		if err != nil {
			return err
		}
		for _, h := range []*tar.Header{{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777},
			{Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))}} {
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
		}
		if _, err := tw.Write(bb); err != nil {
			return err
		}
		for _, a := range Applets {
			if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}); err != nil {
				return err
			}
		}
		env = []string{"PATH=/bin:/"}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	lb := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(lb)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Entrypoint: []string{"/app"}, Env: env}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	return remote.Write(r, img, opts...)
}
