package vm

import (
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/i2kit/i2kit/provider/qemu"
	"github.com/i2kit/i2kit/vmimage"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

// BenchmarkDirectBoot boots the direct image b.N times and reports the median time from exec(qemu) to the agent's
// ready marker, and the image footprint: compressed kernel + compressed initramfs (target ≤ 10 MB) and the
// uncompressed direct-boot pair, vmlinux + initramfs (target ≤ 30 MB).
func BenchmarkDirectBoot(b *testing.B) {
	vmlinux, err := kernel.Vmlinux()
	if err != nil {
		b.Fatal(err)
	}
	bz, err := kernel.BzImage()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	st, err := vmimage.OpenStore(filepath.Join(dir, "store"), 10, 1<<30)
	if err != nil {
		b.Fatal(err)
	}
	bl := &vmimage.Builder{Store: st, Source: &vmimage.Source{AllowLocalLayouts: true}, Kernel: vmlinux, BzImage: bz, Agent: buildAgent(b, dir)}
	img, err := bl.Ensure(context.Background(), &vmimage.Spec{Services: []vmimage.Container{{Name: "web", Image: "oci:" + ociLayout(b, dir)}}}, "direct")
	if err != nil {
		b.Fatal(err)
	}
	initrd := size(b, img.Initramfs) // direct boot's is uncompressed; the raw formats ship it gzipped
	initrdGz := gzippedSize(b, img.Initramfs)
	disks := img.DiskPaths()
	args := qemu.Args(qemu.VM{Kernel: img.Kernel, Initramfs: img.Initramfs, Cmdline: img.Spec.Kernel.Cmdline,
		Disks: disks, MemoryMiB: 128, CPUs: 1, KVM: qemu.HostHasKVM(), TSCkHz: qemu.HostTSCkHz()})
	var ds []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bootVM(b, args)
		ds = append(ds, bootTime)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	b.ReportMetric(float64(ds[len(ds)/2].Milliseconds()), "ms-boot-to-agent(median)")
	// After the loop: ResetTimer drops metrics reported before it.
	const mb = 1e6
	b.ReportMetric(float64(size(b, bz)+initrdGz)/mb, "MB-bzImage+initramfs.gz")
	b.ReportMetric(float64(size(b, img.Kernel)+initrd)/mb, "MB-vmlinux+initramfs")
}

func size(b *testing.B, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

func gzippedSize(b *testing.B, p string) int64 {
	raw, err := os.ReadFile(p)
	if err != nil {
		b.Fatal(err)
	}
	var n countWriter
	zw, _ := gzip.NewWriterLevel(&n, gzip.BestCompression)
	zw.Write(raw) //nolint:errcheck
	zw.Close()
	return int64(n)
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }
