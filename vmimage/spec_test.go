package vmimage

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("%s differs (go test ./vmimage -update to accept):\ngot:\n%s\nwant:\n%s", p, got, want)
	}
}

func TestDecodeErrorsGolden(t *testing.T) {
	cases := []struct{ name, yaml string }{
		{"unknown-field", "kernel:\n  cmdline: x\nservices:\n- name: web\n  image: nginx\n  imagee: typo\n"},
		{"unknown-top-level", "kernal:\n  image: x\nservices:\n- name: web\n  image: nginx\n"},
		{"wrong-type", "services:\n- name: web\n  image: nginx\n  command: ls\n"},
		{"duplicate-key", "services:\n- name: web\n  name: web2\n  image: nginx\n"},
		{"no-containers", "kernel: {}\n"},
		{"bad-name", "services:\n- name: Web_1\n  image: nginx\n"},
		{"duplicate-name", "onboot:\n- name: web\n  image: busybox\nservices:\n- name: web\n  image: nginx\n"},
		{"missing-image", "services:\n- name: web\n"},
		{"bad-env", "services:\n- name: web\n  image: nginx\n  env: [NOEQUALS]\n"},
		{"relative-workdir", "services:\n- name: web\n  image: nginx\n  workingDir: app\n"},
		{"file-escapes", "services:\n- name: web\n  image: nginx\nfiles:\n- path: ../etc/passwd\n"},
		{"file-mode", "services:\n- name: web\n  image: nginx\nfiles:\n- path: etc/motd\n  mode: rw\n"},
		{"two-documents", "services:\n- name: web\n  image: nginx\n---\nservices: []\n"},
		{"empty", ""},
	}
	var b strings.Builder
	for _, c := range cases {
		_, err := Decode(strings.NewReader(c.yaml))
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		b.WriteString(c.name + ": " + err.Error() + "\n")
	}
	golden(t, "decode-errors.golden", b.String())
}

func TestDecodeValidSpec(t *testing.T) {
	s, err := Decode(strings.NewReader(`
kernel:
  cmdline: console=ttyS0
onboot:
- name: migrate
  image: registry.local/app@sha256:0000000000000000000000000000000000000000000000000000000000000000
  command: [/app, migrate]
services:
- name: web
  image: registry.local/app:1
  env: [MODE=prod]
  workingDir: /srv
files:
- path: etc/motd
  contents: hello
  mode: "0644"
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Kernel.Image != DefaultKernel || s.Kernel.Cmdline != "console=ttyS0" || len(s.Onboot) != 1 || len(s.Services) != 1 {
		t.Errorf("decoded %+v", s)
	}
}

func TestFromPodGolden(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-7d4b9c-x2k4p", Namespace: "shop", UID: "1234"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{
				{Name: "migrate", Image: "registry.local/app:1", Command: []string{"/app", "migrate"}},
				{Name: "proxy", Image: "registry.local/envoy:1", RestartPolicy: &always},
			},
			Containers: []corev1.Container{{
				Name: "web", Image: "registry.local/app:1", Args: []string{"--port", "8080"}, WorkingDir: "/srv",
				Env:     []corev1.EnvVar{{Name: "PASSWORD", Value: "hunter2"}},
				EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}}}},
			}},
			Volumes: []corev1.Volume{{Name: "cfg", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db"}}}},
		},
	}
	s := FromPod(pod)
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "hunter2") || strings.Contains(string(out), "shop") || strings.Contains(string(out), "x2k4p") {
		t.Fatalf("runtime data or pod identity leaked into the spec:\n%s", out)
	}
	golden(t, "pod-spec.golden.yaml", string(out))

	// Another replica of the same Deployment has the same spec, hence the same image.
	other := pod.DeepCopy()
	other.Name, other.UID = "web-7d4b9c-q9z8m", "5678"
	other.Spec.Containers[0].Env[0].Value = "other"
	out2, _ := yaml.Marshal(FromPod(other))
	if string(out2) != string(out) {
		t.Error("two replicas produced different specs")
	}
}
