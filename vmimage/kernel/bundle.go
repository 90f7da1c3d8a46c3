package kernel

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Bundle is a kernel to boot pod VMs with, and the modules the agent must load before it can mount the image
// disks and reach the network (none for the built-in podvm kernel).
type Bundle struct {
	BzImage string   // compressed kernel with the EFI stub, for the raw formats' boot loaders
	Vmlinux string   // uncompressed ELF with the PVH entry, for QEMU microvm; "" until ExtractVmlinux
	Modules []string // .ko files in load order (dependencies first)
}

// AgentModules are what pod VMs need from a modular kernel, in load order: crypto algorithms that other modules
// look up by name (the guest has no modprobe to load them on demand), the virtio transports and devices, the
// image and overlay filesystems, and EC2 Nitro's disk and NIC drivers. Those a kernel builds in or lacks are
// skipped.
var AgentModules = []string{
	"crc32c_generic", "crc32c_intel", "crc64_rocksoft_generic",
	"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "erofs", "overlay", "nvme", "ena",
}

// FromDir reads a kernel laid out as Debian's linux-image package (boot/vmlinuz-*, lib/modules/<ver>/), or as a
// LinuxKit kernel image (kernel, kernel.tar holding lib/modules/<ver>/), whose kernel.tar it unpacks in dir.
func FromDir(dir string) (*Bundle, error) {
	if _, err := os.Stat(filepath.Join(dir, "kernel")); err == nil { // LinuxKit
		if _, err := os.Stat(filepath.Join(dir, "kernel.tar")); err == nil {
			if err := untarModules(filepath.Join(dir, "kernel.tar"), filepath.Join(dir, "kernel.tar.d")); err != nil {
				return nil, err
			}
		}
		return bundle(filepath.Join(dir, "kernel"), filepath.Join(dir, "kernel.tar.d", "lib", "modules"))
	}
	bz, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(bz) != 1 {
		return nil, fmt.Errorf("kernel directory %s: want one boot/vmlinuz-* (Debian) or a kernel file (LinuxKit), found %d", dir, len(bz))
	}
	return bundle(bz[0], filepath.Join(dir, "lib", "modules"))
}

func bundle(bzImage, modulesRoot string) (*Bundle, error) {
	b := &Bundle{BzImage: bzImage}
	vers, _ := filepath.Glob(filepath.Join(modulesRoot, "*"))
	if len(vers) == 0 {
		return b, nil // everything built in
	}
	if len(vers) > 1 {
		return nil, fmt.Errorf("%s: modules for %d kernel versions", modulesRoot, len(vers))
	}
	mods, err := ModuleOrder(vers[0], AgentModules)
	if err != nil {
		return nil, err
	}
	b.Modules = mods
	return b, nil
}

// ModuleOrder finds the wanted modules and their dependencies (from each module's .modinfo) under the module
// directory of one kernel version, and returns their files in load order. Wanted modules that are built in or
// absent are skipped; a missing dependency is an error.
func ModuleOrder(root string, wanted []string) ([]string, error) {
	files := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".ko") {
			files[modName(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, required bool) error
	visit = func(name string, required bool) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module %s: dependency cycle", name)
		case 2:
			return nil
		}
		f, ok := files[name]
		if !ok {
			if required {
				return fmt.Errorf("module dependency %s not found under %s", name, root)
			}
			return nil
		}
		state[name] = 1
		deps, err := moduleDeps(f)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, true); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, f)
		return nil
	}
	for _, w := range wanted {
		if err := visit(modName(w), false); err != nil {
			return nil, err
		}
	}
	return order, nil
}

func modName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleDeps reads "depends=" from a module's .modinfo section.
func moduleDeps(ko string) ([]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, fmt.Errorf("reading module %s, %w", ko, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			for _, d := range strings.Split(string(v), ",") {
				deps = append(deps, modName(d))
			}
		}
	}
	sort.Strings(deps)
	return deps, nil
}

// ExtractVmlinux writes the uncompressed kernel inside bzImage to out: it finds the payload's compression by its
// magic number and decompresses the first stream (xz, zstd or gzip), as the kernel's scripts/extract-vmlinux does.
func ExtractVmlinux(bzImage, out string) error {
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		magic []byte
		cmd   []string
	}{
		{[]byte("\xfd7zXZ\x00"), []string{"xz", "-dc", "--single-stream"}},
		{[]byte("\x28\xb5\x2f\xfd"), []string{"zstd", "-dc"}},
		{[]byte("\x1f\x8b\x08"), []string{"gzip", "-dc"}},
	} {
		for off := 0; ; {
			i := bytes.Index(b[off:], c.magic)
			if i < 0 {
				break
			}
			off += i
			var elfOut bytes.Buffer
			cmd := exec.Command(c.cmd[0], c.cmd[1:]...)
			cmd.Stdin, cmd.Stdout = bytes.NewReader(b[off:]), &elfOut
			cmd.Run() //nolint:errcheck // trailing data after the stream makes some decompressors complain
			if elfOut.Len() > 4 && bytes.HasPrefix(elfOut.Bytes(), []byte("\x7fELF")) {
				return os.WriteFile(out, elfOut.Bytes(), 0o644)
			}
			off++
		}
	}
	return errors.New("no compressed ELF kernel found in " + bzImage)
}

// untarModules unpacks the lib/modules tree of a LinuxKit kernel.tar into dst.
func untarModules(tarPath, dst string) error {
	f, err := os.Open(tarPath)
	if err != nil {
		return err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading %s, %w", tarPath, err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "/"))
		if !strings.HasPrefix(name, "lib/modules/") || h.Typeflag != tar.TypeReg {
			continue
		}
		p := filepath.Join(dst, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		out, err := os.Create(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, tr)
		out.Close()
		if err != nil {
			return err
		}
	}
}
