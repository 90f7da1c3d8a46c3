package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/node"
	"github.com/i2kit/i2kit/provider"
	"github.com/i2kit/i2kit/test/harness"
)

// TestNodeJoinsCluster runs `i2kit node` against the real control plane and checks what a cluster sees of it.
func TestNodeJoinsCluster(t *testing.T) {
	ctx := context.Background()
	const name, port = "i2kit-e2e", 10250
	n := env.StartNode(t, name, port, "--client-ca-file", filepath.Join(env.Plane.PKIDir(), "ca.crt"), "--cpu", "16")

	obj, err := env.WaitNodeReady(ctx, name, 10*time.Second)
	if err != nil {
		t.Fatalf("node not Ready within 10 s of starting: %v\n%s", err, n.Log())
	}
	t.Logf("node Ready %s after i2kit node started", time.Since(n.Started).Round(time.Millisecond))
	checkNodeObject(t, obj, port)

	t.Run("group", func(t *testing.T) {
		t.Run("LeaseRenewed", func(t *testing.T) { t.Parallel(); testLeaseRenewed(t, name) })
		t.Run("TolerantDeploymentBinds", func(t *testing.T) { t.Parallel(); testTolerantDeployment(t, name) })
		t.Run("IntolerantDeploymentDoesNotBind", func(t *testing.T) { t.Parallel(); testIntolerantDeployment(t, name) })
		t.Run("ProxyThroughAPIServer", func(t *testing.T) { t.Parallel(); testProxy(t, name) })
		t.Run("KubeletAPIAuth", func(t *testing.T) { t.Parallel(); testKubeletAuth(t, name, port) })
	})

	t0 := time.Now()
	if err := n.Stop(t, 15*time.Second); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, n.Log())
	}
	t.Logf("node stopped %s after SIGTERM", time.Since(t0).Round(time.Millisecond))
}

func checkNodeObject(t *testing.T, n *corev1.Node, port int) {
	t.Helper()
	for k, v := range map[string]string{
		"type": "virtual-kubelet", "kubernetes.io/role": "agent", "kubernetes.io/os": "linux",
		"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": n.Name,
	} {
		if n.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, n.Labels[k], v)
		}
	}
	// The controller-manager may add node.kubernetes.io/not-ready until it sees the node Ready; ours must be there.
	var ours int
	for _, tt := range n.Spec.Taints {
		if tt.Key == "virtual-kubelet.io/provider" && tt.Value == "i2kit" && tt.Effect == corev1.TaintEffectNoSchedule {
			ours++
		}
	}
	if ours != 1 {
		t.Errorf("taints = %v, want the default %s", n.Spec.Taints, node.DefaultTaint)
	}
	if got := n.Status.Capacity.Cpu().String(); got != "16" {
		t.Errorf("capacity cpu = %s, want 16 (from --cpu)", got)
	}
	if got := n.Status.Allocatable.Memory().String(); got != "32Gi" {
		t.Errorf("allocatable memory = %s, want 32Gi", got)
	}
	if len(n.Status.Addresses) == 0 || n.Status.Addresses[0].Type != corev1.NodeInternalIP || n.Status.Addresses[0].Address != harness.NodeIP {
		t.Errorf("addresses = %v, want InternalIP %s first", n.Status.Addresses, harness.NodeIP)
	}
	if got := n.Status.DaemonEndpoints.KubeletEndpoint.Port; got != int32(port) {
		t.Errorf("kubelet endpoint port = %d, want %d", got, port)
	}
	if !strings.Contains(n.Status.NodeInfo.OSImage, "i2kit") || n.Status.NodeInfo.KubeletVersion == "" {
		t.Errorf("node info = %+v, want an OS image naming i2kit and a kubelet version", n.Status.NodeInfo)
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable && c.Status != corev1.ConditionFalse {
			t.Errorf("NetworkUnavailable = %q, want False", c.Status)
		}
	}
}

func testLeaseRenewed(t *testing.T, name string) {
	ctx := context.Background()
	var seen []time.Time
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := env.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, name, metav1.GetOptions{})
		if err != nil || l.Spec.RenewTime == nil {
			return false, nil
		}
		if len(seen) == 0 || !l.Spec.RenewTime.Time.Equal(seen[len(seen)-1]) {
			seen = append(seen, l.Spec.RenewTime.Time)
		}
		return len(seen) >= 3, nil // the first sighting and two renewals
	})
	if err != nil {
		t.Fatalf("lease renew times seen %v: want two renewals: %v", seen, err)
	}
	t.Logf("lease renewals at %v", seen)
}

func deployment(name string, tolerate bool) *appsv1.Deployment {
	replicas := int32(3)
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "registry.local/web:1"}}},
			},
		},
	}
	if tolerate {
		d.Spec.Template.Spec.Tolerations = []corev1.Toleration{{
			Key: "virtual-kubelet.io/provider", Operator: corev1.TolerationOpEqual, Value: "i2kit", Effect: corev1.TaintEffectNoSchedule,
		}}
	}
	return d
}

func createDeployment(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	ctx := context.Background()
	if _, err := env.Client.AppsV1().Deployments("default").Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		env.Client.AppsV1().Deployments("default").Delete(context.Background(), d.Name, metav1.DeleteOptions{}) //nolint:errcheck
	})
}

func pods(t *testing.T, app string) []corev1.Pod {
	t.Helper()
	l, err := env.Client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func testTolerantDeployment(t *testing.T, nodeName string) {
	ctx := context.Background()
	createDeployment(t, deployment("tolerant", true))
	// Every replica is bound to the node, and, with no backend, reported Pending with the reason, never Running.
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		ps := pods(t, "tolerant")
		if len(ps) != 3 {
			return false, nil
		}
		for _, p := range ps {
			if p.Spec.NodeName != nodeName || len(p.Status.ContainerStatuses) != 1 {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("3 pods bound with status: %v: %s", err, summarize(pods(t, "tolerant")))
	}
	for _, p := range pods(t, "tolerant") {
		w := p.Status.ContainerStatuses[0].State.Waiting
		if p.Status.Phase != corev1.PodPending || w == nil || w.Reason != provider.ReasonNoBackend {
			t.Errorf("pod %s: phase %s, container state %+v: want Pending, waiting %s", p.Name, p.Status.Phase,
				p.Status.ContainerStatuses[0].State, provider.ReasonNoBackend)
		}
		if p.Status.QOSClass == "" {
			t.Errorf("pod %s lost its qosClass", p.Name)
		}
		waitEvent(t, p.Name, provider.ReasonNoBackend)
	}

	// Deleting the Deployment removes its pods from the node at once: they never ran.
	if err := env.Client.AppsV1().Deployments("default").Delete(ctx, "tolerant", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		return len(pods(t, "tolerant")) == 0, nil
	})
	if err != nil {
		t.Fatalf("pods of a deleted Deployment still there: %v", err)
	}
}

func waitEvent(t *testing.T, pod, reason string) {
	t.Helper()
	sel := fields.AndSelectors(fields.OneTermEqualSelector("involvedObject.name", pod), fields.OneTermEqualSelector("reason", reason))
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 20*time.Second, true, func(ctx context.Context) (bool, error) {
		l, err := env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: sel.String()})
		return err == nil && len(l.Items) > 0, nil
	})
	if err != nil {
		t.Errorf("no %s Event for pod %s: %v", reason, pod, err)
	}
}

func testIntolerantDeployment(t *testing.T, nodeName string) {
	createDeployment(t, deployment("intolerant", false))
	// The scheduler reports each pod Unschedulable: the only node is tainted.
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		ps := pods(t, "intolerant")
		if len(ps) != 3 {
			return false, nil
		}
		for _, p := range ps {
			if !unschedulable(p) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("pods not reported unschedulable: %v", err)
	}
	for _, p := range pods(t, "intolerant") {
		if p.Spec.NodeName != "" {
			t.Errorf("pod %s without the toleration was bound to %s", p.Name, p.Spec.NodeName)
		}
	}
}

func unschedulable(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			return true
		}
	}
	return false
}

func testProxy(t *testing.T, name string) {
	out, err := env.KubectlRun(context.Background(), "get", "--raw", "/api/v1/nodes/"+name+"/proxy/healthz")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "ok" {
		t.Fatalf("node proxy healthz = %q, want ok", out)
	}
}

// testKubeletAuth checks the kubelet API directly: anonymous 401; authenticated but not authorized 403 (client
// certificate and bearer token); authorized through RBAC 200.
func testKubeletAuth(t *testing.T, nodeName string, port int) {
	ctx := context.Background()
	url := "https://" + harness.NodeIP + ":" + strconv.Itoa(port) + "/healthz"
	get := func(cert *tls.Certificate, token string) int {
		t.Helper()
		tc := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the node's serving certificate is self-signed
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(nil, ""); code != http.StatusUnauthorized {
		t.Errorf("anonymous: %d, want 401", code)
	}
	if code := get(nil, "not-a-token"); code != http.StatusUnauthorized {
		t.Errorf("bad token: %d, want 401", code)
	}
	nobody := clientCert(t, "nobody")
	if code := get(&nobody, ""); code != http.StatusForbidden {
		t.Errorf("client certificate without RBAC: %d, want 403", code)
	}
	if code := get(&nobody, ""); code != http.StatusForbidden { // the deny cache answers the same
		t.Errorf("client certificate without RBAC, again: %d, want 403", code)
	}
	if code := get(nil, saToken(t, "kubelet-api-nobody", false)); code != http.StatusForbidden {
		t.Errorf("token without RBAC: %d, want 403", code)
	}
	if code := get(nil, saToken(t, "kubelet-api-viewer", true)); code != http.StatusOK {
		t.Errorf("token with nodes/proxy: %d, want 200", code)
	}
}

// clientCert signs a client certificate for user cn with the cluster CA.
func clientCert(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	pki := env.Plane.PKIDir()
	ca, err := tls.LoadX509KeyPair(filepath.Join(pki, "ca.crt"), filepath.Join(pki, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(ca.Certificate[0])
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalECPrivateKey(key)
	c, err := tls.X509KeyPair(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// saToken makes a ServiceAccount and returns a token for it; with allow, it may get nodes/proxy.
func saToken(t *testing.T, name string, allow bool) string {
	t.Helper()
	ctx := context.Background()
	cs := env.Client
	if _, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if allow {
		role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes/proxy"}, Verbs: []string{"get"}}}}
		if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		rb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: "default"}}}
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, rb, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	tr, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, name, &authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// TestNodeRejectsBadConfig checks that invalid configuration stops `i2kit node` at start with the field named.
func TestNodeRejectsBadConfig(t *testing.T) {
	bad := env.WriteFile(t, "bad.yaml", "nodeName: x\ncapcity:\n  cpu: 2\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--backend", "firecracker"}, `backend "firecracker"`},
		{[]string{"--cpu", "lots"}, "capacity.cpu"},
		{[]string{"--taints", "a=b:Sometimes"}, "taints"},
		{[]string{"--config", bad}, `unknown field "capcity"`},
	} {
		out, err := runI2kit(append([]string{"node", "--kubeconfig", env.Plane.KubeconfigPath()}, tc.args...)...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("i2kit node %v: err %v, output %q: want an error naming %q", tc.args, err, out, tc.want)
		}
	}
}

func runI2kit(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := execCombined(ctx, env.I2kit, args...)
	return out, err
}

// TestDevUpDown starts a second plane beside the tests' own with `i2kit dev up` and stops it with `i2kit dev
// down`: the two do not collide, and down leaves no process and no listening port.
func TestDevUpDown(t *testing.T) {
	state := filepath.Join(env.Dir, "dev")
	out, err := runI2kit("dev", "up", "--state-dir", state, "--port", "27443")
	if err != nil {
		t.Fatalf("i2kit dev up: %v\n%s", err, out)
	}
	if !strings.Contains(out, "export KUBECONFIG="+filepath.Join(state, "admin.kubeconfig")) {
		t.Errorf("dev up output does not say how to use the cluster:\n%s", out)
	}
	pids := readPids(t, filepath.Join(state, "run"))
	if len(pids) != 4 {
		t.Errorf("dev up recorded %d pids, want 4", len(pids))
	}
	ctx := context.Background()
	if _, err := execCombined(ctx, env.Kubectl, "--kubeconfig", filepath.Join(state, "admin.kubeconfig"), "get", "ns", "default"); err != nil {
		t.Errorf("second plane: %v", err)
	}
	if _, err := env.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Errorf("first plane after the second started: %v", err)
	}
	if out, err := runI2kit("dev", "down", "--state-dir", state); err != nil {
		t.Fatalf("i2kit dev down: %v\n%s", err, out)
	}
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(st), ") Z") {
				t.Errorf("process %d still runs after dev down", pid)
			}
		}
	}
	for _, port := range []int{27443, 27444, 27445, 27446, 27447, 27448} {
		if listening(t, port) {
			t.Errorf("port %d still listening after dev down", port)
		}
	}
	if _, err := env.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Errorf("first plane after the second stopped: %v", err)
	}
}

func summarize(ps []corev1.Pod) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "\n  %s node=%q phase=%s containers=%d", p.Name, p.Spec.NodeName, p.Status.Phase, len(p.Status.ContainerStatuses))
	}
	return b.String()
}
