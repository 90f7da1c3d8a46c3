package vmimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"strings"
	"time"
)

// RootfsFormat names the read-only filesystem of container image disks; part of every cache key.
const RootfsFormat = "erofs-v1"

// Progress receives byte counts as work advances; nil is allowed everywhere.
type Progress interface {
	// Start announces a task of total bytes (0 if unknown); Add reports n more done; Done ends it.
	Start(task string, total int64)
	Add(task string, n int64)
	Done(task string, err error)
}

type noProgress struct{}

func (noProgress) Start(string, int64) {}
func (noProgress) Add(string, int64)   {}
func (noProgress) Done(string, error)  {}

// buildRootfs applies layers (uncompressed tars, bottom first) to a directory under tmp and makes the read-only
// erofs image out. The directory is removed afterwards; out appears only when complete, and never after an
// error. maxBytes bounds the bytes written.
func buildRootfs(ctx context.Context, layers []string, maxBytes int64, tmp, out, uuid string) error {
	dir, err := os.MkdirTemp(tmp, "rootfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := applyLayers(ctx, layers, dir, maxBytes); err != nil {
		return fmt.Errorf("applying layers, %w", err)
	}
	// Without root, the layers admit only root-owned entries and cannot chown them: say so to mkfs.erofs.
	return mkfsErofs(ctx, dir, out, uuid, os.Geteuid() != 0)
}

// mkfsErofs makes an uncompressed erofs image of dir: builds stay linear in bytes, and the page cache shares it
// between VMs. Timestamps come from the files; the UUID, derived from the inputs, lets the agent find the disk.
func mkfsErofs(ctx context.Context, dir, out, uuid string, allRoot bool) error {
	part := out + ".part"
	args := []string{"--quiet", "-U", uuid, "--preserve-mtime"}
	if allRoot {
		args = append(args, "--all-root")
	}
	cmd := exec.CommandContext(ctx, "mkfs.erofs", append(args, part, dir)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(part)
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("mkfs.erofs not found: install erofs-utils (make deps), %w", err)
		}
		return fmt.Errorf("mkfs.erofs: %w: %s", err, strings.TrimSpace(string(b)))
	}
	return os.Rename(part, out)
}

// applyLayers applies layer tars (files, bottom layer first) to dir, as a container runtime unpacks an image:
// each layer's whiteouts remove what lower layers made. Each layer is read to its end and any error fails the
// whole: a layer that is not a tar, an entry that leaves the root, or more than maxBytes of file contents (sparse
// entries included).
func applyLayers(ctx context.Context, layers []string, dir string, maxBytes int64) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	a := &applier{root: root, euid: os.Geteuid(), left: maxBytes}
	for i, l := range layers {
		f, err := os.Open(l)
		if err != nil {
			return err
		}
		err = a.apply(ctx, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("layer %d, %w", i, err)
		}
	}
	a.finish()
	return nil
}

// applier writes layers into root. Paths are resolved inside root as containerd does: a symlink met on the way,
// absolute or relative, is followed within root (Debian's var/run -> /run, then var/run/x, writes run/x), and os.Root
// refuses anything that would still leave it. Owners, modes and times are kept; device nodes are skipped (the
// agent mounts devtmpfs over /dev).
type applier struct {
	root *os.Root
	euid int
	left int64 // bytes of file contents still allowed
	dirs []dirTime
}

type dirTime struct {
	name string
	t    time.Time
}

// maxSymlinks bounds the symbolic links followed resolving one path, as the kernel's 40.
const maxSymlinks = 40

// apply applies one layer, read from r to its end.
func (a *applier) apply(ctx context.Context, r io.Reader) error {
	tr := tar.NewReader(r)
	unpacked := map[string]bool{} // this layer's entries, by resolved path: an opaque whiteout keeps them
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading tar, %w", err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "/"))
		if name == "." {
			continue
		}
		if name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("tar entry %q escapes the image root", h.Name)
		}
		dir, base := path.Split(name)
		if strings.HasPrefix(base, whiteoutPrefix) {
			if err := a.whiteout(dir, base, unpacked); err != nil {
				return err
			}
			continue
		}
		parent, err := a.resolveDir(dir, true)
		if err != nil {
			return fmt.Errorf("tar entry %q, %w", h.Name, err)
		}
		full := path.Join(parent, base)
		if err := a.entry(tr, h, full); err != nil {
			return err
		}
		unpacked[full] = true
	}
	if _, err := io.Copy(io.Discard, r); err != nil { // a tar's end marker is not the end of the layer
		return err
	}
	return nil
}

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// whiteout applies a whiteout entry dir/base: it removes base's target from lower layers, or for an opaque
// whiteout everything in dir that this layer did not make.
func (a *applier) whiteout(dir, base string, unpacked map[string]bool) error {
	parent, err := a.resolveDir(dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // nothing below to hide
	}
	if err != nil {
		return fmt.Errorf("whiteout %s%s, %w", dir, base, err)
	}
	switch {
	case base == whiteoutOpaque:
		f, err := a.root.Open(parent)
		if err != nil {
			return err
		}
		ents, err := f.ReadDir(-1)
		f.Close()
		if err != nil {
			return err
		}
		for _, e := range ents {
			if p := path.Join(parent, e.Name()); !unpacked[p] {
				if err := a.root.RemoveAll(p); err != nil {
					return err
				}
			}
		}
	case strings.HasPrefix(base, whiteoutPrefix+whiteoutPrefix): // other aufs metadata: nothing to apply
	default:
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if target == "." || target == ".." || target == "" {
			return fmt.Errorf("whiteout %s%s names no file", dir, base)
		}
		if err := a.root.RemoveAll(path.Join(parent, target)); err != nil {
			return err
		}
	}
	return nil
}

// entry writes one tar entry at full, a resolved path whose parent exists.
func (a *applier) entry(tr *tar.Reader, h *tar.Header, full string) error {
	if fi, err := a.root.Lstat(full); err == nil && !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
		if err := a.root.RemoveAll(full); err != nil { // a later layer's entry replaces an earlier one
			return fmt.Errorf("replacing %s, %w", full, err)
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if err := a.root.Mkdir(full, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creating %s, %w", full, err)
		}
		a.dirs = append(a.dirs, dirTime{full, h.ModTime})
	case tar.TypeReg:
		f, err := a.root.OpenFile(full, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("creating %s, %w", full, err)
		}
		n, err := io.Copy(f, io.LimitReader(tr, a.left+1))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing %s, %w", full, err)
		}
		if a.left -= n; a.left < 0 {
			return errImageTooLarge
		}
	case tar.TypeSymlink:
		if err := a.root.Symlink(h.Linkname, full); err != nil {
			return fmt.Errorf("creating symlink %s, %w", full, err)
		}
	case tar.TypeLink:
		target := path.Clean(strings.TrimPrefix(h.Linkname, "/"))
		if target == ".." || strings.HasPrefix(target, "../") {
			return fmt.Errorf("hard link %s to %q escapes the image root", full, h.Linkname)
		}
		tdir, tbase := path.Split(target)
		tparent, err := a.resolveDir(tdir, false)
		if err == nil {
			err = a.root.Link(path.Join(tparent, tbase), full)
		}
		if err != nil {
			return fmt.Errorf("creating hard link %s, %w", full, err)
		}
		return nil // the link shares the target's inode: owner, mode and times are the target's
	default: // devices, fifos and what else a tar may hold
		return nil
	}
	if err := setOwner(a.root, full, h, a.euid); err != nil {
		return err
	}
	if h.Typeflag == tar.TypeSymlink {
		return nil
	}
	if err := a.root.Chmod(full, h.FileInfo().Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
		return fmt.Errorf("chmod %s, %w", full, err)
	}
	if h.Typeflag != tar.TypeDir {
		if err := a.root.Chtimes(full, h.ModTime, h.ModTime); err != nil {
			return fmt.Errorf("setting times of %s, %w", full, err)
		}
	}
	return nil
}

// finish sets directories' times, after their contents, which change them.
func (a *applier) finish() {
	for i := len(a.dirs) - 1; i >= 0; i-- {
		a.root.Chtimes(a.dirs[i].name, a.dirs[i].t, a.dirs[i].t) //nolint:errcheck // a later layer may have removed it
	}
}

// resolveDir resolves dir (relative to the root) to a path without symbolic links, following those it meets
// within the root: an absolute target starts again at the root, and ".." stops at the root. With create,
// missing directories are made (0755); without, a missing one is an fs.ErrNotExist error. It returns "." for the
// root.
func (a *applier) resolveDir(dir string, create bool) (string, error) {
	todo := splitPath(dir)
	var done []string
	for hops := 0; len(todo) > 0; {
		c := todo[0]
		todo = todo[1:]
		p := path.Join(append(done, c)...)
		fi, err := a.root.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist) && create:
			if err := a.root.Mkdir(p, 0o755); err != nil {
				return "", fmt.Errorf("creating %s, %w", p, err)
			}
		case err != nil:
			return "", err
		case fi.Mode()&fs.ModeSymlink != 0:
			if hops++; hops > maxSymlinks {
				return "", fmt.Errorf("resolving %s: too many levels of symbolic links", dir)
			}
			target, err := a.root.Readlink(p)
			if err != nil {
				return "", err
			}
			from := "/" + path.Join(done...)
			if path.IsAbs(target) {
				from = "/"
			}
			todo = append(splitPath(path.Join(from, target)), todo...)
			done = nil
			continue
		case !fi.IsDir():
			return "", fmt.Errorf("%s is not a directory", p)
		}
		done = append(done, c)
	}
	if len(done) == 0 {
		return ".", nil
	}
	return path.Join(done...), nil
}

// splitPath returns p's components, cleaned as an absolute path (so that ".." stops at the root).
func splitPath(p string) []string {
	clean := path.Clean("/" + p)
	if clean == "/" {
		return nil
	}
	return strings.Split(clean[1:], "/")
}

// setOwner gives name the tar entry's owner. Without root only root-owned entries are admitted (mkfs.erofs
// then records root): any other owner is an error, never a silent change of owner.
func setOwner(root *os.Root, name string, h *tar.Header, euid int) error {
	if euid != 0 {
		if h.Uid != 0 || h.Gid != 0 {
			return fmt.Errorf("%s is owned by %d:%d: building images with files of other owners than root needs root", name, h.Uid, h.Gid)
		}
		return nil
	}
	if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
		return fmt.Errorf("chown %s, %w", name, err)
	}
	return nil
}

type progressWriter struct {
	p    Progress
	task string
}

func (w progressWriter) Write(b []byte) (int, error) {
	w.p.Add(w.task, int64(len(b)))
	return len(b), nil
}

// readerCtx stops a copy when ctx ends.
type readerCtx struct {
	ctx context.Context
	r   io.Reader
}

func (r readerCtx) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
