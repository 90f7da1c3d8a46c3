package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/netsync"
)

// testLoadBalancer exposes two pod VMs as a Service of type LoadBalancer of i2kit's class, as a user would with
// `kubectl expose --type=LoadBalancer`: the Service gets an ingress address on the node, requests to it from the
// host and from one of the pods reach both pods, a Service without ready pods refuses at once, and deleting the
// Service leaves no address behind.
func testLoadBalancer(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	pods, svcs := env.Client.CoreV1().Pods("default"), env.Client.CoreV1().Services("default")
	backends := []string{"lb-a", "lb-b"}
	t.Cleanup(func() {
		for _, p := range backends {
			pods.Delete(ctx, p, metav1.DeleteOptions{}) //nolint:errcheck
		}
		svcs.Delete(ctx, "hello-lb", metav1.DeleteOptions{}) //nolint:errcheck
	})
	for _, name := range backends {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "lb-backend"}},
			Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false),
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
					ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
						HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}}}}}}}
		if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	class := netsync.LoadBalancerClass
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "hello-lb"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class, Selector: map[string]string{"app": "lb-backend"},
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	t0 := time.Now()
	if _, err := svcs.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
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
	for _, name := range backends {
		waitRunning(t, name, nodeLog)
	}
	// Both pods answer through the ingress address once their endpoints are ready.
	// A connection per request: the load balancer spreads connections, and a kept-alive one stays with its pod.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	seen := map[string]bool{}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		resp, err := client.Get("http://" + ip + "/")
		if err != nil {
			return false, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		for _, name := range backends {
			if strings.Contains(string(body), "hello from "+name) {
				seen[name] = true
			}
		}
		return len(seen) == len(backends), nil
	})
	if err != nil {
		t.Fatalf("through %s, only %v answered: %v\n%s", ip, seen, err, nodeLog())
	}
	t.Logf("hello-lb: both pods answered %s after the Service's creation", time.Since(t0).Round(time.Millisecond))

	// A pod VM reaches the Service too, though its targets share its bridge: lb-a is answered by lb-b and by itself
	// (hairpin), which takes the balancer's masquerade of the pod network and forwarding on the bridge.
	fromPod := map[string]bool{}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		ctx, cancel := context.WithTimeout(ctx, 15*time.Second) // hello -get has no timeout of its own per request
		defer cancel()
		out, err := execCombined(ctx, env.Kubectl, "--kubeconfig", env.Plane.KubeconfigPath(), "exec", "lb-a", "--",
			"/app", "-get", "http://"+ip+"/")
		if err != nil {
			t.Logf("from lb-a: %v: %s", err, out)
			return false, nil
		}
		for _, name := range backends {
			if strings.Contains(out, "hello from "+name) {
				fromPod[name] = true
			}
		}
		return len(fromPod) == len(backends), nil
	})
	if err != nil {
		t.Fatalf("from pod lb-a through %s, only %v answered: %v\n%s", ip, fromPod, err, nodeLog())
	}

	// No ready pod: connections are refused at once, not left to time out.
	for _, name := range backends {
		if err := pods.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "80"), time.Second)
		if err == nil {
			c.Close()
			return false, nil
		}
		return errors.Is(err, syscall.ECONNREFUSED), nil
	})
	if err != nil {
		t.Fatalf("with no pod, %s:80 was not refused: %v", ip, err)
	}

	// Deleting the Service deletes its load balancer: the finalizer goes, and the address with it.
	if err := svcs.Delete(ctx, "hello-lb", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := svcs.Get(ctx, "hello-lb", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("hello-lb was not deleted (its finalizer stayed?): %v\n%s", err, nodeLog())
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := lo.Addrs()
	for _, a := range addrs {
		if strings.HasPrefix(a.String(), ip+"/") {
			t.Errorf("the ingress address %s is still on lo after the Service's deletion", ip)
		}
	}
}
