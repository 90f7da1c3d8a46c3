package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/netsync"
)

// BenchmarkLoadBalancerFirstRequest measures, on the qemu backend's local load balancer, a Service of type
// LoadBalancer from its creation to its ingress address in the Service's status, and to the first successful
// request through that address to a pod VM that is already Ready (medians of b.N Services, made and deleted one
// after the other).
func BenchmarkLoadBalancerFirstRequest(b *testing.B) {
	ctx := context.Background()
	reg := localRegistry(b)
	runDir := filepath.Join(b.TempDir(), "run")
	b.Cleanup(func() { killVMs(runDir) })
	const nodeName = "i2kit-bench-lb"
	cfg := env.WriteFile(b, "lbbench.yaml", "loadBalancers: {pool: 10.89.3.0/24}\n")
	n := env.StartNode(b, nodeName, 10258, "--config", cfg, "--backend", "qemu", "--insecure-registry", reg,
		"--qemu-runtime-dir", runDir, "--qemu-bridge", "i2kitlbb", "--pod-cidr", "10.96.0.0/24",
		"--image-store", filepath.Join(b.TempDir(), "images"))
	if _, err := env.WaitNodeReady(ctx, nodeName, 30*time.Second); err != nil {
		b.Fatalf("node not ready: %v\n%s", err, n.Log())
	}
	createAndWait(b, []string{"lb-target"}, nodeName, reg) // labelled bench=vm
	b.Cleanup(func() { deletePods(b, []string{"lb-target"}) })

	svcs := env.Client.CoreV1().Services("default")
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var toIngress, toRequest []time.Duration
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("lb-bench-%d", i)
		class := netsync.LoadBalancerClass
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: &class, Selector: map[string]string{"bench": "vm"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
		t0 := time.Now()
		if _, err := svcs.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		var ip string
		err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			s, err := svcs.Get(ctx, name, metav1.GetOptions{})
			if err != nil || len(s.Status.LoadBalancer.Ingress) == 0 {
				return false, nil
			}
			ip = s.Status.LoadBalancer.Ingress[0].IP
			return true, nil
		})
		if err != nil {
			b.Fatalf("%s: no ingress address: %v\n%s", name, err, n.Log())
		}
		toIngress = append(toIngress, time.Since(t0))
		err = wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			resp, err := client.Get("http://" + ip + "/")
			if err != nil {
				return false, nil
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, nil
		})
		if err != nil {
			b.Fatalf("%s: no answer through %s: %v\n%s", name, ip, err, n.Log())
		}
		toRequest = append(toRequest, time.Since(t0))
		if err := svcs.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			b.Fatal(err)
		}
		err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			_, err := svcs.Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			b.Fatalf("%s: not deleted: %v\n%s", name, err, n.Log())
		}
	}
	b.ReportMetric(ms(median(toIngress)), "ms-service-create-to-ingress(median)")
	b.ReportMetric(ms(median(toRequest)), "ms-service-create-to-first-request(median)")
}
