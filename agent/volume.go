package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
)

// VolumesDir holds the pod's volumes, one directory per volume name.
const VolumesDir = "/run/i2kit/volumes"

// imageVolumesDir is where Init mounted the image's image volumes (boot.ImageVolumesDir); tests point it elsewhere.
var imageVolumesDir = boot.ImageVolumesDir

// The reserved names of a files volume's directory (see writeFiles). Every name starting with ".." is reserved.
const (
	dataLinkName    = "..data"
	dataTmpLinkName = "..data_tmp"
)

// Limits on a file's path in a files volume, as a kubelet's.
const (
	maxFilePathLength = 4096
	maxFileNameLength = 255
)

var (
	// errUnknownVolume: the pod has no volume of that name.
	errUnknownVolume = errors.New("no such volume")
	// errNotFiles: the volume is an emptyDir, whose content is the containers', not the node's, or an image
	// volume, whose content is its image's.
	errNotFiles = errors.New("not a files volume")
	// errBadPath: a file's path is not a clean relative path, or is reserved.
	errBadPath = errors.New("bad file path")
)

// podVolume is one volume made in the VM.
type podVolume struct {
	dir      string
	emptyDir bool
	image    bool       // an image volume: the read-only filesystem of an image's disk
	mu       sync.Mutex // serialises writes of a files volume and the subPath resolutions that read it
}

// validateVolumes checks the pod's volumes and mounts before anything is made: volume names are unique path
// elements, a volume is an emptyDir, a files volume or an image volume, and every mount names a volume and a path.
func validateVolumes(cfg protocol.PodConfig) error {
	names := map[string]bool{}
	for _, v := range cfg.Volumes {
		if v.Name == "" || v.Name == "." || v.Name == ".." || strings.ContainsAny(v.Name, "/\x00") {
			return fmt.Errorf("volume name %q is not a valid directory name", v.Name)
		}
		if names[v.Name] {
			return fmt.Errorf("volume %s is listed twice", v.Name)
		}
		names[v.Name] = true
		if v.EmptyDir != nil && len(v.Files) > 0 {
			return fmt.Errorf("volume %s is both an emptyDir and a files volume", v.Name)
		}
		if v.Image && (v.EmptyDir != nil || len(v.Files) > 0) {
			return fmt.Errorf("volume %s is an image volume and an emptyDir or files volume", v.Name)
		}
		if v.EmptyDir == nil {
			if err := validateFiles(v.Files); err != nil {
				return fmt.Errorf("volume %s, %w", v.Name, err)
			}
		}
	}
	for _, cc := range cfg.Containers {
		for _, m := range cc.Mounts {
			if !names[m.Volume] {
				return fmt.Errorf("container %s mounts %w %q", cc.Name, errUnknownVolume, m.Volume)
			}
			if m.Path == "" {
				return fmt.Errorf("container %s mounts volume %s at no path", cc.Name, m.Volume)
			}
		}
	}
	return nil
}

// makeVolumes makes each of the pod's volumes under VolumesDir and records them. An image volume is not made: it
// is the filesystem Init mounted from the image's disk of that name, which the image must hold.
func (r *runtime) makeVolumes(vols []protocol.Volume) error {
	mem := int64(statsReadKV("/proc/meminfo")["MemTotal"])
	for _, v := range vols {
		if v.Image {
			if !slices.ContainsFunc(r.image.Volumes, func(iv boot.Volume) bool { return iv.Name == v.Name }) {
				return fmt.Errorf("making volume %s, the pod's VM image holds no image volume of that name", v.Name)
			}
			r.mu.Lock()
			r.volumes[v.Name] = &podVolume{dir: filepath.Join(imageVolumesDir, v.Name), image: true}
			r.mu.Unlock()
			continue
		}
		dir := filepath.Join(VolumesDir, v.Name)
		if err := makeVolume(dir, v, mem, r.fsGroup()); err != nil {
			return fmt.Errorf("making volume %s, %w", v.Name, err)
		}
		r.mu.Lock()
		r.volumes[v.Name] = &podVolume{dir: dir, emptyDir: v.EmptyDir != nil}
		r.mu.Unlock()
	}
	return nil
}

// updateVolume replaces the content of the files volume name atomically (see writeFiles). Its errors wrap
// errUnknownVolume when the pod has no such volume, errNotFiles for an emptyDir and errBadPath for a bad path.
func (r *runtime) updateVolume(name string, files []protocol.File) error {
	r.mu.Lock()
	v := r.volumes[name]
	r.mu.Unlock()
	if v == nil {
		return fmt.Errorf("volume %s, %w", name, errUnknownVolume)
	}
	if v.emptyDir || v.image {
		return fmt.Errorf("volume %s is an emptyDir or an image volume, %w", name, errNotFiles)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := writeFiles(v.dir, files, r.fsGroup()); err != nil {
		return fmt.Errorf("writing volume %s, %w", name, err)
	}
	return nil
}

// bindMounts resolves c's mounts, in order, to what its supervisor binds. A files volume is always bound
// read-only, as a kubelet mounts configMap, secret, downwardAPI and projected volumes, and so is an image volume, as
// a container runtime mounts one (its erofs filesystem is read-only too). A subPath is resolved here
// once (so that a bad one fails before the container is created, and an emptyDir's missing directories are made),
// and again by the supervisor, which binds it by descriptor.
func (r *runtime) bindMounts(c *container) ([]bindMount, error) {
	var out []bindMount
	for _, m := range c.rc.Mounts {
		r.mu.Lock()
		v := r.volumes[m.Volume]
		r.mu.Unlock()
		if v == nil {
			return nil, fmt.Errorf("mount at %s, volume %s, %w", m.Path, m.Volume, errUnknownVolume)
		}
		v.mu.Lock()
		f, err := volumeSource(v.dir, m.SubPath, v.emptyDir)
		v.mu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("mount of volume %s at %s, %w", m.Volume, m.Path, err)
		}
		if f != nil {
			f.Close()
		}
		out = append(out, bindMount{Source: v.dir, Target: m.Path, ReadOnly: m.ReadOnly || !v.emptyDir, SubPath: m.SubPath, Create: v.emptyDir})
	}
	return out, nil
}

// makeVolume makes volume v at dir. An emptyDir is a tmpfs of mode 0777 (1777 for the Memory medium, as a
// kubelet's tmpfs mount is), sized at its SizeLimit capped at
// memBytes (the VM's memory; 0: no cap), or the tmpfs default of half the memory without a SizeLimit, as a
// kubelet sizes a memory-backed emptyDir. A files volume is written by writeFiles.
func makeVolume(dir string, v protocol.Volume, memBytes int64, fsGroup int) error {
	if v.EmptyDir == nil {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		return writeFiles(dir, v.Files, fsGroup)
	}
	if len(v.Files) > 0 {
		return errors.New("an emptyDir volume has no files")
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	mode := fs.FileMode(0o777)
	opts := "mode=0777"
	if v.EmptyDir.Memory {
		mode, opts = 0o777|fs.ModeSticky, "mode=1777"
	}
	if size := v.EmptyDir.SizeLimit; size > 0 {
		if memBytes > 0 {
			size = min(size, memBytes)
		}
		opts += ",size=" + strconv.FormatInt(size, 10)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NODEV, opts); err != nil { // see systemMounts
		return fmt.Errorf("mounting a tmpfs on %s, %w", dir, err)
	}
	if fsGroup >= 0 {
		// As a kubelet's SetVolumeOwnership: the pod's group owns the directory, and what is made in it (setgid).
		if err := os.Chown(dir, -1, fsGroup); err != nil {
			return err
		}
		return os.Chmod(dir, mode|fs.ModeSetgid)
	}
	return nil
}

// validateFiles checks a files volume's paths: each relative, clean, no element "." or "..", not starting with
// ".." (the writer's reserved names), within a kubelet's length limits, listed once, and none both a file and
// another's directory. The error names the first bad path and wraps errBadPath.
func validateFiles(files []protocol.File) error {
	seen := make(map[string]bool, len(files))
	for _, f := range files {
		p := f.Path
		why := ""
		switch {
		case p == "":
			why = "is empty"
		case len(p) > maxFilePathLength:
			why = fmt.Sprintf("is longer than %d bytes", maxFilePathLength)
		case filepath.IsAbs(p):
			why = "is absolute"
		case filepath.Clean(p) != p:
			why = "is not clean"
		case strings.HasPrefix(p, ".."):
			why = `starts with ".."`
		case strings.IndexByte(p, 0) >= 0:
			why = "holds a NUL byte"
		}
		for _, e := range strings.Split(p, "/") {
			if why != "" {
				break
			}
			switch {
			case e == "." || e == "..":
				why = fmt.Sprintf("has a %q element", e)
			case len(e) > maxFileNameLength:
				why = fmt.Sprintf("has an element longer than %d bytes", maxFileNameLength)
			}
		}
		if why == "" && seen[p] {
			why = "is listed twice"
		}
		if why != "" {
			return fmt.Errorf("%w %q: it %s", errBadPath, p, why)
		}
		seen[p] = true
	}
	for p := range seen {
		for i := strings.IndexByte(p, '/'); i >= 0; i = nextSlash(p, i) {
			if seen[p[:i]] {
				return fmt.Errorf("%w %q: %q is a file, not a directory", errBadPath, p, p[:i])
			}
		}
	}
	return nil
}

// nextSlash is the index of the next '/' in p after index i, or -1.
func nextSlash(p string, i int) int {
	j := strings.IndexByte(p[i+1:], '/')
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

// withFSGroup gives files the mode a kubelet's SetVolumeOwnership gives a read-only volume's files under a pod's
// fsGroup (>= 0): readable by the group (mode | 0440). Without one, files are returned as they are.
func withFSGroup(files []protocol.File, fsGroup int) []protocol.File {
	if fsGroup < 0 {
		return files
	}
	out := make([]protocol.File, len(files))
	for i, f := range files {
		f.Mode = uint32(fileMode(f.Mode) | 0o440)
		out[i] = f
	}
	return out
}

// fileMode is a file's permission bits, 0644 when unset.
func fileMode(m uint32) fs.FileMode {
	if m == 0 {
		return 0o644
	}
	return fs.FileMode(m) & fs.ModePerm
}

// writeFiles makes files the whole content of the files volume at dir, as a kubelet's atomic writer does:
//
//  1. the files are written, with their modes and parent directories, into a new directory "..<timestamp>" in
//     dir;
//  2. a "..data_tmp" symlink to it is renamed over "..data", which swaps every file at once;
//  3. each top-level name of the files is made a symlink "<name>" -> "..data/<name>" unless it exists;
//  4. the top-level symlinks of names no longer present are removed, then the previous timestamped directory.
//
// A reader of dir/<name> thus sees either the old content or the new, never a mix. When the content already
// matches (paths, data and modes), steps 1 and 2 are skipped. A bad path fails with an error that wraps errBadPath
// before anything is written. Callers serialise writes to one dir.
func writeFiles(dir string, files []protocol.File, fsGroup int) error {
	if err := validateFiles(files); err != nil {
		return err
	}
	files = withFSGroup(files, fsGroup)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if fsGroup >= 0 {
		if err := os.Chown(dir, -1, fsGroup); err != nil {
			return err
		}
	}
	dataLink := filepath.Join(dir, dataLinkName)
	old, err := os.Readlink(dataLink)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if old == "" || !sameFiles(filepath.Join(dir, old), files) {
		ts, err := writeTimestampDir(dir, files, fsGroup)
		if err != nil {
			return err
		}
		tmp := filepath.Join(dir, dataTmpLinkName)
		if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			os.RemoveAll(filepath.Join(dir, ts)) //nolint:errcheck
			return err
		}
		if err := os.Symlink(ts, tmp); err != nil {
			os.RemoveAll(filepath.Join(dir, ts)) //nolint:errcheck
			return err
		}
		if err := os.Rename(tmp, dataLink); err != nil {
			os.Remove(tmp)                       //nolint:errcheck
			os.RemoveAll(filepath.Join(dir, ts)) //nolint:errcheck
			return fmt.Errorf("swapping %s, %w", dataLinkName, err)
		}
		old = ts
	}
	top := map[string]bool{}
	for _, f := range files {
		name, _, _ := strings.Cut(f.Path, "/")
		top[name] = true
	}
	for name := range top {
		link := filepath.Join(dir, name)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join(dataLinkName, name), link); err != nil {
			return err
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, ".."):
			// A timestamped directory other than the current one: the previous, or one an interrupted write left.
			if name != dataLinkName && name != dataTmpLinkName && name != old && e.IsDir() {
				if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
					return err
				}
			}
		case !top[name] && e.Type()&fs.ModeSymlink != 0:
			if t, err := os.Readlink(filepath.Join(dir, name)); err == nil && strings.HasPrefix(t, dataLinkName+"/") {
				if err := os.Remove(filepath.Join(dir, name)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// writeTimestampDir writes files into a new directory "..<UTC time to the nanosecond>" in dir and returns its
// name; with fsGroup (>= 0) the group owns its files and directories, the directories setgid. On error it
// removes what it wrote.
func writeTimestampDir(dir string, files []protocol.File, fsGroup int) (string, error) {
	var ts string
	for {
		ts = ".." + time.Now().UTC().Format("2006_01_02_15_04_05.000000000")
		err := os.Mkdir(filepath.Join(dir, ts), 0o755)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
	}
	tsDir := filepath.Join(dir, ts)
	err := os.Chmod(tsDir, 0o755)
	for _, f := range files {
		if err != nil {
			break
		}
		p := filepath.Join(tsDir, f.Path)
		if err = os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			break
		}
		mode := fileMode(f.Mode)
		if err = os.WriteFile(p, f.Data, mode); err != nil {
			break
		}
		if err = os.Chmod(p, mode); err != nil { // whatever the umask
			break
		}
		if fsGroup >= 0 {
			err = os.Chown(p, -1, fsGroup)
		}
	}
	if err == nil && fsGroup >= 0 {
		err = filepath.WalkDir(tsDir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return err
			}
			if err := os.Chown(p, -1, fsGroup); err != nil {
				return err
			}
			return os.Chmod(p, 0o755|fs.ModeSetgid)
		})
	}
	if err != nil {
		os.RemoveAll(tsDir) //nolint:errcheck
		return "", err
	}
	return ts, nil
}

// sameFiles reports whether the directory data holds exactly files: the same regular files with the same data
// and modes, and nothing else but their directories.
func sameFiles(data string, files []protocol.File) bool {
	n := 0
	err := filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
		case d.Type().IsRegular():
			n++
		default:
			return errors.New("not a regular file")
		}
		return nil
	})
	if err != nil || n != len(files) {
		return false
	}
	for _, f := range files {
		p := filepath.Join(data, f.Path)
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != fileMode(f.Mode) || fi.Size() != int64(len(f.Data)) {
			return false
		}
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(b, f.Data) {
			return false
		}
	}
	return true
}

// volumeSource opens what a mount of the volume at dir with subPath binds: nil for dir itself (the agent's own
// directory, which no container can change), or dir/subPath. A subPath is relative with no ".." element; it is resolved
// once, here, as a kubelet resolves a subPath at a container's start (a later update of a files volume does not
// reach a subPath mount), by the kernel with openat2(RESOLVE_BENEATH): its symlinks are followed only while they
// stay within dir (an absolute one is refused, as a link a container made names its own filesystem). The
// supervisor binds the returned descriptor, not a path, in its own mount namespace (see bindVolume): a container
// that shares the volume and swaps a directory of the subPath for a symlink after this resolution changes nothing.
// When create is set (an emptyDir, whose content is the containers'), the missing directories of a subPath are made with dir's mode
// (setgid and sticky bits included) and, in a setgid dir, its group, through descriptors too. The caller closes the file.
func volumeSource(dir, subPath string, create bool) (*os.File, error) {
	if subPath == "" {
		return nil, nil
	}
	if filepath.IsAbs(subPath) || slices.Contains(strings.Split(subPath, "/"), "..") {
		return nil, fmt.Errorf("subPath %q is not a relative path without ..", subPath)
	}
	root, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(root.Fd()), &st); err != nil {
		return nil, err
	}
	// The volume's mode with its setgid and sticky bits: in an fsGroup's volume (setgid, see makeVolume) a made
	// directory keeps the group for what is made in it, as a kubelet makes a subPath with its volume's mode.
	perm := uint32(st.Mode) & 0o7777
	sub := filepath.Clean(subPath)
	f, err := openBeneath(root, sub)
	if err == nil || !create || !errors.Is(err, fs.ErrNotExist) {
		if err != nil {
			return nil, fmt.Errorf("subPath %s, %w", subPath, err)
		}
		return f, nil
	}
	// Make the missing directories one at a time, each in its parent's descriptor.
	parent, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	elems := strings.Split(sub, "/")
	for i, e := range elems {
		next, err := openBeneath(root, filepath.Join(elems[:i+1]...))
		if errors.Is(err, fs.ErrNotExist) {
			next, err = mkdirBeneath(parent, e, perm)
		}
		parent.Close()
		if err != nil {
			return nil, fmt.Errorf("making subPath %s, %w", subPath, err)
		}
		parent = next
	}
	return parent, nil
}

// resolveBeneath confines a resolution to its starting directory: no "..", absolute symlink or magic link
// (/proc/self/fd/N) out of it, symlinks within it followed. The kernel checks this as it walks, so that no rename
// racing with the walk takes it out.
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openBeneath opens path within the directory root (see resolveBeneath) as an O_PATH descriptor: a file or a
// directory, never opened for reading or writing. The kernel answers EAGAIN when a rename raced with the walk;
// a few retries get past a container that renames in a loop, or fail.
func openBeneath(root *os.File, path string) (*os.File, error) {
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: resolveBeneath}
	fd, err := unix.Openat2(int(root.Fd()), path, how)
	for try := 0; errors.Is(err, unix.EAGAIN) && try < 8; try++ {
		fd, err = unix.Openat2(int(root.Fd()), path, how)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "openat2", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// mkdirBeneath makes the directory name in parent (a lost race with a container making it too is fine) and opens
// it, refusing a symlink put in its place, to set its mode through the descriptor: the mode is perm, whatever the
// umask.
func mkdirBeneath(parent *os.File, name string, perm uint32) (*os.File, error) {
	if err := unix.Mkdirat(int(parent.Fd()), name, perm); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, &fs.PathError{Op: "mkdirat", Path: name, Err: err}
	}
	fd, err := unix.Openat2(int(parent.Fd()), name, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: resolveBeneath | unix.RESOLVE_NO_SYMLINKS})
	if err != nil {
		return nil, &fs.PathError{Op: "openat2", Path: name, Err: err}
	}
	if err := unix.Fchmod(fd, perm); err != nil {
		unix.Close(fd)
		return nil, &fs.PathError{Op: "fchmod", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// within reports whether the clean path p is root or under it.
func within(root, p string) bool {
	return p == root || root == "/" || strings.HasPrefix(p, root+"/")
}

// bindVolumes binds each mount into the container's root in order, in the container's mount namespace: the
// target is resolved within root (its symlinks taken with root as "/", as a container runtime does), and made as a
// directory, or as an empty file when the source is a file. A read-only mount is remounted read-only. A target
// that would escape root, or is root itself, is refused.
func bindVolumes(root string, mounts []bindMount) error {
	for _, m := range mounts {
		if err := bindVolume(root, m); err != nil {
			return fmt.Errorf("mounting %s at %s, %w", m.Source, m.Target, err)
		}
	}
	return nil
}

func bindVolume(root string, m bindMount) error {
	root = filepath.Clean(root)
	if t := filepath.Join(root, m.Target); t == root || !within(root, t) {
		return errors.New("the target is outside the container's root, or is the root")
	}
	target, err := scopedJoin(root, m.Target)
	if err != nil {
		return err
	}
	if target == root {
		return errors.New("the target resolves to the container's root")
	}
	source := m.Source
	if m.SubPath != "" {
		f, err := volumeSource(m.Source, m.SubPath, m.Create)
		if err != nil {
			return err
		}
		defer f.Close()
		source = "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) // the descriptor's file itself, whatever its path now is
	}
	fi, err := os.Stat(source)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		err = os.MkdirAll(target, 0o755)
	} else if err = os.MkdirAll(filepath.Dir(target), 0o755); err == nil {
		var f *os.File
		if f, err = os.OpenFile(target, os.O_RDONLY|os.O_CREATE, 0o644); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("making the target, %w", err)
	}
	if err := syscall.Mount(source, target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
		return err
	}
	if m.ReadOnly {
		flags := uintptr(syscall.MS_BIND | syscall.MS_REMOUNT | syscall.MS_RDONLY | syscall.MS_REC)
		if err := syscall.Mount("", target, "", flags, ""); err != nil {
			return fmt.Errorf("remounting read-only, %w", err)
		}
	}
	return nil
}

// scopedJoin returns path inside root with the symlinks of its existing part resolved as if root were "/": an
// absolute link starts again from root, and ".." stops at root. The missing rest is joined as is.
func scopedJoin(root, path string) (string, error) {
	resolved := "/" // relative to root, clean, free of symlinks
	rest := strings.Split(path, "/")
	links := 0
	for len(rest) > 0 {
		e := rest[0]
		rest = rest[1:]
		if e == "" || e == "." || e == ".." {
			resolved = filepath.Join(resolved, e)
			continue
		}
		next := filepath.Join(resolved, e)
		fi, err := os.Lstat(filepath.Join(root, next))
		if errors.Is(err, fs.ErrNotExist) {
			resolved = filepath.Join(append([]string{next}, rest...)...)
			break
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > 255 {
			return "", fmt.Errorf("too many links resolving %s", path)
		}
		dest, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(dest) {
			resolved = "/"
		}
		rest = append(strings.Split(dest, "/"), rest...)
	}
	return filepath.Join(root, resolved), nil
}
