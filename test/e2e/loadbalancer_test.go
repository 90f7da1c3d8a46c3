package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/i2kit/i2kit/netsync"
	"github.com/i2kit/i2kit/netsync/locallb"
	"github.com/i2kit/i2kit/test/harness"
)

// The load balancer settings of TestPodSpec's node: it claims Services without a class, as the only load balancer
// of the test cluster, so that `kubectl expose --type=LoadBalancer` is enough.
const (
	specLBPool   = "10.89.1.0/24"
	specLBConfig = "loadBalancers: {claimUnclassed: true, pool: " + specLBPool + "}\n"
)

// testLoadBalancer exposes a Deployment of pod VMs as a user would, with `kubectl expose --type=LoadBalancer`, and
// follows it through its life: the Service gets an ingress address on the node that reaches every replica, from the
// host and from a pod VM; a rolling update loses no request; scaling to 5 adds the new pods; scaling to 0 refuses
// connections at once; and deleting the Service leaves no address and no rule behind.
func testLoadBalancer(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	deploys, svcs := env.Client.AppsV1().Deployments("default"), env.Client.CoreV1().Services("default")
	t.Cleanup(func() {
		deploys.Delete(ctx, "hello-lb", metav1.DeleteOptions{}) //nolint:errcheck
		svcs.Delete(ctx, "hello-lb", metav1.DeleteOptions{})    //nolint:errcheck
	})
	labels := map[string]string{"app": "hello-lb"}
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "hello-lb"}, Spec: appsv1.DeploymentSpec{
		Replicas: new(int32(2)), Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{
			NodeName: nodeName, AutomountServiceAccountToken: new(false),
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
				ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}}},
				// What every zero-downtime rollout needs on any node: a terminating pod keeps serving while
				// the change of its endpoints reaches the load balancer (through the controller-manager, the
				// node's watch and nftables: more than 2 s at times on two shared cores that run pod VMs in TCG).
				Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 5}}},
			}}}}}}
	if _, err := deploys.Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if out, err := env.KubectlRun(ctx, "expose", "deploy", "hello-lb", "--type=LoadBalancer", "--port", "80", "--target-port", "8080"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var ip string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		s, err := svcs.Get(ctx, "hello-lb", metav1.GetOptions{})
		if err != nil || len(s.Status.LoadBalancer.Ingress) == 0 {
			return false, nil
		}
		ip = s.Status.LoadBalancer.Ingress[0].IP
		if !slices.Contains(s.Finalizers, netsync.LoadBalancerFinalizer) {
			t.Errorf("the Service has an ingress but not the finalizer: %v", s.Finalizers)
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("hello-lb got no ingress address: %v\n%s", err, nodeLog())
	}
	t.Logf("hello-lb: ingress %s after %s", ip, time.Since(t0).Round(time.Millisecond))
	url := "http://" + ip + "/"
	reachesAll := func(what string) {
		t.Helper()
		pods := readyPods(t, labels, nodeLog)
		if err := answeredBy(ctx, url, pods, 3*time.Minute); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, nodeLog())
		}
		t.Logf("hello-lb: %s: all %d pods answered through %s (%s)", what, len(pods), ip, time.Since(t0).Round(time.Millisecond))
	}
	waitReplicas(t, "hello-lb", 2, nodeLog)
	reachesAll("created")

	// A pod VM reaches the Service too, though its targets share its bridge: one pod is answered by the other and
	// by itself (hairpin), which takes the balancer's masquerade of the pod network and forwarding on the bridge.
	pods := readyPods(t, labels, nodeLog)
	fromPod := map[string]bool{}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second) // hello -get retries for 10 s
		defer cancel()
		out, err := env.KubectlRun(ctx, "exec", pods[0], "--", "/app", "-get", url)
		if err != nil {
			t.Logf("from %s: %v: %s", pods[0], err, out)
			return false, nil
		}
		for _, name := range pods {
			if strings.Contains(out, "hello from "+name+"\n") {
				fromPod[name] = true
			}
		}
		return len(fromPod) == len(pods), nil
	})
	if err != nil {
		t.Fatalf("from pod %s through %s, only %v answered: %v\n%s", pods[0], ip, fromPod, err, nodeLog())
	}
	t.Logf("hello-lb: from pod %s, both pods answered (%s)", pods[0], time.Since(t0).Round(time.Millisecond))

	// A rolling update (kubectl rollout restart) with a client sending requests all along: none fails.
	old := readyPods(t, labels, nodeLog)
	trace := traceEndpoints(t, "hello-lb")
	load := startLoad(url)
	if out, err := env.KubectlRun(ctx, "rollout", "restart", "deploy/hello-lb"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := env.KubectlRun(ctx, "rollout", "status", "deploy/hello-lb", "--timeout=5m"); err != nil {
		t.Fatalf("%v: %s\n%s", err, out, nodeLog())
	}
	waitGone(t, old, nodeLog)
	ok, failed := load.stop()
	if ok == 0 || len(failed) > 0 {
		t.Errorf("during the rolling update %d requests succeeded and %d failed, e.g. %v\nthe Service's endpoints:\n%s",
			ok, len(failed), failed[:min(3, len(failed))], strings.Join(trace(), "\n"))
	} else {
		t.Logf("hello-lb: rolling update: %d requests, none failed", ok)
	}
	reachesAll("rolled out")

	// Scaling up adds the new pods as targets.
	if out, err := env.KubectlRun(ctx, "scale", "deploy/hello-lb", "--replicas=5"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	waitReplicas(t, "hello-lb", 5, nodeLog)
	reachesAll("scaled to 5")

	// No ready pod: connections are refused at once, not left to time out.
	if out, err := env.KubectlRun(ctx, "scale", "deploy/hello-lb", "--replicas=0"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		return refused(ip, 80), nil
	})
	if err != nil {
		t.Fatalf("scaled to 0, %s:80 was not refused: %v\n%s", ip, err, nodeLog())
	}

	// Deleting the Service deletes its load balancer: the finalizer goes, and the address and the rules with it.
	if err := svcs.Delete(ctx, "hello-lb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitServiceGone(t, "hello-lb", nodeLog)
	checkNoLoadBalancer(t, "i2kit-lb-"+nodeName, specLBPool, ip, "hello-lb")
}

// TestLoadBalancerDeletedWhileNodeDown deletes a Service of type LoadBalancer while its node is stopped: the
// Service waits, terminating, on the node's finalizer, its address and rules stay on the host, and the node
// deletes them when it starts again and lets the Service go. No pod VM is needed: a Service without endpoints has
// a load balancer too.
func TestLoadBalancerDeletedWhileNodeDown(t *testing.T) {
	ctx := context.Background()
	const nodeName, pool = "i2kit-lbdown", "10.89.2.0/24"
	cfg := env.WriteFile(t, "lbdown.yaml", "loadBalancers: {pool: "+pool+"}\n")
	runDir := filepath.Join(t.TempDir(), "run")
	start := func() *harness.Node {
		n := env.StartNode(t, nodeName, 10255, "--config", cfg, "--backend", "qemu", "--qemu-runtime-dir", runDir,
			"--qemu-bridge", "i2kitlbd", "--pod-cidr", "10.98.0.0/24", "--image-store", filepath.Join(t.TempDir(), "images"))
		if _, err := env.WaitNodeReady(ctx, nodeName, 30*time.Second); err != nil {
			t.Fatalf("node not ready: %v\n%s", err, n.Log())
		}
		return n
	}
	svcs := env.Client.CoreV1().Services("default")
	t.Cleanup(func() { svcs.Delete(ctx, "lb-down", metav1.DeleteOptions{}) }) //nolint:errcheck
	n := start()
	class := netsync.LoadBalancerClass
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "lb-down"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class, Selector: map[string]string{"app": "none"},
		Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	if _, err := svcs.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ip := waitIngress(t, "lb-down", n.Log)
	if !refused(ip, 80) {
		t.Errorf("%s:80 without endpoints: not refused", ip)
	}
	if err := n.Stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := svcs.Delete(ctx, "lb-down", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	s, err := svcs.Get(ctx, "lb-down", metav1.GetOptions{})
	if err != nil || s.DeletionTimestamp == nil {
		t.Fatalf("with the node stopped, the deleted Service should wait on its finalizer: %v %+v", err, s)
	}
	if !hasAddress(t, ip) {
		t.Fatalf("the ingress address %s went with the node stopped: nothing left to clean up, the test proves nothing", ip)
	}
	n = start()
	t0 := time.Now()
	waitServiceGone(t, "lb-down", n.Log)
	t.Logf("lb-down: deleted while the node was stopped; cleaned up %s after the node's start (%s after exec)",
		time.Since(t0).Round(time.Millisecond), time.Since(n.Started).Round(time.Millisecond))
	checkNoLoadBalancer(t, "i2kit-lb-"+nodeName, pool, ip, "lb-down")
}

// startLoad sends GET url, a new connection each, back to back until stop, which returns how many succeeded and
// the errors of those that failed.
func startLoad(url string) *loadLoop {
	l := &loadLoop{done: make(chan struct{})}
	// A request that is lost (sent to a target that is gone) fails or hangs for ever; one that is slow is not lost:
	// with pod VMs booting under TCG on two shared cores, an answer can take seconds.
	var local atomic.Value // the last connection's local address, to find its flow in conntrack when it fails
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			local.Store(c.LocalAddr().String())
		}
		return c, err
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: dial}}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case <-l.done:
				return
			default:
			}
			resp, err := client.Get(url)
			if err == nil {
				_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %s", resp.Status)
				}
			}
			if err != nil {
				l.mu.Lock()
				l.failed = append(l.failed, fmt.Errorf("%s: %w (%s)", time.Now().Format("15:04:05.000"), err, flowOf(local.Load())))
				l.mu.Unlock()
				continue
			}
			l.ok.Add(1)
		}
	}()
	return l
}

// flowOf describes the conntrack flow of the TCP connection from local address addr (a string, or nil): the
// target its packets were translated to and its state.
func flowOf(addr any) string {
	a, ok := addr.(string)
	if !ok {
		return "no connection"
	}
	ap, err := netip.ParseAddrPort(a)
	if err != nil {
		return err.Error()
	}
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		return err.Error()
	}
	for _, f := range flows {
		if f.Forward.Protocol == unix.IPPROTO_TCP && f.Forward.SrcPort == ap.Port() && f.Forward.SrcIP.Equal(net.IP(ap.Addr().AsSlice())) {
			state := -1
			if tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok {
				state = int(tcp.State)
			}
			return fmt.Sprintf("from %s to %s:%d, conntrack TCP state %d", a, f.Reverse.SrcIP, f.Reverse.SrcPort, state)
		}
	}
	return "no conntrack flow from " + a
}

type loadLoop struct {
	done   chan struct{}
	wg     sync.WaitGroup
	ok     atomic.Int64
	mu     sync.Mutex
	failed []error
}

func (l *loadLoop) stop() (int64, []error) {
	close(l.done)
	l.wg.Wait()
	return l.ok.Load(), l.failed
}

// traceEndpoints records, until the test ends, each change of the endpoints of Service svc with the time it was
// seen; the returned function reads the record.
func traceEndpoints(t *testing.T, svc string) func() []string {
	ctx, cancel := context.WithCancel(context.Background())
	w, err := env.Client.DiscoveryV1().EndpointSlices("default").Watch(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lines []string
	go func() {
		for ev := range w.ResultChan() {
			es, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok {
				continue
			}
			var eps []string
			for _, e := range es.Endpoints {
				eps = append(eps, fmt.Sprintf("%s ready=%v serving=%v terminating=%v", e.Addresses[0],
					ptr.Deref(e.Conditions.Ready, false), ptr.Deref(e.Conditions.Serving, false), ptr.Deref(e.Conditions.Terminating, false)))
			}
			mu.Lock()
			lines = append(lines, time.Now().Format("15:04:05.000")+" "+strings.Join(eps, ", "))
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); w.Stop() })
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(lines)
	}
}

// answeredBy waits until every one of pods has answered a request to url (hello answers with its host name, the
// pod's name), a new connection each: the load balancer spreads connections, and a kept-alive one stays with its pod.
func answeredBy(ctx context.Context, url string, pods []string, timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	seen := map[string]bool{}
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		resp, err := client.Get(url)
		if err != nil {
			return false, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		for _, name := range pods {
			if strings.Contains(string(body), "hello from "+name+"\n") {
				seen[name] = true
			}
		}
		return len(seen) == len(pods), nil
	})
	if err != nil {
		return fmt.Errorf("through %s only %v of %v answered: %w", url, seen, pods, err)
	}
	return nil
}

// readyPods lists the names of the Ready pods with labels that are not terminating.
func readyPods(t *testing.T, labels map[string]string, nodeLog func() string) []string {
	t.Helper()
	list, err := env.Client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{
		LabelSelector: metav1.FormatLabelSelector(&metav1.LabelSelector{MatchLabels: labels})})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && podReady(p) {
			names = append(names, p.Name)
		}
	}
	if len(names) == 0 {
		t.Fatalf("no ready pod with labels %v\n%s", labels, nodeLog())
	}
	return names
}

// waitReplicas waits until Deployment name has n ready replicas and no other pod.
func waitReplicas(t *testing.T, name string, n int32, nodeLog func() string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 4*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := env.Client.AppsV1().Deployments("default").Get(ctx, name, metav1.GetOptions{})
		return err == nil && d.Status.ReadyReplicas == n && d.Status.Replicas == n, nil
	})
	if err != nil {
		t.Fatalf("deployment %s: not %d ready replicas: %v\n%s", name, n, err, nodeLog())
	}
}

// waitGone waits until pods no longer exist.
func waitGone(t *testing.T, pods []string, nodeLog func() string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, p := range pods {
			if _, err := env.Client.CoreV1().Pods("default").Get(ctx, p, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("pods %v still exist: %v\n%s", pods, err, nodeLog())
	}
}

// waitIngress waits until Service name has an ingress address and returns it.
func waitIngress(t *testing.T, name string, nodeLog func() string) string {
	t.Helper()
	var ip string
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		s, err := env.Client.CoreV1().Services("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil || len(s.Status.LoadBalancer.Ingress) == 0 {
			return false, nil
		}
		ip = s.Status.LoadBalancer.Ingress[0].IP
		return true, nil
	})
	if err != nil {
		t.Fatalf("Service %s got no ingress address: %v\n%s", name, err, nodeLog())
	}
	return ip
}

// waitServiceGone waits until Service name no longer exists (the node removed its finalizer).
func waitServiceGone(t *testing.T, name string, nodeLog func() string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := env.Client.CoreV1().Services("default").Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("Service %s was not deleted (its finalizer stayed?): %v\n%s", name, err, nodeLog())
	}
}

// refused reports whether a TCP connection to ip:port is refused (rather than accepted or left to time out).
func refused(ip string, port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, fmt.Sprint(port)), time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// hasAddress reports whether ip is on the host's lo.
func hasAddress(t *testing.T, ip string) bool {
	t.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := lo.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(addrs, func(a net.Addr) bool { return strings.HasPrefix(a.String(), ip+"/") })
}

// checkNoLoadBalancer checks that the node's load balancer (its nftables table and pool) holds nothing of Service
// svc any more: no address on lo, no rule.
func checkNoLoadBalancer(t *testing.T, table, pool, ip, svc string) {
	t.Helper()
	if hasAddress(t, ip) {
		t.Errorf("the ingress address %s is still on lo after the Service's deletion", ip)
	}
	b, err := locallb.New(locallb.Config{Pool: netip.MustParsePrefix(pool), Table: table})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Name == svc {
			t.Errorf("the node's table %s still has a rule of %s after its deletion", table, k)
		}
	}
}
