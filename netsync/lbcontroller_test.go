package netsync

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

// fakeBalancer is a Balancer that keeps the load balancers in a map, records its calls, fails on demand and
// reports two calls for one Service at once.
type fakeBalancer struct {
	t  *testing.T
	mu sync.Mutex
	// lbs are the load balancers that exist.
	lbs   map[ServiceKey]LoadBalancer
	calls []string // "ensure ns/name", "delete ns/name uid", "list"
	// ensureErrs, deleteErrs and listErrs fail that many calls from now.
	ensureErrs, deleteErrs, listErrs int
	// notDone fails that many Ensures from now as a balancer whose new targets are still coming up: the load
	// balancer exists, its ingress is returned with errNotDone.
	notDone int
	// before, when set, is called at the start of every call (outside the lock).
	before   func(call string, svc ServiceKey)
	inflight map[string]bool
}

func newFakeBalancer(t *testing.T) *fakeBalancer {
	return &fakeBalancer{t: t, lbs: map[ServiceKey]LoadBalancer{}, inflight: map[string]bool{}}
}

var (
	errInjected = errors.New("injected failure")
	errNotDone  = errors.New("new targets are not healthy yet")
)

// enter marks a call for a Service as running, and fails the test if another one is.
func (f *fakeBalancer) enter(call string, svc ServiceKey) func() {
	key := svc.Namespace + "/" + svc.Name
	f.mu.Lock()
	if f.inflight[key] {
		f.t.Errorf("%s %s while another call for the Service runs", call, key)
	}
	f.inflight[key] = true
	f.mu.Unlock()
	if f.before != nil {
		f.before(call, svc)
	}
	return func() {
		f.mu.Lock()
		delete(f.inflight, key)
		f.mu.Unlock()
	}
}

func (f *fakeBalancer) Ensure(_ context.Context, lb LoadBalancer) ([]corev1.LoadBalancerIngress, error) {
	defer f.enter("ensure", lb.Service)()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "ensure "+lb.Service.Namespace+"/"+lb.Service.Name)
	if f.ensureErrs > 0 {
		f.ensureErrs--
		return nil, errInjected
	}
	if f.notDone > 0 {
		f.notDone--
		f.lbs[lb.Service] = lb
		return []corev1.LoadBalancerIngress{{Hostname: lb.Name + ".lb.example"}}, errNotDone
	}
	f.lbs[lb.Service] = lb
	return []corev1.LoadBalancerIngress{{IP: "192.0.2.1", Hostname: lb.Name + ".lb.example"}}, nil
}

func (f *fakeBalancer) Delete(_ context.Context, svc ServiceKey) error {
	defer f.enter("delete", svc)()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "delete "+svc.Namespace+"/"+svc.Name+" "+svc.UID)
	if f.deleteErrs > 0 {
		f.deleteErrs--
		return errInjected
	}
	delete(f.lbs, svc)
	return nil
}

func (f *fakeBalancer) List(context.Context) ([]ServiceKey, error) {
	if f.before != nil {
		f.before("list", ServiceKey{})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "list")
	if f.listErrs > 0 {
		f.listErrs--
		return nil, errInjected
	}
	var out []ServiceKey
	for k := range f.lbs {
		out = append(out, k)
	}
	return out, nil
}

func (f *fakeBalancer) lb(svc ServiceKey) (LoadBalancer, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	lb, ok := f.lbs[svc]
	return lb, ok
}

func (f *fakeBalancer) callsFor(prefix string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			out = append(out, c)
		}
	}
	return out
}

// recorder is an EventRecorder that keeps "namespace/name Type Reason message" of every Event.
type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) Event(obj runtime.Object, eventtype, reason, message string) {
	m := obj.(metav1.Object)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s/%s %s %s %s", m.GetNamespace(), m.GetName(), eventtype, reason, message))
}

func (r *recorder) Eventf(obj runtime.Object, eventtype, reason, format string, args ...any) {
	r.Event(obj, eventtype, reason, fmt.Sprintf(format, args...))
}

func (r *recorder) AnnotatedEventf(obj runtime.Object, _ map[string]string, eventtype, reason, format string, args ...any) {
	r.Eventf(obj, eventtype, reason, format, args...)
}

// reasons are the reasons of the Events on the Service named svc (namespace/name), in order.
func (r *recorder) reasons(svc string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if f := strings.Fields(e); f[0] == svc {
			out = append(out, f[2])
		}
	}
	return out
}

func (r *recorder) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// lbEnv is a controller running over a fake clientset's informers.
type lbEnv struct {
	t      *testing.T
	ctx    context.Context
	client *fake.Clientset
	b      *fakeBalancer
	events *recorder
	c      *LBController

	mu    sync.Mutex
	syncs map[string][]error // the results of every sync, by key
}

// startLB runs a controller with options o (fast retries unless set) over objs until the test ends.
func startLB(t *testing.T, b *fakeBalancer, o LBControllerOptions, objs ...runtime.Object) *lbEnv {
	t.Helper()
	return startLBWith(t, b, o, nil, objs...)
}

// startLBWith is startLB with onSync called after every sync, on the sync's worker.
func startLBWith(t *testing.T, b *fakeBalancer, o LBControllerOptions, onSync func(e *lbEnv, key string, err error), objs ...runtime.Object) *lbEnv {
	t.Helper()
	client := fake.NewClientset(objs...)
	f := informers.NewSharedInformerFactory(client, 0)
	services := f.Core().V1().Services().Informer()
	endpointSlices := f.Discovery().V1().EndpointSlices().Informer()
	ctx, cancel := context.WithCancel(t.Context())
	f.Start(ctx.Done())
	e := &lbEnv{t: t, ctx: ctx, client: client, b: b, events: &recorder{}, syncs: map[string][]error{}}
	o.Events = e.events
	o.Model = cmp.Or(o.Model, ModelOptions{Cluster: "test-cluster", Node: "node-1"})
	o.RetryBase = cmp.Or(o.RetryBase, time.Millisecond)
	o.RetryMax = cmp.Or(o.RetryMax, 20*time.Millisecond)
	e.c = NewLBController(client, services, endpointSlices, b, o)
	e.c.afterSync = func(key string, err error) {
		e.mu.Lock()
		e.syncs[key] = append(e.syncs[key], err)
		e.mu.Unlock()
		if onSync != nil {
			onSync(e, key, err)
		}
	}
	done := make(chan error)
	go func() { done <- e.c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		f.Shutdown()
	})
	return e
}

// eventually waits until cond holds, failing the test after 30 s.
func (e *lbEnv) eventually(what string, cond func() bool) {
	e.t.Helper()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			e.t.Fatalf("timed out waiting for %s; balancer calls %v; events %v", what, e.b.callsFor(""), e.events.all())
		}
	}
}

func (e *lbEnv) service(name string) *corev1.Service {
	e.t.Helper()
	svc, err := e.client.CoreV1().Services("default").Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return svc
}

func (e *lbEnv) update(svc *corev1.Service) {
	e.t.Helper()
	if _, err := e.client.CoreV1().Services(svc.Namespace).Update(e.ctx, svc, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// syncResults are the results of the syncs of key so far.
func (e *lbEnv) syncResults(key string) []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.syncs[key])
}

// serviceActions are the verbs of the clientset's writes to the Service named name.
func (e *lbEnv) serviceActions(name string) []string {
	var out []string
	for _, a := range e.client.Actions() {
		if a.GetResource().Resource != "services" || a.GetVerb() == "get" || a.GetVerb() == "list" || a.GetVerb() == "watch" {
			continue
		}
		if n, ok := a.(interface{ GetName() string }); ok && n.GetName() != name {
			continue
		}
		if o, ok := a.(interface{ GetObject() runtime.Object }); ok && o.GetObject().(metav1.Object).GetName() != name {
			continue
		}
		out = append(out, strings.TrimSpace(a.GetVerb()+" "+a.GetSubresource()))
	}
	return out
}

func lbService(name, uid string, class *string, annotations map[string]string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID(uid), Annotations: annotations},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: class,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
	}
}

func lbSlice(service string, ips ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: service + "-x",
		Labels: map[string]string{discoveryv1.LabelServiceName: service}}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}}}
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}})
	}
	return s
}

var ours = ptr(LoadBalancerClass)

func targetsOf(lb LoadBalancer) []string {
	var out []string
	for _, l := range lb.Listeners {
		for _, t := range l.Target.Targets {
			out = append(out, fmt.Sprintf("%d->%s:%d", l.Port, t.IP, t.Port))
		}
	}
	return out
}

// TestLBControllerEnsure: a claimed Service gets the finalizer before its load balancer is made, the load
// balancer with its ready endpoints, the address in its status and the service controller's Events; an endpoint
// change Ensures the new targets without Events or a status write; a spec change reports again.
func TestLBControllerEnsure(t *testing.T) {
	b := newFakeBalancer(t)
	svc := lbService("web", "uid-web", ours, nil)
	key := ServiceKey{"default", "web", "uid-web"}
	var e *lbEnv
	b.before = func(call string, sk ServiceKey) {
		if call == "ensure" && !slices.Contains(e.service(sk.Name).Finalizers, LoadBalancerFinalizer) {
			t.Errorf("Ensure before the finalizer is on the Service")
		}
	}
	e = startLB(t, b, LBControllerOptions{}, svc, lbSlice("web", "10.92.0.5"))

	e.eventually("the status", func() bool { return len(e.service("web").Status.LoadBalancer.Ingress) == 1 })
	got := e.service("web")
	if ing := got.Status.LoadBalancer.Ingress[0]; ing.IP != "192.0.2.1" || !strings.HasSuffix(ing.Hostname, ".lb.example") {
		t.Errorf("ingress %+v", ing)
	}
	if !slices.Equal(got.Finalizers, []string{LoadBalancerFinalizer}) {
		t.Errorf("finalizers %v", got.Finalizers)
	}
	lb, _ := b.lb(key)
	if tg := targetsOf(lb); !slices.Equal(tg, []string{"80->10.92.0.5:8080"}) {
		t.Errorf("targets %v", tg)
	}
	if lb.Tags[TagNode] != "node-1" || lb.Tags[TagServiceUID] != "uid-web" {
		t.Errorf("the model was not built with the options: tags %v", lb.Tags)
	}
	e.eventually("the Ensured event", func() bool {
		return slices.Equal(e.events.reasons("default/web"), []string{ReasonEnsuring, ReasonEnsured})
	})

	// A rollout step: new targets are Ensured, quietly.
	slice := lbSlice("web", "10.92.0.5", "10.92.0.6")
	if _, err := e.client.DiscoveryV1().EndpointSlices("default").Update(e.ctx, slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("the new targets", func() bool {
		lb, _ := b.lb(key)
		return slices.Equal(targetsOf(lb), []string{"80->10.92.0.5:8080", "80->10.92.0.6:8080"})
	})
	e.eventually("the sync to end", func() bool { return len(e.syncResults("default/web")) >= 2 })
	if r := e.events.reasons("default/web"); len(r) != 2 {
		t.Errorf("a targets-only change recorded Events: %v", r)
	}
	if a := e.serviceActions("web"); !slices.Equal(a, []string{"patch", "patch status"}) {
		t.Errorf("writes to the Service: %v (one finalizer patch, one status patch)", a)
	}

	// A change of the Service's spec is reported.
	got.Annotations = map[string]string{AnnotationScheme: "internet-facing"}
	e.update(got)
	e.eventually("the second Ensured event", func() bool { return len(e.events.reasons("default/web")) == 4 })
	lb, _ = b.lb(key)
	if lb.Internal {
		t.Error("the annotation change was not Ensured")
	}
}

// TestLBControllerClaims: only Services of type LoadBalancer with i2kit's class are claimed, and those without a
// class only with ClaimUnclassed; the others are never written nor passed to the Balancer.
func TestLBControllerClaims(t *testing.T) {
	objs := func() []runtime.Object {
		plain := lbService("plain", "uid-plain", nil, nil)
		plain.Spec.Type = corev1.ServiceTypeClusterIP
		return []runtime.Object{
			lbService("other", "uid-other", ptr("example.com/other"), nil),
			lbService("noclass", "uid-noclass", nil, nil),
			plain,
			lbService("ours", "uid-ours", ours, nil),
		}
	}
	for _, unclassed := range []bool{false, true} {
		t.Run(fmt.Sprintf("ClaimUnclassed=%v", unclassed), func(t *testing.T) {
			b := newFakeBalancer(t)
			e := startLB(t, b, LBControllerOptions{ClaimUnclassed: unclassed, Workers: 1}, objs()...)
			want := []string{"ensure default/ours"}
			if unclassed {
				want = []string{"ensure default/noclass", "ensure default/ours"}
			}
			e.eventually("the claimed Services' status", func() bool {
				for _, w := range want {
					if len(e.service(strings.TrimPrefix(w, "ensure default/")).Status.LoadBalancer.Ingress) == 0 {
						return false
					}
				}
				return true
			})
			got := b.callsFor("ensure")
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("Ensured %v, want %v", got, want)
			}
			for _, name := range []string{"other", "plain", "noclass"} {
				if name == "noclass" && unclassed {
					continue
				}
				if a := e.serviceActions(name); len(a) != 0 {
					t.Errorf("unclaimed Service %s written: %v", name, a)
				}
				if r := e.events.reasons("default/" + name); len(r) != 0 {
					t.Errorf("unclaimed Service %s has Events %v", name, r)
				}
			}
		})
	}
	// A node configured with another class claims that class and not i2kit's.
	t.Run("Class", func(t *testing.T) {
		b := newFakeBalancer(t)
		e := startLB(t, b, LBControllerOptions{Class: "example.com/other", Workers: 1}, objs()...)
		e.eventually("the other class's status", func() bool { return len(e.service("other").Status.LoadBalancer.Ingress) > 0 })
		if got := b.callsFor("ensure"); !slices.Equal(got, []string{"ensure default/other"}) {
			t.Errorf("Ensured %v, want only default/other", got)
		}
		if a := e.serviceActions("ours"); len(a) != 0 {
			t.Errorf("a Service of i2kit's default class written by a node of another class: %v", a)
		}
	})
}

// TestLBControllerPublishesWhileNotDone: an Ensure that fails with addresses (the load balancer exists, its
// targets are still coming up) has them published at once, and is retried until it is done.
func TestLBControllerPublishesWhileNotDone(t *testing.T) {
	b := newFakeBalancer(t)
	b.notDone = 2
	e := startLB(t, b, LBControllerOptions{RetryBase: time.Hour}, lbService("web", "uid-web", ours, nil))
	e.eventually("the ingress of a load balancer not done", func() bool {
		in := e.service("web").Status.LoadBalancer.Ingress
		return len(in) == 1 && in[0].Hostname != "" && in[0].IP == ""
	})
	e.eventually("a SyncLoadBalancerFailed Event saying it is not done", func() bool {
		return slices.ContainsFunc(e.events.all(), func(ev string) bool {
			return strings.Contains(ev, ReasonSyncFailed) && strings.Contains(ev, errNotDone.Error())
		})
	})
}

// TestLBControllerDelete: a claimed Service being deleted has its load balancer deleted while the finalizer still
// holds it, then the finalizer removed; its status is left (the Service is going).
func TestLBControllerDelete(t *testing.T) {
	b := newFakeBalancer(t)
	var e *lbEnv
	b.before = func(call string, sk ServiceKey) {
		if call == "delete" && !slices.Contains(e.service(sk.Name).Finalizers, LoadBalancerFinalizer) {
			t.Errorf("Delete after the finalizer was removed")
		}
	}
	e = startLB(t, b, LBControllerOptions{}, lbService("web", "uid-web", ours, nil))
	e.eventually("the status", func() bool { return len(e.service("web").Status.LoadBalancer.Ingress) == 1 })

	// What the API server does on a delete of an object with finalizers.
	svc := e.service("web")
	svc.DeletionTimestamp = ptr(metav1.Now())
	e.update(svc)
	e.eventually("the finalizer's removal", func() bool {
		return len(e.service("web").Finalizers) == 0 && slices.Contains(e.events.reasons("default/web"), ReasonDeleted)
	})
	if _, ok := b.lb(ServiceKey{"default", "web", "uid-web"}); ok {
		t.Error("the load balancer is left")
	}
	if d := b.callsFor("delete"); !slices.Equal(d, []string{"delete default/web uid-web"}) {
		t.Errorf("deletes %v", d)
	}
	if a := e.serviceActions("web"); !slices.Equal(a, []string{"patch", "patch status", "update", "patch"}) {
		t.Errorf("writes to the Service: %v (the status of a Service being deleted is not cleared)", a)
	}
	if r := e.events.reasons("default/web"); !slices.Equal(r, []string{ReasonEnsuring, ReasonEnsured, ReasonDeleting, ReasonDeleted}) {
		t.Errorf("events %v", r)
	}
}

// TestLBControllerRelease: a Service that stops being claimed — its type or its class changed — has its load
// balancer deleted, its address cleared and the finalizer removed; it is not Ensured again.
func TestLBControllerRelease(t *testing.T) {
	for name, change := range map[string]func(*corev1.Service){
		"type":  func(s *corev1.Service) { s.Spec.Type, s.Spec.LoadBalancerClass = corev1.ServiceTypeClusterIP, nil },
		"class": func(s *corev1.Service) { s.Spec.LoadBalancerClass = ptr("example.com/other") },
	} {
		t.Run(name, func(t *testing.T) {
			b := newFakeBalancer(t)
			e := startLB(t, b, LBControllerOptions{}, lbService("web", "uid-web", ours, nil))
			e.eventually("the status", func() bool { return len(e.service("web").Status.LoadBalancer.Ingress) == 1 })
			svc := e.service("web")
			change(svc)
			e.update(svc)
			e.eventually("the release", func() bool {
				s := e.service("web")
				return len(s.Finalizers) == 0 && len(s.Status.LoadBalancer.Ingress) == 0 &&
					slices.Contains(e.events.reasons("default/web"), ReasonDeleted)
			})
			if _, ok := b.lb(ServiceKey{"default", "web", "uid-web"}); ok {
				t.Error("the load balancer is left")
			}
			if r := e.events.reasons("default/web"); !slices.Equal(r, []string{ReasonEnsuring, ReasonEnsured, ReasonDeleting, ReasonDeleted}) {
				t.Errorf("events %v", r)
			}
			if n := len(b.callsFor("ensure")); n != 1 {
				t.Errorf("%d Ensures, want 1", n)
			}
		})
	}
}

// TestLBControllerRetry: a failing Ensure is reported with its error and retried until it succeeds; so is a
// failing Delete, the finalizer staying until it succeeds.
func TestLBControllerRetry(t *testing.T) {
	b := newFakeBalancer(t)
	b.ensureErrs, b.deleteErrs = 2, 2
	e := startLB(t, b, LBControllerOptions{}, lbService("web", "uid-web", ours, nil))
	e.eventually("the status", func() bool { return len(e.service("web").Status.LoadBalancer.Ingress) == 1 })
	want := []string{ReasonEnsuring, ReasonSyncFailed, ReasonEnsuring, ReasonSyncFailed, ReasonEnsuring, ReasonEnsured}
	if r := e.events.reasons("default/web"); !slices.Equal(r, want) {
		t.Errorf("events %v, want %v", r, want)
	}
	for _, ev := range e.events.all() {
		if strings.Contains(ev, ReasonSyncFailed) && !strings.Contains(ev, errInjected.Error()) {
			t.Errorf("the failure's Event does not say why: %q", ev)
		}
	}

	svc := e.service("web")
	svc.DeletionTimestamp = ptr(metav1.Now())
	e.update(svc)
	e.eventually("the finalizer's removal", func() bool { return len(e.service("web").Finalizers) == 0 })
	if n := len(b.callsFor("delete")); n != 3 {
		t.Errorf("%d Deletes, want 3", n)
	}
}

// TestLBControllerInvalidService: a Service whose model cannot be built is reported and not retried (only a change
// of the Service mends it); no finalizer is added and nothing is made until it is mended.
func TestLBControllerInvalidService(t *testing.T) {
	b := newFakeBalancer(t)
	e := startLB(t, b, LBControllerOptions{}, lbService("web", "uid-web", ours, map[string]string{AnnotationScheme: "public"}))
	e.eventually("the failed sync", func() bool { return len(e.syncResults("default/web")) == 1 })
	if r := e.events.reasons("default/web"); !slices.Equal(r, []string{ReasonSyncFailed}) {
		t.Errorf("events %v", r)
	}
	if n := e.c.queue.NumRequeues("default/web"); n != 0 {
		t.Errorf("the sync of an invalid Service is retried (%d requeues)", n)
	}
	if a := e.serviceActions("web"); len(a) != 0 {
		t.Errorf("writes to an invalid Service: %v", a)
	}
	svc := e.service("web")
	svc.Annotations = nil
	e.update(svc)
	e.eventually("the status", func() bool { return len(e.service("web").Status.LoadBalancer.Ingress) == 1 })
}

// TestLBControllerOrphanSweep: at start, the load balancers whose Service is gone — deleted (by UID: one of that
// name created since is another), or no longer claimed and without the finalizer — are deleted, and those of
// claimed Services kept; a sweep whose listing fails is retried (here well before its period of an hour).
func TestLBControllerOrphanSweep(t *testing.T) {
	b := newFakeBalancer(t)
	b.listErrs = 1
	gone := ServiceKey{"default", "gone", "uid-gone"}
	old := ServiceKey{"default", "web", "uid-old"}
	plain := ServiceKey{"default", "plain", "uid-plain"}
	kept := ServiceKey{"default", "web", "uid-web"}
	for _, k := range []ServiceKey{gone, old, plain, kept} {
		b.lbs[k] = LoadBalancer{Service: k}
	}
	plainSvc := lbService("plain", "uid-plain", nil, nil)
	plainSvc.Spec.Type = corev1.ServiceTypeClusterIP
	e := startLB(t, b, LBControllerOptions{SweepPeriod: time.Hour}, lbService("web", "uid-web", ours, nil), plainSvc)
	e.eventually("the orphans' deletion", func() bool {
		_, g := b.lb(gone)
		_, o := b.lb(old)
		_, p := b.lb(plain)
		return !g && !o && !p
	})
	if _, ok := b.lb(kept); !ok {
		t.Error("the sweep deleted the load balancer of a claimed Service")
	}
	if a := e.serviceActions("plain"); len(a) != 0 {
		t.Errorf("writes to an unclaimed Service: %v", a)
	}
}

// TestLBControllerPeriodicSweep: the sweep runs every SweepPeriod — finding a Service deleted while the node was
// down — and Ensures every claimed Service again, quietly.
func TestLBControllerPeriodicSweep(t *testing.T) {
	b := newFakeBalancer(t)
	e := startLB(t, b, LBControllerOptions{SweepPeriod: 20 * time.Millisecond}, lbService("web", "uid-web", ours, nil))
	e.eventually("the status", func() bool { return len(e.service("web").Status.LoadBalancer.Ingress) == 1 })
	later := ServiceKey{"default", "later", "uid-later"}
	b.mu.Lock()
	b.lbs[later] = LoadBalancer{Service: later}
	b.mu.Unlock()
	e.eventually("a later sweep", func() bool { _, ok := b.lb(later); return !ok })
	e.eventually("Ensures again", func() bool { return len(b.callsFor("ensure")) >= 3 })
	if _, ok := b.lb(ServiceKey{"default", "web", "uid-web"}); !ok {
		t.Error("the sweep deleted the load balancer of a claimed Service")
	}
	if r := e.events.reasons("default/web"); len(r) != 2 {
		t.Errorf("Ensuring an unchanged Service again recorded Events: %v", r)
	}
}

// TestLBControllerOrphanClaimedSince: an orphan the sweep found is deleted only if it still is one when its
// Service's sync runs: a Service claimed in between keeps its load balancer. (One worker: the sweep's, held
// after the sweep, is the one that syncs the orphan's key next.)
func TestLBControllerOrphanClaimedSince(t *testing.T) {
	b := newFakeBalancer(t)
	plain := ServiceKey{"default", "plain", "uid-plain"}
	b.lbs[plain] = LoadBalancer{Service: plain}
	plainSvc := lbService("plain", "uid-plain", nil, nil)
	plainSvc.Spec.Type = corev1.ServiceTypeClusterIP
	var once sync.Once
	e := startLBWith(t, b, LBControllerOptions{SweepPeriod: time.Hour, Workers: 1}, func(e *lbEnv, key string, _ error) {
		if key != sweepKey {
			return
		}
		once.Do(func() { // the sweep has queued the orphan; claim the Service before its sync
			svc := e.service("plain")
			svc.Spec.Type, svc.Spec.LoadBalancerClass = corev1.ServiceTypeLoadBalancer, ours
			e.update(svc)
			e.eventually("the claim in the cache", func() bool {
				s, err := e.c.svcLister.Services("default").Get("plain")
				return err == nil && e.c.claimed(s)
			})
		})
	}, plainSvc)
	e.eventually("the status", func() bool { return len(e.service("plain").Status.LoadBalancer.Ingress) == 1 })
	if d := b.callsFor("delete"); len(d) != 0 {
		t.Errorf("deleted the load balancer of a Service claimed since the sweep: %v", d)
	}
}

// TestLBControllerOneSyncAtATime: however many workers and changes, the Balancer never sees two calls for one
// Service at once (the fake fails the test if it does) — not even the sweep deleting the orphan of an earlier
// Service of the same name while the new one is Ensured — and the last state wins.
func TestLBControllerOneSyncAtATime(t *testing.T) {
	b := newFakeBalancer(t)
	old := ServiceKey{"default", "web", "uid-old"}
	b.lbs[old] = LoadBalancer{Service: old}
	release := make(chan struct{})
	var once sync.Once
	entered := make(chan struct{})
	b.before = func(call string, _ ServiceKey) {
		switch call {
		case "ensure":
			once.Do(func() { close(entered); <-release })
		case "list": // the sweep finds the orphan while the new Service's Ensure runs
			<-entered
		}
	}
	e := startLB(t, b, LBControllerOptions{Workers: 4}, lbService("web", "uid-web", ours, nil), lbSlice("web", "10.92.0.1"))
	<-entered
	e.eventually("the first sweep", func() bool { return len(e.syncResults(sweepKey)) == 1 })
	for i := 2; i <= 5; i++ {
		s := lbSlice("web", "10.92.0.1", fmt.Sprintf("10.92.0.%d", i))
		if _, err := e.client.DiscoveryV1().EndpointSlices("default").Update(e.ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	e.eventually("the last change to reach the cache", func() bool {
		s, err := e.c.sliceLister.EndpointSlices("default").Get("web-x")
		return err == nil && len(s.Endpoints) == 2 && s.Endpoints[1].Addresses[0] == "10.92.0.5"
	})
	close(release)
	e.eventually("the last targets and the orphan's deletion", func() bool {
		lb, _ := b.lb(ServiceKey{"default", "web", "uid-web"})
		_, orphan := b.lb(old)
		return !orphan && slices.Equal(targetsOf(lb), []string{"80->10.92.0.1:8080", "80->10.92.0.5:8080"})
	})
}

// TestLBControllerRun: Run leaves no handler on the informers it was lent, and says so when an informer has
// stopped instead of waiting for its cache.
func TestLBControllerRun(t *testing.T) {
	f := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	services := &countingInformer{SharedIndexInformer: f.Core().V1().Services().Informer()}
	endpointSlices := &countingInformer{SharedIndexInformer: f.Discovery().V1().EndpointSlices().Informer()}
	ctx, cancel := context.WithCancel(t.Context())
	f.Start(ctx.Done())
	b := newFakeBalancer(t)
	c := NewLBController(fake.NewClientset(), services, endpointSlices, b, LBControllerOptions{})
	swept := make(chan struct{})
	var once sync.Once
	c.afterSync = func(key string, _ error) { // the first sweep: Run is past its handlers and the caches' sync
		if key == sweepKey {
			once.Do(func() { close(swept) })
		}
	}
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	<-swept
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	f.Shutdown()
	if n, m := services.handlers.Load(), endpointSlices.handlers.Load(); n != 0 || m != 0 {
		t.Errorf("Run left %d handlers on the Services informer and %d on the EndpointSlices one", n, m)
	}

	stopped := informers.NewSharedInformerFactory(fake.NewClientset(), 0)
	stop := make(chan struct{})
	si, ei := stopped.Core().V1().Services().Informer(), stopped.Discovery().V1().EndpointSlices().Informer()
	stopped.Start(stop)
	close(stop)
	stopped.Shutdown()
	ctx, cancel = context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := NewLBController(fake.NewClientset(), si, ei, b, LBControllerOptions{}).Run(ctx); err == nil {
		t.Fatal("Run over stopped informers returned nil")
	}
}

// TestLBControllerFinalizerRestored: a finalizer taken off by hand from a claimed Service is put back, so that
// deleting the Service still deletes its load balancer.
func TestLBControllerFinalizerRestored(t *testing.T) {
	b := newFakeBalancer(t)
	e := startLB(t, b, LBControllerOptions{}, lbService("web", "uid-web", ours, nil))
	e.eventually("the status", func() bool { return len(e.service("web").Status.LoadBalancer.Ingress) == 1 })
	svc := e.service("web")
	svc.Finalizers = nil
	e.update(svc)
	e.eventually("the finalizer back", func() bool {
		return slices.Contains(e.service("web").Finalizers, LoadBalancerFinalizer) && len(b.callsFor("ensure")) == 2
	})
}
