package provider

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/vmimage"
)

func imageVolume(name, ref string, policy corev1.PullPolicy) corev1.Volume {
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: ref, PullPolicy: policy}}}
}

// TestImageVolumeAdmitted checks that an image volume is admitted, as one more disk of the pod's VM image, unless
// its reference names a path on the node.
func TestImageVolumeAdmitted(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "x"}},
		Volumes: []corev1.Volume{imageVolume("vol", "registry.local/data:1", corev1.PullAlways)}}}
	if why := admit(pod); why != "" {
		t.Errorf("admit = %q, want the image volume admitted", why)
	}
	pod.Spec.Volumes[0].Image.Reference = "oci:/var/lib/i2kit/x"
	if why := admit(pod); !strings.Contains(why, `image volume "vol" names a path on the node`) {
		t.Errorf("admit = %q, want an oci: image volume refused", why)
	}
}

// TestImageVolumeRuntime checks that an image volume reaches the agent as an image volume, mounted read-only
// whatever the mount says, its subPath kept, and that its content is never sent as a files volume's.
func TestImageVolumeRuntime(t *testing.T) {
	pod := rdPod()
	pod.Spec.Volumes = []corev1.Volume{imageVolume("vol", "registry.local/data:1", corev1.PullIfNotPresent)}
	pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{
		{Name: "vol", MountPath: "/vol"},
		{Name: "vol", MountPath: "/etc/os-release", SubPath: "etc/os-release", ReadOnly: false},
	}
	rt, err := rdResolve(t, pod, rdCluster())
	if err != nil {
		t.Fatal(err)
	}
	if want := []protocol.Volume{{Name: "vol", Image: true}}; !reflect.DeepEqual(rt.Volumes, want) {
		t.Errorf("volumes = %+v, want %+v", rt.Volumes, want)
	}
	want := []protocol.Mount{{Volume: "vol", Path: "/vol", ReadOnly: true},
		{Volume: "vol", Path: "/etc/os-release", SubPath: "etc/os-release", ReadOnly: true}}
	if got := rt.Mounts[pod.Spec.Containers[0].Name]; !reflect.DeepEqual(got, want) {
		t.Errorf("mounts = %+v, want %+v", got, want)
	}
	if h := volumeHashes(rt.Volumes); len(h) != 0 {
		t.Errorf("volume hashes %v: an image volume is not a files volume to update", h)
	}
}

// TestImageVolumePullPolicies checks that an image volume's image is pulled under its pullPolicy, defaulted as the
// API server does, and shares the pull of a container of the same image.
func TestImageVolumePullPolicies(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Name: "web", Image: "app:1", ImagePullPolicy: corev1.PullNever}},
		Volumes: []corev1.Volume{
			imageVolume("a", "data:1", corev1.PullNever),
			imageVolume("b", "data:latest", ""),
			imageVolume("c", "data:2", ""),
			imageVolume("d", "app:1", corev1.PullAlways),
		},
	}}
	want := map[string]vmimage.PullPolicy{"app:1": vmimage.PullAlways, "data:1": vmimage.PullNever,
		"data:latest": vmimage.PullAlways, "data:2": vmimage.PullIfNotPresent}
	if got := pullPolicies(pod); !reflect.DeepEqual(got, want) {
		t.Errorf("policies = %v, want %v", got, want)
	}
	if got := images(pod); got != "app:1, data:1, data:latest, data:2, app:1" {
		t.Errorf("images = %q", got)
	}
}
