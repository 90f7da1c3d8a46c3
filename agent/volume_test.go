package agent

import (
	"bytes"
	"errors"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/i2kit/i2kit/agent/boot"

	"github.com/i2kit/i2kit/agent/protocol"
)

// tsDirs lists the timestamped directories in a files volume.
func tsDirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "..") && e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

func dataTarget(t *testing.T, dir string) string {
	t.Helper()
	ts, err := os.Readlink(filepath.Join(dir, "..data"))
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func readVolumeFile(t *testing.T, dir, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustNotExist(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: want it gone, Lstat says %v", p, err)
	}
}

func TestWriteFilesLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	err := writeFiles(dir, []protocol.File{
		{Path: "a", Data: []byte("one")},
		{Path: "d/b", Data: []byte("two"), Mode: 0o600},
		{Path: "d/e/c", Data: []byte("three"), Mode: 0o755},
	}, -1)
	if err != nil {
		t.Fatal(err)
	}
	ts := dataTarget(t, dir)
	if !strings.HasPrefix(ts, "..2") || strings.Contains(ts, "/") {
		t.Errorf("..data -> %q, want a ..<timestamp> directory of the volume", ts)
	}
	if got := tsDirs(t, dir); !slices.Equal(got, []string{ts}) {
		t.Errorf("timestamped directories %v, want [%s]", got, ts)
	}
	mustNotExist(t, filepath.Join(dir, "..data_tmp"))
	for name, want := range map[string]string{"a": "..data/a", "d": "..data/d"} {
		if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != want {
			t.Errorf("%s -> %q (%v), want %q", name, got, err, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 { // ..<ts>, ..data, a, d
		t.Errorf("the volume holds %d entries, want 4", len(entries))
	}
	for p, want := range map[string]string{"a": "one", "d/b": "two", "d/e/c": "three"} {
		if got := readVolumeFile(t, dir, p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	for p, want := range map[string]fs.FileMode{"a": 0o644, "d/b": 0o600, "d/e/c": 0o755} {
		fi, err := os.Stat(filepath.Join(dir, p))
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", p, fi.Mode().Perm(), err, want)
		}
	}
}

func TestWriteFilesUpdate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	v1 := []protocol.File{
		{Path: "a", Data: []byte("a1")},
		{Path: "b", Data: []byte("b1")},
		{Path: "d/x", Data: []byte("x1")},
	}
	if err := writeFiles(dir, v1, -1); err != nil {
		t.Fatal(err)
	}
	ts1 := dataTarget(t, dir)

	// The same content again: nothing is rewritten.
	if err := writeFiles(dir, v1, -1); err != nil {
		t.Fatal(err)
	}
	if ts := dataTarget(t, dir); ts != ts1 {
		t.Errorf("an identical write moved ..data from %s to %s", ts1, ts)
	}

	// a changes, b goes, c comes, d/x is replaced by d/y.
	v2 := []protocol.File{
		{Path: "a", Data: []byte("a2")},
		{Path: "c", Data: []byte("c2")},
		{Path: "d/y", Data: []byte("y2")},
	}
	if err := writeFiles(dir, v2, -1); err != nil {
		t.Fatal(err)
	}
	ts2 := dataTarget(t, dir)
	if ts2 == ts1 {
		t.Fatal("..data did not flip")
	}
	if got := tsDirs(t, dir); !slices.Equal(got, []string{ts2}) {
		t.Errorf("timestamped directories %v, want only %s", got, ts2)
	}
	mustNotExist(t, filepath.Join(dir, "b"))
	mustNotExist(t, filepath.Join(dir, "d", "x"))
	for p, want := range map[string]string{"a": "a2", "c": "c2", "d/y": "y2"} {
		if got := readVolumeFile(t, dir, p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}

	// Only a mode changes: that is an update too.
	v3 := slices.Clone(v2)
	v3[0].Mode = 0o400
	if err := writeFiles(dir, v3, -1); err != nil {
		t.Fatal(err)
	}
	if ts3 := dataTarget(t, dir); ts3 == ts2 {
		t.Error("a mode change did not flip ..data")
	}
	if fi, err := os.Stat(filepath.Join(dir, "a")); err != nil || fi.Mode().Perm() != 0o400 {
		t.Errorf("a: mode %v (%v), want 0400", fi.Mode().Perm(), err)
	}

	// Nothing left: every visible name goes, ..data stays, pointing at an empty directory.
	if err := writeFiles(dir, nil, -1); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 2 || !slices.Contains(names, "..data") {
		t.Errorf("an emptied volume holds %v, want ..data and its directory", names)
	}
}

func TestWriteFilesRepairsAndCleansUp(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	files := []protocol.File{{Path: "a", Data: []byte("1")}}
	if err := writeFiles(dir, files, -1); err != nil {
		t.Fatal(err)
	}
	ts := dataTarget(t, dir)
	// An interrupted write left a directory and a ..data_tmp; a visible link went missing.
	os.Mkdir(filepath.Join(dir, "..2000_01_01_00_00_00.000000000"), 0o755) //nolint:errcheck
	os.Symlink("..nowhere", filepath.Join(dir, "..data_tmp"))              //nolint:errcheck
	os.Remove(filepath.Join(dir, "a"))                                     //nolint:errcheck
	if err := writeFiles(dir, files, -1); err != nil {
		t.Fatal(err)
	}
	if got := tsDirs(t, dir); !slices.Equal(got, []string{ts}) {
		t.Errorf("timestamped directories %v, want only %s", got, ts)
	}
	if got := readVolumeFile(t, dir, "a"); got != "1" {
		t.Errorf("a = %q after the repair", got)
	}
}

func TestWriteFilesBadPaths(t *testing.T) {
	for _, p := range []string{"", "/etc/passwd", "../x", "a/../b", "..data", "..x/y", "a/./b", "a/", "./a", ".",
		"a//b", "d/..", strings.Repeat("n", 256)} {
		dir := filepath.Join(t.TempDir(), "vol")
		err := writeFiles(dir, []protocol.File{{Path: "ok", Data: []byte("x")}, {Path: p, Data: []byte("x")}}, -1)
		if !errors.Is(err, errBadPath) || !strings.Contains(err.Error(), "\""+p+"\"") {
			t.Errorf("path %q: error %v, want errBadPath naming it", p, err)
		}
		mustNotExist(t, dir)
	}
	for _, files := range [][]string{{"a", "a"}, {"a", "a/b"}, {"x/a/b", "x/a"}} {
		var list []protocol.File
		for _, p := range files {
			list = append(list, protocol.File{Path: p})
		}
		if err := validateFiles(list); !errors.Is(err, errBadPath) {
			t.Errorf("%v: error %v, want errBadPath", files, err)
		}
	}

	// A bad update leaves the volume as it was.
	dir := filepath.Join(t.TempDir(), "vol")
	if err := writeFiles(dir, []protocol.File{{Path: "a", Data: []byte("1")}}, -1); err != nil {
		t.Fatal(err)
	}
	ts := dataTarget(t, dir)
	if err := writeFiles(dir, []protocol.File{{Path: "a", Data: []byte("2")}, {Path: "../b"}}, -1); err == nil {
		t.Fatal("a bad path was written")
	}
	if dataTarget(t, dir) != ts || readVolumeFile(t, dir, "a") != "1" || len(tsDirs(t, dir)) != 1 {
		t.Error("a refused update changed the volume")
	}
}

func TestMakeVolumeFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cm")
	if err := makeVolume(dir, protocol.Volume{Name: "cm", Files: []protocol.File{{Path: "k", Data: []byte("v")}}}, 0, -1); err != nil {
		t.Fatal(err)
	}
	if got := readVolumeFile(t, dir, "k"); got != "v" {
		t.Errorf("k = %q", got)
	}
	// A files volume with no files (an empty configMap) is an empty directory with its ..data.
	empty := filepath.Join(t.TempDir(), "empty")
	if err := makeVolume(empty, protocol.Volume{Name: "empty"}, 0, -1); err != nil {
		t.Fatal(err)
	}
	dataTarget(t, empty)
	if err := makeVolume(filepath.Join(t.TempDir(), "x"), protocol.Volume{Name: "x", EmptyDir: &protocol.EmptyDir{},
		Files: []protocol.File{{Path: "k"}}}, 0, -1); err == nil {
		t.Error("a volume both emptyDir and files was made")
	}
}

// resolved returns what volumeSource opened, as a path ("" for nil), and closes it.
func resolved(t *testing.T, f *os.File, err error) (string, error) {
	t.Helper()
	if err != nil || f == nil {
		return "", err
	}
	defer f.Close()
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	return p, nil
}

func TestVolumeSource(t *testing.T) {
	files := filepath.Join(t.TempDir(), "files")
	if err := writeFiles(files, []protocol.File{{Path: "conf/app.yaml", Data: []byte("x")}, {Path: "key", Data: []byte("k")}}, -1); err != nil {
		t.Fatal(err)
	}
	rfiles, _ := filepath.EvalSymlinks(files)
	ts := dataTarget(t, files)
	source := func(dir string, m protocol.Mount, create bool) (string, error) {
		f, err := volumeSource(dir, m.SubPath, create)
		return resolved(t, f, err)
	}

	if got, err := source(files, protocol.Mount{Volume: "v", Path: "/etc/app"}, false); err != nil || got != "" {
		t.Errorf("no subPath: %q, %v; want the volume's directory", got, err)
	}
	// A subPath through the atomic writer's links resolves to the current timestamped file, once.
	got, err := source(files, protocol.Mount{Volume: "v", Path: "/etc/key", SubPath: "key"}, false)
	if want := filepath.Join(rfiles, ts, "key"); err != nil || got != want {
		t.Errorf("subPath key: %q, %v; want %q", got, err, want)
	}
	got, err = source(files, protocol.Mount{Volume: "v", Path: "/etc/app", SubPath: "conf"}, false)
	if want := filepath.Join(rfiles, ts, "conf"); err != nil || got != want {
		t.Errorf("subPath conf: %q, %v; want %q", got, err, want)
	}
	if _, err := source(files, protocol.Mount{Volume: "v", Path: "/x", SubPath: "missing"}, false); err == nil {
		t.Error("a missing subPath of a files volume resolved")
	}

	empty := filepath.Join(t.TempDir(), "empty")
	os.Mkdir(empty, 0o777) //nolint:errcheck
	os.Chmod(empty, 0o777) //nolint:errcheck
	rempty, _ := filepath.EvalSymlinks(empty)
	got, err = source(empty, protocol.Mount{Volume: "e", Path: "/data", SubPath: "a/b"}, true)
	if want := filepath.Join(rempty, "a", "b"); err != nil || got != want {
		t.Fatalf("emptyDir subPath a/b: %q, %v; want %q", got, err, want)
	}
	for _, d := range []string{"a", "a/b"} {
		if fi, err := os.Stat(filepath.Join(empty, d)); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o777 {
			t.Errorf("the made subPath directory %s: %v, %v; want a directory of mode 0777", d, fi, err)
		}
	}
	// A link within the volume is followed; one out of it, relative or absolute, is refused, and so is an
	// absolute one into it (a container's link names its own filesystem, not the agent's).
	os.Symlink("a", filepath.Join(empty, "in"))                          //nolint:errcheck
	os.Symlink("../..", filepath.Join(empty, "up"))                      //nolint:errcheck
	os.Symlink("/etc", filepath.Join(empty, "abs"))                      //nolint:errcheck
	os.Symlink(filepath.Join(empty, "a"), filepath.Join(empty, "absin")) //nolint:errcheck
	os.Symlink("/proc/self/root", filepath.Join(empty, "magic"))         //nolint:errcheck
	got, err = source(empty, protocol.Mount{Volume: "e", Path: "/data", SubPath: "in/b"}, true)
	if want := filepath.Join(rempty, "a", "b"); err != nil || got != want {
		t.Errorf("subPath in/b: %q, %v; want %q", got, err, want)
	}
	for _, sub := range []string{"up", "up/x", "abs", "abs/new", "absin", "absin/new", "magic", "magic/x", "../x", "/etc", "a/../../x"} {
		if got, err := source(empty, protocol.Mount{Volume: "e", Path: "/data", SubPath: sub}, true); err == nil {
			t.Errorf("subPath %s resolved to %s, out of the volume", sub, got)
		}
	}
	mustNotExist(t, filepath.Join(filepath.Dir(rempty), "..", "x"))
	mustNotExist(t, "/etc/new")
}

func TestScopedJoin(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "run"), 0o755)                 //nolint:errcheck
	os.MkdirAll(filepath.Join(root, "var"), 0o755)                 //nolint:errcheck
	os.Symlink("/run", filepath.Join(root, "var", "run"))          //nolint:errcheck
	os.Symlink("../run", filepath.Join(root, "var", "rel"))        //nolint:errcheck
	os.Symlink("../../../../..", filepath.Join(root, "var", "up")) //nolint:errcheck
	os.Symlink("loop2", filepath.Join(root, "loop1"))              //nolint:errcheck
	os.Symlink("loop1", filepath.Join(root, "loop2"))              //nolint:errcheck
	for path, want := range map[string]string{
		"/var/run/secrets/token": "run/secrets/token",
		"/var/rel/x":             "run/x",
		"/var/up/etc":            "etc",
		"/../../etc":             "etc",
		"/var/missing/../x":      "var/x",
		"data":                   "data",
		"/var/run":               "run",
	} {
		got, err := scopedJoin(root, path)
		if err != nil || got != filepath.Join(root, want) {
			t.Errorf("%s: %q, %v; want %q", path, got, err, filepath.Join(root, want))
		}
	}
	if _, err := scopedJoin(root, "/loop1/x"); err == nil {
		t.Error("a link loop resolved")
	}
}

func TestBindVolumeRefusesEscapes(t *testing.T) {
	root := t.TempDir()
	src := t.TempDir()
	os.Symlink("/", filepath.Join(root, "slash")) //nolint:errcheck
	for _, target := range []string{"/", "/../..", "../../etc", "/slash"} {
		if err := bindVolume(root, bindMount{Source: src, Target: target}); err == nil {
			t.Errorf("target %s was bound", target)
		}
	}
	mustNotExist(t, filepath.Join(filepath.Dir(root), "etc"))
}

func TestValidateVolumes(t *testing.T) {
	ok := protocol.PodConfig{
		Volumes: []protocol.Volume{{Name: "data", EmptyDir: &protocol.EmptyDir{}}, {Name: "cm"}},
		Containers: []protocol.ContainerConfig{{Name: "c", Mounts: []protocol.Mount{
			{Volume: "data", Path: "/data"}, {Volume: "cm", Path: "/etc/cm"}}}},
	}
	if err := validateVolumes(ok); err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]protocol.PodConfig{
		"unknown volume": {Containers: []protocol.ContainerConfig{{Name: "c", Mounts: []protocol.Mount{{Volume: "x", Path: "/x"}}}}},
		"twice":          {Volumes: []protocol.Volume{{Name: "a"}, {Name: "a"}}},
		"slash":          {Volumes: []protocol.Volume{{Name: "a/b"}}},
		"dotdot":         {Volumes: []protocol.Volume{{Name: ".."}}},
		"both":           {Volumes: []protocol.Volume{{Name: "a", EmptyDir: &protocol.EmptyDir{}, Files: []protocol.File{{Path: "k"}}}}},
		"bad file":       {Volumes: []protocol.Volume{{Name: "a", Files: []protocol.File{{Path: "../k"}}}}},
		"no path": {Volumes: []protocol.Volume{{Name: "a"}},
			Containers: []protocol.ContainerConfig{{Name: "c", Mounts: []protocol.Mount{{Volume: "a"}}}}},
	} {
		if err := validateVolumes(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestUpdateVolumeRoute(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cm")
	if err := writeFiles(dir, []protocol.File{{Path: "k", Data: []byte("1")}}, -1); err != nil {
		t.Fatal(err)
	}
	rt := newRuntime(&bytes.Buffer{}, boot.ImageConfig{}, "pod")
	rt.volumes["cm"] = &podVolume{dir: dir}
	rt.volumes["data"] = &podVolume{dir: t.TempDir(), emptyDir: true}
	h := (&server{rt: rt}).handler()
	for _, tc := range []struct {
		name, body string
		want       int
	}{
		{"cm", `[{"path":"k","data":"Mg==","mode":420}]`, http.StatusNoContent},
		{"nope", `[]`, http.StatusNotFound},
		{"data", `[]`, http.StatusBadRequest},
		{"cm", `[{"path":"../k","data":""}]`, http.StatusBadRequest},
		{"cm", `{`, http.StatusBadRequest},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPut, "/v1/volumes/"+tc.name, strings.NewReader(tc.body)))
		if rec.Code != tc.want {
			t.Errorf("PUT %s %s: %d %s, want %d", tc.name, tc.body, rec.Code, rec.Body, tc.want)
		}
	}
	if got := readVolumeFile(t, dir, "k"); got != "2" {
		t.Errorf("k = %q after the update, want 2", got)
	}
}

func TestWriteFilesFSGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing a file's group to any group needs root")
	}
	dir := t.TempDir()
	if err := writeFiles(dir, []protocol.File{{Path: "key", Data: []byte("k"), Mode: 0o400}, {Path: "sub/conf", Data: []byte("c")}}, 2000); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		mode fs.FileMode
	}{{"key", 0o440}, {"sub/conf", 0o644}, {"sub", 0o755 | fs.ModeSetgid | fs.ModeDir}, {".", 0o755 | fs.ModeDir}} {
		fi, err := os.Stat(filepath.Join(dir, tc.path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != tc.mode || fi.Sys().(*syscall.Stat_t).Gid != 2000 {
			t.Errorf("%s: mode %v gid %d, want %v gid 2000", tc.path, fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid, tc.mode)
		}
	}
	empty := filepath.Join(t.TempDir(), "empty")
	if err := makeVolume(empty, protocol.Volume{Name: "empty", EmptyDir: &protocol.EmptyDir{}}, 0, 2000); err != nil {
		t.Fatal(err)
	}
	defer syscall.Unmount(empty, 0) //nolint:errcheck
	if fi, err := os.Stat(empty); err != nil || fi.Mode() != 0o777|fs.ModeSetgid|fs.ModeDir || fi.Sys().(*syscall.Stat_t).Gid != 2000 {
		t.Errorf("emptyDir: %v, %v; want drwxrwsrwx of group 2000", fi.Mode(), err)
	}
}

// TestEmptyDirSubPathFSGroup makes an fsGroup's emptyDir volumes and a subPath in each that does not exist yet, as
// the node conformance spec "nonexistent volume subPath should have the correct mode and owner using FSGroup"
// does: the subPath's directories have the volume's mode, setgid (and sticky for the Memory medium) included, and
// its group, as a kubelet's SafeMakeDir makes them.
func TestEmptyDirSubPathFSGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs and owning it by a group needs root")
	}
	for _, tc := range []struct {
		name   string
		memory bool
		want   fs.FileMode
	}{
		{"default medium", false, fs.ModeDir | fs.ModeSetgid | 0o777},
		{"memory medium", true, fs.ModeDir | fs.ModeSetgid | fs.ModeSticky | 0o777}, // the spec's "dgtrwxrwxrwx"
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "v")
			if err := makeVolume(dir, protocol.Volume{Name: "v", EmptyDir: &protocol.EmptyDir{Memory: tc.memory}}, 0, 123); err != nil {
				t.Fatal(err)
			}
			defer syscall.Unmount(dir, 0) //nolint:errcheck
			f, err := volumeSource(dir, "test-sub/deeper", true)
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
			for _, p := range []string{".", "test-sub", "test-sub/deeper"} {
				fi, err := os.Stat(filepath.Join(dir, p))
				if err != nil {
					t.Fatal(err)
				}
				if gid := fi.Sys().(*syscall.Stat_t).Gid; fi.Mode() != tc.want || gid != 123 {
					t.Errorf("%s: %v of group %d, want %v of group 123", p, fi.Mode(), gid, tc.want)
				}
			}
		})
	}
}
