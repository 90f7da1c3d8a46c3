package vmimage

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

func rootfsBuilder(t *testing.T, src *Source) *Builder {
	t.Helper()
	st, err := OpenStore(filepath.Join(t.TempDir(), "store"), 10, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return &Builder{Store: st, Source: src}
}

// readTar lists a tar's entries: a file's content, "dir" for a directory.
func readTar(t *testing.T, r io.Reader) map[string]string {
	t.Helper()
	got := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if h.Typeflag == tar.TypeDir {
			b = []byte("dir")
		}
		got[h.Name] = string(b)
	}
}

// TestRootfsFlattensTheVerifiedLayers: an ephemeral container's filesystem is its image's layers applied, whiteouts
// and opaque directories included, from the layer cache the builder verified, with no whiteout left in the tar.
func TestRootfsFlattensTheVerifiedLayers(t *testing.T) {
	reg := newRegistry(t, "", "")
	reg.push(t, "debug:1",
		layer(t, file{"a/", ""}, file{"a/keep", "1"}, file{"a/gone", "2"}, file{"d/", ""}, file{"d/old", "3"}, file{"top", "v1"}),
		layer(t, file{"a/.wh.gone", ""}, file{"d/", ""}, file{"d/.wh..wh..opq", ""}, file{"d/new", "4"}, file{"top", "v2"}))
	b := rootfsBuilder(t, &Source{Insecure: []string{reg.host()}})
	fs, err := b.Rootfs(context.Background(), reg.host()+"/debug:1", Pull{}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	if !strings.HasPrefix(fs.Digest, "sha256:") {
		t.Errorf("digest %q", fs.Digest)
	}
	var buf bytes.Buffer
	if err := fs.WriteTar(&buf); err != nil {
		t.Fatal(err)
	}
	got := readTar(t, &buf)
	want := map[string]string{"a/": "dir", "a/keep": "1", "d/": "dir", "d/new": "4", "top": "v2"}
	if len(got) != len(want) {
		t.Errorf("entries %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	// The layers are in the verified cache: a second Rootfs reads the image's configuration and no layer.
	gets := reg.blobGets.Load()
	again, err := b.Rootfs(context.Background(), reg.host()+"/debug:1", Pull{}, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	again.Close()
	if n := reg.blobGets.Load() - gets; n > 1 {
		t.Errorf("the second Rootfs fetched %d blobs, want the configuration only", n)
	}
}

// TestRootfsVerifiesAndBounds: a layer that does not match its digest is refused, and so are files over the bound.
func TestRootfsVerifiesAndBounds(t *testing.T) {
	reg := newRegistry(t, "", "")
	reg.push(t, "big:1", layer(t, file{"blob", strings.Repeat("x", 4096)}))
	b := rootfsBuilder(t, &Source{Insecure: []string{reg.host()}})
	if _, err := b.Rootfs(context.Background(), reg.host()+"/big:1", Pull{}, 1000); err == nil || !strings.Contains(err.Error(), "limit of 1000 bytes") {
		t.Errorf("Rootfs over the bound = %v", err)
	}
	reg.corruptBlob.Store(true)
	b = rootfsBuilder(t, &Source{Insecure: []string{reg.host()}})
	if fs, err := b.Rootfs(context.Background(), reg.host()+"/big:1", Pull{}, 1<<20); err == nil {
		fs.Close()
		t.Error("Rootfs took a layer that does not match its digest")
	}
}
