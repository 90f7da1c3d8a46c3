package vmimage

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// file is a tar entry of a test layer; a name ending in "/" is a directory.
type file struct{ name, body string }

func layer(t testing.TB, files ...file) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}
		if strings.HasSuffix(f.name, "/") {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(f.body)) //nolint:errcheck
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testRegistry is an in-process registry; with user set it demands basic auth.
type testRegistry struct {
	srv         *httptest.Server
	user, pass  string
	users       map[string]string // more accepted user → password pairs
	requests    atomic.Int64      // every request but /v2/ pings
	heads       atomic.Int64      // manifest HEADs
	blobGets    atomic.Int64
	corruptBlob atomic.Bool
	blockMu     sync.Mutex
	blockBlobs  chan struct{} // when set, blob GETs block until closed
	blobSeen    chan struct{}
}

func newRegistry(t testing.TB, user, pass string, opts ...func(*testRegistry)) *testRegistry {
	r := &testRegistry{user: user, pass: pass}
	for _, o := range opts {
		o(r)
	}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v2/" {
			r.requests.Add(1)
		}
		if req.Method == http.MethodHead && strings.Contains(req.URL.Path, "/manifests/") {
			r.heads.Add(1)
		}
		if r.user != "" {
			u, p, ok := req.BasicAuth()
			if !ok || (u != r.user || p != r.pass) && (r.users[u] == "" || r.users[u] != p) {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			r.blobGets.Add(1)
			if r.blobSeen != nil {
				select {
				case r.blobSeen <- struct{}{}:
				default:
				}
			}
			r.blockMu.Lock()
			block := r.blockBlobs
			r.blockMu.Unlock()
			if block != nil {
				<-block
			}
			if r.corruptBlob.Load() {
				rec := httptest.NewRecorder()
				reg.ServeHTTP(rec, req)
				b := rec.Body.Bytes()
				if len(b) > 20 && rec.Code == http.StatusOK {
					b[len(b)/2] ^= 0xff
				}
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				w.Write(b) //nolint:errcheck
				return
			}
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *testRegistry) host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

func (r *testRegistry) push(t testing.TB, repoTag string, layers ...v1.Layer) v1.Hash {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.host()+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	auth := authn.Anonymous
	if r.user != "" {
		auth = &authn.Basic{Username: r.user, Password: r.pass}
	}
	if err := remote.Write(ref, img, remote.WithAuth(auth)); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return d
}

func dockerConfig(host, user, pass string) []byte {
	return []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, base64.StdEncoding.EncodeToString([]byte(user+":"+pass))))
}

// recorder counts progress tasks.
type recorder struct {
	mu     sync.Mutex
	starts map[string]int
}

func (r *recorder) Start(task string, _ int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.starts == nil {
		r.starts = map[string]int{}
	}
	r.starts[strings.Fields(task)[0]]++
}
func (r *recorder) Add(string, int64)  {}
func (r *recorder) Done(string, error) {}
func (r *recorder) count(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.starts[kind]
}

func needMkfs(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Fatalf("mkfs.erofs is required (make deps installs erofs-utils): %v", err)
	}
}

func newBuilder(t testing.TB, src *Source, maxEntries int, maxBytes int64) *Builder {
	t.Helper()
	needMkfs(t)
	dir := t.TempDir()
	for _, f := range []string{"vmlinux", "agent"} {
		os.WriteFile(filepath.Join(dir, f), []byte("test "+f), 0o755) //nolint:errcheck
	}
	st, err := OpenStore(filepath.Join(dir, "store"), maxEntries, maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	return &Builder{Store: st, Source: src, Kernel: filepath.Join(dir, "vmlinux"), Agent: filepath.Join(dir, "agent"), Progress: &recorder{}}
}

func spec(images ...string) *Spec {
	s := &Spec{}
	for i, img := range images {
		s.Services = append(s.Services, Container{Name: fmt.Sprintf("c%d", i), Image: img, Command: []string{"/app"}})
	}
	return s
}

// listDisk extracts an erofs image with fsck.erofs and returns its files and their contents.
func listDisk(t *testing.T, disk string) map[string]string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "x")
	if out, err := exec.Command("fsck.erofs", "--extract="+dir, disk).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v: %s", err, out)
	}
	got := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error { //nolint:errcheck
		if err != nil || p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if fi.IsDir() {
			got[rel+"/"] = ""
		} else {
			b, _ := os.ReadFile(p)
			got[rel] = string(b)
		}
		return nil
	})
	return got
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestWhiteoutsFlattenIntoOneFilesystem(t *testing.T) {
	reg := newRegistry(t, "", "")
	reg.push(t, "app:1",
		layer(t, file{"a/", ""}, file{"a/keep", "1"}, file{"a/gone", "2"}, file{"d/", ""}, file{"d/old", "3"}, file{"top", "v1"}),
		layer(t, file{"a/.wh.gone", ""}, file{"d/", ""}, file{"d/.wh..wh..opq", ""}, file{"d/new", "4"}, file{"top", "v2"}))
	b := newBuilder(t, &Source{Insecure: []string{reg.host()}}, 10, 1<<30)
	img, err := b.Ensure(context.Background(), spec(reg.host()+"/app:1"), "direct")
	if err != nil {
		t.Fatal(err)
	}
	got := listDisk(t, img.Disks[0].Path)
	want := map[string]string{"a/": "", "a/keep": "1", "d/": "", "d/new": "4", "top": "v2"}
	if strings.Join(keys(got), " ") != strings.Join(keys(want), " ") {
		t.Fatalf("files = %v, want %v", keys(got), keys(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func TestPullWithCredentials(t *testing.T) {
	reg := newRegistry(t, "alice", "s3cret")
	reg.push(t, "private/app:1", layer(t, file{"hello", "world"}))
	ref := reg.host() + "/private/app:1"
	for _, tc := range []struct {
		name    string
		config  []byte
		wantErr string
	}{
		{"right credentials", dockerConfig(reg.host(), "alice", "s3cret"), ""},
		{"wrong password", dockerConfig(reg.host(), "alice", "nope"), "UNAUTHORIZED"},
		{"no credentials", []byte(`{"auths":{}}`), "UNAUTHORIZED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kc, err := DockerConfigKeychain(tc.config)
			if err != nil {
				t.Fatal(err)
			}
			b := newBuilder(t, &Source{Keychain: kc, Insecure: []string{reg.host()}}, 10, 1<<30)
			img, err := b.Ensure(context.Background(), spec(ref), "direct")
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if listDisk(t, img.Disks[0].Path)["hello"] != "world" {
					t.Error("image content missing")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), ref) {
				t.Fatalf("error %v, want one naming %s and %s", err, ref, tc.wantErr)
			}
			if n, _ := b.Store.Stats(); n != 0 {
				t.Errorf("a failed build left %d cache entries", n)
			}
		})
	}
}

func TestPullThroughMirror(t *testing.T) {
	mirror := newRegistry(t, "", "")
	mirror.push(t, "library/app:1", layer(t, file{"from", "mirror"}))
	// The registry the user names does not answer (a closed port); the mirror serves the same repository.
	origin := "127.0.0.1:9"
	src := &Source{Mirrors: map[string][]string{origin: {mirror.host()}}, Insecure: []string{origin, mirror.host()}}
	b := newBuilder(t, src, 10, 1<<30)
	img, err := b.Ensure(context.Background(), spec(origin+"/library/app:1"), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if listDisk(t, img.Disks[0].Path)["from"] != "mirror" {
		t.Error("content not from the mirror")
	}
	// Without the mirror the error names the registry and the cause.
	b2 := newBuilder(t, &Source{Insecure: []string{origin}}, 10, 1<<30)
	if _, err := b2.Ensure(context.Background(), spec(origin+"/library/app:1"), "direct"); err == nil || !strings.Contains(err.Error(), "from "+origin) {
		t.Fatalf("error %v, want one naming %s", err, origin)
	}
}

func TestBadInputErrors(t *testing.T) {
	reg := newRegistry(t, "", "")
	reg.push(t, "app:1", layer(t, file{"x", strings.Repeat("y", 4096)}))
	src := &Source{Insecure: []string{reg.host()}}
	b := newBuilder(t, src, 10, 1<<30)
	ctx := context.Background()
	if _, err := b.Ensure(ctx, spec(reg.host()+"/app:1"), "qcow2"); err == nil || !strings.Contains(err.Error(), `format "qcow2"`) {
		t.Errorf("unknown format: %v", err)
	}
	if _, err := b.Ensure(ctx, spec(reg.host()+"/nothere:1"), "direct"); err == nil || !strings.Contains(err.Error(), "nothere") {
		t.Errorf("missing image: %v", err)
	}
	reg.corruptBlob.Store(true)
	if _, err := b.Ensure(ctx, spec(reg.host()+"/app:1"), "direct"); err == nil || !strings.Contains(err.Error(), "checksum") && !strings.Contains(err.Error(), "digest") {
		t.Errorf("corrupt blobs: %v", err)
	}
	if n, _ := b.Store.Stats(); n != 0 {
		t.Errorf("failed builds left %d cache entries", n)
	}
	ents, _ := os.ReadDir(filepath.Join(b.Store.Dir(), "blobs"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "disk-") {
			t.Errorf("a corrupt layer left disk %s", e.Name())
		}
	}
}

func TestCacheHitMissAndEviction(t *testing.T) {
	reg := newRegistry(t, "", "")
	for _, tag := range []string{"a", "b", "c"} {
		reg.push(t, "app:"+tag, layer(t, file{"tag", tag}))
	}
	src := &Source{Insecure: []string{reg.host()}}
	b := newBuilder(t, src, 2, 1<<30)
	rec := b.Progress.(*recorder)
	ctx := context.Background()
	ref := func(tag string) string { return reg.host() + "/app:" + tag }

	a1, err := b.Ensure(ctx, spec(ref("a")), "direct")
	if err != nil {
		t.Fatal(err)
	}
	a2, err := b.Ensure(ctx, spec(ref("a")), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if a1.Key != a2.Key || rec.count("rootfs") != 1 {
		t.Fatalf("second Ensure rebuilt: keys %s %s, %d rootfs builds", a1.Key, a2.Key, rec.count("rootfs"))
	}
	// Another process cannot open the store while this one has it; reopened from disk, it knows the image.
	if _, err := OpenStore(b.Store.Dir(), 2, 1<<30); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open of a store in use: %v", err)
	}
	b.Store.Close()
	st2, err := OpenStore(b.Store.Dir(), 2, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st2.Get(a1.Key); !ok {
		t.Fatal("reopened store lost the image")
	}
	b.Store = st2

	release, err := b.Store.Acquire(a1.Key) // a VM runs from a
	if err != nil {
		t.Fatal(err)
	}
	bImg, _ := b.Ensure(ctx, spec(ref("b")), "direct")
	cImg, err := b.Ensure(ctx, spec(ref("c")), "direct") // 3 entries > 2: b is the oldest unpinned
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Store.Get(a1.Key); !ok {
		t.Error("evicted an image in use")
	}
	if _, ok := b.Store.Get(bImg.Key); ok {
		t.Error("b should have been evicted")
	}
	if _, err := os.Stat(bImg.Disks[0].Path); !os.IsNotExist(err) {
		t.Error("b's disk outlived every image that used it")
	}
	if err := b.Store.Remove(a1.Key); !errors.Is(err, ErrInUse) {
		t.Errorf("Remove of an image in use: %v", err)
	}
	release()
	if _, err := b.Store.Acquire(cImg.Key); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.Store.Stats(); n != 2 {
		t.Errorf("%d entries, want 2", n)
	}
	// A byte bound smaller than one image keeps only what is in use.
	b.Store.Close()
	small, err := OpenStore(b.Store.Dir(), 10, 1)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := small.Stats(); n != 0 {
		t.Errorf("byte bound: %d entries left", n)
	}
}

func TestConcurrentBuildsOfOneSpecBuildOnce(t *testing.T) {
	reg := newRegistry(t, "", "")
	reg.push(t, "app:1", layer(t, file{"x", "y"}))
	b := newBuilder(t, &Source{Insecure: []string{reg.host()}}, 10, 1<<30)
	var wg sync.WaitGroup
	imgs := make([]*Image, 4)
	errs := make([]error, 4)
	for i := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			imgs[i], errs[i] = b.Ensure(context.Background(), spec(reg.host()+"/app:1"), "direct")
		}()
	}
	wg.Wait()
	for i := range imgs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if imgs[i].Key != imgs[0].Key {
			t.Fatal("callers got different images")
		}
	}
	if n := b.Progress.(*recorder).count("rootfs"); n != 1 {
		t.Errorf("%d rootfs builds, want 1", n)
	}
}

// TestKilledBuildLeavesNoEntry kills a building process (SIGKILL) midway and checks that the store, reopened,
// holds nothing of it.
func TestKilledBuildLeavesNoEntry(t *testing.T) {
	if os.Getenv("I2KIT_TEST_BUILD_CHILD") != "" {
		src := &Source{Insecure: []string{os.Getenv("I2KIT_TEST_REGISTRY")}}
		st, err := OpenStore(os.Getenv("I2KIT_TEST_STORE"), 10, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "k"), []byte("k"), 0o644) //nolint:errcheck
		b := &Builder{Store: st, Source: src, Kernel: filepath.Join(dir, "k"), Agent: filepath.Join(dir, "k")}
		b.Ensure(context.Background(), spec(os.Getenv("I2KIT_TEST_REGISTRY")+"/app:1"), "direct") //nolint:errcheck
		return
	}
	needMkfs(t)
	block := make(chan struct{})
	defer close(block)
	reg := newRegistry(t, "", "", func(r *testRegistry) { r.blobSeen = make(chan struct{}, 1) })
	reg.push(t, "app:1", layer(t, file{"x", "y"}))
	select { // the push's own blob reads, if any, are not the child's
	case <-reg.blobSeen:
	default:
	}
	reg.blockMu.Lock()
	reg.blockBlobs = block
	reg.blockMu.Unlock()
	store := filepath.Join(t.TempDir(), "store")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledBuildLeavesNoEntry$")
	cmd.Env = append(os.Environ(), "I2KIT_TEST_BUILD_CHILD=1", "I2KIT_TEST_REGISTRY="+reg.host(), "I2KIT_TEST_STORE="+store)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reg.blobSeen: // the child is fetching a layer: midway
	case <-time.After(30 * time.Second):
		cmd.Process.Kill() //nolint:errcheck
		t.Fatal("the child never fetched a layer")
	}
	cmd.Process.Kill() //nolint:errcheck
	cmd.Wait()         //nolint:errcheck
	st, err := OpenStore(store, 10, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := st.Stats(); n != 0 {
		t.Errorf("a killed build left %d entries", n)
	}
	for _, d := range []string{"tmp", "blobs", "images"} {
		ents, _ := os.ReadDir(filepath.Join(store, d))
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "kernel-") {
				t.Errorf("a killed build left %s/%s", d, e.Name())
			}
		}
	}
}

// TestDockerHubMirror: a mirror for Docker Hub keyed as users write it (docker.io) serves "app:1", which
// go-containerregistry files under index.docker.io.
func TestDockerHubMirror(t *testing.T) {
	mirror := newRegistry(t, "", "")
	mirror.push(t, "library/app:1", layer(t, file{"from", "mirror"}))
	src := &Source{Mirrors: map[string][]string{"docker.io": {mirror.host()}}, Insecure: []string{mirror.host()}}
	b := newBuilder(t, src, 10, 1<<30)
	img, err := b.Ensure(context.Background(), spec("app:1"), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if listDisk(t, img.Disks[0].Path)["from"] != "mirror" {
		t.Error("content not from the mirror")
	}
}

func TestSourceHosts(t *testing.T) {
	src := &Source{Mirrors: map[string][]string{
		"docker.io":            {"m1"},
		"registry-1.docker.io": {"m2"},
		"quay.io":              {"q1", "q2"},
		"dockerhub":            {"never"},
	}}
	for _, tc := range []struct {
		ref  string
		want []string
	}{
		{"nginx:1", []string{"m1", "m2", "index.docker.io"}},
		{"docker.io/library/nginx:1", []string{"m1", "m2", "index.docker.io"}},
		{"index.docker.io/library/nginx:1", []string{"m1", "m2", "index.docker.io"}},
		{"dockerhub/nginx:1", []string{"m1", "m2", "index.docker.io"}},
		{"quay.io/x/y:1", []string{"q1", "q2", "quay.io"}},
		{"ghcr.io/x/y:1", []string{"ghcr.io"}},
	} {
		r, err := name.ParseReference(tc.ref)
		if err != nil {
			t.Fatal(err)
		}
		if got := src.hosts(r); !slices.Equal(got, tc.want) {
			t.Errorf("hosts(%s) = %q, want %q", tc.ref, got, tc.want)
		}
	}
	for key, unmatchable := range map[string]bool{"docker.io": false, "localhost": false, "reg:5000": false,
		"dockerhub": true, "mirror": true} {
		if got := UnmatchableRegistry(key) != ""; got != unmatchable {
			t.Errorf("UnmatchableRegistry(%q) = %v, want %v", key, got, unmatchable)
		}
	}
}
