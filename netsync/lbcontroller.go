package netsync

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	discoveryv1listers "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// LoadBalancerFinalizer is on every Service the controller has made a load balancer for, until the load balancer
// is gone: deleting the Service then waits for it.
const LoadBalancerFinalizer = "i2kit.io/load-balancer-cleanup"

// The reasons of the Events the controller records on Services: Kubernetes' service controller's.
const (
	ReasonEnsuring   = "EnsuringLoadBalancer"
	ReasonEnsured    = "EnsuredLoadBalancer"
	ReasonSyncFailed = "SyncLoadBalancerFailed"
	ReasonDeleting   = "DeletingLoadBalancer"
	ReasonDeleted    = "DeletedLoadBalancer"
)

// LBControllerOptions configure an LBController; zero values take the defaults.
type LBControllerOptions struct {
	Model ModelOptions
	// Class is the loadBalancerClass of the Services the controller claims (LoadBalancerClass if empty). Nodes
	// that share a cluster but not a network, such as two qemu hosts, each need a class of their own.
	Class string
	// ClaimUnclassed also claims Services of type LoadBalancer that have no loadBalancerClass. It is off by
	// default so that in a cluster with a cloud controller of its own, that controller keeps them.
	ClaimUnclassed bool
	// Events records the Events on Services (the node's recorder; nil records none).
	Events record.EventRecorder
	// Workers is how many Services sync at once (2).
	Workers int
	// SweepPeriod is how often the orphan sweep runs after the first, at start, and every claimed Service is
	// Ensured again (10 minutes).
	SweepPeriod time.Duration
	// RetryBase and RetryMax bound the back-off of a failed sync: RetryBase doubled at every failure of the
	// Service, up to RetryMax (5 s and 5 minutes, as Kubernetes' service controller).
	RetryBase, RetryMax time.Duration
	// SyncTimeout bounds one sync of one Service, its Balancer calls included (5 minutes).
	SyncTimeout time.Duration
}

// LBController gives the Services it claims a load balancer through a Balancer. It claims the Services of type
// LoadBalancer whose loadBalancerClass is LoadBalancerClass (and, with ClaimUnclassed, those without a class). For
// each, it puts LoadBalancerFinalizer on the Service before the load balancer is made, Ensures the model
// (BuildLoadBalancer) whenever the Service or its EndpointSlices change, and publishes the addresses in
// status.loadBalancer.ingress. A Service being deleted, or no longer claimed (its type or class changed), has its
// load balancer deleted, then its status cleared and the finalizer removed. An orphan sweep, at start and every
// SweepPeriod, deletes the load balancers whose Service is gone — deleted while the node was down, or with the
// finalizer taken off by hand. It reports as Kubernetes' service controller does, with Events on the Service.
//
// The work is a rate-limited queue keyed by namespace/name: a Service syncs on one worker at a time, and a failed
// sync is retried with back-off. Orphans are deleted through the same queue, under their Service's key, so that
// the sweep never races a sync of the same Service.
type LBController struct {
	client           kubernetes.Interface
	services, slices cache.SharedIndexInformer
	svcLister        corev1listers.ServiceLister
	sliceLister      discoveryv1listers.EndpointSliceLister
	balancer         Balancer
	o                LBControllerOptions
	queue            workqueue.TypedRateLimitingInterface[string]

	mu sync.Mutex
	// orphans are the load balancers the sweep found without their Service, by the key of the Service's
	// namespace/name, for that key's sync to delete.
	orphans map[string][]ServiceKey
	// ensured is the model last Ensured for a key, without its targets: a sync whose model differs (the first of
	// this process, a spec or annotation change, a retry after a failure) records Ensuring and Ensured Events;
	// one that only moves targets, as a rollout does at every step, records none.
	ensured map[string]LoadBalancer
	// swept is set by the first sweep.
	swept atomic.Bool

	// afterSync, when set (by tests), is called after each key's sync with its result.
	afterSync func(key string, err error)
}

// sweepKey is the queue's key for the orphan sweep; no Service has it (a key of a Service has a '/').
const sweepKey = ""

// NewLBController is a controller over the caches of services (an informer of Services) and slices (an informer of
// EndpointSlices), which the caller owns and starts (a node shares virtual-kubelet's Services informer); it writes
// through client and realises load balancers with b. It does nothing until Run.
func NewLBController(client kubernetes.Interface, services, slices cache.SharedIndexInformer, b Balancer, o LBControllerOptions) *LBController {
	if o.Workers <= 0 {
		o.Workers = 2
	}
	if o.SweepPeriod <= 0 {
		o.SweepPeriod = 10 * time.Minute
	}
	if o.RetryBase <= 0 {
		o.RetryBase = 5 * time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 5 * time.Minute
	}
	if o.SyncTimeout <= 0 {
		o.SyncTimeout = 5 * time.Minute
	}
	if o.Events == nil {
		o.Events = &record.FakeRecorder{} // records nothing: a FakeRecorder without a channel drops Events
	}
	return &LBController{
		client: client, services: services, slices: slices, balancer: b, o: o,
		svcLister:   corev1listers.NewServiceLister(services.GetIndexer()),
		sliceLister: discoveryv1listers.NewEndpointSliceLister(slices.GetIndexer()),
		orphans:     map[string][]ServiceKey{},
		ensured:     map[string]LoadBalancer{},
	}
}

// Run syncs Services until ctx ends: once both caches have synced, it sweeps orphans, then syncs every claimed
// Service and each change. It adds its event handlers to the informers and removes them before it returns, once
// every sync has finished. It returns nil when ctx ends, and an error when an informer takes no handler (it has
// stopped). Run may be called once.
func (c *LBController) Run(ctx context.Context) error {
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](c.o.RetryBase, c.o.RetryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "i2kit-load-balancers"})
	defer c.queue.ShutDown()
	var synced []cache.InformerSynced
	for inf, h := range map[cache.SharedIndexInformer]cache.ResourceEventHandler{
		c.services: cache.ResourceEventHandlerFuncs{AddFunc: c.serviceChanged, DeleteFunc: c.serviceChanged,
			UpdateFunc: c.serviceUpdated},
		c.slices: cache.ResourceEventHandlerFuncs{AddFunc: c.sliceChanged, DeleteFunc: c.sliceChanged,
			UpdateFunc: func(old, obj any) { c.sliceChanged(old); c.sliceChanged(obj) }},
	} {
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return fmt.Errorf("watching Services and EndpointSlices for load balancers, %w", err)
		}
		defer inf.RemoveEventHandler(reg) //nolint:errcheck // fails only for a handle it did not give
		synced = append(synced, reg.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	c.queue.Add(sweepKey)
	var wg sync.WaitGroup
	for range c.o.Workers {
		wg.Go(func() {
			for c.next(ctx) {
			}
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

// next processes one key of the queue; false once the queue has shut down.
func (c *LBController) next(ctx context.Context) bool {
	key, shutdown := c.queue.Get()
	if shutdown {
		return false
	}
	defer c.queue.Done(key)
	var err error
	if key == sweepKey {
		err = c.sweep(ctx)
	} else {
		err = c.sync(ctx, key)
	}
	if c.afterSync != nil {
		defer c.afterSync(key, err)
	}
	var permanent permanentError
	switch {
	case err == nil || errors.As(err, &permanent):
		c.queue.Forget(key)
		if key == sweepKey {
			c.queue.AddAfter(sweepKey, c.o.SweepPeriod)
		}
	case ctx.Err() != nil: // stopping: the next start syncs everything again
	default:
		log.G(ctx).WithError(err).WithField("service", key).Warn("syncing a load balancer; retrying")
		c.queue.AddRateLimited(key)
	}
	return true
}

// permanentError is a sync failure that a retry cannot mend: the Service must change first, and that change
// brings the next sync.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// claimed says whether the controller owns svc's load balancer.
func (c *LBController) claimed(svc *corev1.Service) bool {
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return false
	}
	if svc.Spec.LoadBalancerClass == nil {
		return c.o.ClaimUnclassed
	}
	return *svc.Spec.LoadBalancerClass == cmp.Or(c.o.Class, LoadBalancerClass)
}

func hasFinalizer(svc *corev1.Service) bool {
	for _, f := range svc.Finalizers {
		if f == LoadBalancerFinalizer {
			return true
		}
	}
	return false
}

// serviceChanged queues a Service that is, or was, the controller's: claimed, or still carrying the finalizer.
// Others are never read again nor written.
func (c *LBController) serviceChanged(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	if svc, ok := obj.(*corev1.Service); ok && (c.claimed(svc) || hasFinalizer(svc)) {
		c.queue.Add(svc.Namespace + "/" + svc.Name)
	}
}

// serviceUpdated queues a Service of the controller's when a change matters to its load balancer. The controller's
// own writes (the finalizer added, the status) do not: they would only Ensure again what was just Ensured. Nor do
// the informer's resyncs: the sweep re-Ensures every claimed Service at its own period.
func (c *LBController) serviceUpdated(oldObj, obj any) {
	old, ok1 := oldObj.(*corev1.Service)
	svc, ok2 := obj.(*corev1.Service)
	if !ok1 || !ok2 {
		return
	}
	if !reflect.DeepEqual(old.Spec, svc.Spec) || !reflect.DeepEqual(old.Annotations, svc.Annotations) ||
		old.DeletionTimestamp.IsZero() != svc.DeletionTimestamp.IsZero() ||
		hasFinalizer(old) && !hasFinalizer(svc) { // taken off by hand: the sync puts it back
		c.serviceChanged(old) // one no longer claimed is queued for its release
		c.serviceChanged(svc)
	}
}

// sliceChanged queues the Service of an EndpointSlice when it is the controller's.
func (c *LBController) sliceChanged(obj any) {
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
	}
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || s.Labels[discoveryv1.LabelServiceName] == "" {
		return
	}
	if svc, err := c.svcLister.Services(s.Namespace).Get(s.Labels[discoveryv1.LabelServiceName]); err == nil {
		c.serviceChanged(svc)
	}
}

// sync brings the load balancer of the Service under key (namespace/name) in line with the cache: orphans of the
// key deleted, a load balancer Ensured for a claimed Service, or deleted (and the finalizer removed) for one being
// deleted or no longer claimed.
func (c *LBController) sync(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, c.o.SyncTimeout)
	defer cancel()
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return permanentError{err}
	}
	svc, err := c.svcLister.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		svc, err = nil, nil
	}
	if err != nil {
		return err
	}
	if err := c.deleteOrphans(ctx, key, svc); err != nil {
		return err
	}
	switch {
	case svc == nil:
		c.forgetEnsured(key)
		return nil
	case c.claimed(svc) && svc.DeletionTimestamp == nil:
		err = c.ensure(ctx, key, svc)
	case hasFinalizer(svc): // being deleted, or no longer claimed
		err = c.release(ctx, key, svc)
	default:
		c.forgetEnsured(key)
		return nil
	}
	if err != nil {
		c.o.Events.Eventf(svc, corev1.EventTypeWarning, ReasonSyncFailed, "Error syncing load balancer: %v", err)
	}
	return err
}

// ensure makes the load balancer of a claimed Service: the finalizer first, so that the Service cannot go without
// the controller deleting what it makes, then the Balancer's Ensure, then the status.
func (c *LBController) ensure(ctx context.Context, key string, svc *corev1.Service) error {
	endpointSlices, err := c.sliceLister.EndpointSlices(svc.Namespace).List(
		labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name}))
	if err != nil {
		return err
	}
	lb, err := BuildLoadBalancer(svc, endpointSlices, c.o.Model)
	if err != nil {
		// The model depends on the Service alone (not its endpoints): only a change to it can mend this. What
		// exists is left as it is, serving, until then.
		return permanentError{fmt.Errorf("building the load balancer, %w", err)}
	}
	shape := withoutTargets(lb)
	c.mu.Lock()
	last, ok := c.ensured[key]
	c.mu.Unlock()
	changed := !ok || !reflect.DeepEqual(last, shape)
	if changed {
		c.o.Events.Event(svc, corev1.EventTypeNormal, ReasonEnsuring, "Ensuring load balancer")
	}
	if !hasFinalizer(svc) {
		patch := fmt.Sprintf(`{"metadata":{"finalizers":[%q]}}`, LoadBalancerFinalizer) // merged into the list
		if svc, err = c.client.CoreV1().Services(svc.Namespace).Patch(ctx, svc.Name, types.StrategicMergePatchType,
			[]byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("adding the finalizer %s, %w", LoadBalancerFinalizer, err)
		}
	}
	c.forgetEnsured(key) // until this Ensure succeeds, a failure in it or after it makes the next sync report
	ingress, err := c.balancer.Ensure(ctx, lb)
	if err != nil {
		if len(ingress) > 0 { // it exists and answers there: say so while the rest is retried
			if perr := c.setIngress(ctx, svc, ingress); perr != nil {
				err = errors.Join(err, perr)
			}
		}
		return fmt.Errorf("ensuring load balancer %s, %w", lb.Name, err)
	}
	if changed {
		c.o.Events.Event(svc, corev1.EventTypeNormal, ReasonEnsured, "Ensured load balancer")
	}
	if err := c.setIngress(ctx, svc, ingress); err != nil {
		return err
	}
	c.mu.Lock()
	c.ensured[key] = shape
	c.mu.Unlock()
	return nil
}

// release deletes the load balancer of a Service that is being deleted or is no longer claimed, then clears its
// status and removes the finalizer: in this order, so that a failure leaves the finalizer for the retry.
//
// It acts on the Service as the API server has it, not the cache's copy: right after a release the cache may still
// show the finalizer it removed, and a sync from that copy would delete the load balancer and announce it again.
func (c *LBController) release(ctx context.Context, key string, svc *corev1.Service) error {
	c.forgetEnsured(key)
	live, err := c.client.CoreV1().Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("reading the Service, %w", err)
	case live.UID != svc.UID || !hasFinalizer(live):
		return nil // released already (or another Service of that name)
	}
	svc = live
	c.o.Events.Event(svc, corev1.EventTypeNormal, ReasonDeleting, "Deleting load balancer")
	sk := ServiceKey{Namespace: svc.Namespace, Name: svc.Name, UID: string(svc.UID)}
	if err := c.balancer.Delete(ctx, sk); err != nil {
		return fmt.Errorf("deleting the load balancer, %w", err)
	}
	if svc.DeletionTimestamp == nil { // a Service that stays (its type or class changed) keeps no stale address
		if err := c.setIngress(ctx, svc, nil); err != nil {
			return err
		}
	}
	patch := fmt.Sprintf(`{"metadata":{"$deleteFromPrimitiveList/finalizers":[%q]}}`, LoadBalancerFinalizer)
	_, err = c.client.CoreV1().Services(svc.Namespace).Patch(ctx, svc.Name, types.StrategicMergePatchType,
		[]byte(patch), metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("removing the finalizer %s, %w", LoadBalancerFinalizer, err)
	}
	c.o.Events.Event(svc, corev1.EventTypeNormal, ReasonDeleted, "Deleted load balancer")
	return nil
}

// setIngress writes ingress to svc's status.loadBalancer.ingress unless it is there already. It patches the status
// rather than updating it: an update from the cache would conflict whenever the cache lags behind the finalizer
// the controller just added, and would write back the rest of a status it does not own.
func (c *LBController) setIngress(ctx context.Context, svc *corev1.Service, ingress []corev1.LoadBalancerIngress) error {
	if len(ingress) == 0 && len(svc.Status.LoadBalancer.Ingress) == 0 || reflect.DeepEqual(ingress, svc.Status.LoadBalancer.Ingress) {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"loadBalancer": map[string]any{"ingress": ingress}}})
	if err != nil {
		return err
	}
	_, err = c.client.CoreV1().Services(svc.Namespace).Patch(ctx, svc.Name, types.MergePatchType, patch,
		metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("writing the load balancer's address to the status, %w", err)
	}
	return nil
}

func (c *LBController) forgetEnsured(key string) {
	c.mu.Lock()
	delete(c.ensured, key)
	c.mu.Unlock()
}

func withoutTargets(lb LoadBalancer) LoadBalancer {
	lb.Listeners = append([]Listener(nil), lb.Listeners...)
	for i := range lb.Listeners {
		lb.Listeners[i].Target.Targets = nil
	}
	return lb
}

// sweep lists the Balancer's load balancers and queues, under their Service's key, those whose Service is gone or
// is no longer the controller's. It lists the Balancer before reading the cache: a load balancer is Ensured only
// for a Service the cache held, so one listed whose Service the cache no longer holds is one whose Service was
// deleted. It then queues every Service of the controller's: a periodic Ensure repairs what was changed behind
// its back (a target deregistered by hand), at a constant number of calls per Service.
func (c *LBController) sweep(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.o.SyncTimeout)
	defer cancel()
	existing, err := c.balancer.List(ctx)
	if err != nil {
		return fmt.Errorf("listing load balancers, %w", err)
	}
	for _, sk := range existing {
		if svc, _ := c.svcLister.Services(sk.Namespace).Get(sk.Name); c.owns(svc, sk) {
			continue
		}
		key := sk.Namespace + "/" + sk.Name
		c.mu.Lock()
		c.orphans[key] = append(c.orphans[key], sk)
		c.mu.Unlock()
		c.queue.Add(key)
	}
	if c.swept.Swap(true) { // at the first sweep, the informers' Adds have queued them all
		all, _ := c.svcLister.List(labels.Everything()) // a cache's List does not fail
		for _, svc := range all {
			c.serviceChanged(svc)
		}
	}
	return nil
}

// owns says whether svc (nil when there is none) is the Service of the load balancer sk and the controller's, so
// that its own sync keeps or deletes that load balancer.
func (c *LBController) owns(svc *corev1.Service, sk ServiceKey) bool {
	return svc != nil && string(svc.UID) == sk.UID && (c.claimed(svc) || hasFinalizer(svc))
}

// deleteOrphans deletes the orphans the sweep found under key that are still orphans now that the key's sync holds
// it (svc is the key's Service, nil when there is none); those it fails to delete stay for the retry.
func (c *LBController) deleteOrphans(ctx context.Context, key string, svc *corev1.Service) error {
	c.mu.Lock()
	orphans := c.orphans[key]
	delete(c.orphans, key)
	c.mu.Unlock()
	for i, sk := range orphans {
		if c.owns(svc, sk) {
			continue
		}
		log.G(ctx).WithField("service", key).WithField("uid", sk.UID).Info("deleting the load balancer of a Service that is gone")
		if err := c.balancer.Delete(ctx, sk); err != nil {
			c.mu.Lock()
			c.orphans[key] = append(c.orphans[key], orphans[i:]...)
			c.mu.Unlock()
			return fmt.Errorf("deleting the orphaned load balancer of Service UID %s, %w", sk.UID, err)
		}
	}
	return nil
}
