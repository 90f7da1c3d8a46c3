package vmimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Rootfs is a container image's flattened root filesystem, for an ephemeral container (kubectl debug) that joins a
// pod VM already running: the VM's disks are fixed at boot, so the node streams the filesystem to its agent as a
// tar (WriteTar). Close removes it.
type Rootfs struct {
	// Ref is the reference as the pod names it, Digest the manifest digest it resolved to (a kubelet's imageID).
	Ref, Digest string
	// Config is the image's configuration: its entrypoint, cmd, env, working directory and user.
	Config v1.Config
	dir    string
}

// Rootfs resolves ref for a pod as EnsureWith resolves a pod's images (pull's credentials before the Source's, and
// its pull policy: an image the node holds is lent only as Pull says), takes its layers from the store's layer
// cache or fetches them into it (verified against their digests and diff_ids, see fetchLayers), and applies them,
// whiteouts and all, in a directory of the store's tmp, with at most maxBytes of file contents (an error beyond).
// It is the layers' one verified path: the filesystem is what a pod VM's image disk of ref would hold.
func (b *Builder) Rootfs(ctx context.Context, ref string, pull Pull, maxBytes int64) (*Rootfs, error) {
	r, err := b.resolveFor(ctx, ref, pull.policy(ref), pull.Keychains)
	if err != nil {
		return nil, err
	}
	layers, cf, release, err := b.rootfsLayers(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	defer release()
	dir, err := b.Store.tmpDir("rootfs-")
	if err != nil {
		return nil, err
	}
	if err := applyLayers(ctx, layers, dir, maxBytes); err != nil {
		os.RemoveAll(dir)
		if errors.Is(err, errImageTooLarge) {
			err = fmt.Errorf("its files are larger than the limit of %d bytes for an ephemeral container's image", maxBytes)
		}
		return nil, fmt.Errorf("image %s: applying its layers, %w", ref, err)
	}
	return &Rootfs{Ref: ref, Digest: r.Digest.String(), Config: cf.Config, dir: dir}, nil
}

// rootfsLayers returns the cached layers of r's image, bottom first, and its configuration, holding the layers
// until release. An image the store holds (r was found present, and the pod may use it) is read from the cache
// when every layer is there; otherwise the image is opened in its registry and its layers fetched (fetchLayers
// takes from the cache what the credentials may use).
func (b *Builder) rootfsLayers(ctx context.Context, r *Resolved) ([]string, *v1.ConfigFile, func(), error) {
	if r.From == "store" {
		if cf, err := b.imageConfig(ctx, r); err == nil {
			release := b.Store.holdBlobs(layerHolds(cf))
			paths, all := make([]string, len(cf.RootFS.DiffIDs)), true
			for i, d := range cf.RootFS.DiffIDs {
				paths[i], all = b.Store.layerPath(d.Hex), all && isSHA256(d) && b.Store.hasLayer(d.String())
			}
			if all {
				return paths, cf, release, nil
			}
			release()
		}
	}
	img, c, err := r.open(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	m, _, cf, err := inspect(img)
	if err != nil {
		return nil, nil, nil, err
	}
	if d, err := img.Digest(); err != nil || d != r.Digest {
		return nil, nil, nil, fmt.Errorf("the registry's manifest is %v, not %s", d, r.Digest)
	}
	release := b.Store.holdBlobs(layerHolds(cf))
	paths, err := b.fetchLayers(ctx, img, m, cf, c, b.progress())
	if err != nil {
		release()
		return nil, nil, nil, err
	}
	return paths, cf, release, nil
}

// WriteTar writes the filesystem to w as an uncompressed tar, parents before children: directories, regular
// files, symbolic links and hard links (files that share an inode), with their owners, modes and times. It has no
// whiteouts and no device nodes (the layers' are skipped when applied).
func (r *Rootfs) WriteTar(w io.Writer) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{} // the first name of each inode with more than one
	err := filepath.WalkDir(r.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == r.dir {
			return err
		}
		rel, err := filepath.Rel(r.dir, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return nil // a socket or another type a tar does not hold
		}
		h.Name, h.Uname, h.Gname = filepath.ToSlash(rel), "", ""
		if fi.IsDir() {
			h.Name += "/"
		}
		st, _ := fi.Sys().(*syscall.Stat_t)
		if st != nil && fi.Mode().IsRegular() && st.Nlink > 1 {
			id := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := links[id]; ok {
				h.Typeflag, h.Linkname, h.Size = tar.TypeLink, first, 0
			} else {
				links[id] = h.Name
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return fmt.Errorf("writing the root filesystem of %s, %w", r.Ref, err)
	}
	return tw.Close()
}

// Close removes the filesystem.
func (r *Rootfs) Close() error { return os.RemoveAll(r.dir) }
