package agent

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
)

// TestImageVolumeSource checks that an image volume is the filesystem Init mounted from the image, never made or
// written by the agent, and always bound read-only, its subPath resolved within it as for other volumes.
func TestImageVolumeSource(t *testing.T) {
	dir := t.TempDir()
	old := imageVolumesDir
	imageVolumesDir = dir
	t.Cleanup(func() { imageVolumesDir = old })
	vol := filepath.Join(dir, "vol")
	os.MkdirAll(filepath.Join(vol, "etc"), 0o755)                                  //nolint:errcheck
	os.WriteFile(filepath.Join(vol, "etc", "os-release"), []byte("Alpine"), 0o644) //nolint:errcheck
	os.Symlink("/etc", filepath.Join(vol, "abs"))                                  //nolint:errcheck
	os.Symlink("../..", filepath.Join(vol, "up"))                                  //nolint:errcheck

	rt := newRuntime(&bytes.Buffer{}, boot.ImageConfig{Volumes: []boot.Volume{{Name: "vol", Disk: 0}}}, "pod")
	if err := rt.makeVolumes([]protocol.Volume{{Name: "vol", Image: true}}); err != nil {
		t.Fatal(err)
	}
	if v := rt.volumes["vol"]; v == nil || v.dir != vol {
		t.Fatalf("volume vol = %+v, want the image volume at %s", v, vol)
	}
	if ents, _ := os.ReadDir(vol); len(ents) != 3 {
		t.Errorf("the agent wrote into the image volume: %v", ents)
	}
	c := &container{rc: protocol.ContainerConfig{Name: "c", Mounts: []protocol.Mount{
		{Volume: "vol", Path: "/vol"}, {Volume: "vol", Path: "/etc/os-release", SubPath: "etc/os-release"}}}}
	mounts, err := rt.bindMounts(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m.Source != vol || !m.ReadOnly || m.Create {
			t.Errorf("mount %+v: want %s read-only, nothing created", m, vol)
		}
	}
	for _, sub := range []string{"missing/x", "abs/passwd", "up/x"} {
		c.rc.Mounts = []protocol.Mount{{Volume: "vol", Path: "/x", SubPath: sub}}
		if _, err := rt.bindMounts(c); err == nil {
			t.Errorf("subPath %s of the image volume resolved", sub)
		}
	}
	mustNotExist(t, filepath.Join(vol, "missing"))
	if err := rt.updateVolume("vol", []protocol.File{{Path: "k", Data: []byte("v")}}); !errors.Is(err, errNotFiles) {
		t.Errorf("updating the image volume: %v, want errNotFiles", err)
	}

	// An image volume the VM image does not hold is refused.
	if err := rt.makeVolumes([]protocol.Volume{{Name: "other", Image: true}}); err == nil {
		t.Error("an image volume absent from the image was accepted")
	}
	if err := validateVolumes(protocol.PodConfig{Volumes: []protocol.Volume{{Name: "v", Image: true,
		Files: []protocol.File{{Path: "k"}}}}}); err == nil {
		t.Error("a volume both image and files was accepted")
	}
}
