package vm

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/devcloud/ec2/vmrunner"
	"github.com/i2kit/i2kit/vmimage"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

// ovmf is the UEFI firmware the local EC2 boots its instances with.
const ovmf = "/usr/share/ovmf/OVMF.fd"

// ec2Image skips the test unless the local EC2 can boot instances here (root, QEMU, OVMF), and builds, in dir, the
// ec2-format image of the test's OCI layout with the agent and the pod-VM kernel.
func ec2Image(t *testing.T, dir string) *vmimage.Image {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: bridges, TAPs, DHCP and the metadata address")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skipf("qemu-system-x86_64 is required (make deps installs it): %v", err)
	}
	if _, err := os.Stat(ovmf); err != nil {
		t.Skipf("OVMF is required: %v", err)
	}
	vmlinux, err := kernel.Vmlinux()
	if err != nil {
		t.Fatal(err)
	}
	bzImage, err := kernel.BzImage()
	if err != nil {
		t.Fatal(err)
	}
	st, err := vmimage.OpenStore(filepath.Join(dir, "store"), 10, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	b := &vmimage.Builder{Store: st, Source: &vmimage.Source{AllowLocalLayouts: true}, Kernel: vmlinux, BzImage: bzImage,
		Agent: buildAgent(t, dir)}
	img, err := b.Ensure(context.Background(), &vmimage.Spec{Services: []vmimage.Container{{Name: "web", Image: "oci:" + ociLayout(t, dir)}}}, "ec2")
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// localCloud starts the local EC2 whose instances are QEMU VMs (devcloud/ec2 with vmrunner, its bridges named
// with bridgePrefix, its state in dir) behind an HTTP server on loopback, all closed when the test ends.
func localCloud(t *testing.T, dir, bridgePrefix string) (*ec2.Server, string) {
	t.Helper()
	runner, err := vmrunner.New(vmrunner.Config{StateDir: filepath.Join(dir, "instances"), OVMF: ovmf, MaxMemoryMiB: 256,
		BridgePrefix: bridgePrefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := runner.Close(); err != nil {
			t.Errorf("closing the runner: %v", err)
		}
	})
	srv := ec2.New(ec2.Options{Runner: runner, BlockDir: filepath.Join(dir, "blocks")})
	runner.Attach(srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return srv, hs.URL
}
