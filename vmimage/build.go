package vmimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

// Format is an output format of a pod VM image: its name and what building it means, as data the build follows
// rather than branches on names.
type Format struct {
	Name        string
	Description string

	// vmlinux says the format boots the uncompressed kernel (PVH direct boot); others boot the bzImage.
	vmlinux bool
	// initramfs is the initramfs file's name; a ".gz" name is compressed.
	initramfs string
	// disk writes the format's single bootable disk at out from its boot files and the container image disks;
	// nil for a format that boots from separate files.
	disk func(ctx context.Context, out string, boot rawBoot, disks []string) error
	// cmdline is appended to the spec's kernel command line in the boot disk: what a cloud's instances need that
	// no host passes at boot.
	cmdline string
}

// cmdline is the kernel command line an image of spec s has in format f.
func (f *Format) kernelCmdline(s Spec) string {
	return strings.TrimSpace(s.Kernel.Cmdline + " " + f.cmdline)
}

// Formats is the table of output formats: `direct` for QEMU, the raw disks for clouds (an AMI is made from them).
// Direct boot loads an uncompressed initramfs: gunzip under TCG costs 0.2 s of every boot, and the host's page
// cache shares the file between VMs. Boot disks keep it compressed.
var Formats = []Format{
	{Name: "direct", Description: "uncompressed vmlinux (PVH) + uncompressed initramfs (agent only) + one read-only erofs disk per container image, for QEMU microvm",
		vmlinux: true, initramfs: "initramfs.cpio"},
	{Name: "raw-bios", Description: "one GPT disk: a FAT boot partition with syslinux, bzImage and initramfs, then one erofs partition per container image",
		initramfs: "initramfs.cpio.gz", disk: rawDisk(false)},
	{Name: "raw-efi", Description: "one GPT disk: an EFI system partition with a unified kernel image (systemd-boot stub), then one erofs partition per container image",
		initramfs: "initramfs.cpio.gz", disk: rawDisk(true)},
	{Name: "ec2", Description: "raw-efi for EC2 instances (the aws backend): the agent reads its user-data from the instance metadata service and serves the node over TLS; the network comes from DHCP",
		initramfs: "initramfs.cpio.gz", disk: rawDisk(true), cmdline: boot.Cmdline("", boot.Params{Cloud: true})},
}

// rawDisk is the disk writer of the raw formats, for UEFI or BIOS boot.
func rawDisk(efi bool) func(ctx context.Context, out string, boot rawBoot, disks []string) error {
	return func(ctx context.Context, out string, boot rawBoot, disks []string) error {
		boot.EFI = efi
		return writeRawDisk(ctx, out, boot, disks)
	}
}

// formatNamed returns the format called name.
func formatNamed(name string) (*Format, error) {
	for i := range Formats {
		if Formats[i].Name == name {
			return &Formats[i], nil
		}
	}
	return nil, fmt.Errorf("format %q: unknown, want one of %s", name, strings.Join(FormatNames(), ", "))
}

// kernelFile is the kernel file of kb the format boots.
func (f *Format) kernelFile(kb *kernel.Bundle) string {
	if f.vmlinux {
		return kb.Vmlinux
	}
	return kb.BzImage
}

// FormatNames lists the formats Ensure accepts.
func FormatNames() []string {
	out := make([]string, len(Formats))
	for i, f := range Formats {
		out[i] = f.Name
	}
	return out
}

// Builder makes images from specs: it resolves container images to digests, computes the cache key from the
// canonical inputs, and builds what the store does not hold. Concurrent Ensure calls for one key build once.
type Builder struct {
	Store    *Store
	Source   *Source
	Kernel   string // path of the uncompressed kernel (vmlinux), for direct boot
	BzImage  string // path of the compressed kernel, for the raw formats' boot loaders
	Agent    string // path of the static i2kit-agent binary
	Progress Progress
	// Metrics is told of every store lookup and build, for the node's metrics; nil tells no one.
	Metrics Metrics

	flight singleflight.Group
	hashes sync.Map // path → fileHash, so that a cache hit does not re-read the kernel
}

type fileHash struct {
	size  int64
	mtime time.Time
	sum   string
}

// inputs are everything that determines an image's bytes; their digest is the image's key.
type inputs struct {
	Format       string           `json:"format"`
	Platform     string           `json:"platform"`
	Kernel       string           `json:"kernel"`
	Cmdline      string           `json:"cmdline"`
	Agent        string           `json:"agent"`
	Modules      []string         `json:"modules,omitempty"`
	RootfsFormat string           `json:"rootfsFormat"`
	Containers   []inputContainer `json:"containers"`
	Digests      []string         `json:"digests"`
	Repos        []string         `json:"repos"` // the repository each disk's digest was pulled from (diskBlob)
	Files        []File           `json:"files"`
	Volumes      []inputVolume    `json:"volumes,omitempty"`
}

// inputVolume is a spec's image volume placed in the image: which disk holds it.
type inputVolume struct {
	Name string `json:"name"`
	Disk int    `json:"disk"`
}

// inputContainer is a spec container placed in the image: which disk holds it and whether it runs onboot.
type inputContainer struct {
	Container
	Onboot bool `json:"onboot,omitempty"`
	Disk   int  `json:"disk"`
}

// Ensure returns the image for spec in format, building it on a cache miss. Container images are resolved in
// their registries with the Source's credentials: EnsureWith and the zero Pull.
func (b *Builder) Ensure(ctx context.Context, spec *Spec, format string) (*Image, error) {
	return b.EnsureWith(ctx, spec, format, Pull{})
}

// EnsureWith is Ensure with pull saying how the container images are found: the credentials of the pod the image
// is for, and its containers' pull policies. The kernel image is always resolved with the Source's credentials.
func (b *Builder) EnsureWith(ctx context.Context, spec *Spec, name string, pull Pull) (*Image, error) {
	format, err := formatNamed(name)
	if err != nil {
		return nil, err
	}
	s := *spec
	s.SetDefaults()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	p := b.progress()
	kb, err := b.kernelBundle(ctx, s.Kernel.Image, format)
	if err != nil {
		return nil, fmt.Errorf("kernel.image %q: %w", s.Kernel.Image, err)
	}
	resolved, err := b.resolveAll(ctx, &s, pull)
	if err != nil {
		return nil, err
	}
	in, err := b.inputs(&s, format, kb, resolved)
	if err != nil {
		return nil, err
	}
	canon, _ := json.Marshal(in)
	sum := sha256.Sum256(canon)
	key := hex.EncodeToString(sum[:])
	m := b.metrics()
	if img, ok := b.Store.Get(key); ok {
		m.ImageCacheLookup(format.Name, true)
		return img, nil
	}
	m.ImageCacheLookup(format.Name, false)
	// The build outlives any one caller, who may stop waiting: another caller may be waiting on it.
	ch := b.flight.DoChan(key, func() (any, error) {
		if img, ok := b.Store.Get(key); ok {
			return img, nil
		}
		t0 := time.Now()
		img, err := b.build(context.WithoutCancel(ctx), key, &s, format, kb, in, resolved, p)
		m.ImageBuilt(format.Name, time.Since(t0), err)
		return img, err
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Image), nil
	}
}

// Metrics is told what a Builder does, for the node's metrics. Its methods must be safe for concurrent use and
// must not block.
type Metrics interface {
	// ImageCacheLookup reports one Ensure's lookup of its image, of format, in the store: hit when it was there.
	ImageCacheLookup(format string, hit bool)
	// ImageBuilt reports one build of an image of format (a caller joining a build under way adds none), how long
	// it took and its error.
	ImageBuilt(format string, d time.Duration, err error)
}

type noMetrics struct{}

func (noMetrics) ImageCacheLookup(string, bool)           {}
func (noMetrics) ImageBuilt(string, time.Duration, error) {}

func (b *Builder) metrics() Metrics {
	if b.Metrics == nil {
		return noMetrics{}
	}
	return b.Metrics
}

func (b *Builder) progress() Progress {
	if b.Progress == nil {
		return noProgress{}
	}
	return b.Progress
}

// resolveAll pins every distinct container and image volume image in parallel, each under its pull policy.
func (b *Builder) resolveAll(ctx context.Context, s *Spec, pull Pull) (map[string]*Resolved, error) {
	var list []string
	refs := map[string]*Resolved{}
	var images []string
	for _, c := range append(append([]Container(nil), s.Onboot...), s.Services...) {
		images = append(images, c.Image)
	}
	for _, v := range s.Volumes {
		images = append(images, v.Image)
	}
	for _, ref := range images {
		if _, ok := refs[ref]; !ok {
			refs[ref] = nil
			list = append(list, ref)
		}
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	for _, ref := range list {
		g.Go(func() error {
			r, err := b.resolveFor(gctx, ref, pull.policy(ref), pull.Keychains)
			if err != nil {
				return err
			}
			mu.Lock()
			refs[ref] = r
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return refs, nil
}

func (b *Builder) inputs(s *Spec, format *Format, kb *kernel.Bundle, resolved map[string]*Resolved) (*inputs, error) {
	kh, err := b.hashFile(format.kernelFile(kb))
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	var mods []string
	for _, m := range kb.Modules {
		h, err := b.hashFile(m)
		if err != nil {
			return nil, fmt.Errorf("kernel module: %w", err)
		}
		mods = append(mods, filepath.Base(m)+"@"+h)
	}
	ah, err := b.hashFile(b.Agent)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	in := &inputs{Format: format.Name, Platform: b.Source.platform().String(), Kernel: kh, Cmdline: format.kernelCmdline(*s),
		Agent: ah, Modules: mods, RootfsFormat: RootfsFormat, Files: s.Files}
	diskIdx := map[string]int{}
	disk := func(image string) int {
		r := resolved[image]
		k := r.repo + "@" + r.Digest.String()
		i, ok := diskIdx[k]
		if !ok {
			i = len(in.Digests)
			diskIdx[k] = i
			in.Digests = append(in.Digests, r.Digest.String())
			in.Repos = append(in.Repos, r.repo)
		}
		return i
	}
	for _, c := range s.Onboot {
		in.Containers = append(in.Containers, inputContainer{Container: c, Onboot: true, Disk: disk(c.Image)})
	}
	for _, c := range s.Services {
		in.Containers = append(in.Containers, inputContainer{Container: c, Disk: disk(c.Image)})
	}
	// An image volume of a container's image shares its disk: both are the same read-only filesystem.
	for _, v := range s.Volumes {
		in.Volumes = append(in.Volumes, inputVolume{Name: v.Name, Disk: disk(v.Image)})
	}
	return in, nil
}

// kernelBundle resolves kernel.image: the podvm kernel the builder was given; "debian:<dir>", an extracted
// linux-image package; or a LinuxKit kernel OCI image (kernel + kernel.tar), pulled like container images and
// unpacked once into the store's kernels/ (kept: kernels are few). A modular kernel's vmlinux is extracted from
// its bzImage once, for direct boot.
func (b *Builder) kernelBundle(ctx context.Context, image string, format *Format) (*kernel.Bundle, error) {
	var kb *kernel.Bundle
	switch {
	case image == DefaultKernel:
		kb = &kernel.Bundle{Vmlinux: b.Kernel, BzImage: b.BzImage}
	case strings.HasPrefix(image, "debian:"):
		var err error
		if kb, err = kernel.FromDir(strings.TrimPrefix(image, "debian:")); err != nil {
			return nil, err
		}
	default:
		r, err := b.Source.Resolve(ctx, image)
		if err != nil {
			return nil, err
		}
		v, err, _ := b.flight.Do("kernel/"+r.Digest.Hex, func() (any, error) {
			return b.unpackKernelImage(ctx, r)
		})
		if err != nil {
			return nil, err
		}
		kb = v.(*kernel.Bundle)
	}
	if format.kernelFile(kb) != "" {
		return kb, nil
	}
	if !format.vmlinux || kb.BzImage == "" {
		return nil, fmt.Errorf("no kernel configured for format %s", format.Name)
	}
	h, err := b.hashFile(kb.BzImage)
	if err != nil {
		return nil, err
	}
	vmlinux := filepath.Join(b.Store.Dir(), "kernels", "vmlinux-"+strings.TrimPrefix(h, "sha256:"))
	if _, err := os.Stat(vmlinux); err != nil {
		if _, err, _ = b.flight.Do(vmlinux, func() (any, error) {
			tmp := vmlinux + ".part"
			if err := kernel.ExtractVmlinux(kb.BzImage, tmp); err != nil {
				return nil, err
			}
			return nil, os.Rename(tmp, vmlinux)
		}); err != nil {
			return nil, fmt.Errorf("extracting vmlinux, %w", err)
		}
	}
	out := *kb
	out.Vmlinux = vmlinux
	return &out, nil
}

func (b *Builder) unpackKernelImage(ctx context.Context, r *Resolved) (*kernel.Bundle, error) {
	dir := filepath.Join(b.Store.Dir(), "kernels", r.Digest.Hex)
	if _, err := os.Stat(dir); err != nil {
		img, c, err := r.open(ctx)
		if err != nil {
			return nil, err
		}
		m, _, cf, err := inspect(img)
		if err != nil {
			return nil, err
		}
		release := b.Store.holdBlobs(layerHolds(cf))
		defer release()
		layers, err := b.fetchLayers(ctx, img, m, cf, c, b.progress())
		if err != nil {
			return nil, err
		}
		tmp, err := b.Store.tmpDir("kernel-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		imageMax, _ := b.Source.limits()
		if err := applyLayers(ctx, layers, tmp, imageMax); err != nil {
			return nil, fmt.Errorf("unpacking kernel image, %w", err)
		}
		if err := os.Rename(tmp, dir); err != nil {
			return nil, err
		}
	}
	return kernel.FromDir(dir)
}

func (b *Builder) hashFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if v, ok := b.hashes.Load(path); ok {
		h := v.(fileHash)
		if h.size == fi.Size() && h.mtime.Equal(fi.ModTime()) {
			return h.sum, nil
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	d := sha256.New()
	if _, err := io.Copy(d, f); err != nil {
		return "", err
	}
	sum := "sha256:" + hex.EncodeToString(d.Sum(nil))
	b.hashes.Store(path, fileHash{fi.Size(), fi.ModTime(), sum})
	return sum, nil
}

// build makes the image for key. Work happens in the store's tmp/ and is committed atomically; blobs are shared
// and built once.
func (b *Builder) build(ctx context.Context, key string, s *Spec, format *Format, kb *kernel.Bundle, in *inputs,
	resolved map[string]*Resolved, p Progress) (*Image, error) {
	kernelBlob := "kernel-" + strings.TrimPrefix(in.Kernel, "sha256:")
	diskBlobs := make([]string, len(in.Digests))
	uuids := make([]string, len(in.Digests))
	held := []string{kernelBlob}
	for i, d := range in.Digests {
		diskBlobs[i], uuids[i] = diskBlob(in.Repos[i], d)
		held = append(held, diskBlobs[i], configBlob(d))
	}
	release := b.Store.holdBlobs(held)
	defer release()

	if err := b.ensureBlob(kernelBlob, func(tmp string) error { return copyFile(format.kernelFile(kb), tmp) }); err != nil {
		return nil, fmt.Errorf("storing kernel, %w", err)
	}
	byDisk := make([]*Resolved, len(in.Digests)) // the resolved image of each disk
	for _, r := range resolved {
		for i, d := range in.Digests {
			if d == r.Digest.String() && in.Repos[i] == r.repo {
				byDisk[i] = r
			}
		}
	}
	diskLayers := make([][]string, len(in.Digests))
	g, gctx := errgroup.WithContext(ctx)
	for i := range in.Digests {
		g.Go(func() error {
			r := byDisk[i]
			v, err, _ := b.flight.Do("disk/"+diskBlobs[i], func() (any, error) {
				return b.ensureDisk(gctx, r, diskBlobs[i], uuids[i], p)
			})
			if err != nil {
				return fmt.Errorf("image %s: %w", r.Ref, err)
			}
			diskLayers[i] = v.([]string)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	dir, err := b.Store.tmpDir("image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir) // a no-op once committed
	cfg := boot.ImageConfig{Version: 1}
	for _, c := range in.Containers {
		r := byDisk[c.Disk]
		ocfg, err := b.imageConfig(ctx, r)
		if err != nil {
			return nil, fmt.Errorf("image %s: reading its configuration, %w", r.Ref, err)
		}
		// An empty argv is not an error here: a pod gives its command at run time (the agent refuses to start a
		// container that still has none).
		run := runConfig(&ocfg.Config, c.Container)
		cfg.Containers = append(cfg.Containers, boot.Container{Name: c.Name, Disk: c.Disk, Onboot: c.Onboot,
			Argv: run.Argv, Entrypoint: run.Entrypoint, Env: run.Env, WorkingDir: run.WorkingDir, User: run.User})
	}
	for _, v := range in.Volumes {
		cfg.Volumes = append(cfg.Volumes, boot.Volume{Name: v.Name, Disk: v.Disk})
	}
	initramfs := format.initramfs
	img := &Image{Key: key, Format: format.Name, Spec: *s, Created: time.Now().UTC(), Kernel: b.Store.blobPath(kernelBlob),
		Initramfs: filepath.Join(b.Store.Dir(), "images", key, initramfs)}
	for i, d := range in.Digests {
		fi, err := os.Stat(b.Store.blobPath(diskBlobs[i]))
		if err != nil {
			return nil, err
		}
		cfg.Disks = append(cfg.Disks, boot.Disk{UUID: uuids[i], Digest: d, Size: fi.Size()})
		img.Disks = append(img.Disks, DiskFile{Path: b.Store.blobPath(diskBlobs[i]), Ref: byDisk[i].Ref, Digest: d, UUID: uuids[i],
			Size: fi.Size(), Layers: diskLayers[i]})
	}
	if err := b.writeInitramfs(filepath.Join(dir, initramfs), &cfg, kb.Modules, s.Files, strings.HasSuffix(initramfs, ".gz")); err != nil {
		return nil, err
	}
	if format.disk != nil {
		raw := filepath.Join(dir, "disk.raw")
		task := "disk " + format.Name
		p.Start(task, 0)
		err := format.disk(ctx, raw, rawBoot{BzImage: img.Kernel, Initramfs: filepath.Join(dir, initramfs),
			Cmdline: format.kernelCmdline(*s)}, img.DiskPaths())
		p.Done(task, err)
		if err != nil {
			return nil, fmt.Errorf("writing %s disk, %w", format.Name, err)
		}
		img.Raw = filepath.Join(b.Store.Dir(), "images", key, "disk.raw")
	}
	img.Size = dirSize(dir) + fileSize(img.Kernel)
	for _, d := range img.Disks {
		img.Size += d.Size
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return b.Store.commit(dir, img)
}

// ensureDisk makes the disk blob of r's image unless the store holds it, and returns the diff_ids of its layers
// (those the store knows of, for a disk it already holds). The disk is made only of layers verified against the
// manifest's digests, itself verified against r's digest, and only when every layer applied: it is a function
// of r's digest.
func (b *Builder) ensureDisk(ctx context.Context, r *Resolved, blob, uuid string, p Progress) ([]string, error) {
	if b.Store.hasBlob(blob) {
		return b.Store.diskLayers(blob), nil
	}
	img, c, err := r.open(ctx)
	if err != nil {
		return nil, err
	}
	m, raw, cf, err := inspect(img)
	if err != nil {
		return nil, err
	}
	if d, err := img.Digest(); err != nil || d != r.Digest {
		return nil, fmt.Errorf("the registry's manifest is %v, not %s", d, r.Digest) // remote.Image checks it too
	}
	release := b.Store.holdBlobs(layerHolds(cf))
	defer release()
	layers, err := b.fetchLayers(ctx, img, m, cf, c, p)
	if err != nil {
		return nil, err
	}
	if err := b.Store.writeBlob(configBlob(r.Digest.String()), raw); err != nil {
		return nil, fmt.Errorf("storing the image configuration, %w", err)
	}
	imageMax, _ := b.Source.limits()
	err = b.ensureBlob(blob, func(tmp string) error {
		task := "rootfs " + r.Ref
		p.Start(task, 0)
		err := buildRootfs(ctx, layers, imageMax, filepath.Dir(tmp), tmp, uuid)
		p.Done(task, err)
		return err
	})
	if err != nil {
		return nil, err
	}
	diffs := make([]string, len(cf.RootFS.DiffIDs))
	for i, d := range cf.RootFS.DiffIDs {
		diffs[i] = d.String()
	}
	return diffs, nil
}

func (b *Builder) ensureBlob(name string, create func(tmp string) error) error {
	if _, err := os.Stat(b.Store.blobPath(name)); err == nil {
		return nil
	}
	dir, err := b.Store.tmpDir("blob-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, name)
	if err := create(tmp); err != nil {
		return err
	}
	return b.Store.commitBlob(tmp, name)
}

// writeInitramfs writes the agent as /init, the kernel modules it loads, its configuration, and the spec's files.
func (b *Builder) writeInitramfs(path string, cfg *boot.ImageConfig, modules []string, files []File, gz bool) error {
	agentBin, err := os.ReadFile(b.Agent)
	if err != nil {
		return fmt.Errorf("reading agent, %w", err)
	}
	entries := []cpioEntry{{Path: "init", Mode: cpioReg | 0o755, Data: agentBin}}
	for i, m := range modules {
		data, err := os.ReadFile(m)
		if err != nil {
			return fmt.Errorf("reading kernel module, %w", err)
		}
		p := fmt.Sprintf("lib/modules/i2kit/%02d-%s", i, filepath.Base(m))
		entries = append(entries, cpioEntry{Path: p, Mode: cpioReg | 0o644, Data: data})
		cfg.Modules = append(cfg.Modules, "/"+p)
	}
	cfgJSON, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	entries = append(entries, cpioEntry{Path: strings.TrimPrefix(boot.ConfigPath, "/"), Mode: cpioReg | 0o644, Data: cfgJSON})
	for _, f := range files {
		mode := uint64(0o644)
		if f.Mode != "" {
			mode, _ = strconv.ParseUint(f.Mode, 8, 32)
		}
		entries = append(entries, cpioEntry{Path: f.Path, Mode: cpioReg | uint32(mode), Data: []byte(f.Contents)})
	}
	var buf bytes.Buffer
	if err := writeInitramfs(&buf, entries, gz); err != nil {
		return fmt.Errorf("writing initramfs, %w", err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func dirSize(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n
}
