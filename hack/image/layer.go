package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// entry is one file, directory or symbolic link of a layer, at an absolute path of the image's filesystem.
type entry struct {
	Path string
	Mode fs.FileMode // permission bits (and sticky); the type comes from the fields below
	Dir  bool
	Link string // a symbolic link's target when set
	Data []byte // a regular file's contents
	UID  int    // owner (and group); 0 is root
}

func file(p string, mode fs.FileMode, data []byte) entry {
	return entry{Path: p, Mode: mode, Data: data}
}
func dir(p string, mode fs.FileMode, uid int) entry {
	return entry{Path: p, Mode: mode, Dir: true, UID: uid}
}
func symlink(p, target string) entry { return entry{Path: p, Mode: 0o777, Link: target} }

// layerTar writes entries as a tar that is the same bytes for the same entries: sorted by path, parents before
// children, every directory on the way present (0755, root, unless an entry says otherwise), every time epoch, no
// user or group names, no host metadata. Two entries at one path are an error.
func layerTar(entries []entry, epoch time.Time) ([]byte, error) {
	byPath := map[string]entry{}
	for _, e := range entries {
		p := path.Clean("/" + e.Path)
		if p == "/" || p != e.Path {
			return nil, fmt.Errorf("entry %q: want a clean absolute path other than /", e.Path)
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("entry %q: twice in one layer", p)
		}
		byPath[p] = e
	}
	for p := range byPath {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if e, ok := byPath[d]; ok {
				if !e.Dir {
					return nil, fmt.Errorf("entry %q: its parent %q is not a directory", p, d)
				}
				continue
			}
			byPath[d] = dir(d, 0o755, 0)
		}
	}
	paths := make([]string, 0, len(byPath))
	for p := range byPath {
		paths = append(paths, p)
	}
	sort.Strings(paths) // "/a" < "/a/b": a parent sorts before its children
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range paths {
		e := byPath[p]
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), Mode: int64(e.Mode.Perm()), Uid: e.UID, Gid: e.UID,
			ModTime: epoch, Format: tar.FormatPAX}
		if e.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		switch {
		case e.Dir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case e.Link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.Link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("writing %s, %w", p, err)
		}
		if _, err := tw.Write(e.Data); err != nil {
			return nil, fmt.Errorf("writing %s, %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// newLayer is an OCI layer (gzip, which Go writes the same way for the same bytes) of entries.
func newLayer(entries []entry, epoch time.Time) (v1.Layer, error) {
	b, err := layerTar(entries, epoch)
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}
