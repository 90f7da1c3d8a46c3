package vmimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/cache"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sync/errgroup"
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

// fetchLayers downloads every layer of img into the shared layer cache, in parallel, verifying digests. Layers
// already cached cost nothing. It returns the image reading through the cache.
func fetchLayers(ctx context.Context, img v1.Image, layerDir string, p Progress) (v1.Image, error) {
	cimg := cache.Image(img, cache.NewFilesystemCache(layerDir))
	layers, err := cimg.Layers()
	if err != nil {
		return nil, fmt.Errorf("listing layers, %w", err)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, l := range layers {
		g.Go(func() error {
			d, err := l.Digest()
			if err != nil {
				return err
			}
			size, _ := l.Size()
			task := "layer " + d.Hex[:12]
			p.Start(task, size)
			rc, err := l.Compressed()
			if err != nil {
				p.Done(task, err)
				return fmt.Errorf("fetching layer %s, %w", d, err)
			}
			_, err = io.Copy(progressWriter{p, task}, readerCtx{ctx, rc})
			if cerr := rc.Close(); err == nil {
				err = cerr
			}
			p.Done(task, err)
			if err != nil {
				return fmt.Errorf("fetching layer %s, %w", d, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return cimg, nil
}

// buildRootfs flattens img's layers (applying whiteouts) into a directory under tmp and makes the read-only
// erofs image out. The directory is removed afterwards; out appears only when complete.
func buildRootfs(ctx context.Context, img v1.Image, tmp, out, uuid string) error {
	dir, err := os.MkdirTemp(tmp, "rootfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	rc := mutate.Extract(img)
	defer rc.Close()
	if err := untar(ctx, readerCtx{ctx, rc}, dir); err != nil {
		return fmt.Errorf("flattening layers, %w", err)
	}
	// Without root, untar admits only root-owned entries and cannot chown them: say so to mkfs.erofs.
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

// untar writes a flattened image filesystem into dir. Paths are confined to dir (an image's symlink can never
// redirect a write outside it); owners, modes and times are kept. Device nodes are skipped: the agent mounts
// devtmpfs over /dev.
func untar(ctx context.Context, r io.Reader, dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	euid := os.Geteuid()
	type dirTime struct {
		name string
		h    *tar.Header
	}
	var dirs []dirTime
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading layer tar, %w", err)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "/"))
		if name == "." {
			continue
		}
		if name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("tar entry %q escapes the image root", h.Name)
		}
		if d := path.Dir(name); d != "." {
			if err := root.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("creating %s, %w", d, err)
			}
		}
		mode := os.FileMode(h.Mode).Perm() | modeBits(h.Mode)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("creating %s, %w", name, err)
			}
			dirs = append(dirs, dirTime{name, h})
		case tar.TypeReg:
			root.Remove(name) //nolint:errcheck // a later layer's file replaces an earlier one
			f, err := root.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("creating %s, %w", name, err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("writing %s, %w", name, err)
			}
		case tar.TypeSymlink:
			root.Remove(name) //nolint:errcheck
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("creating symlink %s, %w", name, err)
			}
		case tar.TypeLink:
			root.Remove(name) //nolint:errcheck
			target := path.Clean(strings.TrimPrefix(h.Linkname, "/"))
			if err := root.Link(target, name); err != nil {
				return fmt.Errorf("creating hard link %s, %w", name, err)
			}
			continue // the link shares the target's inode: owner, mode and times are the target's
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			continue
		default:
			continue
		}
		if err := setOwner(root, name, h, euid); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeSymlink {
			if err := root.Chmod(name, mode); err != nil {
				return fmt.Errorf("chmod %s, %w", name, err)
			}
			if h.Typeflag != tar.TypeDir {
				if err := root.Chtimes(name, h.ModTime, h.ModTime); err != nil {
					return fmt.Errorf("setting times of %s, %w", name, err)
				}
			}
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- { // after their contents, which change them
		root.Chtimes(dirs[i].name, dirs[i].h.ModTime, dirs[i].h.ModTime) //nolint:errcheck
	}
	return nil
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

func modeBits(m int64) os.FileMode {
	var out os.FileMode
	if m&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	return out
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
