package netsync

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	corev1listers "k8s.io/client-go/listers/core/v1"
	discoveryv1listers "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// coalesce is how long a change waits for the next before the table is rebuilt: a rollout moves many endpoints
// at once, and every pod VM receives each table.
const coalesce = 200 * time.Millisecond

// Watch calls set with the table built from the caches of services (an informer of Services) and slices (an
// informer of EndpointSlices): once both have synced, then after every change that alters the table, each change
// waiting coalesce for the next, until ctx ends. Calls to set are sequential. The informers are the caller's, to
// share (a node runs one watch per resource): the caller starts them, and Watch only adds its event handlers,
// which it removes before it returns. Watch returns nil when ctx ends, and an error when an informer takes no
// handler (it has stopped).
func Watch(ctx context.Context, services, slices cache.SharedIndexInformer, set func(Table)) error {
	kick := make(chan struct{}, 1)
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke(kick) },
		UpdateFunc: func(any, any) { poke(kick) },
		DeleteFunc: func(any) { poke(kick) },
	}
	var synced []cache.InformerSynced
	for _, inf := range []cache.SharedIndexInformer{services, slices} {
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return fmt.Errorf("watching the service table's sources, %w", err)
		}
		defer inf.RemoveEventHandler(reg) //nolint:errcheck // fails only for a handle it did not give
		synced = append(synced, reg.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	svcLister := corev1listers.NewServiceLister(services.GetIndexer())
	sliceLister := discoveryv1listers.NewEndpointSliceLister(slices.GetIndexer())
	var last Table
	first := true
	for {
		s, _ := svcLister.List(labels.Everything()) // a cache's List does not fail
		e, _ := sliceLister.List(labels.Everything())
		if table := BuildTable(s, e); first || !reflect.DeepEqual(table, last) {
			set(table)
			last, first = table, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(coalesce):
		}
	}
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
