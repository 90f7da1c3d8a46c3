package charts_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/i2kit/i2kit/charts"
	"github.com/i2kit/i2kit/internal/version"
	"github.com/i2kit/i2kit/node"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/ from the chart")

var rel = charts.Release{Name: "i2kit", Namespace: "i2kit-system"}

// valueSets are the value files of testdata/values, each with a golden rendering in testdata/golden.
var valueSets = []string{"qemu", "aws-irsa", "cert-manager"}

func loadValues(t *testing.T, name string) map[string]any {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "values", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v, err := loader.LoadValues(f) // as `helm install -f` reads it
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func render(t *testing.T, values map[string]any) charts.Rendered {
	t.Helper()
	r, err := charts.Render(rel, values)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// object returns the one rendered object of kind (and namespace, when not empty) decoded into out.
func object(t *testing.T, r charts.Rendered, kind, namespace string, out any) {
	t.Helper()
	objs, err := r.Objects()
	if err != nil {
		t.Fatal(err)
	}
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && (namespace == "" || o.GetNamespace() == namespace) {
			found = append(found, o)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d objects of kind %s in namespace %q, want 1", len(found), kind, namespace)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(found[0].Object, out, true); err != nil {
		t.Fatalf("%s: %v", kind, err)
	}
}

func TestLint(t *testing.T) {
	for _, name := range valueSets {
		t.Run(name, func(t *testing.T) {
			if err := charts.Lint(rel.Namespace, loadValues(t, name)); err != nil {
				t.Errorf("helm lint --strict: %v", err)
			}
		})
	}
}

// TestGolden compares `helm template`'s output for each value set with testdata/golden; `go test ./charts/
// -update` rewrites them.
func TestGolden(t *testing.T) {
	for _, name := range valueSets {
		t.Run(name, func(t *testing.T) {
			r := render(t, loadValues(t, name))
			got := r.Manifest + "---\n# NOTES.txt\n" + commentLines(r.Notes)
			golden := filepath.Join("testdata", "golden", name+".yaml")
			if *update {
				if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test ./charts/ -update writes it)", err)
			}
			if d := cmp.Diff(string(want), got); d != "" {
				t.Errorf("rendering differs from %s (-want +got; go test ./charts/ -update if intended):\n%s", golden, d)
			}
		})
	}
}

func commentLines(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString(strings.TrimRight("# "+l, " ") + "\n")
	}
	return b.String()
}

// TestSchemaRejects checks that values.schema.json refuses bad values, naming the value.
func TestSchemaRejects(t *testing.T) {
	awsOK := map[string]any{"region": "eu-west-1", "cluster": "c", "subnets": []any{"subnet-1"}, "securityGroups": []any{"sg-1"}}
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   []string // substrings of the error
	}{
		{"typo at the top", map[string]any{"backnd": "aws"}, []string{"additional properties 'backnd' not allowed"}},
		{"typo inside", map[string]any{"backend": "aws", "aws": map[string]any{"region": "eu-west-1", "cluster": "c",
			"subnets": []any{"subnet-1"}, "securityGroups": []any{"sg-1"}, "subnet": "subnet-2"}},
			[]string{"/aws", "additional properties 'subnet' not allowed"}},
		{"typo in resources", map[string]any{"resources": map[string]any{"limit": map[string]any{"memory": "1Gi"}}},
			[]string{"/resources", "'limit' not allowed"}},
		{"unknown backend", map[string]any{"backend": "firecracker"}, []string{"/backend", "'qemu'", "'aws'"}},
		{"wrong type", map[string]any{"replicas": "1"}, []string{"/replicas", "got string, want integer"}},
		{"wrong type in a list", map[string]any{"taints": "none"}, []string{"/taints", "got string, want array"}},
		{"two replicas", map[string]any{"replicas": 2}, []string{"/replicas", "maximum"}},
		{"aws without subnets", map[string]any{"backend": "aws", "aws": map[string]any{"region": "eu-west-1", "cluster": "c",
			"securityGroups": []any{"sg-1"}}}, []string{"/aws", "subnets"}},
		{"aws without a region", map[string]any{"backend": "aws", "aws": map[string]any{"region": "", "cluster": "c",
			"subnets": []any{"subnet-1"}, "securityGroups": []any{"sg-1"}}}, []string{"/aws/region", "minLength"}},
		{"bad taint", map[string]any{"taints": []any{"noeffect"}}, []string{"/taints/0", "does not match pattern"}},
		{"secret mode without a secret", map[string]any{"kubelet": map[string]any{"tls": map[string]any{"mode": "secret"}}},
			[]string{"/kubelet/tls", "secretName"}},
		{"cert-manager without an issuer", map[string]any{"kubelet": map[string]any{"tls": map[string]any{"mode": "certManager"}}},
			[]string{"/kubelet/tls/certManager/issuerRef/name", "minLength"}},
		{"bad duration", map[string]any{"backend": "aws", "aws": merge(awsOK, map[string]any{"syncPeriod": "10 seconds"})},
			[]string{"/aws/syncPeriod", "does not match pattern"}},
		{"bad quantity", map[string]any{"capacity": map[string]any{"memory": "lots"}}, []string{"/capacity/memory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := charts.Render(rel, tc.values)
			if err == nil {
				t.Fatal("rendered, want the schema's refusal")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// The schema accepts what values.yaml documents.
	if _, err := charts.Render(rel, map[string]any{"backend": "aws", "aws": awsOK, "replicas": 0}); err != nil {
		t.Errorf("valid values refused: %v", err)
	}
}

func merge(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// TestNodeConfig runs what `i2kit node` does with the rendered ConfigMap and Deployment: the node's defaults, then
// the config file through the node's own strict decoder (node.Config.LoadFile, which --config uses), then the
// container's flags through the node's own flag set, then Validate. A field the node does not have, a flag it does
// not know or an invalid setting fails here, not in a cluster.
func TestNodeConfig(t *testing.T) {
	for _, name := range valueSets {
		t.Run(name, func(t *testing.T) {
			r := render(t, loadValues(t, name))
			var cm corev1.ConfigMap
			object(t, r, "ConfigMap", rel.Namespace, &cm)
			var d appsv1.Deployment
			object(t, r, "Deployment", rel.Namespace, &d)
			if len(d.Spec.Template.Spec.Containers) != 1 {
				t.Fatalf("%d containers, want 1", len(d.Spec.Template.Spec.Containers))
			}
			ctr := d.Spec.Template.Spec.Containers[0]

			dir := t.TempDir()
			file := filepath.Join(dir, "node.yaml")
			if err := os.WriteFile(file, []byte(cm.Data["node.yaml"]), 0o600); err != nil {
				t.Fatal(err)
			}
			c := node.DefaultConfig()
			if err := c.LoadFile(file); err != nil {
				t.Fatalf("the node refuses the rendered node.yaml: %v\n%s", err, cm.Data["node.yaml"])
			}

			// The container's command line, with the pod's IP that the downward API gives.
			if len(ctr.Args) == 0 || ctr.Args[0] != "node" {
				t.Fatalf("args %q: want the node subcommand first", ctr.Args)
			}
			if !hasPodIPEnv(ctr) {
				t.Fatalf("env %v: want POD_IP from status.podIP", ctr.Env)
			}
			if !slices.Contains(ctr.Args, "--internal-ip=$(POD_IP)") {
				t.Errorf("args %q: want --internal-ip=$(POD_IP): the node's InternalIP is its pod's IP", ctr.Args)
			}
			fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
			flags := node.AddFlags(fs)
			configFlag := fs.String("config", "", "")
			fs.String("log-level", "info", "") // the root command's persistent flag
			args := slices.Clone(ctr.Args[1:])
			for i, a := range args {
				args[i] = strings.ReplaceAll(a, "$(POD_IP)", "10.1.2.3")
			}
			if err := fs.Parse(args); err != nil {
				t.Fatalf("the node refuses the container's args %q: %v", ctr.Args, err)
			}
			if *configFlag != "/etc/i2kit/node.yaml" || !mountedFrom(ctr, *configFlag, "config") {
				t.Errorf("--config %s: want /etc/i2kit/node.yaml, the ConfigMap's volume", *configFlag)
			}
			flags.Apply(&c)

			wantName := rel.Name
			if n, _ := loadValues(t, name)["nodeName"].(string); n != "" {
				wantName = n
			}
			if c.NodeName != wantName {
				t.Errorf("nodeName %q: want %q (nodeName, else the release's name)", c.NodeName, wantName)
			}
			port := ctr.Ports[0]
			if port.Name != "kubelet" || int(port.ContainerPort) != c.Port {
				t.Errorf("container port %+v: want the kubelet port %d", port, c.Port)
			}
			if ctr.ReadinessProbe.TCPSocket.Port.StrVal != "kubelet" || ctr.LivenessProbe.TCPSocket.Port.StrVal != "kubelet" {
				t.Errorf("probes %+v %+v: want the kubelet port", ctr.ReadinessProbe, ctr.LivenessProbe)
			}
			// Every path the node reads or writes is a volume of the pod (the root filesystem is read-only).
			paths := map[string]string{"images.store": c.Images.Store, "tlsCertFile": c.TLSCertFile, "tlsKeyFile": c.TLSKeyFile}
			if c.Backend == "qemu" {
				paths["qemu.runtimeDir"] = c.QEMU.RuntimeDir
			}
			if c.Backend == "aws" {
				paths["aws.stateDir"] = c.AWS.StateDir
				paths["aws.agentCA.cert"], paths["aws.agentCA.key"] = c.AWS.AgentCA.Cert, c.AWS.AgentCA.Key
			}
			for i, p := range c.Images.DockerConfigs {
				paths[fmt.Sprintf("images.dockerConfigs[%d]", i)] = p
			}
			for field, p := range paths {
				if p != "" && !mountedFrom(ctr, p, "") {
					t.Errorf("%s %s: on no volume of the container %v", field, p, ctr.VolumeMounts)
				}
			}

			// Validate stats the certificate files: stand-ins for the Secret's.
			if c.TLSCertFile != "" {
				c.TLSCertFile, c.TLSKeyFile = touch(t, dir, "tls.crt"), touch(t, dir, "tls.key")
			}
			if err := c.Validate(); err != nil {
				t.Errorf("the node refuses the rendered configuration: %v\n%s", err, cm.Data["node.yaml"])
			}
			if c.InternalIP != "10.1.2.3" {
				t.Errorf("internalIP %q: want the pod's IP", c.InternalIP)
			}
		})
	}
}

func hasPodIPEnv(c corev1.Container) bool {
	for _, e := range c.Env {
		if e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP" {
			return true
		}
	}
	return false
}

// mountedFrom reports whether p is at or under a volume mount of c (of the named volume, when not empty).
func mountedFrom(c corev1.Container, p, volume string) bool {
	for _, m := range c.VolumeMounts {
		if (volume == "" || m.Name == volume) && (p == m.MountPath || strings.HasPrefix(p, m.MountPath+"/")) {
			return true
		}
	}
	return false
}

func touch(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// clusterRules are the ClusterRole's rules: each one a call the node makes, and where it is made. The node
// "i2kit" is the release's name.
var clusterRules = []rbacv1.PolicyRule{
	// virtual-kubelet's NodeController.ensureNode registers the Node when it is missing (node/node.go in
	// virtual-kubelet: n.nodes.Create). A create cannot be scoped to a name.
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"create"}},
	// virtual-kubelet's updateNodeStatus gets the Node, then patches its status subresource (nodes.Get, then
	// nodes.Patch(..., "status")): addresses, capacity, conditions, daemon endpoints. Only this node's.
	{APIGroups: []string{""}, Resources: []string{"nodes"}, ResourceNames: []string{"i2kit"}, Verbs: []string{"get"}},
	{APIGroups: []string{""}, Resources: []string{"nodes/status"}, ResourceNames: []string{"i2kit"}, Verbs: []string{"patch"}},
	// virtual-kubelet's pod informer lists and watches the pods bound to the node (a spec.nodeName field
	// selector, nodeutil.PodInformerFilter); its PodController deletes pods (pod.go: Pods().Delete), and so does
	// the provider's RemovePod (i2kit node/node.go: a pod whose VM cannot be adopted).
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "watch", "delete"}},
	// virtual-kubelet's PodController writes the pods' status (pod.go: Pods().UpdateStatus).
	{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"update"}},
	// virtual-kubelet's ConfigMap, Secret and Service informers (nodeutil.NewNode), read through listers by the
	// provider: env, volumes and image pull secrets of the pods (provider/cluster.go, provider/pull.go), the
	// Services' env; netsync shares the Services informer (node/services.go).
	{APIGroups: []string{""}, Resources: []string{"configmaps", "secrets", "services"}, Verbs: []string{"list", "watch"}},
	// The EndpointSlice informer of node/services.go: the pod VMs' service table (netsync.Watch) and the load
	// balancers' targets (netsync.LBController).
	{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
	// Projected service account tokens for the pods (node/node.go serviceAccountToken: ServiceAccounts().CreateToken).
	{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}},
	// client-go's event recorder (node/node.go's broadcaster, virtual-kubelet's): new Events are created, repeated
	// ones patched (record.EventSinkImpl Create and Patch).
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	// The kubelet API's delegated authentication and authorization (node/serve.go kubeletAuth through
	// nodeutil.WebhookAuth): bearer tokens by TokenReview, every request by SubjectAccessReview.
	{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
	{APIGroups: []string{"authorization.k8s.io"}, Resources: []string{"subjectaccessreviews"}, Verbs: []string{"create"}},
}

// lbRules are the load-balancer controller's (netsync/lbcontroller.go), with loadBalancers.enabled: the finalizer
// added and removed by strategic-merge patches of the Service (ensure, release), the ingress address by a merge
// patch of its status (setIngress). It never updates a Service.
var lbRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"patch"}},
	{APIGroups: []string{""}, Resources: []string{"services/status"}, Verbs: []string{"patch"}},
}

// leaseRules are the Role's in kube-node-lease: virtual-kubelet's lease controller gets the node's Lease, creates
// it when missing and renews it by update (lease_controller_v1.go: ensureLease, retryUpdateLease).
var leaseRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"i2kit"}, Verbs: []string{"get", "update"}},
}

func TestRBAC(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   []rbacv1.PolicyRule
	}{
		{"load balancers", nil, append(slices.Clone(clusterRules), lbRules...)},
		{"no load balancers", map[string]any{"loadBalancers": map[string]any{"enabled": false}}, clusterRules},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := render(t, tc.values)
			var role rbacv1.ClusterRole
			object(t, r, "ClusterRole", "", &role)
			if d := cmp.Diff(tc.want, role.Rules); d != "" {
				t.Errorf("ClusterRole rules (-want +got):\n%s", d)
			}
			var lease rbacv1.Role
			object(t, r, "Role", "kube-node-lease", &lease)
			if d := cmp.Diff(leaseRules, lease.Rules); d != "" {
				t.Errorf("kube-node-lease Role rules (-want +got):\n%s", d)
			}
			// node/serve.go clientCA reads kube-system/extension-apiserver-authentication: the Role every cluster
			// has for that (kube-apiserver's bootstrap policy) is bound, in kube-system.
			var ca rbacv1.RoleBinding
			object(t, r, "RoleBinding", "kube-system", &ca)
			if ca.RoleRef.Kind != "Role" || ca.RoleRef.Name != "extension-apiserver-authentication-reader" {
				t.Errorf("kube-system RoleBinding refers to %+v, want the Role extension-apiserver-authentication-reader", ca.RoleRef)
			}
			var sa corev1.ServiceAccount
			object(t, r, "ServiceAccount", rel.Namespace, &sa)
			var crb rbacv1.ClusterRoleBinding
			object(t, r, "ClusterRoleBinding", "", &crb)
			var lrb rbacv1.RoleBinding
			object(t, r, "RoleBinding", "kube-node-lease", &lrb)
			var d appsv1.Deployment
			object(t, r, "Deployment", rel.Namespace, &d)
			want := rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: rel.Namespace}
			for _, b := range []struct {
				what     string
				subjects []rbacv1.Subject
				ref      rbacv1.RoleRef
				to       string
			}{
				{"ClusterRoleBinding", crb.Subjects, crb.RoleRef, role.Name},
				{"kube-node-lease RoleBinding", lrb.Subjects, lrb.RoleRef, lease.Name},
				{"kube-system RoleBinding", ca.Subjects, ca.RoleRef, ca.RoleRef.Name},
			} {
				if !slices.Equal(b.subjects, []rbacv1.Subject{want}) || b.ref.Name != b.to {
					t.Errorf("%s binds %v to %s, want %v to %s", b.what, b.subjects, b.ref.Name, want, b.to)
				}
			}
			if d.Spec.Template.Spec.ServiceAccountName != sa.Name {
				t.Errorf("the node's pod runs as %q, want the chart's ServiceAccount %q", d.Spec.Template.Spec.ServiceAccountName, sa.Name)
			}
		})
	}
	t.Run("rbac.create false", func(t *testing.T) {
		objs, err := render(t, map[string]any{"rbac": map[string]any{"create": false}}).Objects()
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			if strings.HasPrefix(o.GetAPIVersion(), "rbac.authorization.k8s.io/") {
				t.Errorf("%s %s rendered with rbac.create false", o.GetKind(), o.GetName())
			}
		}
	})
}

// TestSecurityContext checks the node's privileges by backend: none with aws, what QEMU needs with qemu.
func TestSecurityContext(t *testing.T) {
	var aws appsv1.Deployment
	object(t, render(t, loadValues(t, "aws-irsa")), "Deployment", rel.Namespace, &aws)
	pod, ctr := aws.Spec.Template.Spec, aws.Spec.Template.Spec.Containers[0]
	if pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot || *pod.SecurityContext.RunAsUser == 0 {
		t.Errorf("aws pod security context %+v: want a non-root user", pod.SecurityContext)
	}
	sc := ctr.SecurityContext
	if sc.Privileged != nil && *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		!slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("aws container security context %+v: want no capability, no escalation, a read-only root", sc)
	}
	if pod.HostNetwork {
		t.Error("aws: the node's pod uses the host's network")
	}

	var qemu appsv1.Deployment
	object(t, render(t, loadValues(t, "qemu")), "Deployment", rel.Namespace, &qemu)
	pod, ctr = qemu.Spec.Template.Spec, qemu.Spec.Template.Spec.Containers[0]
	if ctr.SecurityContext.Privileged == nil || !*ctr.SecurityContext.Privileged || !pod.HostNetwork {
		t.Errorf("qemu: privileged %v, hostNetwork %v: want both (bridges, TAPs, nftables, /dev/kvm)", ctr.SecurityContext.Privileged, pod.HostNetwork)
	}
	var kvm bool
	for _, v := range pod.Volumes {
		kvm = kvm || v.HostPath != nil && v.HostPath.Path == "/dev/kvm" && *v.HostPath.Type == corev1.HostPathCharDev
	}
	if !kvm || !mountedFrom(ctr, "/dev/kvm", "") {
		t.Error("qemu: /dev/kvm is not mounted from the host as a character device")
	}
	if qemu.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy %q: want Recreate, so that two processes of one node never overlap", qemu.Spec.Strategy.Type)
	}
}

func TestCertificate(t *testing.T) {
	r := render(t, loadValues(t, "cert-manager"))
	var cert unstructured.Unstructured
	objs, err := r.Objects()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() == "Certificate" {
			cert = *o
		}
	}
	secret, _, _ := unstructured.NestedString(cert.Object, "spec", "secretName")
	dns, _, _ := unstructured.NestedStringSlice(cert.Object, "spec", "dnsNames")
	if secret == "" || !slices.Equal(dns, []string{"i2kit-metal-1"}) {
		t.Fatalf("Certificate %v: want one for the node's name into a Secret", cert.Object)
	}
	var d appsv1.Deployment
	object(t, r, "Deployment", rel.Namespace, &d)
	var mounted bool
	for _, v := range d.Spec.Template.Spec.Volumes {
		mounted = mounted || v.Secret != nil && v.Secret.SecretName == secret
	}
	if !mounted {
		t.Errorf("the Certificate's Secret %s is not a volume of the node's pod", secret)
	}
	// Self-signed by default: no Secret is needed.
	for _, v := range func() []corev1.Volume {
		var d appsv1.Deployment
		object(t, render(t, nil), "Deployment", rel.Namespace, &d)
		return d.Spec.Template.Spec.Volumes
	}() {
		if v.Secret != nil {
			t.Errorf("default values mount Secret %s, want none", v.Secret.SecretName)
		}
	}
}

func TestChartVersion(t *testing.T) {
	for _, tc := range []struct{ release, want string }{
		{"v1.2.3", "1.2.3"},
		{"v1.2.3-rc.1", "1.2.3-rc.1"},
		{"1.2.3", "1.2.3"},
		{"v0.1.0-dev", "0.1.0-dev"},
		{"fbce8f1", "0.0.0-dev+fbce8f1"},
		{"fbce8f1-dirty", "0.0.0-dev+fbce8f1-dirty"},
		{"v1.2.3-4-gfbce8f1-dirty", "1.2.3-4-gfbce8f1-dirty"},
		{"v1.2", "1.2"}, // Helm takes it as 1.2.0
		{"", "0.0.0-dev"},
	} {
		if got := charts.ChartVersion(tc.release); got != tc.want {
			t.Errorf("ChartVersion(%q) = %q, want %q", tc.release, got, tc.want)
		}
	}
}

func TestPackage(t *testing.T) {
	p, err := charts.Package(t.TempDir(), "v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p) != "i2kit-1.2.3.tgz" {
		t.Errorf("package %s: want i2kit-1.2.3.tgz", p)
	}
	c, err := loader.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Metadata.Version != "1.2.3" || c.Metadata.AppVersion != "v1.2.3" || c.Schema == nil || len(c.Templates) == 0 {
		t.Errorf("packaged chart %s %s, schema %v, %d templates: want 1.2.3, v1.2.3 and the whole chart",
			c.Metadata.Version, c.Metadata.AppVersion, c.Schema != nil, len(c.Templates))
	}
}

// TestAppVersion keeps the chart's appVersion, the default image tag, at the version an unstamped build reports.
func TestAppVersion(t *testing.T) {
	c, err := charts.Load()
	if err != nil {
		t.Fatal(err)
	}
	if c.Metadata.AppVersion != version.Version || c.Metadata.Version != charts.ChartVersion(version.Version) {
		t.Errorf("Chart.yaml version %s, appVersion %s: want %s and %s (internal/version)", c.Metadata.Version,
			c.Metadata.AppVersion, charts.ChartVersion(version.Version), version.Version)
	}
}
