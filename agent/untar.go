package agent

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"
)

// errRootfsTooLarge is why untar stopped at its bound on file contents.
var errRootfsTooLarge = errors.New("the root filesystem's files are larger than the limit")

// untar unpacks a container's flattened root filesystem (an uncompressed tar, see protocol.AddEphemeral) into dir,
// an empty directory, with the entries' owners, modes and times. Every path is resolved inside dir by os.Root: an
// entry named outside it ("../x") fails the whole, and so does one whose path goes through a symbolic link that
// leads out of dir (an absolute link, or one with too many ".."), so that no link the tar made can redirect a later
// entry; a link's own target is not checked, for it is resolved in the container's root when the container uses
// it. A flattened filesystem has no whiteouts, so an entry named like one fails it, as do device nodes and the
// types a root filesystem does not need (fifos, sockets). More than max bytes of file contents fail it too; the
// caller bounds the stream itself.
func untar(r io.Reader, dir string, max int64) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	left := max
	type dirTime struct {
		name string
		t    time.Time
	}
	var dirs []dirTime
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the tar, %w", err)
		}
		name := path.Clean(strings.TrimLeft(h.Name, "/"))
		if name == "." {
			continue
		}
		if name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("tar entry %q leaves the root", h.Name)
		}
		if strings.HasPrefix(path.Base(name), ".wh.") {
			return fmt.Errorf("tar entry %q is a whiteout: the filesystem was not flattened", h.Name)
		}
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("tar entry %q, %w", h.Name, err)
			}
		}
		if fi, err := root.Lstat(name); err == nil && !(fi.IsDir() && h.Typeflag == tar.TypeDir) {
			if err := root.RemoveAll(name); err != nil { // a later entry replaces an earlier one
				return fmt.Errorf("replacing %s, %w", name, err)
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("creating %s, %w", name, err)
			}
			dirs = append(dirs, dirTime{name, h.ModTime})
		case tar.TypeReg:
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return fmt.Errorf("creating %s, %w", name, err)
			}
			n, err := io.Copy(f, io.LimitReader(tr, left+1))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("writing %s, %w", name, err)
			}
			if left -= n; left < 0 {
				return fmt.Errorf("%w of %d bytes", errRootfsTooLarge, max)
			}
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("creating symlink %s, %w", name, err)
			}
		case tar.TypeLink:
			target := path.Clean(strings.TrimLeft(h.Linkname, "/"))
			if target == ".." || strings.HasPrefix(target, "../") {
				return fmt.Errorf("hard link %s to %q leaves the root", name, h.Linkname)
			}
			if err := root.Link(target, name); err != nil {
				return fmt.Errorf("creating hard link %s, %w", name, err)
			}
			continue // the target's inode: its owner, mode and times
		default:
			return fmt.Errorf("tar entry %q has type %q, which a container's root filesystem does not take", h.Name, h.Typeflag)
		}
		if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
			return fmt.Errorf("chown %s, %w", name, err)
		}
		if h.Typeflag == tar.TypeSymlink {
			continue
		}
		if err := root.Chmod(name, h.FileInfo().Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			return fmt.Errorf("chmod %s, %w", name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if err := root.Chtimes(name, h.ModTime, h.ModTime); err != nil {
				return fmt.Errorf("setting times of %s, %w", name, err)
			}
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- { // after their contents, which change them
		root.Chtimes(dirs[i].name, dirs[i].t, dirs[i].t) //nolint:errcheck // best effort, as a runtime unpacks
	}
	return nil
}
