package vmimage

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Raw disks (raw-bios, raw-efi) hold everything in one GPT disk, built without loop mounts: partition 1 is a FAT
// boot partition (syslinux for BIOS, a unified kernel image for UEFI), then one partition per container image
// filesystem, each written verbatim; the agent finds them by erofs UUID as it finds separate disks.

const (
	mib            = 1 << 20
	sectorSize     = 512
	gptLinuxData   = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
	gptEFISystem   = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
	syslinuxGPTMBR = "/usr/lib/syslinux/mbr/gptmbr.bin"
	systemdStub    = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
)

// rawBoot is what goes into the boot partition.
type rawBoot struct {
	BzImage   string
	Initramfs string
	Cmdline   string
	EFI       bool
}

func roundMiB(n int64) int64 { return (n + mib - 1) / mib * mib }

// writeRawDisk writes the bootable disk to out (out appears only when complete).
func writeRawDisk(ctx context.Context, out string, boot rawBoot, disks []string) error {
	work, err := os.MkdirTemp(filepath.Dir(out), "raw-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	files, err := bootFiles(ctx, work, boot)
	if err != nil {
		return err
	}
	var bootBytes int64
	for _, f := range files {
		bootBytes += fileSize(f.src)
	}
	fatSize := roundMiB(bootBytes*11/10 + 8*mib)
	if boot.EFI && fatSize < 36*mib {
		fatSize = 36 * mib // UEFI firmware wants FAT32, which needs 65525 clusters
	}
	offsets := []int64{mib}
	sizes := []int64{fatSize}
	next := mib + fatSize
	for _, d := range disks {
		offsets = append(offsets, next)
		sizes = append(sizes, roundMiB(fileSize(d)))
		next += roundMiB(fileSize(d))
	}
	total := next + mib // the backup GPT
	part := out + ".part"
	f, err := os.Create(part)
	if err != nil {
		return err
	}
	defer os.Remove(part)
	if err := f.Truncate(total); err != nil {
		f.Close()
		return fmt.Errorf("sizing raw disk, %w", err)
	}
	f.Close()

	bootType, attrs := gptLinuxData, `attrs="LegacyBIOSBootable", `
	if boot.EFI {
		bootType, attrs = gptEFISystem, ""
	}
	var table strings.Builder
	table.WriteString("label: gpt\nunit: sectors\n")
	fmt.Fprintf(&table, "start=%d, size=%d, type=%s, %sname=\"i2kit-boot\"\n", offsets[0]/sectorSize, sizes[0]/sectorSize, bootType, attrs)
	for i := range disks {
		fmt.Fprintf(&table, "start=%d, size=%d, type=%s, name=\"i2kit-image-%d\"\n", offsets[i+1]/sectorSize, sizes[i+1]/sectorSize, gptLinuxData, i)
	}
	if err := run(ctx, strings.NewReader(table.String()), "sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", part); err != nil {
		return err
	}
	fatArgs := []string{"--offset", fmt.Sprint(offsets[0] / sectorSize), "-n", "I2KIT"}
	if boot.EFI {
		fatArgs = append(fatArgs, "-F", "32")
	}
	if err := run(ctx, nil, "mkfs.vfat", append(fatArgs, part, fmt.Sprint(sizes[0]/1024))...); err != nil {
		return err
	}
	img := fmt.Sprintf("%s@@%d", part, offsets[0])
	for _, d := range []string{"::/EFI", "::/EFI/BOOT"} {
		if boot.EFI {
			if err := run(ctx, nil, "mmd", "-i", img, d); err != nil {
				return err
			}
		}
	}
	for _, bf := range files {
		if err := run(ctx, nil, "mcopy", "-i", img, bf.src, "::"+bf.dst); err != nil {
			return err
		}
	}
	if !boot.EFI {
		if err := run(ctx, nil, "syslinux", "--offset", fmt.Sprint(offsets[0]), "--install", part); err != nil {
			return err
		}
		if err := writeAt(part, syslinuxGPTMBR, 0, 440); err != nil {
			return fmt.Errorf("writing the boot code, %w", err)
		}
	}
	for i, d := range disks {
		if err := writeAt(part, d, offsets[i+1], -1); err != nil {
			return fmt.Errorf("writing image partition %d, %w", i, err)
		}
	}
	return os.Rename(part, out)
}

type bootFile struct{ src, dst string }

// bootFiles prepares the boot partition's files: syslinux's kernel, initramfs and configuration, or a unified
// kernel image (kernel, initramfs and command line in one EFI binary on the systemd-boot stub).
func bootFiles(ctx context.Context, work string, b rawBoot) ([]bootFile, error) {
	if !b.EFI {
		cfg := filepath.Join(work, "syslinux.cfg")
		body := fmt.Sprintf("DEFAULT i2kit\nPROMPT 0\nTIMEOUT 0\nLABEL i2kit\n  KERNEL /vmlinuz\n  INITRD /initrd.gz\n  APPEND %s\n", b.Cmdline)
		if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
			return nil, err
		}
		return []bootFile{{b.BzImage, "/vmlinuz"}, {b.Initramfs, "/initrd.gz"}, {cfg, "/syslinux.cfg"}}, nil
	}
	cmdline := filepath.Join(work, "cmdline")
	osrel := filepath.Join(work, "os-release")
	os.WriteFile(cmdline, []byte(b.Cmdline+"\x00"), 0o644)                  //nolint:errcheck
	os.WriteFile(osrel, []byte("ID=i2kit\nNAME=\"i2kit pod VM\"\n"), 0o644) //nolint:errcheck
	uki := filepath.Join(work, "BOOTX64.EFI")
	// Section addresses follow the stub's convention (systemd 252): each well above the stub's own image.
	if err := run(ctx, nil, "objcopy",
		"--add-section", ".osrel="+osrel, "--change-section-vma", ".osrel=0x20000",
		"--add-section", ".cmdline="+cmdline, "--change-section-vma", ".cmdline=0x30000",
		"--add-section", ".linux="+b.BzImage, "--change-section-vma", ".linux=0x2000000",
		"--add-section", ".initrd="+b.Initramfs, "--change-section-vma", ".initrd=0x3000000",
		systemdStub, uki); err != nil {
		return nil, err
	}
	return []bootFile{{uki, "/EFI/BOOT/BOOTX64.EFI"}}, nil
}

// writeAt copies n bytes (all when n < 0) of src into dst at off.
func writeAt(dst, src string, off, n int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	var r io.Reader = in
	if n >= 0 {
		r = io.LimitReader(in, n)
	}
	if _, err := io.Copy(io.NewOffsetWriter(out, off), r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func run(ctx context.Context, stdin io.Reader, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = stdin
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(b)))
	}
	return nil
}
