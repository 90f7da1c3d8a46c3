package node

import (
	"context"
	"sync"
	"testing"
	"time"

	vknode "github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	corev1listers "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/i2kit/i2kit/netsync"
)

// noPods is a provider without pods: the node test needs virtual-kubelet's controllers running, not pods.
type noPods struct{ nodeutil.Provider }

func (noPods) GetPods(context.Context) ([]*corev1.Pod, error)              { return nil, nil }
func (noPods) NotifyPods(context.Context, func(*corev1.Pod))               {}
func (noPods) GetPod(context.Context, string, string) (*corev1.Pod, error) { return nil, nil }

// TestOneServicesWatch runs virtual-kubelet's node and the service table's sync as Run wires them, against a fake
// API server that counts watches, and checks that the node watches Services once: netsync and virtual-kubelet
// (the pods' service environment) read the same informer, which sees every change.
func TestOneServicesWatch(t *testing.T) {
	client := fake.NewClientset()
	var mu sync.Mutex
	watches := map[string]int{}
	client.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		mu.Lock()
		watches[a.GetResource().Resource]++
		mu.Unlock()
		return false, nil, nil
	})

	var vkServices corev1listers.ServiceLister // what virtual-kubelet gives the provider
	var services cache.SharedIndexInformer
	n, err := nodeutil.NewNode("i2kit-test", func(pc nodeutil.ProviderConfig) (nodeutil.Provider, vknode.NodeProvider, error) {
		vkServices = pc.Services
		return noPods{}, nodeProvider{}, nil
	}, nodeutil.WithClient(client), shareServiceInformer(&services), func(nc *nodeutil.NodeConfig) error {
		nc.EventRecorder = record.NewFakeRecorder(100)
		nc.NumWorkers = 1
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if services == nil {
		t.Fatal("shareServiceInformer got no informer")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); n.Run(ctx) }() //nolint:errcheck // ends with ctx
	var tableMu sync.Mutex
	var table netsync.Table
	go func() {
		defer wg.Done()
		if err := syncServices(ctx, client, services, func(tb netsync.Table) {
			tableMu.Lock()
			table = tb
			tableMu.Unlock()
		}, nil); err != nil {
			t.Errorf("syncServices: %v", err)
		}
	}()

	// Each Service must reach both readers; the second can reach an informer only through its watch (the first
	// proves its list done), so that every informer that feeds them has watched by then.
	for i, ip := range []string{"10.0.0.1", "10.0.0.2"} {
		name := []string{"first", "second"}[i]
		createService(t, ctx, client, name, ip)
		waitFor(t, "virtual-kubelet and netsync to see Service "+name, func() bool {
			tableMu.Lock()
			defer tableMu.Unlock()
			_, err := vkServices.Services("default").Get(name)
			return err == nil && len(table) == i+1 && len(table[i].Endpoints) == 1
		})
	}
	mu.Lock()
	got := map[string]int{"services": watches["services"], "endpointslices": watches["endpointslices"]}
	mu.Unlock()
	if got["services"] != 1 || got["endpointslices"] != 1 {
		t.Errorf("watches: %v, want one of each", got)
	}
	cancel()
	wg.Wait()
}

func createService(t *testing.T, ctx context.Context, client *fake.Clientset, name, ip string) {
	t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: []corev1.ServicePort{{Port: 80}}}}
	port, proto := int32(8080), corev1.ProtocolTCP
	slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name + "-x",
		Labels: map[string]string{discoveryv1.LabelServiceName: name}}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports:     []discoveryv1.EndpointPort{{Port: &port, Protocol: &proto}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.92.0.5"}}}}
	for _, o := range []runtime.Object{slice, svc} {
		var err error
		switch o := o.(type) {
		case *corev1.Service:
			_, err = client.CoreV1().Services("default").Create(ctx, o, metav1.CreateOptions{})
		case *discoveryv1.EndpointSlice:
			_, err = client.DiscoveryV1().EndpointSlices("default").Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor waits until cond holds, failing the test after 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 10*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return cond(), nil
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// TestShareServiceInformerWithout: a virtual-kubelet that gave its pod controller no Services informer fails the
// node's construction with a reason instead of a nil informer for netsync.
func TestShareServiceInformerWithout(t *testing.T) {
	var cfg nodeutil.NodeConfig
	var services cache.SharedIndexInformer
	if err := shareServiceInformer(&services)(&cfg); err != nil {
		t.Fatal(err)
	}
	for _, o := range cfg.PodControllerConfigOpts {
		if err := o(&vknode.PodControllerConfig{}); err == nil {
			t.Error("no error without a Services informer")
		}
	}
}
