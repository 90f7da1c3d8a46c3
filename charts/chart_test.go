package charts_test

import (
	"flag"
	"fmt"
	"maps"
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
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/i2kit/i2kit/charts"
	"github.com/i2kit/i2kit/internal/version"
	"github.com/i2kit/i2kit/node"
	awsbackend "github.com/i2kit/i2kit/provider/aws"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/ from the chart")

var rel = charts.Release{Name: "i2kit", Namespace: "i2kit-system"}

// valueSets are the value files of testdata/values, each with a golden rendering in testdata/golden.
var valueSets = []string{"qemu", "aws-irsa", "cert-manager", "ha"}

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
	awsCA := merge(awsOK, map[string]any{"agentCASecret": "ca"})
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
		{"negative replicas", map[string]any{"replicas": -1}, []string{"/replicas", "minimum"}},
		{"two qemu replicas", map[string]any{"replicas": 2}, []string{"replicas: at most 1 with backend qemu"}},
		{"two aws replicas without the agent CA", map[string]any{"backend": "aws", "aws": awsOK, "replicas": 2},
			[]string{"aws.agentCASecret: required with leader election"}},
		{"aws leader election without the agent CA", map[string]any{"backend": "aws", "aws": awsOK,
			"leaderElection": map[string]any{"enabled": true}}, []string{"aws.agentCASecret: required with leader election"}},
		{"two replicas without leader election", map[string]any{"backend": "aws", "aws": awsCA, "replicas": 2,
			"leaderElection": map[string]any{"enabled": false}}, []string{"leaderElection.enabled: false with replicas > 1"}},
		{"leader election not a boolean", map[string]any{"leaderElection": map[string]any{"enabled": "yes"}},
			[]string{"/leaderElection/enabled", "got string"}},
		{"typo in leader election", map[string]any{"leaderElection": map[string]any{"enable": true}},
			[]string{"/leaderElection", "'enable' not allowed"}},
		{"typo in the service monitor", map[string]any{"metrics": map[string]any{"serviceMonitor": map[string]any{"enable": true}}},
			[]string{"/metrics/serviceMonitor", "'enable' not allowed"}},
		{"bad scrape interval", map[string]any{"metrics": map[string]any{"serviceMonitor": map[string]any{"interval": "often"}}},
			[]string{"/metrics/serviceMonitor/interval", "does not match pattern"}},
		{"service monitor without metrics", map[string]any{"metrics": map[string]any{"enabled": false,
			"serviceMonitor": map[string]any{"enabled": true}}}, []string{"metrics.serviceMonitor.enabled: needs metrics.enabled"}},
		{"healthz port out of range", map[string]any{"healthz": map[string]any{"port": 70000}}, []string{"/healthz/port", "maximum"}},
		{"healthz on the kubelet port", map[string]any{"healthz": map[string]any{"port": 10260}},
			[]string{"healthz.port: must differ from the kubelet API's port"}},
		{"metrics on the kubelet port", map[string]any{"kubelet": map[string]any{"port": 10300}, "metrics": map[string]any{"port": 10300}},
			[]string{"metrics.port: must differ from the kubelet API's port"}},
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
	for _, v := range []map[string]any{
		{"backend": "aws", "aws": awsOK, "replicas": 0},
		{"backend": "aws", "aws": awsCA, "replicas": 3},
		{"backend": "aws", "aws": awsCA, "leaderElection": map[string]any{"enabled": true}},
		{"leaderElection": map[string]any{"enabled": true}}, // qemu, one replica: upgrades roll
		{"metrics": map[string]any{"enabled": false}},
		{"metrics": map[string]any{"port": 9090, "serviceMonitor": map[string]any{"enabled": true}}},
	} {
		if _, err := charts.Render(rel, v); err != nil {
			t.Errorf("valid values %v refused: %v", v, err)
		}
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
			// The image's environment (hack/image): the kernel and the default image store are under I2KIT_CACHE.
			t.Setenv("I2KIT_CACHE", imageCache)
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
			if p := containerPort(ctr, "kubelet"); p != c.Port {
				t.Errorf("container port kubelet %d: want the kubelet port %d (ports %v)", p, c.Port, ctr.Ports)
			}
			// The probes reach the node's plain /healthz: on the healthz port, which is healthzAddress's, on every
			// address (the kubelet probes the pod's IP).
			healthz := containerPort(ctr, "healthz")
			if c.HealthzAddress != fmt.Sprintf("0.0.0.0:%d", healthz) {
				t.Errorf("healthzAddress %q: want 0.0.0.0 and the container port healthz (%d)", c.HealthzAddress, healthz)
			}
			for _, p := range []*corev1.Probe{ctr.ReadinessProbe, ctr.LivenessProbe} {
				if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.StrVal != "healthz" {
					t.Errorf("probe %+v: want GET /healthz on the port healthz", p)
				}
			}
			if c.MetricsAddress != "" {
				mp := containerPort(ctr, "metrics")
				if c.MetricsAddress == c.HealthzAddress {
					mp = healthz
				}
				if c.MetricsAddress != fmt.Sprintf("0.0.0.0:%d", mp) {
					t.Errorf("metricsAddress %q: want healthzAddress or 0.0.0.0 and the container port metrics (%d)", c.MetricsAddress, mp)
				}
			}
			// With leader election, the Lease is the node's, in the release's namespace, where the chart's Role is.
			if c.LeaderElection.Enabled && (c.LeaderElection.Namespace != rel.Namespace || !hasEnv(ctr, "POD_NAMESPACE", "metadata.namespace")) {
				t.Errorf("leaderElection.namespace %q, env %v: want %s, and POD_NAMESPACE from metadata.namespace",
					c.LeaderElection.Namespace, ctr.Env, rel.Namespace)
			}
			// The image's own environment decides where the kernel is: the container must not move it.
			for _, e := range ctr.Env {
				if e.Name == "I2KIT_CACHE" || e.Name == "XDG_CACHE_HOME" {
					t.Errorf("env %s: the image's I2KIT_CACHE (%s) locates the kernel", e.Name, imageCache)
				}
			}
			if c.Images.Kernel == "" {
				// The image's kernel is in its root filesystem: a volume over it would hide it.
				if k := kernel.Dir(); mountedFrom(ctr, k, "") {
					t.Errorf("the image's kernel %s is under a volume mount %v", k, ctr.VolumeMounts)
				}
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
			// The writable directories are the image's own (hack/image makes them for its user): the image store
			// under its I2KIT_CACHE, the aws state directory the node's default.
			if def := node.DefaultConfig().Images.Store; c.Images.Store != def {
				t.Errorf("images.store %s: want the image's %s", c.Images.Store, def)
			}
			if c.Backend == "aws" && c.AWS.StateDir != awsbackend.DefaultStateDir {
				t.Errorf("aws.stateDir %s: want the image's %s", c.AWS.StateDir, awsbackend.DefaultStateDir)
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

// imageCache is I2KIT_CACHE in the node's image (hack/image cacheRoot): the kernel is under it, and the image's
// writable image store.
const imageCache = "/var/cache/i2kit"

func hasPodIPEnv(c corev1.Container) bool { return hasEnv(c, "POD_IP", "status.podIP") }

// hasEnv reports whether c has the variable name from the downward API's field.
func hasEnv(c corev1.Container, name, field string) bool {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == field {
			return true
		}
	}
	return false
}

// containerPort is the number of c's port called name; 0 when it has none.
func containerPort(c corev1.Container, name string) int {
	for _, p := range c.Ports {
		if p.Name == name {
			return int(p.ContainerPort)
		}
	}
	return 0
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
	// the provider's RemovePod (i2kit node/node.go: a pod whose VM cannot be adopted). The pod's status write reads
	// it (below).
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "delete"}},
	// virtual-kubelet's PodController writes the pods' status (pod.go: Pods().UpdateStatus), which the node turns
	// into a kubelet's write (node/podstatus.go): the pod is read (Pods().Get), its status patched.
	{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"patch"}},
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
	{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "patch"}},
	{APIGroups: []string{""}, Resources: []string{"services/status"}, Verbs: []string{"patch"}},
}

// leaseRules are the Role's in kube-node-lease: virtual-kubelet's lease controller gets the node's Lease, creates
// it when missing and renews it by update (lease_controller_v1.go: ensureLease, retryUpdateLease).
var leaseRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"i2kit"}, Verbs: []string{"get", "update"}},
}

// electionRules are the Role's in the release's namespace with leader election: node/leader.go's elector (client-go
// resourcelock.LeaseLock: Leases().Get, Create when missing, Update to acquire and renew) and releaseLease (Get,
// Update) on the Lease named after the node, which node.yaml leaves to its default (the node's name).
var electionRules = []rbacv1.PolicyRule{
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
		{"leader election", map[string]any{"leaderElection": map[string]any{"enabled": true}}, append(slices.Clone(clusterRules), lbRules...)},
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
			// With leader election (node.yaml says so), the Role for its Lease in the release's namespace.
			var cm corev1.ConfigMap
			object(t, r, "ConfigMap", rel.Namespace, &cm)
			inRelease := 0
			objs, err := r.Objects()
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				if o.GetNamespace() == rel.Namespace && strings.HasPrefix(o.GetAPIVersion(), "rbac.authorization.k8s.io/") {
					inRelease++
				}
			}
			if !strings.Contains(cm.Data["node.yaml"], "leaderElection:") {
				if inRelease > 0 {
					t.Errorf("%d RBAC objects in %s without leader election, want none", inRelease, rel.Namespace)
				}
			} else {
				var role rbacv1.Role
				object(t, r, "Role", rel.Namespace, &role)
				if d := cmp.Diff(electionRules, role.Rules); d != "" {
					t.Errorf("leader election Role rules (-want +got):\n%s", d)
				}
				var rb rbacv1.RoleBinding
				object(t, r, "RoleBinding", rel.Namespace, &rb)
				want := rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: rel.Namespace}
				if !slices.Equal(rb.Subjects, []rbacv1.Subject{want}) || rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != role.Name {
					t.Errorf("leader election RoleBinding binds %v to %+v, want %v to Role %s", rb.Subjects, rb.RoleRef, want, role.Name)
				}
			}
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

// TestStandby checks what replicas of one node need: with leader election the Deployment rolls (a new pod stands
// by before an old one stops), drains keep one replica, and replicas prefer different hosts; without it, two
// processes of the node never overlap.
func TestStandby(t *testing.T) {
	for _, tc := range []struct {
		name         string
		values       map[string]any
		strategy     appsv1.DeploymentStrategyType
		minAvailable string // of the PodDisruptionBudget; empty: maxUnavailable
		spread       bool
	}{
		{"one replica", nil, appsv1.RecreateDeploymentStrategyType, "", false},
		{"ha", loadValues(t, "ha"), appsv1.RollingUpdateDeploymentStrategyType, "1", true},
		{"one replica electing", map[string]any{"leaderElection": map[string]any{"enabled": true}},
			appsv1.RollingUpdateDeploymentStrategyType, "", false},
		{"ha with the operator's minAvailable", merge(loadValues(t, "ha"), map[string]any{"podDisruptionBudget": map[string]any{"minAvailable": 2}}),
			appsv1.RollingUpdateDeploymentStrategyType, "2", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := render(t, tc.values)
			var d appsv1.Deployment
			object(t, r, "Deployment", rel.Namespace, &d)
			if d.Spec.Strategy.Type != tc.strategy {
				t.Errorf("strategy %q: want %q", d.Spec.Strategy.Type, tc.strategy)
			}
			if ru := d.Spec.Strategy.RollingUpdate; tc.strategy == appsv1.RollingUpdateDeploymentStrategyType &&
				(ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0) {
				t.Errorf("rolling update %+v: want maxUnavailable 0, so that a new pod stands by before an old one stops", ru)
			}
			var pdb policyv1.PodDisruptionBudget
			object(t, r, "PodDisruptionBudget", rel.Namespace, &pdb)
			switch {
			case tc.minAvailable != "" && (pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.String() != tc.minAvailable || pdb.Spec.MaxUnavailable != nil):
				t.Errorf("PodDisruptionBudget %+v: want minAvailable %s", pdb.Spec, tc.minAvailable)
			case tc.minAvailable == "" && (pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil):
				t.Errorf("PodDisruptionBudget %+v: want maxUnavailable 1", pdb.Spec)
			}
			aff := d.Spec.Template.Spec.Affinity
			spread := aff != nil && aff.PodAntiAffinity != nil && len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 1 &&
				aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey == corev1.LabelHostname
			if spread != tc.spread {
				t.Errorf("affinity %+v: want replicas spread over hosts %v", aff, tc.spread)
			}
			if spread {
				term := aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
				if !maps.Equal(term.LabelSelector.MatchLabels, d.Spec.Selector.MatchLabels) {
					t.Errorf("anti-affinity selects %v, want the Deployment's pods %v", term.LabelSelector.MatchLabels, d.Spec.Selector.MatchLabels)
				}
			}
		})
	}
	// An affinity the operator gives replaces the spread.
	v := merge(loadValues(t, "ha"), map[string]any{"affinity": map[string]any{"nodeAffinity": map[string]any{}}})
	var d appsv1.Deployment
	object(t, render(t, v), "Deployment", rel.Namespace, &d)
	if a := d.Spec.Template.Spec.Affinity; a == nil || a.PodAntiAffinity != nil {
		t.Errorf("affinity %+v: want the operator's", a)
	}
}

// TestServiceMonitor checks that the Prometheus Operator finds every replica's metrics: the ServiceMonitor selects
// the Service, whose port "metrics" reaches the port the node serves /metrics on, in the node's pods.
func TestServiceMonitor(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
	}{
		{"ha: on healthz's port", loadValues(t, "ha")},
		{"a port of its own", map[string]any{"metrics": map[string]any{"port": 9090, "serviceMonitor": map[string]any{"enabled": true}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := render(t, tc.values)
			var d appsv1.Deployment
			object(t, r, "Deployment", rel.Namespace, &d)
			var cm corev1.ConfigMap
			object(t, r, "ConfigMap", rel.Namespace, &cm)
			c := node.DefaultConfig()
			file := filepath.Join(t.TempDir(), "node.yaml")
			if err := os.WriteFile(file, []byte(cm.Data["node.yaml"]), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := c.LoadFile(file); err != nil {
				t.Fatal(err)
			}
			var svc corev1.Service
			object(t, r, "Service", rel.Namespace, &svc)
			podLabels := d.Spec.Template.Labels
			for k, v := range svc.Spec.Selector {
				if podLabels[k] != v {
					t.Errorf("Service selector %v does not select the node's pods %v", svc.Spec.Selector, podLabels)
				}
			}
			if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" ||
				c.MetricsAddress != fmt.Sprintf("0.0.0.0:%d", svc.Spec.Ports[0].TargetPort.IntValue()) {
				t.Errorf("Service ports %+v: want one named metrics to metricsAddress %s", svc.Spec.Ports, c.MetricsAddress)
			}
			objs, err := r.Objects()
			if err != nil {
				t.Fatal(err)
			}
			var sm *unstructured.Unstructured
			for _, o := range objs {
				if o.GetAPIVersion() == "monitoring.coreos.com/v1" && o.GetKind() == "ServiceMonitor" {
					sm = o
				}
			}
			if sm == nil {
				t.Fatal("no ServiceMonitor")
			}
			sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
			for k, v := range sel {
				if svc.Labels[k] != v {
					t.Errorf("ServiceMonitor selector %v does not select the Service %v", sel, svc.Labels)
				}
			}
			ns, _, _ := unstructured.NestedStringSlice(sm.Object, "spec", "namespaceSelector", "matchNames")
			eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
			if len(sel) == 0 || !slices.Equal(ns, []string{rel.Namespace}) || len(eps) != 1 ||
				eps[0].(map[string]any)["port"] != "metrics" || eps[0].(map[string]any)["path"] != "/metrics" {
				t.Errorf("ServiceMonitor spec %v: want the Service's port metrics, /metrics, in %s", sm.Object["spec"], rel.Namespace)
			}
		})
	}
	// Off by default: the Operator's CRD need not exist.
	objs, err := render(t, nil).Objects()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() == "ServiceMonitor" || o.GetKind() == "Service" {
			t.Errorf("%s %s rendered by default", o.GetKind(), o.GetName())
		}
	}
}

// TestImage checks the default image: the repository `make image` pushes is the user's, the tag the chart's
// appVersion (what `make chart VERSION=...` stamps, and `make image` labels).
func TestImage(t *testing.T) {
	c, err := charts.Load()
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	object(t, render(t, nil), "Deployment", rel.Namespace, &d)
	if img := d.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/i2kit/i2kit:"+c.Metadata.AppVersion {
		t.Errorf("image %s: want ghcr.io/i2kit/i2kit:%s", img, c.Metadata.AppVersion)
	}
	object(t, render(t, map[string]any{"image": map[string]any{"repository": "registry.example/i2kit", "tag": "v9"}}),
		"Deployment", rel.Namespace, &d)
	if img := d.Spec.Template.Spec.Containers[0].Image; img != "registry.example/i2kit:v9" {
		t.Errorf("image %s: want registry.example/i2kit:v9", img)
	}
}
