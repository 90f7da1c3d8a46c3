// Package vm boots pod VM images under QEMU (KVM where the host has real hardware virtualisation, TCG here) and
// checks what the guest agent reports on the serial console.
package vm

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/provider/qemu"
	"github.com/i2kit/i2kit/vmimage"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

// buildAgent compiles the static agent for the guest.
func buildAgent(t testing.TB, dir string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	out := filepath.Join(dir, "i2kit-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./cmd/i2kit-agent")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building agent: %v: %s", err, b)
	}
	return out
}

var (
	helloOnce sync.Once
	helloBin  []byte
	helloErr  error
)

// hello builds examples/hello statically, once per test process.
func hello(t testing.TB) []byte {
	t.Helper()
	helloOnce.Do(func() {
		dir, err := os.MkdirTemp("", "hello-")
		if err != nil {
			helloErr = err
			return
		}
		defer os.RemoveAll(dir)
		_, file, _, _ := runtime.Caller(0)
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(dir, "hello"), "./examples/hello")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if b, err := cmd.CombinedOutput(); err != nil {
			helloErr = fmt.Errorf("building examples/hello: %v: %s", err, b)
			return
		}
		helloBin, helloErr = os.ReadFile(filepath.Join(dir, "hello"))
	})
	if helloErr != nil {
		t.Fatal(helloErr)
	}
	return helloBin
}

// ociLayout writes a one-layer image into an OCI layout: the static examples/hello server as its entrypoint, a
// user "app" (1000), and two plain files.
func ociLayout(t testing.TB, dir string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		mode int64
		body []byte
	}{
		{"hello", 0o755, hello(t)},
		{"hello.txt", 0o644, []byte("hello from the image\n")},
		{"etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")},
		{"etc/group", 0o644, []byte("root:x:0:\napp:x:1000:\n")},
	} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body)), ModTime: time.Unix(1700000000, 0)}) //nolint:errcheck
		tw.Write(f.body)                                                                                                     //nolint:errcheck
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	cfg := mustConfig(t, img)
	cfg.Config.Entrypoint = []string{"/hello"}
	cfg.Config.Env = []string{"PATH=/", "PORT=8080"}
	cfg.Config.User = "app"
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "layout")
}

func TestDirectImageBootsToAgent(t *testing.T) {
	vmlinux, err := kernel.Vmlinux()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 is required (make deps installs it): %v", err)
	}
	dir := t.TempDir()
	st, err := vmimage.OpenStore(filepath.Join(dir, "store"), 10, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	b := &vmimage.Builder{Store: st, Source: &vmimage.Source{AllowLocalLayouts: true}, Kernel: vmlinux, Agent: buildAgent(t, dir)}
	bzImage, err := kernel.BzImage()
	if err != nil {
		t.Fatal(err)
	}
	b.BzImage = bzImage
	layoutRef := "oci:" + ociLayout(t, dir)
	spec := &vmimage.Spec{Services: []vmimage.Container{{Name: "web", Image: layoutRef}}}
	// The first boot also runs a second container that reaches the first over the pod's shared loopback.
	probe := &vmimage.Spec{Services: []vmimage.Container{{Name: "web", Image: layoutRef},
		{Name: "probe", Image: layoutRef, Args: []string{"-get", "http://127.0.0.1:8080/"}}}}
	img, err := b.Ensure(context.Background(), probe, "direct")
	if err != nil {
		t.Fatal(err)
	}
	disks := img.DiskPaths()
	kvm := qemu.HostHasKVM()
	args := qemu.Args(qemu.VM{Kernel: img.Kernel, Initramfs: img.Initramfs, Cmdline: img.Spec.Kernel.Cmdline,
		Disks: disks, MemoryMiB: 128, CPUs: 1, KVM: kvm, TSCkHz: qemu.HostTSCkHz()})
	// The image's entrypoint, env and user apply; the containers share the pod's network.
	ready, console := bootVM(t, args, "hello: listening on :8080 as pod (uid 1000)", "[probe] 200 OK hello from pod")
	want := "web=etc,hello,hello.txt"
	if !strings.Contains(ready, want) {
		t.Fatalf("ready line %q does not list the mounted image (%s)\nconsole:\n%s", ready, want, console())
	}

	// The cloud formats: one disk, booted by firmware (SeaBIOS + syslinux, OVMF + the unified kernel image).
	for _, format := range []string{"raw-bios", "raw-efi"} {
		t.Run(format, func(t *testing.T) {
			img, err := b.Ensure(context.Background(), spec, format)
			if err != nil {
				t.Fatal(err)
			}
			args := []string{"-M", "pc", "-m", "256M", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
				"-serial", "stdio", "-drive", "file=" + img.Raw + ",format=raw,if=virtio,snapshot=on"}
			if kvm {
				args = append(args, "-accel", "kvm", "-cpu", "host")
			} else {
				args = append(args, "-accel", "tcg")
			}
			if format == "raw-efi" {
				args = append(args, "-bios", "/usr/share/ovmf/OVMF.fd")
			}
			ready, console := bootVM(t, args)
			if !strings.Contains(ready, want) {
				t.Fatalf("ready line %q does not list the mounted image (%s)\nconsole:\n%s", ready, want, console())
			}
		})
	}
}

// bootVM runs QEMU, waits for the agent's ready marker (returned) and then for console lines containing each of
// waitFor, then stops QEMU (power-off is the protocol's: the backend conformance kit checks it). console returns
// everything the guest printed.
// bootTime is the last boot's time from exec(qemu) to the agent's ready marker.
var bootTime time.Duration

func bootVM(t testing.TB, args []string, waitFor ...string) (ready string, console func() string) {
	t.Helper()
	cmd := exec.Command("qemu-system-x86_64", args...)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	lines := make(chan string)
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	console = func() string { return out.String() }
	timeout := time.After(60 * time.Second)
	pending := append([]string(nil), waitFor...)
	for ready == "" || len(pending) > 0 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("QEMU exited before the agent was ready: %v\n%s", cmd.Wait(), out.String())
			}
			out.WriteString(l + "\n")
			if i := strings.Index(l, boot.ReadyMarker); i >= 0 && ready == "" { // firmware may leave escape codes before it
				ready = l[i:]
				bootTime = time.Since(start)
			}
			for i := 0; i < len(pending); i++ {
				if strings.Contains(l, pending[i]) {
					pending = append(pending[:i], pending[i+1:]...)
					i--
				}
			}
		case <-timeout:
			cmd.Process.Kill() //nolint:errcheck
			t.Fatalf("no ready marker and %q within 60 s:\n%s", pending, out.String())
		}
	}
	t.Logf("agent ready %s after exec(qemu) (kvm=%v)", bootTime.Round(time.Millisecond), qemu.HostHasKVM())
	cmd.Process.Kill() //nolint:errcheck
	go func() {
		for l := range lines {
			out.WriteString(l + "\n")
		}
		done <- cmd.Wait()
	}()
	<-done
	return ready, console
}

// TestAlternativeKernelsBoot boots the same image with Debian's stock kernel — modules loaded by the agent — given
// as an extracted package (debian:<dir>) and as a LinuxKit kernel OCI image (kernel + kernel.tar).
func TestAlternativeKernelsBoot(t *testing.T) {
	deb, err := kernel.DebianDir()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	st, err := vmimage.OpenStore(filepath.Join(dir, "store"), 10, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	b := &vmimage.Builder{Store: st, Source: &vmimage.Source{AllowLocalLayouts: true}, Agent: buildAgent(t, dir)}
	containers := []vmimage.Container{{Name: "web", Image: "oci:" + ociLayout(t, dir)}}
	for _, k := range []struct{ name, image string }{
		{"debian", "debian:" + deb},
		{"linuxkit-oci", "oci:" + linuxkitKernelLayout(t, deb, dir)},
	} {
		t.Run(k.name, func(t *testing.T) {
			img, err := b.Ensure(context.Background(), &vmimage.Spec{Kernel: vmimage.Kernel{Image: k.image}, Services: containers}, "direct")
			if err != nil {
				t.Fatal(err)
			}
			disks := img.DiskPaths()
			args := qemu.Args(qemu.VM{Kernel: img.Kernel, Initramfs: img.Initramfs, Cmdline: img.Spec.Kernel.Cmdline,
				Disks: disks, MemoryMiB: 192, CPUs: 1, KVM: qemu.HostHasKVM(), TSCkHz: qemu.HostTSCkHz()})
			ready, console := bootVM(t, args)
			if !strings.Contains(ready, "web=etc,hello,hello.txt") {
				t.Fatalf("ready line %q does not list the mounted image\nconsole:\n%s", ready, console())
			}
		})
	}
}

// linuxkitKernelLayout packages a Debian kernel the way LinuxKit kernel images are: /kernel (bzImage) and
// /kernel.tar (lib/modules/...), as an OCI layout.
func linuxkitKernelLayout(t *testing.T, deb, dir string) string {
	t.Helper()
	bz, _ := filepath.Glob(filepath.Join(deb, "boot", "vmlinuz-*"))
	kbytes, err := os.ReadFile(bz[0])
	if err != nil {
		t.Fatal(err)
	}
	var modTar bytes.Buffer
	tw := tar.NewWriter(&modTar)
	root := filepath.Join(deb, "lib", "modules")
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error { //nolint:errcheck
		if err != nil || !fi.Mode().IsRegular() || !(strings.HasSuffix(p, ".ko") || strings.Contains(p, "/modules.")) {
			return nil
		}
		rel, _ := filepath.Rel(deb, p)
		b, _ := os.ReadFile(p)
		tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: int64(len(b))}) //nolint:errcheck
		tw.Write(b)                                                              //nolint:errcheck
		return nil
	})
	tw.Close()
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	for _, f := range []struct {
		name string
		body []byte
	}{{"kernel", kbytes}, {"kernel.tar", modTar.Bytes()}} {
		lw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body))}) //nolint:errcheck
		lw.Write(f.body)                                                                 //nolint:errcheck
	}
	lw.Close()
	lb := layer.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(lb)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	p, err := layout.Write(filepath.Join(dir, "kernel-layout"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "kernel-layout")
}
