package node

import (
	"context"
	"errors"

	vknode "github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/i2kit/i2kit/netsync"
)

// shareServiceInformer is a NodeOpt that stores virtual-kubelet's Services informer in *services when the node is
// built. virtual-kubelet watches every Service for its pods' environment; netsync reads the same informer, so that
// the node runs one Services watch. virtual-kubelet starts the informer when the node runs.
func shareServiceInformer(services *cache.SharedIndexInformer) nodeutil.NodeOpt {
	return nodeutil.WithPodControllerConfigOverrides(func(pc *vknode.PodControllerConfig) error {
		if pc.ServiceInformer == nil {
			return errors.New("virtual-kubelet built the pod controller without a Services informer")
		}
		*services = pc.ServiceInformer.Informer()
		return nil
	})
}

// watchRuntimeObjects is a NodeOpt that calls changed with the namespace of every ConfigMap and Secret that
// virtual-kubelet's informers see added, updated or deleted: the provider syncs the pods that may use it (their
// env and volumes), without a watch of its own.
func watchRuntimeObjects(changed func(namespace string)) nodeutil.NodeOpt {
	return nodeutil.WithPodControllerConfigOverrides(func(pc *vknode.PodControllerConfig) error {
		if pc.ConfigMapInformer == nil || pc.SecretInformer == nil {
			return errors.New("virtual-kubelet built the pod controller without ConfigMap and Secret informers")
		}
		ns := func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if m, ok := obj.(metav1.Object); ok {
				changed(m.GetNamespace())
			}
		}
		h := cache.ResourceEventHandlerFuncs{AddFunc: ns, UpdateFunc: func(_, obj any) { ns(obj) }, DeleteFunc: ns}
		if _, err := pc.ConfigMapInformer.Informer().AddEventHandler(h); err != nil {
			return err
		}
		_, err := pc.SecretInformer.Informer().AddEventHandler(h)
		return err
	})
}

// syncServices calls set with the service table (netsync.Watch) until ctx ends, and runs lb (when not nil) on the
// same informers: services, the node's Services informer, and the EndpointSlices of an informer of its own
// (virtual-kubelet watches none), stopped on return.
func syncServices(ctx context.Context, client kubernetes.Interface, services cache.SharedIndexInformer, set func(netsync.Table),
	lb func(services, slices cache.SharedIndexInformer) *netsync.LBController) error {
	ctx, cancel := context.WithCancel(ctx)
	f := informers.NewSharedInformerFactory(client, 0)
	slices := f.Discovery().V1().EndpointSlices().Informer()
	f.Start(ctx.Done())
	defer f.Shutdown() // after cancel: Shutdown waits for the informer to stop
	defer cancel()
	if lb == nil {
		return netsync.Watch(ctx, services, slices, set)
	}
	c := lb(services, slices)
	errs := make(chan error, 2)
	go func() { errs <- netsync.Watch(ctx, services, slices, set) }()
	go func() { errs <- c.Run(ctx) }()
	err := <-errs
	cancel()
	return errors.Join(err, <-errs)
}
