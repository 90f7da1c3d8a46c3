package provider

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/i2kit/i2kit/agent/protocol"
)

// rdFake is a cluster of ConfigMaps and Secrets (keyed namespace/name) and a token issuer that records requests.
type rdFake struct {
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	services   []*corev1.Service
	tokenReqs  []string // "audience/expirationSeconds"
	tokenErr   error
}

func (f *rdFake) lookups() lookups {
	return lookups{
		ConfigMap: func(ns, name string) (*corev1.ConfigMap, error) {
			if cm, ok := f.configMaps[ns+"/"+name]; ok {
				return cm, nil
			}
			return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "configmap"}, name)
		},
		Secret: func(ns, name string) (*corev1.Secret, error) {
			if s, ok := f.secrets[ns+"/"+name]; ok {
				return s, nil
			}
			return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "secret"}, name)
		},
		Services: func(ns string) ([]*corev1.Service, error) {
			var out []*corev1.Service
			for _, s := range f.services {
				if s.Namespace == ns {
					out = append(out, s)
				}
			}
			return out, nil
		},
		Token: func(pod *corev1.Pod, audience string, exp int64) (string, error) {
			f.tokenReqs = append(f.tokenReqs, fmt.Sprintf("%s/%d", audience, exp))
			if f.tokenErr != nil {
				return "", f.tokenErr
			}
			return fmt.Sprintf("token-for-%s-%s-%d", pod.Name, audience, exp), nil
		},
	}
}

func rdCluster() *rdFake {
	return &rdFake{
		configMaps: map[string]*corev1.ConfigMap{
			"default/app-cfg": {
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "app-cfg"},
				Data:       map[string]string{"url": "http://db:5432", "mode": "prod", "1st.key": "one", "bad=key": "x"},
				BinaryData: map[string][]byte{"blob": {0, 1, 2, 0xff}},
			},
			"default/other": {
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "other"},
				Data:       map[string]string{"mode": "dev", "ca.crt": "CA"},
			},
			"elsewhere/app-cfg": {Data: map[string]string{"url": "wrong namespace"}},
		},
		secrets: map[string]*corev1.Secret{
			"default/db": {
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"},
				Data:       map[string][]byte{"password": []byte("s3cret"), "key.bin": {0, 0xfe, 0x80}},
			},
		},
	}
}

func rdPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "default", Name: "web-1", UID: "uid-1",
			Labels:      map[string]string{"app": "web", "tier": "front"},
			Annotations: map[string]string{"note": "say \"hi\"\nbye", "a.io/x": "1"},
		},
		Spec: corev1.PodSpec{
			NodeName:           "i2kit-node",
			ServiceAccountName: "web-sa",
			Containers:         []corev1.Container{{Name: "web", Image: "x"}},
		},
	}
}

func rdPtr[T any](v T) *T { return &v }

// rdCheckErr checks a resolve's error against a table case: wantErr "" wants none; otherwise err must contain it
// and be a NotFound as notFound says. It reports whether the case goes on to check the result.
func rdCheckErr(t *testing.T, err error, wantErr string, notFound bool) bool {
	t.Helper()
	if wantErr == "" {
		if err != nil {
			t.Fatal(err)
		}
		return true
	}
	if err == nil || !strings.Contains(err.Error(), wantErr) {
		t.Fatalf("err = %v, want it to contain %q", err, wantErr)
	}
	if apierrors.IsNotFound(err) != notFound {
		t.Errorf("IsNotFound(%v) = %v, want %v", err, !notFound, notFound)
	}
	return false
}

func rdQ(s string) resource.Quantity { return resource.MustParse(s) }

const rdMiB = 1 << 20

func rdResolve(t *testing.T, pod *corev1.Pod, f *rdFake) (podRuntime, error) {
	t.Helper()
	return resolveRuntime(pod, "10.0.0.7", "192.168.1.2", 2, 512*rdMiB, f.lookups())
}

func TestResolveEnv(t *testing.T) {
	cmKey := func(name, key string, optional bool) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key, Optional: rdPtr(optional)}}
	}
	secretKey := func(name, key string, optional bool) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key, Optional: rdPtr(optional)}}
	}
	field := func(p string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: p}}
	}
	res := func(container, r, divisor string) *corev1.EnvVarSource {
		s := &corev1.ResourceFieldSelector{ContainerName: container, Resource: r}
		if divisor != "" {
			s.Divisor = rdQ(divisor)
		}
		return &corev1.EnvVarSource{ResourceFieldRef: s}
	}
	limited := corev1.ResourceRequirements{
		Limits:   corev1.ResourceList{corev1.ResourceCPU: rdQ("500m"), corev1.ResourceMemory: rdQ("256Mi")},
		Requests: corev1.ResourceList{corev1.ResourceCPU: rdQ("250m"), corev1.ResourceMemory: rdQ("100M")},
	}

	for _, tc := range []struct {
		name      string
		container corev1.Container
		mutate    func(*corev1.Pod)
		want      []string
		wantErr   string
		notFound  bool
	}{
		{
			name:      "plain values",
			container: corev1.Container{Env: []corev1.EnvVar{{Name: "A", Value: "1"}, {Name: "EMPTY"}, {Name: "B", Value: "two words"}}},
			want:      []string{"A=1", "EMPTY=", "B=two words"},
		},
		{
			name: "$(VAR) expansion and $$ escaping",
			container: corev1.Container{Env: []corev1.EnvVar{
				{Name: "HOST", Value: "db"},
				{Name: "URL", Value: "postgres://$(HOST):5432"},
				{Name: "UNDEF", Value: "$(NOPE)-x"},
				{Name: "ESCAPED", Value: "$$(HOST) costs $$5"},
				{Name: "CHAIN", Value: "[$(URL)]"},
				{Name: "FORWARD", Value: "$(LATER)"},
				{Name: "LATER", Value: "late"},
				{Name: "ODD", Value: "a$b $(unterminated $"},
			}},
			want: []string{"HOST=db", "URL=postgres://db:5432", "UNDEF=$(NOPE)-x", "ESCAPED=$(HOST) costs $5",
				"CHAIN=[postgres://db:5432]", "FORWARD=$(LATER)", "LATER=late", "ODD=a$b $(unterminated $"},
		},
		{
			name: "configMapKeyRef and secretKeyRef",
			container: corev1.Container{Env: []corev1.EnvVar{
				{Name: "URL", ValueFrom: cmKey("app-cfg", "url", false)},
				{Name: "PASSWORD", ValueFrom: secretKey("db", "password", false)},
				{Name: "DSN", Value: "$(URL)?password=$(PASSWORD)"},
			}},
			want: []string{"URL=http://db:5432", "PASSWORD=s3cret", "DSN=http://db:5432?password=s3cret"},
		},
		{
			name: "optional references to what is missing are skipped",
			container: corev1.Container{Env: []corev1.EnvVar{
				{Name: "A", ValueFrom: cmKey("app-cfg", "nokey", true)},
				{Name: "B", ValueFrom: cmKey("nocm", "url", true)},
				{Name: "C", ValueFrom: secretKey("db", "nokey", true)},
				{Name: "D", ValueFrom: secretKey("nosecret", "password", true)},
				{Name: "E", Value: "$(A)"},
			}},
			want: []string{"E=$(A)"},
		},
		{
			name:      "missing ConfigMap",
			container: corev1.Container{Env: []corev1.EnvVar{{Name: "URL", ValueFrom: cmKey("nocm", "url", false)}}},
			wantErr:   `configmap "nocm" not found (env URL of container "web")`,
			notFound:  true,
		},
		{
			name:      "missing ConfigMap key",
			container: corev1.Container{Env: []corev1.EnvVar{{Name: "URL", ValueFrom: cmKey("app-cfg", "nokey", false)}}},
			wantErr:   `couldn't find key nokey in ConfigMap default/app-cfg (env URL of container "web")`,
		},
		{
			name:      "missing Secret",
			container: corev1.Container{Env: []corev1.EnvVar{{Name: "P", ValueFrom: secretKey("nosecret", "password", false)}}},
			wantErr:   `secret "nosecret" not found`,
			notFound:  true,
		},
		{
			name:      "missing Secret key",
			container: corev1.Container{Env: []corev1.EnvVar{{Name: "P", ValueFrom: secretKey("db", "nokey", false)}}},
			wantErr:   `couldn't find key nokey in Secret default/db`,
		},
		{
			name: "fieldRef",
			container: corev1.Container{Env: []corev1.EnvVar{
				{Name: "NAME", ValueFrom: field("metadata.name")},
				{Name: "NS", ValueFrom: field("metadata.namespace")},
				{Name: "UID", ValueFrom: field("metadata.uid")},
				{Name: "APP", ValueFrom: field("metadata.labels['app']")},
				{Name: "NOLABEL", ValueFrom: field("metadata.labels['none']")},
				{Name: "NOTE", ValueFrom: field("metadata.annotations['note']")},
				{Name: "LABELS", ValueFrom: field("metadata.labels")},
				{Name: "NODE", ValueFrom: field("spec.nodeName")},
				{Name: "SA", ValueFrom: field("spec.serviceAccountName")},
				{Name: "POD_IP", ValueFrom: field("status.podIP")},
				{Name: "POD_IPS", ValueFrom: field("status.podIPs")},
				{Name: "HOST_IP", ValueFrom: field("status.hostIP")},
				{Name: "HOST_IPS", ValueFrom: field("status.hostIPs")},
				{Name: "SELF", Value: "$(NAME).$(NS)"},
			}},
			want: []string{"NAME=web-1", "NS=default", "UID=uid-1", "APP=web", "NOLABEL=", "NOTE=say \"hi\"\nbye",
				"LABELS=app=\"web\"\ntier=\"front\"", "NODE=i2kit-node", "SA=web-sa", "POD_IP=10.0.0.7",
				"POD_IPS=10.0.0.7", "HOST_IP=192.168.1.2", "HOST_IPS=192.168.1.2", "SELF=web-1.default"},
		},
		{
			name:      "unsupported fieldRef",
			container: corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: field("status.phase")}}},
			wantErr:   "unsupported fieldPath: status.phase",
		},
		{
			name: "resourceFieldRef with divisors",
			container: corev1.Container{Resources: limited, Env: []corev1.EnvVar{
				{Name: "CPU_M", ValueFrom: res("", "limits.cpu", "1m")},
				{Name: "CPU", ValueFrom: res("", "limits.cpu", "")},
				{Name: "MEM_MI", ValueFrom: res("", "limits.memory", "1Mi")},
				{Name: "MEM", ValueFrom: res("", "limits.memory", "")},
				{Name: "REQ_CPU_M", ValueFrom: res("", "requests.cpu", "1m")},
				{Name: "REQ_MEM_MI", ValueFrom: res("", "requests.memory", "1Mi")}, // 100M = 95.37Mi, rounded up
				{Name: "REQ_EPH", ValueFrom: res("", "requests.ephemeral-storage", "")},
			}},
			want: []string{"CPU_M=500", "CPU=1", "MEM_MI=256", fmt.Sprintf("MEM=%d", 256*rdMiB), "REQ_CPU_M=250",
				"REQ_MEM_MI=96", "REQ_EPH=0"},
		},
		{
			name: "resourceFieldRef without limits falls back to the VM's size",
			container: corev1.Container{Env: []corev1.EnvVar{
				{Name: "CPU", ValueFrom: res("", "limits.cpu", "")},
				{Name: "CPU_M", ValueFrom: res("", "limits.cpu", "1m")},
				{Name: "MEM_MI", ValueFrom: res("", "limits.memory", "1Mi")},
				{Name: "REQ_CPU", ValueFrom: res("", "requests.cpu", "1m")},
			}},
			want: []string{"CPU=2", "CPU_M=2000", "MEM_MI=512", "REQ_CPU=0"},
		},
		{
			name: "resourceFieldRef falls back to pod-level limits before the VM's size",
			mutate: func(p *corev1.Pod) {
				p.Spec.Resources = &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: rdQ("300Mi")}}
			},
			container: corev1.Container{Env: []corev1.EnvVar{
				{Name: "CPU_M", ValueFrom: res("", "limits.cpu", "1m")},
				{Name: "MEM_MI", ValueFrom: res("", "limits.memory", "1Mi")},
			}},
			want: []string{"CPU_M=2000", "MEM_MI=300"},
		},
		{
			name: "resourceFieldRef of another container",
			mutate: func(p *corev1.Pod) {
				p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "side", Resources: limited})
			},
			container: corev1.Container{Env: []corev1.EnvVar{
				{Name: "SIDE_CPU_M", ValueFrom: res("side", "limits.cpu", "1m")},
			}},
			want: []string{"SIDE_CPU_M=500"},
		},
		{
			name:      "resourceFieldRef of an unknown container",
			container: corev1.Container{Env: []corev1.EnvVar{{Name: "X", ValueFrom: res("ghost", "limits.cpu", "")}}},
			wantErr:   "container ghost not found",
		},
		{
			name: "envFrom with prefix; env overrides it in place",
			container: corev1.Container{
				EnvFrom: []corev1.EnvFromSource{
					{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "app-cfg"}}},
					{Prefix: "OTHER_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "other"}}},
					{Prefix: "DB_", SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "db"}}},
					{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nocm"}, Optional: rdPtr(true)}},
					{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nosecret"}, Optional: rdPtr(true)}},
				},
				Env: []corev1.EnvVar{{Name: "mode", Value: "$(mode)-override"}, {Name: "X", Value: "$(OTHER_mode)"}},
			},
			// "bad=key" cannot be a variable and is skipped; binaryData is not env.
			want: []string{"1st.key=one", "mode=prod-override", "url=http://db:5432", "OTHER_ca.crt=CA", "OTHER_mode=dev",
				"DB_key.bin=\x00\xfe\x80", "DB_password=s3cret", "X=dev"},
		},
		{
			name: "envFrom of a missing ConfigMap",
			container: corev1.Container{EnvFrom: []corev1.EnvFromSource{
				{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nocm"}}},
			}},
			wantErr:  `configmap "nocm" not found (envFrom of container "web")`,
			notFound: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := rdPod()
			tc.container.Name = "web"
			pod.Spec.Containers[0] = tc.container
			if tc.mutate != nil {
				tc.mutate(pod)
			}
			rt, err := rdResolve(t, pod, rdCluster())
			if !rdCheckErr(t, err, tc.wantErr, tc.notFound) {
				return
			}
			if got := rt.Env["web"]; !slices.Equal(got, tc.want) {
				t.Errorf("env:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestExpandVars(t *testing.T) {
	vars := map[string]string{"VAR_A": "A", "VAR_B": "B", "VAR_EMPTY": ""}
	mapping := func(k string) string {
		if v, ok := vars[k]; ok {
			return v
		}
		return "$(" + k + ")"
	}
	for in, want := range map[string]string{
		"":                     "",
		"$(VAR_A)":             "A",
		"___$(VAR_A)___":       "___A___",
		"$(VAR_A)$(VAR_B)":     "AB",
		"$(VAR_EMPTY)x":        "x",
		"$(UNKNOWN)":           "$(UNKNOWN)",
		"$$(VAR_A)":            "$(VAR_A)",
		"$$$(VAR_A)":           "$A",
		"$$$$(VAR_A)":          "$$(VAR_A)",
		"$(VAR_A":              "$(VAR_A",
		"$":                    "$",
		"a$":                   "a$",
		"$x$(VAR_B)":           "$xB",
		"$é$(VAR_A)":           "$éA",
		"$()":                  "$()",
		"$(VAR_A)$(VAR_A)$$$$": "AA$$",
	} {
		if got := expandVars(in, mapping); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}

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
			want:   protocol.Volume{EmptyDir: &protocol.EmptyDir{SizeLimit: 64 * rdMiB}},
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

func TestResolveServiceEnv(t *testing.T) {
	svc := func(ns, name, ip string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: ports}}
	}
	f := rdCluster()
	f.services = []*corev1.Service{
		svc("default", "kubernetes", "10.0.0.1", corev1.ServicePort{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}),
		svc("default", "my-db", "10.0.0.5", corev1.ServicePort{Port: 5432}, corev1.ServicePort{Name: "metrics-http", Port: 9187, Protocol: corev1.ProtocolTCP}),
		svc("default", "headless", corev1.ClusterIPNone, corev1.ServicePort{Port: 80}),
		svc("apps", "web", "10.0.0.9", corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}),
	}
	pod := rdPod()
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "DB", Value: "$(MY_DB_SERVICE_HOST):$(MY_DB_SERVICE_PORT)"},
		{Name: "MY_DB_SERVICE_PORT", Value: "1"}} // the container's own value wins
	pod.Spec.Containers[0].Args = []string{"$(KUBERNETES_SERVICE_HOST)"}
	rt, err := rdResolve(t, pod, f)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"DB=10.0.0.5:5432", "MY_DB_SERVICE_PORT=1",
		"KUBERNETES_PORT=tcp://10.0.0.1:443", "KUBERNETES_PORT_443_TCP=tcp://10.0.0.1:443", "KUBERNETES_PORT_443_TCP_ADDR=10.0.0.1",
		"KUBERNETES_PORT_443_TCP_PORT=443", "KUBERNETES_PORT_443_TCP_PROTO=tcp", "KUBERNETES_SERVICE_HOST=10.0.0.1",
		"KUBERNETES_SERVICE_PORT=443", "KUBERNETES_SERVICE_PORT_HTTPS=443",
		"MY_DB_PORT=tcp://10.0.0.5:5432", "MY_DB_PORT_5432_TCP=tcp://10.0.0.5:5432", "MY_DB_PORT_5432_TCP_ADDR=10.0.0.5",
		"MY_DB_PORT_5432_TCP_PORT=5432", "MY_DB_PORT_5432_TCP_PROTO=tcp",
		"MY_DB_PORT_9187_TCP=tcp://10.0.0.5:9187", "MY_DB_PORT_9187_TCP_ADDR=10.0.0.5", "MY_DB_PORT_9187_TCP_PORT=9187",
		"MY_DB_PORT_9187_TCP_PROTO=tcp", "MY_DB_SERVICE_HOST=10.0.0.5", "MY_DB_SERVICE_PORT_METRICS_HTTP=9187"}
	if got := rt.Env["web"]; !slices.Equal(got, want) {
		t.Errorf("env:\n got %q\nwant %q", got, want)
	}
	if got := rt.Args["web"]; !slices.Equal(got, []string{"10.0.0.1"}) {
		t.Errorf("args = %q", got)
	}
	// Without service links only the master service's variables are set; in another namespace too.
	pod.Namespace, pod.Spec.EnableServiceLinks = "apps", new(false)
	pod.Spec.Containers[0].Env = nil
	rt, err = rdResolve(t, pod, f)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range rt.Env["web"] {
		if !strings.HasPrefix(kv, "KUBERNETES_") {
			t.Errorf("enableServiceLinks false, yet %s", kv)
		}
	}
	if len(rt.Env["web"]) != 8 {
		t.Errorf("env = %q, want the 8 variables of the master service", rt.Env["web"])
	}
}

func TestResolveCommandAndArgs(t *testing.T) {
	pod := rdPod()
	pod.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "x"}}
	pod.Spec.Containers[0].Command = []string{"/bin/sh", "-c", "echo $(POD) $$HOME $(NOPE)"}
	pod.Spec.Containers[0].Args = []string{"$(MODE)", "$(POD_IP)x", "$$(POD)"}
	pod.Spec.Containers[0].Env = []corev1.EnvVar{
		{Name: "POD", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "MODE", Value: "$(POD)-fast"},
	}
	rt, err := rdResolve(t, pod, rdCluster())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rt.Command["web"], []string{"/bin/sh", "-c", "echo web-1 $HOME $(NOPE)"}; !slices.Equal(got, want) {
		t.Errorf("command = %q, want %q", got, want)
	}
	if got, want := rt.Args["web"], []string{"web-1-fast", "10.0.0.7x", "$(POD)"}; !slices.Equal(got, want) {
		t.Errorf("args = %q, want %q", got, want)
	}
	if _, ok := rt.Command["init"]; ok {
		t.Errorf("a container without a command has one: %q", rt.Command["init"])
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
