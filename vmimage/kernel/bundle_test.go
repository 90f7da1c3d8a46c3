package kernel

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestExtractVmlinuxFindsTheCompressedELF(t *testing.T) {
	elf := append([]byte("\x7fELF"), bytes.Repeat([]byte("kernel"), 1000)...)
	for _, c := range []struct{ name, cmd string }{{"xz", "xz"}, {"gzip", "gzip"}} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := exec.LookPath(c.cmd); err != nil {
				t.Fatalf("%s is required: %v", c.cmd, err)
			}
			cmd := exec.Command(c.cmd, "-c")
			cmd.Stdin = bytes.NewReader(elf)
			z, err := cmd.Output()
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			// A setup header, the payload, then trailing data, as in a bzImage.
			bz := append(append([]byte("MZ setup code \xfd7zXZ\x00 not a stream "), z...), []byte("trailer")...)
			os.WriteFile(filepath.Join(dir, "bzImage"), bz, 0o644) //nolint:errcheck
			if err := ExtractVmlinux(filepath.Join(dir, "bzImage"), filepath.Join(dir, "vmlinux")); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(filepath.Join(dir, "vmlinux"))
			if !bytes.Equal(got, elf) {
				t.Errorf("extracted %d bytes, want the %d-byte ELF", len(got), len(elf))
			}
		})
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bzImage"), []byte("no payload"), 0o644) //nolint:errcheck
	if err := ExtractVmlinux(filepath.Join(dir, "bzImage"), filepath.Join(dir, "vmlinux")); err == nil {
		t.Error("a file without a kernel gave no error")
	}
}

func TestFromDirLayouts(t *testing.T) {
	dir := t.TempDir()
	if _, err := FromDir(dir); err == nil || !strings.Contains(err.Error(), "boot/vmlinuz-*") {
		t.Errorf("empty dir: %v", err)
	}
	os.MkdirAll(filepath.Join(dir, "boot"), 0o755)                                   //nolint:errcheck
	os.WriteFile(filepath.Join(dir, "boot", "vmlinuz-6.1.0-x"), []byte("bz"), 0o644) //nolint:errcheck
	b, err := FromDir(dir)
	if err != nil || b.BzImage != filepath.Join(dir, "boot", "vmlinuz-6.1.0-x") || len(b.Modules) != 0 {
		t.Errorf("Debian layout without modules: %+v, %v", b, err)
	}
	lk := t.TempDir()
	os.WriteFile(filepath.Join(lk, "kernel"), []byte("bz"), 0o644) //nolint:errcheck
	if b, err := FromDir(lk); err != nil || b.BzImage != filepath.Join(lk, "kernel") {
		t.Errorf("LinuxKit layout: %+v, %v", b, err)
	}
}
