package vmimage

// Hostile registry options for devregistry.Serve: test-only, so they stay out of the i2kit binary.

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"strconv"
	"strings"
	"sync"

	"github.com/i2kit/i2kit/internal/devregistry"
)

// tamperBlobs makes the registry hostile, for tests of what pulls it: every GET of a blob is answered with what
// tamper makes of the registry's own answer, given the blob's digest, how many GETs of it came before (0 for the
// first) and the body. tamper returns the body to send and whether to drop the connection after it (as a
// registry that fails mid-stream; the Content-Length announced is the original's). A nil body answers 404
// BLOB_UNKNOWN.
func tamperBlobs(tamper func(digest string, n int, body []byte) (out []byte, drop bool)) devregistry.Option {
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

// serveManifests makes every manifest request for repository repo (as "<name>", without the host) answer raw
// with media type mediaType, whatever the registry holds: a registry that serves a copy of another's manifest
// without the blobs it names.
func serveManifests(repo string, raw []byte, mediaType string) devregistry.Option {
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
