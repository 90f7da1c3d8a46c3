package vmimage

import (
	"archive/tar"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// FuzzApplyLayer applies arbitrary bytes as a layer: it may fail, but never panics, never writes outside the
// image root and never writes more than its byte bound.
func FuzzApplyLayer(f *testing.F) {
	f.Add(tarOf(f, reg("a", "1"), &tar.Header{Name: "d/", Typeflag: tar.TypeDir}, reg("d/.wh..wh..opq", ""), reg("d/.wh.x", "")))
	f.Add(tarOf(f, &tar.Header{Name: "var/run", Typeflag: tar.TypeSymlink, Linkname: "/run"}, reg("var/run/x", "y")))
	f.Add(tarOf(f, &tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "../.."}, reg("up/x", "y"),
		&tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "up/x"}))
	f.Add(tarOf(f, reg("../x", "y")))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, data []byte) {
		top := t.TempDir()
		root := filepath.Join(top, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		l := filepath.Join(top, "layer")
		if err := os.WriteFile(l, data, 0o644); err != nil {
			t.Fatal(err)
		}
		const max = 1 << 20
		err := applyLayers(context.Background(), []string{l, l}, root, max)
		ents, _ := os.ReadDir(top)
		if len(ents) != 2 {
			t.Fatalf("applying wrote outside the root: %v (err %v)", ents, err)
		}
		var n int64
		// Hard links share an inode: count it once.
		seen := map[uint64]bool{}
		filepath.Walk(root, func(_ string, fi os.FileInfo, err error) error { //nolint:errcheck
			if st, ok := fi.Sys().(*syscall.Stat_t); err == nil && ok && fi.Mode().IsRegular() && !seen[st.Ino] {
				seen[st.Ino] = true
				n += fi.Size()
			}
			return nil
		})
		if n > max {
			t.Fatalf("%d bytes written from a %d-byte layer", n, len(data))
		}
	})
}

// FuzzDecode decodes arbitrary specs: an error or a spec that validates, never a panic.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"services:\n  - name: web\n    image: nginx:1\n",
		"kernel:\n  image: i2kit/podvm\n  cmdline: console=ttyS0\nonboot:\n  - name: init\n    image: busybox\n    command: [sh]\nservices:\n  - name: a\n    image: b\n    env: [A=b]\n    workingDir: /w\nfiles:\n  - path: etc/x\n    contents: y\n    mode: \"0644\"\n",
		"services: []\n",
		"---\n---\n",
		"services:\n  - name: web\n    image: x\n    bogus: 1\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("Decode accepted a spec that does not validate: %v", err)
		}
	})
}
