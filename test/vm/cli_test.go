package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestImageCLI drives `i2kit image build|ls|inspect|rm` as a user would, on an OCI layout.
func TestImageCLI(t *testing.T) {
	dir := t.TempDir()
	_, file, _, _ := runtime.Caller(0)
	bin := filepath.Join(dir, "i2kit")
	build := exec.Command("go", "build", "-o", bin, "./cmd/i2kit")
	build.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building i2kit: %v: %s", err, b)
	}
	agentBin := buildAgent(t, dir)
	store := filepath.Join(dir, "store")
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"image", "--store", store}, args...)...)
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	specFile := filepath.Join(dir, "spec.yml")
	os.WriteFile(specFile, []byte("services:\n- name: web\n  image: oci:"+ociLayout(t, dir)+"\n"), 0o644) //nolint:errcheck

	out, err := run("build", "-f", specFile, "--agent", agentBin, "-o", filepath.Join(dir, "out"))
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	key := lines[len(lines)-1]
	if len(key) != 64 {
		t.Fatalf("build did not print the key last:\n%s", out)
	}
	for _, f := range []string{"vmlinux", "initramfs.cpio", "disk0.erofs", "image.json"} {
		if _, err := os.Stat(filepath.Join(dir, "out", f)); err != nil {
			t.Errorf("-o: %v", err)
		}
	}
	if out, err := run("build", "-f", specFile, "--agent", agentBin); err != nil || !strings.HasSuffix(strings.TrimSpace(out), key) {
		t.Errorf("second build: %v, want the same key\n%s", err, out)
	}
	if out, _ := run("ls"); !strings.Contains(out, key[:12]) || !strings.Contains(out, "web=oci:") {
		t.Errorf("ls does not list the image:\n%s", out)
	}
	if out, err := run("inspect", key[:8]); err != nil || !strings.Contains(out, `"key": "`+key) {
		t.Errorf("inspect: %v\n%s", err, out)
	}
	bad := filepath.Join(dir, "bad.yml")
	os.WriteFile(bad, []byte("services:\n- name: web\n  image: x\n  imagePullPolicy: Always\n"), 0o644) //nolint:errcheck
	if out, err := run("build", "-f", bad, "--agent", agentBin); err == nil || !strings.Contains(out, "line 4: field imagePullPolicy not found") {
		t.Errorf("bad spec: %v\n%s", err, out)
	}
	if out, err := run("build", "-f", specFile, "--agent", agentBin, "--format", "vmdk"); err == nil || !strings.Contains(out, `format "vmdk"`) {
		t.Errorf("bad format: %v\n%s", err, out)
	}
	if out, err := run("rm", key[:12]); err != nil {
		t.Errorf("rm: %v\n%s", err, out)
	}
	if out, _ := run("ls"); strings.Contains(out, key[:12]) {
		t.Errorf("ls after rm still lists the image:\n%s", out)
	}
}
