package vmimage

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/agent/boot"
)

func TestFromPodImageVolumes(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "app", Image: "registry.local/app:1"}},
		Volumes: []corev1.Volume{
			{Name: "cfg", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "models", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: "registry.local/models:2", PullPolicy: corev1.PullAlways}}},
		},
	}}
	s := FromPod(pod)
	if want := []Volume{{Name: "models", Image: "registry.local/models:2"}}; !reflect.DeepEqual(s.Volumes, want) {
		t.Errorf("Volumes = %+v, want %+v", s.Volumes, want)
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, vols := range map[string][]Volume{
		"bad name": {{Name: "Models", Image: "x"}},
		"twice":    {{Name: "m", Image: "x"}, {Name: "m", Image: "y"}},
		"no image": {{Name: "m"}},
	} {
		bad := *s
		bad.Volumes = vols
		if err := bad.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// imageConfig reads the agent's configuration out of an image's initramfs.
func imageConfig(t *testing.T, img *Image) boot.ImageConfig {
	t.Helper()
	b, err := os.ReadFile(img.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	_, _, data := readNewc(t, b)
	var cfg boot.ImageConfig
	if err := json.Unmarshal([]byte(data["etc/i2kit/image.json"]), &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestImageVolumeIsADisk checks that an image volume's image becomes one more read-only disk of the VM image, made
// like a container image's, named in the agent's configuration, and part of the image's identity.
func TestImageVolumeIsADisk(t *testing.T) {
	reg := newRegistry(t, "", "")
	reg.push(t, "app:1", layer(t, file{"app", "bin"}))
	reg.push(t, "data:1", layer(t, file{"data.json", `{"kitten.jpg":1}`}, file{"etc/", ""}, file{"etc/os-release", "Alpine Linux"}))
	reg.push(t, "data:2", layer(t, file{"data.json", "two"}))
	app, data1, data2 := reg.host()+"/app:1", reg.host()+"/data:1", reg.host()+"/data:2"
	b := newBuilder(t, &Source{Insecure: []string{reg.host()}}, 10, 1<<30)
	ctx := context.Background()
	withVolume := func(image string) *Spec {
		s := spec(app)
		s.Volumes = []Volume{{Name: "vol", Image: image}}
		return s
	}

	plain, err := b.Ensure(ctx, spec(app), "direct")
	if err != nil {
		t.Fatal(err)
	}
	img, err := b.Ensure(ctx, withVolume(data1), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Disks) != 2 {
		t.Fatalf("%d disks, want the container's and the volume's", len(img.Disks))
	}
	if got := listDisk(t, img.Disks[1].Path); got["data.json"] != `{"kitten.jpg":1}` || got["etc/os-release"] != "Alpine Linux" {
		t.Errorf("the volume's disk holds %v", got)
	}
	cfg := imageConfig(t, img)
	if want := []boot.Volume{{Name: "vol", Disk: 1}}; !reflect.DeepEqual(cfg.Volumes, want) || len(cfg.Disks) != 2 {
		t.Errorf("agent configuration: volumes %+v, %d disks; want %+v and 2 disks", cfg.Volumes, len(cfg.Disks), want)
	}

	// Two pods that differ only in their image volumes have two VM images.
	other, err := b.Ensure(ctx, withVolume(data2), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if keys := map[string]bool{plain.Key: true, img.Key: true, other.Key: true}; len(keys) != 3 {
		t.Errorf("keys %s, %s, %s: want three images", plain.Key, img.Key, other.Key)
	}

	// A volume of a container's image shares its disk.
	same, err := b.Ensure(ctx, withVolume(app), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if cfg := imageConfig(t, same); len(same.Disks) != 1 || !reflect.DeepEqual(cfg.Volumes, []boot.Volume{{Name: "vol", Disk: 0}}) {
		t.Errorf("a volume of the container's image: %d disks, volumes %+v; want one shared disk", len(same.Disks), cfg.Volumes)
	}
}

// TestImageVolumePullPolicy checks that an image volume's image is pulled under its own pull policy, as a
// container's.
func TestImageVolumePullPolicy(t *testing.T) {
	reg := newRegistry(t, "", "")
	reg.push(t, "app:1", layer(t, file{"app", "bin"}))
	reg.push(t, "data:1", layer(t, file{"data.json", "{}"}))
	app, data := reg.host()+"/app:1", reg.host()+"/data:1"
	b := newBuilder(t, &Source{Insecure: []string{reg.host()}}, 10, 1<<30)
	s := spec(app)
	s.Volumes = []Volume{{Name: "vol", Image: data}}
	_, err := b.EnsureWith(context.Background(), s, "direct",
		Pull{Policies: map[string]PullPolicy{app: PullIfNotPresent, data: PullNever}})
	var np *NeverPullError
	if !errors.As(err, &np) || np.Ref != data {
		t.Fatalf("Never for an absent volume image: %v, want a NeverPullError for %s", err, data)
	}
	if _, err := b.EnsureWith(context.Background(), s, "direct",
		Pull{Policies: map[string]PullPolicy{app: PullIfNotPresent, data: PullIfNotPresent}}); err != nil {
		t.Fatal(err)
	}
}
