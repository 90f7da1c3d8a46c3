package main

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// libDirs are where the host's dynamic loader finds libraries without its cache (Debian's multiarch directories
// first), searched in order.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// usrMerged maps a host path to the image's merged-/usr layout, where /bin, /sbin, /lib and /lib64 are links into
// /usr: a host that is not merged puts the same file at the path the image resolves to.
func usrMerged(p string) string {
	for _, d := range []string{"/bin", "/sbin", "/lib", "/lib64"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return "/usr" + p
		}
	}
	return p
}

// hostFile reads a host file into an entry at its canonical, /usr-merged path (the path with its directories'
// links resolved), keeping the name asked for: a library found as libuuid.so.1 stays libuuid.so.1 even when that
// is a link to libuuid.so.1.3.0.
func hostFile(p string) (entry, error) {
	ip, err := imagePath(p)
	if err != nil {
		return entry{}, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return entry{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return entry{}, err
	}
	return file(ip, fi.Mode().Perm()&0o755, b), nil
}

// imagePath is where hostFile puts the host file p in the image.
func imagePath(p string) (string, error) {
	d, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return "", err
	}
	return usrMerged(filepath.Join(d, filepath.Base(p))), nil
}

// hostTools returns the entries that run the named host programs in the image: each program (looked up in PATH
// unless a path is given), its ELF interpreter, and every shared library it needs, transitively (DT_NEEDED,
// resolved in libDirs, as the loader does without its cache). Nothing is executed: ldd would run the loader on the
// binary. A program that is not ELF (a script) is an error: the image has no shell.
func hostTools(names []string) ([]entry, error) {
	var out []entry
	seen := map[string]bool{} // image paths already added
	add := func(p string) (entry, error) {
		e, err := hostFile(p)
		if err != nil {
			return entry{}, err
		}
		if !seen[e.Path] {
			seen[e.Path] = true
			out = append(out, e)
		}
		return e, nil
	}
	var resolve func(p string, chain []string) error
	resolve = func(p string, chain []string) error {
		f, err := elf.Open(p)
		if err != nil {
			return fmt.Errorf("%s: not an ELF program, %w", strings.Join(append(chain, p), " → "), err)
		}
		defer f.Close()
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				b := make([]byte, prog.Filesz)
				if _, err := prog.ReadAt(b, 0); err != nil {
					return fmt.Errorf("%s: reading its interpreter, %w", p, err)
				}
				interp := strings.TrimRight(string(b), "\x00")
				if _, err := add(interp); err != nil {
					return fmt.Errorf("%s: interpreter %s, %w", p, interp, err)
				}
			}
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: reading its libraries, %w", p, err)
		}
		for _, lib := range needed {
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
					found = filepath.Join(d, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("%s: library %s not found in %s", strings.Join(append(chain, p), " → "), lib, strings.Join(libDirs, ", "))
			}
			ip, err := imagePath(found)
			if err != nil {
				return err
			}
			if seen[ip] {
				continue
			}
			if _, err := add(found); err != nil {
				return err
			}
			if err := resolve(found, append(chain, p)); err != nil {
				return err
			}
		}
		return nil
	}
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			return nil, fmt.Errorf("tool %s, %w", n, err)
		}
		if _, err := add(p); err != nil {
			return nil, fmt.Errorf("tool %s, %w", n, err)
		}
		if err := resolve(p, nil); err != nil {
			return nil, fmt.Errorf("tool %s: %w", n, err)
		}
	}
	return out, nil
}
