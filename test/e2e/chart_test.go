package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/i2kit/i2kit/charts"
)

// TestChart installs the Helm chart into the real control plane and runs the node with nothing but the identity
// and the configuration the chart gives it: every rendered object passes a server-side dry run, then is applied;
// the node runs (here, outside the cluster, as the other tests' nodes do) with a token of the chart's
// ServiceAccount and the chart's node.yaml, through the smoke a user would try — the node Ready, a pod scheduled
// to it becomes a VM and runs, kubectl logs and exec, runtime data and its service account token, a Service of
// type LoadBalancer, the pod deleted — and its log never says "forbidden": the chart's RBAC is all the node needs,
// leader election's Lease in the release's namespace included.
func TestChart(t *testing.T) {
	ctx := context.Background()
	const ns, nodeName, port = "i2kit-chart", "i2kit-chart", 10257
	reg := localRegistry(t)
	r, err := charts.Render(charts.Release{Name: "i2kit", Namespace: ns}, map[string]any{
		"nodeName": nodeName,
		"backend":  "qemu",
		"replicas": 0, // the Deployment is applied, but the node runs here, outside the cluster
		"kubelet":  map[string]any{"port": port},
		"qemu":     map[string]any{"podCIDR": "10.97.0.0/24", "bridge": "i2kitchart"}, // a range of its own: bridges outlive their test
		// Addresses of their own: other tests' nodes use the default pool.
		"loadBalancers": map[string]any{"pool": "10.89.4.0/24", "claimUnclassed": true}, // kubectl expose: no class
		// The chart's probe and metrics endpoint, checked below, on a port no other test's node uses.
		"healthz": map[string]any{"port": 10268},
		// The Lease and the Role for it in the release's namespace: the node campaigns with the chart's identity.
		"leaderElection": map[string]any{"enabled": true},
	})
	if err != nil {
		t.Fatal(err)
	}
	objs, err := r.Objects()
	if err != nil {
		t.Fatal(err)
	}

	if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		env.Client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) //nolint:errcheck
	})
	a := newApplier(t)
	for _, o := range objs {
		if err := a.apply(ctx, o, true); err != nil {
			t.Errorf("server-side dry run of %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() { a.deleteAll(t, objs) })
	for _, o := range objs {
		if err := a.apply(ctx, o, false); err != nil {
			t.Fatalf("applying %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	t.Logf("applied %d objects of the chart", len(objs))

	// The node's identity: a token of the chart's ServiceAccount, in a kubeconfig of its own.
	var sa, config string
	for _, o := range objs {
		switch o.GetKind() {
		case "ServiceAccount":
			sa = o.GetName()
		case "ConfigMap":
			config, _, _ = unstructured.NestedString(o.Object, "data", "node.yaml")
		}
	}
	if sa == "" || config == "" {
		t.Fatalf("the chart rendered no ServiceAccount or no node.yaml:\n%s", r.Manifest)
	}
	exp := int64(3600)
	tr, err := env.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := env.WriteFile(t, "chart-node.kubeconfig", fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: %q, certificate-authority: %q}
users:
- name: i2kit-node
  user: {token: %q}
contexts:
- name: e2e
  context: {cluster: e2e, user: i2kit-node}
current-context: e2e
`, env.Plane.APIServerURL(), filepath.Join(env.Plane.PKIDir(), "ca.crt"), tr.Status.Token))
	// That identity is the chart's and nothing more: it may not list the cluster's nodes.
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	saClient, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := saClient.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("listing nodes with the ServiceAccount's token: %v, want Forbidden", err)
	}

	// The node, with the chart's node.yaml; the flags only move its files into this test's directories (and the
	// harness's flags give the name, port and InternalIP the chart's values also set). No --client-ca-file: the
	// node reads the cluster's client CA through the chart's binding.
	configFile := env.WriteFile(t, "chart-node.yaml", config)
	runDir := filepath.Join(t.TempDir(), "run")
	t.Cleanup(func() { killVMs(runDir) })
	n := env.StartNode(t, nodeName, port, "--kubeconfig", kubeconfig, "--config", configFile,
		"--qemu-runtime-dir", runDir, "--image-store", filepath.Join(t.TempDir(), "images"), "--insecure-registry", reg)
	if _, err := env.WaitNodeReady(ctx, nodeName, 10*time.Second); err != nil {
		t.Fatalf("node not Ready: %v\n%s", err, n.Log())
	}
	t.Logf("node Ready %s after i2kit node started with the chart's identity", time.Since(n.Started).Round(time.Millisecond))
	testProxy(t, nodeName)
	// The chart's node.yaml serves /healthz and /metrics on one plain listener, and the node leads its Lease.
	for _, path := range []string{"/healthz", "/metrics"} {
		resp, err := http.Get("http://127.0.0.1:10268" + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s, want 200", path, resp.Status)
		}
	}
	if l, err := env.Client.CoordinationV1().Leases(ns).Get(ctx, nodeName, metav1.GetOptions{}); err != nil ||
		l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		t.Errorf("the node's Lease %s/%s: %v, want one held by the node", ns, nodeName, err)
	}

	t.Run("pod", func(t *testing.T) { testChartPod(t, nodeName, reg, runDir, n.Log) })
	t.Run("runtime data", func(t *testing.T) { testRuntimeData(t, nodeName, reg, n.Log) })
	t.Run("load balancer", func(t *testing.T) { testLoadBalancer(t, nodeName, reg, n.Log) })

	if err := n.Stop(t, 30*time.Second); err != nil {
		t.Errorf("stopping the node: %v", err)
	}
	var forbidden []string
	for _, l := range strings.Split(n.Log(), "\n") {
		if strings.Contains(strings.ToLower(l), "forbidden") {
			forbidden = append(forbidden, l)
		}
	}
	if len(forbidden) > 0 {
		t.Errorf("the node was refused with the chart's RBAC (%d log lines):\n%s", len(forbidden), strings.Join(forbidden, "\n"))
	}
}

// testChartPod schedules a pod to the node (through the scheduler: its taint tolerated, its name selected), waits
// for it to run as a VM, uses kubectl on it, deletes it and waits for the VM to go.
func testChartPod(t *testing.T, nodeName, reg, runDir string, nodeLog func() string) {
	ctx := context.Background()
	pods := env.Client.CoreV1().Pods("default")
	const name = "chart-hello"
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"kubernetes.io/hostname": nodeName},
			Tolerations: []corev1.Toleration{{Key: "virtual-kubelet.io/provider", Operator: corev1.TolerationOpEqual,
				Value: "i2kit", Effect: corev1.TaintEffectNoSchedule}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1"}},
		}}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pods.Delete(context.Background(), name, metav1.DeleteOptions{}) }) //nolint:errcheck
	p := waitRunning(t, name, nodeLog)
	if p.Spec.NodeName != nodeName || p.Status.PodIP == "" {
		t.Fatalf("pod on %q with IP %q: want the chart's node and an IP", p.Spec.NodeName, p.Status.PodIP)
	}
	c := &http.Client{Timeout: 2 * time.Second}
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		resp, err := c.Get("http://" + net.JoinHostPort(p.Status.PodIP, "8080") + "/")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("the pod VM at %s does not answer: %v\n%s", p.Status.PodIP, err, nodeLog())
	}
	waitEvent(t, name, "Started")
	testKubectl(t, *p)

	if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, name, metav1.GetOptions{})
		ents, _ := os.ReadDir(runDir)
		return apierrors.IsNotFound(err) && len(ents) == 0, nil
	})
	if err != nil {
		t.Fatalf("the pod or its VM is still there after delete: %v\n%s", err, nodeLog())
	}
}

// applier applies objects with server-side apply as the admin, as `kubectl apply --server-side` does.
type applier struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func newApplier(t *testing.T) *applier {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", env.Plane.KubeconfigPath())
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
}

func (a *applier) resource(o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("mapping %s, %w", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return a.dyn.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return a.dyn.Resource(m.Resource), nil
}

// apply applies o, only as a server-side dry run (every admission and validation step, nothing stored) with dryRun.
func (a *applier) apply(ctx context.Context, o *unstructured.Unstructured, dryRun bool) error {
	ri, err := a.resource(o)
	if err != nil {
		return err
	}
	opts := metav1.ApplyOptions{FieldManager: "i2kit-e2e", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err = ri.Apply(ctx, o.GetName(), o, opts)
	return err
}

// deleteAll deletes objs, last first: the namespaced ones go with their namespace too, the cluster-scoped ones and
// those in kube-node-lease and kube-system only this way.
func (a *applier) deleteAll(t *testing.T, objs []*unstructured.Unstructured) {
	for _, o := range slices.Backward(objs) {
		ri, err := a.resource(o)
		if err == nil {
			err = ri.Delete(context.Background(), o.GetName(), metav1.DeleteOptions{})
		}
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("deleting %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
}
