package netsync

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

func ptr[T any](v T) *T { return &v }

// countingInformer counts the event handlers added to an informer and not yet removed.
type countingInformer struct {
	cache.SharedIndexInformer
	handlers atomic.Int32
}

func (c *countingInformer) AddEventHandler(h cache.ResourceEventHandler) (cache.ResourceEventHandlerRegistration, error) {
	c.handlers.Add(1)
	return c.SharedIndexInformer.AddEventHandler(h)
}

func (c *countingInformer) RemoveEventHandler(r cache.ResourceEventHandlerRegistration) error {
	c.handlers.Add(-1)
	return c.SharedIndexInformer.RemoveEventHandler(r)
}

// TestWatch runs Watch over informers the test owns: the first table comes once the caches have synced, a change
// that alters the table brings the next, one that does not brings none, calls to set never overlap, and Watch
// leaves no handler on the informers it was lent.
func TestWatch(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.0.0.20", Ports: []corev1.ServicePort{{Port: 80}}}}
	slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-x",
		Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr(""), Port: ptr(int32(8080))}}, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.92.0.5"}}}}
	client := fake.NewClientset(svc, slice)
	f := informers.NewSharedInformerFactory(client, 0)
	services := &countingInformer{SharedIndexInformer: f.Core().V1().Services().Informer()}
	slices := &countingInformer{SharedIndexInformer: f.Discovery().V1().EndpointSlices().Informer()}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	f.Start(ctx.Done())
	defer f.Shutdown()

	tables := make(chan Table)
	var inSet atomic.Bool
	done := make(chan error)
	go func() {
		done <- Watch(ctx, services, slices, func(tb Table) {
			if inSet.Swap(true) {
				t.Error("set called while a call is running")
			}
			defer inSet.Store(false)
			select {
			case tables <- tb:
			case <-ctx.Done():
			}
		})
	}()
	next := func() Table {
		t.Helper()
		select {
		case tb := <-tables:
			return tb
		case <-time.After(30 * time.Second):
			t.Fatal("no table")
			return nil
		}
	}
	endpointsOf := func(tb Table) []string {
		var out []string
		for _, e := range tb {
			for _, ep := range e.Endpoints {
				out = append(out, e.IP.String()+"->"+ep.IP.String())
			}
		}
		return out
	}
	if got := endpointsOf(next()); len(got) != 1 || got[0] != "10.0.0.20->10.92.0.5" {
		t.Fatalf("first table: %v", got)
	}

	// A change the table does not show (a label) brings no table; the next that alters it does.
	svc.Labels = map[string]string{"app": "web"}
	if _, err := client.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{Addresses: []string{"10.92.0.6"}})
	if _, err := client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := endpointsOf(next()); len(got) != 2 || got[1] != "10.0.0.20->10.92.0.6" {
		t.Fatalf("table after a new endpoint: %v", got)
	}
	if err := client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if tb := next(); len(tb) != 0 {
		t.Fatalf("table after the Service's deletion: %+v", tb)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Watch: %v", err)
	}
	if n, m := services.handlers.Load(), slices.handlers.Load(); n != 0 || m != 0 {
		t.Errorf("Watch left %d handlers on the Services informer and %d on the EndpointSlices one", n, m)
	}
}

// TestWatchStoppedInformer: an informer that has stopped takes no handler, and Watch says so instead of waiting
// forever for its cache.
func TestWatchStoppedInformer(t *testing.T) {
	f := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	services, slices := f.Core().V1().Services().Informer(), f.Discovery().V1().EndpointSlices().Informer()
	stop := make(chan struct{})
	f.Start(stop)
	close(stop)
	f.Shutdown()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second) // bounds the failure: a Watch that goes on
	defer cancel()
	if err := Watch(ctx, services, slices, func(Table) { t.Error("set called") }); err == nil {
		t.Fatal("Watch over stopped informers returned nil")
	}
}
