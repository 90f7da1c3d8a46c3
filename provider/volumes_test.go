package provider

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/agent/protocol"
)

func TestResolveVolumes(t *testing.T) {
	files := func(fs ...protocol.File) []protocol.File { return fs }
	file := func(p, data string, mode uint32) protocol.File {
		return protocol.File{Path: p, Data: []byte(data), Mode: mode}
	}
	keys := func(pairs ...string) []corev1.KeyToPath {
		var ks []corev1.KeyToPath
		for i := 0; i < len(pairs); i += 2 {
			ks = append(ks, corev1.KeyToPath{Key: pairs[i], Path: pairs[i+1]})
		}
		return ks
	}
	cmRef := func(name string) corev1.LocalObjectReference { return corev1.LocalObjectReference{Name: name} }

	for _, tc := range []struct {
		name       string
		source     corev1.VolumeSource
		want       protocol.Volume // Name is filled in
		wantErr    string
		notFound   bool
		wantTokens []string
	}{
		{
			name:   "emptyDir",
			source: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}},
			want:   protocol.Volume{EmptyDir: &protocol.EmptyDir{}},
		},
		{
			name:   "emptyDir in memory with sizeLimit",
			source: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: rdPtr(rdQ("64Mi"))}},
			want:   protocol.Volume{EmptyDir: &protocol.EmptyDir{SizeLimit: 64 * rdMiB, Memory: true}},
		},
		{
			name:   "emptyDir sizeLimit above the VM's memory is capped",
			source: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: rdPtr(rdQ("8Gi"))}},
			want:   protocol.Volume{EmptyDir: &protocol.EmptyDir{SizeLimit: 512 * rdMiB}},
		},
		{
			name:    "emptyDir of hugepages",
			source:  corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumHugePages}},
			wantErr: "emptyDir medium HugePages is not supported",
		},
		{
			name:   "configMap, all keys with the default mode, binaryData as bytes",
			source: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("app-cfg")}},
			want: protocol.Volume{Files: files(
				file("1st.key", "one", 0o644), file("bad=key", "x", 0o644),
				protocol.File{Path: "blob", Data: []byte{0, 1, 2, 0xff}, Mode: 0o644},
				file("mode", "prod", 0o644), file("url", "http://db:5432", 0o644))},
		},
		{
			name: "configMap items with modes and defaultMode",
			source: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: cmRef("app-cfg"), DefaultMode: rdPtr[int32](0o440),
				Items: []corev1.KeyToPath{
					{Key: "url", Path: "conf/url.txt", Mode: rdPtr[int32](0o600)},
					{Key: "mode", Path: "mode"},
					{Key: "blob", Path: "bin/blob"},
				}}},
			want: protocol.Volume{Files: files(
				protocol.File{Path: "bin/blob", Data: []byte{0, 1, 2, 0xff}, Mode: 0o440},
				file("conf/url.txt", "http://db:5432", 0o600), file("mode", "prod", 0o440))},
		},
		{
			name: "configMap item of a missing key",
			source: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: cmRef("app-cfg"), Items: keys("nokey", "x")}},
			wantErr: `MountVolume.SetUp failed for volume "vol" : configmap references non-existent config key: nokey`,
		},
		{
			name: "optional configMap item of a missing key is left out",
			source: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
				LocalObjectReference: cmRef("app-cfg"), Items: keys("nokey", "x", "url", "u"), Optional: rdPtr(true)}},
			want: protocol.Volume{Files: files(file("u", "http://db:5432", 0o644))},
		},
		{
			name:     "missing configMap",
			source:   corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("nocm")}},
			wantErr:  `MountVolume.SetUp failed for volume "vol" : configmap "nocm" not found`,
			notFound: true,
		},
		{
			name:   "missing optional configMap is an empty volume",
			source: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("nocm"), Optional: rdPtr(true)}},
			want:   protocol.Volume{Files: []protocol.File{}},
		},
		{
			name:    "configMap item escaping the volume",
			source:  corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: cmRef("app-cfg"), Items: keys("url", "../etc/passwd")}},
			wantErr: "must not start with '..'",
		},
		{
			name:   "secret, all keys as bytes",
			source: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db", DefaultMode: rdPtr[int32](0o400)}},
			want: protocol.Volume{Files: files(
				protocol.File{Path: "key.bin", Data: []byte{0, 0xfe, 0x80}, Mode: 0o400}, file("password", "s3cret", 0o400))},
		},
		{
			name: "secret items",
			source: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db",
				Items: []corev1.KeyToPath{{Key: "password", Path: "pw", Mode: rdPtr[int32](0o400)}}}},
			want: protocol.Volume{Files: files(file("pw", "s3cret", 0o400))},
		},
		{
			name:    "secret item of a missing key",
			source:  corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db", Items: keys("nokey", "x")}},
			wantErr: "references non-existent secret key: nokey",
		},
		{
			name:     "missing secret",
			source:   corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "nosecret"}},
			wantErr:  `secret "nosecret" not found`,
			notFound: true,
		},
		{
			name:   "missing optional secret is an empty volume",
			source: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "nosecret", Optional: rdPtr(true)}},
			want:   protocol.Volume{Files: []protocol.File{}},
		},
		{
			name: "downwardAPI",
			source: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}},
				{Path: "annotations", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations"}, Mode: rdPtr[int32](0o400)},
				{Path: "./meta/name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}},
				{Path: "app", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}},
				{Path: "cpu_limit", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "web", Resource: "limits.cpu", Divisor: rdQ("1m")}},
				{Path: "mem_request", ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "web", Resource: "requests.memory", Divisor: rdQ("1Mi")}},
			}}},
			want: protocol.Volume{Files: files(
				file("annotations", "a.io/x=\"1\"\nnote=\"say \\\"hi\\\"\\nbye\"", 0o400),
				file("app", "web", 0o644),
				file("cpu_limit", "2000", 0o644), // no limit: the VM's 2 CPUs
				file("labels", "app=\"web\"\ntier=\"front\"", 0o644),
				file("mem_request", "64", 0o644),
				file("meta/name", "web-1", 0o644))},
		},
		{
			name: "downwardAPI resourceFieldRef without a container",
			source: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
				{Path: "cpu", ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}},
			}}},
			wantErr: "container  not found",
		},
		{
			name: "projected: token, configMap, secret, downwardAPI in order",
			source: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{DefaultMode: rdPtr[int32](0o444), Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}},
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "vault-token", Audience: "vault", ExpirationSeconds: rdPtr[int64](600)}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: cmRef("other"), Items: keys("ca.crt", "ca.crt", "mode", "mode")}},
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: cmRef("nocm"), Optional: rdPtr(true)}},
				{Secret: &corev1.SecretProjection{LocalObjectReference: cmRef("db"), Items: keys("password", "mode")}}, // later wins
				{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{
					{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
			}}},
			want: protocol.Volume{Files: files(
				file("ca.crt", "CA", 0o444), file("mode", "s3cret", 0o444), file("namespace", "default", 0o444),
				file("token", "token-for-web-1--3600", 0o444), file("vault-token", "token-for-web-1-vault-600", 0o444))},
			wantTokens: []string{"/3600", "vault/600"},
		},
		{
			name: "projected with the default mode",
			source: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: rdPtr[int64](7200)}},
			}}},
			want:       protocol.Volume{Files: files(file("token", "token-for-web-1--7200", 0o644))},
			wantTokens: []string{"/7200"},
		},
		{
			name: "projected missing configMap",
			source: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: cmRef("nocm")}},
			}}},
			wantErr:  `configmap "nocm" not found`,
			notFound: true,
		},
		{
			name: "projected clusterTrustBundle",
			source: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
				{ClusterTrustBundle: &corev1.ClusterTrustBundleProjection{Name: rdPtr("b"), Path: "b"}},
			}}},
			wantErr: "clusterTrustBundle",
		},
		{
			name:    "hostPath",
			source:  corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}},
			wantErr: `volume "vol" : hostPath volumes are not supported`,
		},
		{
			name:    "persistentVolumeClaim",
			source:  corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"}},
			wantErr: "persistentVolumeClaim volumes are not supported",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := rdPod()
			pod.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: rdQ("64Mi")}
			pod.Spec.Volumes = []corev1.Volume{{Name: "vol", VolumeSource: tc.source}}
			f := rdCluster()
			rt, err := rdResolve(t, pod, f)
			if !rdCheckErr(t, err, tc.wantErr, tc.notFound) {
				return
			}
			tc.want.Name = "vol"
			if len(rt.Volumes) != 1 || !reflect.DeepEqual(rt.Volumes[0], tc.want) {
				t.Errorf("volumes:\n got %s\nwant %s", rdVolumes(rt.Volumes), rdVolumes([]protocol.Volume{tc.want}))
			}
			if !slices.Equal(f.tokenReqs, tc.wantTokens) {
				t.Errorf("token requests = %q, want %q", f.tokenReqs, tc.wantTokens)
			}
		})
	}
}

func rdVolumes(vs []protocol.Volume) string {
	var b strings.Builder
	for _, v := range vs {
		fmt.Fprintf(&b, "%s:", v.Name)
		if v.EmptyDir != nil {
			fmt.Fprintf(&b, " emptyDir(%d)", v.EmptyDir.SizeLimit)
		}
		if v.Files != nil {
			fmt.Fprintf(&b, " files%d", len(v.Files))
		}
		for _, f := range v.Files {
			fmt.Fprintf(&b, " %s=%q/%o", f.Path, f.Data, f.Mode)
		}
		b.WriteString(";")
	}
	return b.String()
}

func TestResolveTokenError(t *testing.T) {
	pod := rdPod()
	pod.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}}}
	f := rdCluster()
	boom := errors.New("serviceaccounts \"web-sa\" not found")
	f.tokenErr = boom
	_, err := rdResolve(t, pod, f)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), `volume "kube-api-access"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestResolveMounts(t *testing.T) {
	pod := rdPod()
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app-cfg"}}}},
		{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "db"}}},
		{Name: "meta", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{}}},
		{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}},
	}
	pod.Spec.InitContainers = []corev1.Container{{
		Name:         "init",
		Env:          []corev1.EnvVar{{Name: "STAGE", Value: "init"}},
		VolumeMounts: []corev1.VolumeMount{{Name: "scratch", MountPath: "/work", SubPathExpr: "$(STAGE)"}},
	}}
	pod.Spec.Containers[0] = corev1.Container{
		Name: "web",
		Env: []corev1.EnvVar{
			{Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		},
		EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app-cfg"}}}},
		VolumeMounts: []corev1.VolumeMount{
			{Name: "scratch", MountPath: "/data", SubPathExpr: "logs/$(POD)/$(mode)"},
			{Name: "scratch", MountPath: "/ro", ReadOnly: true, SubPath: "static"},
			{Name: "cfg", MountPath: "/etc/app"},
			{Name: "sec", MountPath: "/etc/db", ReadOnly: false},
			{Name: "meta", MountPath: "/etc/podinfo"},
			{Name: "token", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount", SubPathExpr: "$$x"},
		},
	}
	rt, err := rdResolve(t, pod, rdCluster())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]protocol.Mount{
		"init": {{Volume: "scratch", Path: "/work", SubPath: "init"}},
		"web": {
			{Volume: "scratch", Path: "/data", SubPath: "logs/web-1/prod"},
			{Volume: "scratch", Path: "/ro", SubPath: "static", ReadOnly: true},
			{Volume: "cfg", Path: "/etc/app", ReadOnly: true},
			{Volume: "sec", Path: "/etc/db", ReadOnly: true},
			{Volume: "meta", Path: "/etc/podinfo", ReadOnly: true},
			{Volume: "token", Path: "/var/run/secrets/kubernetes.io/serviceaccount", SubPath: "$x", ReadOnly: true},
		},
	}
	if !reflect.DeepEqual(rt.Mounts, want) {
		t.Errorf("mounts:\n got %+v\nwant %+v", rt.Mounts, want)
	}
	if got := rt.Env["init"]; !slices.Equal(got, []string{"STAGE=init"}) {
		t.Errorf("init env = %q", got)
	}
	if got := len(rt.Volumes); got != 5 {
		t.Errorf("%d volumes, want 5", got)
	}

	for _, tc := range []struct {
		name  string
		mount corev1.VolumeMount
		want  string
	}{
		{"missing variable", corev1.VolumeMount{Name: "scratch", MountPath: "/x", SubPathExpr: "$(NOPE)/$(POD)/$(ALSO)"},
			`missing value for ALSO, NOPE (subPathExpr of volume mount "scratch" in container "web")`},
		{"absolute subPath", corev1.VolumeMount{Name: "scratch", MountPath: "/x", SubPath: "/etc"}, "must not be an absolute path"},
		{"backstep subPathExpr", corev1.VolumeMount{Name: "scratch", MountPath: "/x", SubPathExpr: "../$(POD)"}, "must not contain '..'"},
		{"missing volume", corev1.VolumeMount{Name: "ghost", MountPath: "/x"}, `cannot find volume "ghost" to mount into container "web"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pod.DeepCopy()
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{tc.mount}
			_, err := rdResolve(t, p, rdCluster())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestVolumeFilesHash(t *testing.T) {
	base := protocol.Volume{Name: "v", Files: []protocol.File{
		{Path: "a", Data: []byte("1"), Mode: 0o644},
		{Path: "b/c", Data: []byte{0, 1}, Mode: 0o600},
	}}
	h := volumeFilesHash(base)
	if len(h) != 64 {
		t.Fatalf("hash %q is not hex sha256", h)
	}
	reordered := base
	reordered.Files = []protocol.File{base.Files[1], base.Files[0]}
	if volumeFilesHash(reordered) != h {
		t.Error("file order changed the hash")
	}
	for name, change := range map[string]func(*protocol.Volume){
		"data":     func(v *protocol.Volume) { v.Files[0].Data = []byte("2") },
		"mode":     func(v *protocol.Volume) { v.Files[0].Mode = 0o600 },
		"path":     func(v *protocol.Volume) { v.Files[0].Path = "z" },
		"boundary": func(v *protocol.Volume) { v.Files[0].Path, v.Files[0].Data = "a1", nil },
		"removed":  func(v *protocol.Volume) { v.Files = v.Files[:1] },
		"added":    func(v *protocol.Volume) { v.Files = append(v.Files, protocol.File{Path: "d"}) },
	} {
		v := base
		v.Files = slices.Clone(base.Files)
		change(&v)
		if volumeFilesHash(v) == h {
			t.Errorf("changing the %s left the hash unchanged", name)
		}
	}
	if volumeFilesHash(protocol.Volume{}) == h {
		t.Error("an empty volume hashes as a full one")
	}
}
