package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// testImageVolumes runs a pod with two image volumes, as Kubernetes' ImageVolume conformance spec does: the hello
// image its container runs (one shared disk) at /vol, and a data image of its own (another disk, pull policy
// Always) at /data with a subPath of it at /os-release. Its files are read through the mounts with exec, and
// writing to either volume fails: image volumes are read-only.
func testImageVolumes(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	dataRef := pushDataImage(t, reg+"/imagevolume-data:1", map[string]string{
		"data.json": `{"kitten.jpg": "a cat"}`, "etc/os-release": "NAME=\"i2kit image volume\"\n"})
	no := false
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() { pods.Delete(ctx, "image-volumes", metav1.DeleteOptions{}) }) //nolint:errcheck
	if _, err := pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "image-volumes"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Volumes: []corev1.Volume{
				{Name: "hello", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: reg + "/hello:1", PullPolicy: corev1.PullIfNotPresent}}},
				{Name: "data", VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: dataRef, PullPolicy: corev1.PullAlways}}},
			},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1", VolumeMounts: []corev1.VolumeMount{
				{Name: "hello", MountPath: "/vol"},
				{Name: "data", MountPath: "/data"},
				{Name: "data", MountPath: "/os-release", SubPath: "etc/os-release"},
			}}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "image-volumes", nodeLog)

	if ls := kubectl(t, "exec", "image-volumes", "--", "ls", "/vol"); !containsLine(ls, "app") || !containsLine(ls, "bin") {
		t.Errorf("ls /vol = %q, want the hello image's app and bin", ls)
	}
	// The hello image's /app, read through the volume, is the container's own /app.
	sizes := strings.Fields(kubectl(t, "exec", "image-volumes", "--", "stat", "-c", "%s", "/app", "/vol/app"))
	if len(sizes) != 2 || sizes[0] != sizes[1] || sizes[0] == "0" {
		t.Errorf("sizes of /app and /vol/app = %v, want one size", sizes)
	}
	if got := kubectl(t, "exec", "image-volumes", "--", "cat", "/data/data.json"); !strings.Contains(got, "kitten.jpg") {
		t.Errorf("/data/data.json = %q", got)
	}
	if got := kubectl(t, "exec", "image-volumes", "--", "cat", "/os-release"); !strings.Contains(got, "i2kit image volume") {
		t.Errorf("/os-release (subPath etc/os-release of the data volume) = %q", got)
	}
	for _, cmd := range []string{"echo x > /vol/new", "echo x > /data/data.json", "mkdir /data/new", "echo x > /os-release"} {
		if out, err := env.KubectlRun(ctx, "exec", "image-volumes", "--", "sh", "-c", cmd); err == nil {
			t.Errorf("%q succeeded (%q); an image volume is read-only", cmd, out)
		}
	}
}

// pushDataImage pushes to ref (on the plain-HTTP test registry) a one-layer image of files, path → content, and
// returns ref.
func pushDataImage(t *testing.T, ref string, files map[string]string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for p, body := range files {
		if d, _, ok := strings.Cut(p, "/"); ok && !dirs[d] {
			dirs[d] = true
			tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}) //nolint:errcheck
		}
		tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}) //nolint:errcheck
		tw.Write([]byte(body))                                                                           //nolint:errcheck
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref
}
