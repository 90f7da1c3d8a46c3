package qemu

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestArgsGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		vm   VM
	}{
		{"tcg-two-disks", VM{Kernel: "/k/vmlinux", Initramfs: "/i/initramfs.cpio.gz", Cmdline: "console=ttyS0 quiet",
			Disks: []string{"/b/disk-a.erofs", "/b/disk-b.erofs"}, MemoryMiB: 128, CPUs: 1, TSCkHz: 2100000}},
		{"kvm", VM{Kernel: "/k/vmlinux", Initramfs: "/i/initramfs.cpio.gz", Cmdline: "console=ttyS0",
			MemoryMiB: 256, CPUs: 2, KVM: true, TSCkHz: 2100000}},
		{"pod", VM{Kernel: "/k/vmlinux", Initramfs: "/i/initramfs.cpio", Cmdline: "console=ttyS0 i2kit.config=channel",
			Disks: []string{"/b/disk-a.erofs"}, MemoryMiB: 192, CPUs: 1, TSCkHz: 2100000,
			Dir: "/run/i2kit/qemu/uid-1", TAP: "i2k0123456789ab", MAC: "52:54:00:11:22:33"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(Args(tc.vm), "\n") + "\n"
			p := "testdata/" + tc.name + ".args"
			if *update {
				os.WriteFile(p, []byte(got), 0o644) //nolint:errcheck
			}
			want, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("Args differs from %s (-update to accept):\n%s", p, got)
			}
		})
	}
}
