package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestErofsUUIDReadsWhatMkfsWrote(t *testing.T) {
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Fatalf("mkfs.erofs is required (make deps installs erofs-utils): %v", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(src, 0o755)                                   //nolint:errcheck
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644) //nolint:errcheck
	img := filepath.Join(dir, "img.erofs")
	const uuid = "0123abcd-4567-89ef-0123-456789abcdef"
	if out, err := exec.Command("mkfs.erofs", "--quiet", "--all-root", "-U", uuid, img, src).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs: %v: %s", err, out)
	}
	got, err := ErofsUUID(img)
	if err != nil || got != uuid {
		t.Fatalf("ErofsUUID = %q, %v; want %s", got, err, uuid)
	}
	if _, err := ErofsUUID(filepath.Join(src, "f")); err == nil {
		t.Error("a file that is not erofs has a UUID")
	}
}
