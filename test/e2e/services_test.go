package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/internal/devregistry"
)

// testServices checks what a pod reaches through Services from inside its VM, as on a node with kube-proxy: an
// in-cluster client (client-go's InClusterConfig, the default service account token) talks to the API server
// through KUBERNETES_SERVICE_HOST/PORT; a Service's ClusterIP, named by the service environment variables in its
// args, forwards to another pod VM; a Service without endpoints refuses connections at once.
func testServices(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	bin := buildStatic(t, "github.com/i2kit/i2kit/test/incluster")
	if err := devregistry.PushBinary(reg+"/incluster:1", bin, "/bin/busybox"); err != nil {
		t.Fatal(err)
	}
	pods, svcs := env.Client.CoreV1().Pods("default"), env.Client.CoreV1().Services("default")
	t.Cleanup(func() {
		for _, p := range []string{"svc-backend", "in-cluster"} {
			pods.Delete(ctx, p, metav1.DeleteOptions{}) //nolint:errcheck
		}
		for _, s := range []string{"hello-svc", "no-backends"} {
			svcs.Delete(ctx, s, metav1.DeleteOptions{}) //nolint:errcheck
		}
	})
	backend := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "svc-backend", Labels: map[string]string{"app": "svc-backend"}},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false),
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
				ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{
					HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}}}}}}}
	if _, err := pods.Create(ctx, backend, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*corev1.Service{
		{ObjectMeta: metav1.ObjectMeta{Name: "hello-svc"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "svc-backend"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "no-backends"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "nothing"},
			Ports: []corev1.ServicePort{{Port: 80}}}},
	} {
		if _, err := svcs.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitRunning(t, "svc-backend", nodeLog)
	// The endpoint slice controller publishes the ready backend.
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := env.Client.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=hello-svc"})
		if err != nil {
			return false, nil
		}
		for _, s := range l.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("hello-svc has no ready endpoint: %v", err)
	}

	client := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "in-cluster"},
		Spec: corev1.PodSpec{NodeName: nodeName, RestartPolicy: corev1.RestartPolicyNever,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "client", Image: reg + "/incluster:1",
				Args: []string{"http://$(HELLO_SVC_SERVICE_HOST):$(HELLO_SVC_SERVICE_PORT_HTTP)/"}}}}}
	if _, err := pods.Create(ctx, client, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := waitPhase(t, "in-cluster", corev1.PodSucceeded, nodeLog)
	kube, err := svcs.Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hello, err := svcs.Get(ctx, "hello-svc", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := kubectl(t, "logs", "in-cluster")
	for _, want := range []string{
		"in-cluster as system:serviceaccount:default:default via https://" + kube.Spec.ClusterIP + ":443",
		"http://" + hello.Spec.ClusterIP + ":80/: hello from svc-backend",
	} {
		if !containsLine(out, want) {
			t.Errorf("the in-cluster client printed %q; want the line %q (pod status %+v)", out, want, p.Status)
		}
	}

	// A Service without endpoints refuses at once, as kube-proxy's reject rule does.
	empty, err := svcs.Get(ctx, "no-backends", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// hello -get retries for 10 s, then prints the last error.
	out, err = execCombined(ctx, env.Kubectl, "--kubeconfig", env.Plane.KubeconfigPath(), "exec", "svc-backend", "--", "/app", "-get", "http://"+empty.Spec.ClusterIP+"/")
	if err == nil || !strings.Contains(out, "connection refused") { // not a time-out
		t.Errorf("a GET of a Service without endpoints: %q, %v; want connection refused", out, err)
	}
}
