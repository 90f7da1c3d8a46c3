// Package kernel locates the pod-VM kernel that `make kernel` (scripts/kernel.sh) builds from Debian's
// linux-source-6.1 with the podvm.config fragment kept here, cached by the fragment's hash.
package kernel

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/i2kit/i2kit/internal/cachedir"
)

//go:embed podvm.config
var fragment []byte

// Dir is where the kernel for the current fragment is (or will be) built: vmlinux, bzImage, config.
func Dir() string {
	sum := sha256.Sum256(fragment)
	return filepath.Join(cachedir.Root(), "kernel", "6.1-"+hex.EncodeToString(sum[:])[:12])
}

// Vmlinux is the path of the built uncompressed kernel (PVH entry, for QEMU microvm), or an error saying how to
// build it.
func Vmlinux() (string, error) { return artefact("vmlinux") }

// BzImage is the path of the built compressed kernel (for bootloaders).
func BzImage() (string, error) { return artefact("bzImage") }

func artefact(name string) (string, error) {
	p := filepath.Join(Dir(), name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("pod-VM kernel not built (%s missing): run `make kernel`", p)
	}
	return p, nil
}

// DebianDir is the newest Debian stock kernel that `make kernel` (scripts/debian-kernel.sh) extracted.
func DebianDir() (string, error) {
	dirs, _ := filepath.Glob(filepath.Join(cachedir.Root(), "kernel", "debian-*", ".complete"))
	if len(dirs) == 0 {
		return "", fmt.Errorf("Debian kernel not fetched: run `make kernel`")
	}
	sort.Strings(dirs)
	return filepath.Dir(dirs[len(dirs)-1]), nil
}
