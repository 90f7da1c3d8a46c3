package provider

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
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

// TestResolveEnvEvents: the Events virtual-kubelet's env resolution emits (its e2e suite waits on them) come with
// the resolution: a refError with its reason for what is mandatory, a warning for each optional reference skipped.
func TestResolveEnvEvents(t *testing.T) {
	cm := func(name, key string, optional bool) corev1.EnvVar {
		return corev1.EnvVar{Name: "V", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key, Optional: rdPtr(optional)}}}
	}
	secret := func(name, key string, optional bool) corev1.EnvVar {
		return corev1.EnvVar{Name: "V", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key, Optional: rdPtr(optional)}}}
	}
	for _, tc := range []struct {
		name    string
		c       corev1.Container
		wantErr *refError // Reason and Message
		want    []envEvent
	}{
		{name: "mandatory ConfigMap", c: corev1.Container{Env: []corev1.EnvVar{cm("nocm", "url", false)}},
			wantErr: &refError{Reason: "MandatoryConfigMapNotFound", Message: `configmap "nocm" not found`}},
		{name: "mandatory ConfigMap key", c: corev1.Container{Env: []corev1.EnvVar{cm("app-cfg", "nokey", false)}},
			wantErr: &refError{Reason: "MandatoryConfigMapKeyNotFound", Message: `key "nokey" does not exist in configmap "app-cfg"`}},
		{name: "mandatory Secret", c: corev1.Container{Env: []corev1.EnvVar{secret("nosecret", "password", false)}},
			wantErr: &refError{Reason: "MandatorySecretNotFound", Message: `secret "nosecret" not found`}},
		{name: "mandatory Secret key", c: corev1.Container{Env: []corev1.EnvVar{secret("db", "nokey", false)}},
			wantErr: &refError{Reason: "MandatorySecretKeyNotFound", Message: `key "nokey" does not exist in secret "db"`}},
		{name: "mandatory Secret of envFrom", c: corev1.Container{EnvFrom: []corev1.EnvFromSource{
			{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "nosecret"}}}}},
			wantErr: &refError{Reason: "MandatorySecretNotFound", Message: `secret "nosecret" not found`}},
		{name: "optional ones skipped", c: corev1.Container{
			Env: []corev1.EnvVar{cm("nocm", "url", true), cm("app-cfg", "nokey", true), secret("nosecret", "p", true),
				secret("db", "nokey", true), cm("nocm", "url", true)},
			EnvFrom: []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "nocm2"}, Optional: rdPtr(true)}}}},
			want: []envEvent{
				{"OptionalConfigMapNotFound", `configmap "nocm2" not found`},
				{"OptionalConfigMapNotFound", `skipping optional envvar "V": configmap "nocm" not found`},
				{"OptionalConfigMapKeyNotFound", `skipping optional envvar "V": key "nokey" does not exist in configmap "app-cfg"`},
				{"OptionalSecretNotFound", `skipping optional envvar "V": secret "nosecret" not found`},
				{"OptionalSecretKeyNotFound", `skipping optional envvar "V": key "nokey" does not exist in secret "db"`},
			}},
		{name: "nothing missing", c: corev1.Container{Env: []corev1.EnvVar{cm("app-cfg", "url", true)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := rdPod()
			tc.c.Name = "web"
			pod.Spec.Containers[0] = tc.c
			rt, err := rdResolve(t, pod, rdCluster())
			if tc.wantErr != nil {
				var re *refError
				if !errors.As(err, &re) || re.Reason != tc.wantErr.Reason || re.Message != tc.wantErr.Message {
					t.Fatalf("err = %v (%#v), want a refError %s %q", err, re, tc.wantErr.Reason, tc.wantErr.Message)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(rt.Warnings, tc.want) {
				t.Errorf("warnings:\n got %q\nwant %q", rt.Warnings, tc.want)
			}
		})
	}
}
