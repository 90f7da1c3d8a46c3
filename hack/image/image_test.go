package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// standIns writes small stand-ins for the binaries, the kernel and the CA bundle, and returns inputs naming them
// with no host tools.
func standIns(t *testing.T) Inputs {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("vmlinux", "\x7fELF kernel")
	write("bzImage", "bzImage")
	return Inputs{I2kit: write("i2kit", "i2kit binary"), Agent: write("agent", "agent binary"), KernelDir: dir,
		KernelName: "6.1-0123456789ab", CACerts: write("ca.pem", "-----BEGIN CERTIFICATE-----\n"),
		Version: "v1.2.3", Source: "https://github.com/i2kit/i2kit", Epoch: time.Unix(1700000000, 0).UTC()}
}

// files lists the headers of the image's entries by absolute path, upper layers over lower ones.
func files(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	out := map[string]*tar.Header{}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			out["/"+strings.TrimSuffix(h.Name, "/")] = h
		}
		rc.Close()
	}
	return out
}

func TestBuildIsReproducible(t *testing.T) {
	in := standIns(t)
	var digests []v1.Hash
	for i := range 2 {
		img, err := Build(in)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "layout")
		if err := writeLayout(dir, img); err != nil {
			t.Fatal(err)
		}
		// Read back from disk: what was written is the image, whole and valid.
		p, err := layout.FromPath(dir)
		if err != nil {
			t.Fatal(err)
		}
		idx, err := p.ImageIndex()
		if err != nil {
			t.Fatal(err)
		}
		m, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Manifests) != 1 || m.Manifests[0].Platform == nil || m.Manifests[0].Platform.Architecture != "amd64" {
			t.Fatalf("layout %d index = %+v, want one linux/amd64 image", i, m.Manifests)
		}
		read, err := p.Image(m.Manifests[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(read); err != nil {
			t.Fatalf("layout %d: %v", i, err)
		}
		digests = append(digests, m.Manifests[0].Digest)
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds of the same inputs: %s and %s, want one digest", digests[0], digests[1])
	}
	in.Epoch = in.Epoch.Add(time.Second)
	img, _ := Build(in)
	if d, _ := img.Digest(); d == digests[0] {
		t.Error("another SOURCE_DATE_EPOCH gave the same digest: the epoch is not in the image")
	}
}

func TestImageConfigAndFiles(t *testing.T) {
	in := standIns(t)
	img, err := Build(in)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if strings.Join(c.Entrypoint, " ") != "/usr/local/bin/i2kit" || strings.Join(c.Cmd, " ") != "node" || c.User != "65532:65532" {
		t.Errorf("entrypoint %q cmd %q user %q, want /usr/local/bin/i2kit node as 65532:65532", c.Entrypoint, c.Cmd, c.User)
	}
	if c.Labels["org.opencontainers.image.version"] != "v1.2.3" || c.Labels["org.opencontainers.image.source"] != in.Source {
		t.Errorf("labels %v", c.Labels)
	}
	if !cf.Created.Time.Equal(in.Epoch) || cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("created %s on %s/%s, want %s on linux/amd64", cf.Created, cf.OS, cf.Architecture, in.Epoch)
	}
	fs := files(t, img)
	for p, want := range map[string]struct {
		typ  byte
		mode int64
		uid  int
	}{
		"/usr/local/bin/i2kit":       {tar.TypeReg, 0o755, 0},
		"/usr/local/bin/i2kit-agent": {tar.TypeReg, 0o755, 0},
		// The node's defaults: images.kernel from I2KIT_CACHE, images.store beside it, the aws stateDir.
		"/var/cache/i2kit/kernel/6.1-0123456789ab/vmlinux": {tar.TypeReg, 0o644, 0},
		"/var/cache/i2kit/kernel/6.1-0123456789ab/bzImage": {tar.TypeReg, 0o644, 0},
		"/var/cache/i2kit/images":                          {tar.TypeDir, 0o755, 65532},
		"/var/lib/i2kit/aws":                               {tar.TypeDir, 0o700, 65532},
		"/home/nonroot":                                    {tar.TypeDir, 0o700, 65532},
		"/tmp":                                             {tar.TypeDir, 0o1777, 0},
		"/etc/ssl/certs/ca-certificates.crt":               {tar.TypeReg, 0o644, 0},
		"/etc/passwd":                                      {tar.TypeReg, 0o644, 0},
		"/lib64":                                           {tar.TypeSymlink, 0o777, 0},
	} {
		h := fs[p]
		switch {
		case h == nil:
			t.Errorf("%s missing", p)
		case h.Typeflag != want.typ || h.Mode != want.mode || h.Uid != want.uid || h.Gid != want.uid:
			t.Errorf("%s: type %c mode %o owner %d:%d, want %c %o %d", p, h.Typeflag, h.Mode, h.Uid, h.Gid, want.typ, want.mode, want.uid)
		case !h.ModTime.Equal(in.Epoch) || h.Uname != "" || h.Gname != "":
			t.Errorf("%s: time %s, names %q %q: want the epoch and no names", p, h.ModTime, h.Uname, h.Gname)
		}
	}
	if env := strings.Join(c.Env, " "); !strings.Contains(env, "I2KIT_CACHE=/var/cache/i2kit") {
		t.Errorf("env %q: want I2KIT_CACHE pointing at the image's kernel", env)
	}
}

// TestLayerTar: entries come out sorted with their parents, whatever their order in; a path twice or under a
// file is refused.
func TestLayerTar(t *testing.T) {
	epoch := time.Unix(0, 0)
	a, err := layerTar([]entry{file("/b/c", 0o644, []byte("c")), file("/a", 0o600, nil), symlink("/b/d", "c")}, epoch)
	if err != nil {
		t.Fatal(err)
	}
	b, err := layerTar([]entry{symlink("/b/d", "c"), file("/a", 0o600, nil), file("/b/c", 0o644, []byte("c"))}, epoch)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("the same entries in another order gave other bytes")
	}
	var names []string
	tr := tar.NewReader(bytes.NewReader(a))
	for h, err := tr.Next(); err == nil; h, err = tr.Next() {
		names = append(names, h.Name)
	}
	if got := strings.Join(names, " "); got != "a b/ b/c b/d" {
		t.Errorf("entries %q, want a b/ b/c b/d", got)
	}
	for _, bad := range [][]entry{
		{file("/a", 0o644, nil), file("/a", 0o644, nil)},
		{file("/a", 0o644, nil), file("/a/b", 0o644, nil)},
		{file("a/../b", 0o644, nil)},
	} {
		if _, err := layerTar(bad, epoch); err == nil {
			t.Errorf("%v: want an error", bad)
		}
	}
}

// TestPushAndPull pushes to an in-process registry and pulls back the same image.
func TestPushAndPull(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	img, err := Build(standIns(t))
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, err := pushImage(context.Background(), host+"/i2kit/node:v1.2.3", true, img)
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got, _ := pulled.Digest(); got != want {
		t.Fatalf("pulled %s, pushed %s", got, want)
	}
	if err := validate.Image(pulled); err != nil {
		t.Fatal(err)
	}
	if _, err := pushImage(context.Background(), "Not A Ref", true, img); err == nil || !strings.Contains(err.Error(), "--push") {
		t.Errorf("a bad reference: %v, want an error naming --push", err)
	}
}

func TestRunFlags(t *testing.T) {
	for _, args := range [][]string{{}, {"--push", "r/x:1", "--oci-layout", "d"}} {
		if err := run(context.Background(), args); err == nil || !strings.Contains(err.Error(), "want one of --push") {
			t.Errorf("%q: %v, want one of --push and --oci-layout", args, err)
		}
	}
	if _, err := sourceDateEpoch("yesterday"); err == nil {
		t.Error("SOURCE_DATE_EPOCH=yesterday accepted")
	}
	if e, _ := sourceDateEpoch(""); e.Unix() != 0 {
		t.Errorf("no SOURCE_DATE_EPOCH: %s, want the Unix epoch", e)
	}
}

// TestToolsRunInTheImage unpacks the base and tools layers of this host's aws tools and runs each tool chrooted
// there: every library it needs was resolved (root only; skipped where a tool is missing).
func TestToolsRunInTheImage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot needs root")
	}
	for _, tool := range awsTools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not on this host (make deps)", tool)
		}
	}
	in := standIns(t)
	baseEntries, err := base(in)
	if err != nil {
		t.Fatal(err)
	}
	tools, err := hostTools(awsTools)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	for _, entries := range [][]entry{baseEntries, tools} {
		b, err := layerTar(entries, in.Epoch)
		if err != nil {
			t.Fatal(err)
		}
		untar(t, root, b)
	}
	if err := os.MkdirAll(filepath.Join(root, "tmp/tree"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{
		{"/usr/bin/mkfs.erofs", "--quiet", "/tmp/t.erofs", "/tmp/tree"},
		{"/usr/sbin/sfdisk", "--version"},
		{"/usr/sbin/mkfs.vfat", "--help"},
		{"/usr/bin/mmd", "--version"},
		{"/usr/bin/mcopy", "--version"},
		{"/usr/bin/objcopy", "--version"},
	} {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		cmd.Dir, cmd.Env = "/", []string{"PATH=/usr/bin:/usr/sbin"}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s in the image: %v: %s", argv, err, out)
		}
	}
}

func untar(t *testing.T, root string, b []byte) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, path.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		default:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, data, os.FileMode(h.Mode))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
