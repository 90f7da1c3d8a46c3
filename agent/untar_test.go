package agent

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

type tarEntry struct {
	name, link string
	typ        byte
	data       string
	mode       int64
	uid        int
}

func makeTar(t *testing.T, entries ...tarEntry) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: mode, Size: int64(len(e.data)), Uid: e.uid, Gid: e.uid}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.data)) //nolint:errcheck
		}
	}
	tw.Close()
	return &b
}

func TestUntarUnpacksAFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("owners need root")
	}
	dir := t.TempDir()
	tr := makeTar(t,
		tarEntry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "bin/busybox", typ: tar.TypeReg, data: "ELF", mode: 0o4755},
		tarEntry{name: "bin/sh", typ: tar.TypeLink, link: "bin/busybox"},
		tarEntry{name: "bin/ls", typ: tar.TypeSymlink, link: "/bin/busybox"},
		tarEntry{name: "home/user/.profile", typ: tar.TypeReg, data: "x", uid: 1000, mode: 0o600},
	)
	if err := untar(tr, dir, 1<<20); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "bin/sh"))
	if err != nil || fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/sh = %v, %v; want the setuid busybox", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/ls")); err != nil || l != "/bin/busybox" {
		t.Errorf("bin/ls -> %q, %v", l, err)
	}
	fi, err = os.Stat(filepath.Join(dir, "home/user/.profile"))
	if err != nil || fileUID(fi) != 1000 || fi.Mode().Perm() != 0o600 {
		t.Errorf("home/user/.profile = %v, %v; want uid 1000, 0600", fi, err)
	}
}

// TestUntarRefuses: what would leave the root, or does not belong in a flattened root filesystem, fails the whole
// and writes nothing outside dir.
func TestUntarRefuses(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		want    string
	}{
		{"traversal", []tarEntry{{name: "../escaped", typ: tar.TypeReg, data: "x"}}, "leaves the root"},
		{"deep traversal", []tarEntry{{name: "a/../../escaped", typ: tar.TypeReg, data: "x"}}, "leaves the root"},
		{"through an absolute symlink", []tarEntry{{name: "evil", typ: tar.TypeSymlink, link: "OUTSIDE"},
			{name: "evil/escaped", typ: tar.TypeReg, data: "x"}}, "escapes"},
		{"through a relative symlink", []tarEntry{{name: "a/evil", typ: tar.TypeSymlink, link: "../../OUTSIDE"},
			{name: "a/evil/escaped", typ: tar.TypeReg, data: "x"}}, "escapes"},
		{"a hard link out", []tarEntry{{name: "l", typ: tar.TypeLink, link: "../OUTSIDE/secret"}}, "leaves the root"},
		{"a hard link through a symlink", []tarEntry{{name: "evil", typ: tar.TypeSymlink, link: "OUTSIDE"},
			{name: "l", typ: tar.TypeLink, link: "evil/secret"}}, "escapes"},
		{"a device", []tarEntry{{name: "dev/sda", typ: tar.TypeBlock}}, "does not take"},
		{"a char device", []tarEntry{{name: "mem", typ: tar.TypeChar}}, "does not take"},
		{"a whiteout", []tarEntry{{name: "etc/.wh.passwd", typ: tar.TypeReg}}, "whiteout"},
		{"an opaque whiteout", []tarEntry{{name: "etc/.wh..wh..opq", typ: tar.TypeReg}}, "whiteout"},
		{"too many bytes", []tarEntry{{name: "a", typ: tar.TypeReg, data: strings.Repeat("x", 600)},
			{name: "b", typ: tar.TypeReg, data: strings.Repeat("x", 600)}}, "larger than the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			dir := filepath.Join(base, "root")
			os.Mkdir(outside, 0o755)                                           //nolint:errcheck
			os.Mkdir(dir, 0o755)                                               //nolint:errcheck
			os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600) //nolint:errcheck
			var entries []tarEntry
			for _, e := range tc.entries {
				e.link = strings.ReplaceAll(e.link, "OUTSIDE", outside)
				entries = append(entries, e)
			}
			err := untar(makeTar(t, entries...), dir, 1000)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("untar = %v, want an error saying %q", err, tc.want)
			}
			if _, err := os.Lstat(filepath.Join(base, "escaped")); err == nil {
				t.Error("a file was written outside the root")
			}
			if _, err := os.Lstat(filepath.Join(outside, "escaped")); err == nil {
				t.Error("a file was written outside the root, through a symlink")
			}
			if tc.name == "too many bytes" && !errors.Is(err, errRootfsTooLarge) {
				t.Errorf("untar over the bound = %v, want errRootfsTooLarge", err)
			}
		})
	}
}

func fileUID(fi os.FileInfo) int { return int(fi.Sys().(*syscall.Stat_t).Uid) }
