package vmimage

import (
	"testing"

	"github.com/i2kit/i2kit/vmimage/kernel"
)

// TestFormatTable checks what each output format builds: its kernel file, initramfs and whether it writes a disk.
func TestFormatTable(t *testing.T) {
	kb := &kernel.Bundle{Vmlinux: "vmlinux", BzImage: "bzImage"}
	for _, tc := range []struct {
		name, kernel, initramfs string
		disk                    bool
	}{
		{"direct", "vmlinux", "initramfs.cpio", false},
		{"raw-bios", "bzImage", "initramfs.cpio.gz", true},
		{"raw-efi", "bzImage", "initramfs.cpio.gz", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := formatNamed(tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.kernelFile(kb); got != tc.kernel || f.initramfs != tc.initramfs || (f.disk != nil) != tc.disk {
				t.Errorf("kernel %s, initramfs %s, disk %v; want %s, %s, %v", got, f.initramfs, f.disk != nil, tc.kernel, tc.initramfs, tc.disk)
			}
		})
	}
	if _, err := formatNamed("qcow2"); err == nil {
		t.Error("an unknown format was found")
	}
	if len(FormatNames()) != len(Formats) {
		t.Error("FormatNames does not list the table")
	}
}
