// Package devregistry is a throw-away, in-memory OCI registry for local clusters and tests, where no outside
// registry may be reachable, and a way to seed it with images made from static binaries.
package devregistry

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"

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

// TamperBlobs makes the registry hostile, for tests of what pulls it: every GET of a blob is answered with what
// tamper makes of the registry's own answer, given the blob's digest, how many GETs of it came before (0 for the
// first) and the body. tamper returns the body to send and whether to drop the connection after it (as a
// registry that fails mid-stream; the Content-Length announced is the original's). A nil body answers 404
// BLOB_UNKNOWN.
func TamperBlobs(tamper func(digest string, n int, body []byte) (out []byte, drop bool)) Option {
	return func(next http.Handler) http.Handler {
		var mu sync.Mutex
		gets := map[string]int{}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			i := strings.LastIndex(r.URL.Path, "/blobs/")
			if r.Method != http.MethodGet || i < 0 || strings.Contains(r.URL.Path, "/uploads/") {
				next.ServeHTTP(w, r)
				return
			}
			digest := r.URL.Path[i+len("/blobs/"):]
			mu.Lock()
			n := gets[digest]
			gets[digest]++
			mu.Unlock()
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			if rec.Code != http.StatusOK {
				copyResponse(w, rec, rec.Body.Bytes())
				return
			}
			out, drop := tamper(digest, n, rec.Body.Bytes())
			if out == nil {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusNotFound)
				io.WriteString(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`+"\n") //nolint:errcheck
				return
			}
			if drop {
				w.Header().Set("Content-Length", strconv.Itoa(rec.Body.Len()))
				w.WriteHeader(http.StatusOK)
				w.Write(out) //nolint:errcheck
				if f, ok := w.(http.Flusher); ok {
					f.Flush()
				}
				panic(http.ErrAbortHandler) // the server closes the connection without ending the body
			}
			copyResponse(w, rec, out)
		})
	}
}

// ServeManifests makes every manifest request for repository repo (as "<name>", without the host) answer raw
// with media type mediaType, whatever the registry holds: a registry that serves a copy of another's manifest
// without the blobs it names.
func ServeManifests(repo string, raw []byte, mediaType string) Option {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v2/"+repo+"/manifests/"+path.Base(r.URL.Path) || r.Method != http.MethodGet && r.Method != http.MethodHead {
				next.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", mediaType)
			w.Header().Set("Content-Length", strconv.Itoa(len(raw)))
			w.Header().Set("Docker-Content-Digest", "sha256:"+fmt.Sprintf("%x", sha256.Sum256(raw)))
			w.WriteHeader(http.StatusOK)
			if r.Method == http.MethodGet {
				w.Write(raw) //nolint:errcheck
			}
		})
	}
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder, body []byte) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rec.Code)
	w.Write(body) //nolint:errcheck
}
