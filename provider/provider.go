// Package provider is i2kit's virtual-kubelet provider: it turns the pods bound to the node into VMs through a
// backend and reports their status back as a kubelet does.
package provider

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

// ReasonNoBackend is the pod status and Event reason for pods on a node that has no backend to run them.
const ReasonNoBackend = "NoBackend"

// Config wires a Provider.
type Config struct {
	// NodeName is the node the pods are bound to.
	NodeName string
	// InternalIP is the node's address, reported as the pods' hostIP.
	InternalIP string
	// Events records pod Events as a kubelet does.
	Events record.EventRecorder
	// RemovePod deletes a pod object whose VM has ended (grace 0, preconditioned on its UID), as a kubelet does
	// once a pod's containers are stopped; without it the object would wait out its whole grace period. Optional.
	RemovePod func(ctx context.Context, pod *corev1.Pod) error
	// Capacity is what the node offers (its cpu and memory); a pod asking for more is refused (OutOfcpu,
	// OutOfmemory) and never booted. A resource it lacks is not checked.
	Capacity corev1.ResourceList
	// AllowedUnsafeSysctls are the sysctls, beyond a kubelet's safe ones, that pods may set: names, or prefixes
	// ending in "*" (see kubeletAdmit). A pod setting any other is refused with SysctlForbidden.
	AllowedUnsafeSysctls []string
	// Metrics is told of launches, readiness, publications and agent sessions, for the node's metrics; nil tells
	// no one.
	Metrics Metrics
}

// Metrics is told what the provider does, for the node's metrics. Its methods must be safe for concurrent use and
// must not block. A VM is timed only when this process launched it: an adopted VM's launch is another's.
type Metrics interface {
	// VMLaunched reports that a VM answered (its agent's first handshake) d after the backend's Launch was called.
	VMLaunched(d time.Duration)
	// VMLaunchFailed reports a launch that failed: the image's publication, the Launch call, or the VM before its
	// agent answered.
	VMLaunchFailed()
	// PodReady reports the first time the provider reports a pod Ready, by how long after its creation.
	PodReady(sinceCreation time.Duration)
	// ImagePublished reports one publication of a pod's image by the backend (vm.Publisher), its duration and error.
	ImagePublished(d time.Duration, err error)
	// AgentSessionFailed reports a failed session with a pod's agent, at one of the Stage constants.
	AgentSessionFailed(stage string)
}

// The stages at which a session with a pod's agent fails (Metrics.AgentSessionFailed).
const (
	// StageDial: the agent, which answered before, cannot be reached (a reconnection).
	StageDial = "dial"
	// StageHandshake: the agent was reached but the session's handshake failed (or the boot outlasted it).
	StageHandshake = "handshake"
	// StageConfigure: the agent did not take the pod's configuration.
	StageConfigure = "configure"
	// StageLost: an open session ended while the pod was still on the node.
	StageLost = "lost"
)

type noMetrics struct{}

func (noMetrics) VMLaunched(time.Duration)            {}
func (noMetrics) VMLaunchFailed()                     {}
func (noMetrics) PodReady(time.Duration)              {}
func (noMetrics) ImagePublished(time.Duration, error) {}
func (noMetrics) AgentSessionFailed(string)           {}

// Provider implements nodeutil.Provider and node.PodNotifier. It keeps the pods bound to the node in memory; the
// API server is the durable state. Until a backend runs pod VMs, every pod stays Pending with ReasonNoBackend.
type Provider struct {
	cfg     Config
	started time.Time

	// backend runs the pods' VMs and builder makes their images; both nil for a node without a backend. They are
	// set before the node runs (New, UseBackend) and never change.
	backend vm.Backend
	builder ImageBuilder
	// rootfs brings ephemeral containers' images into running VMs; nil leaves them Unsupported.
	rootfs RootfsSource
	// queue syncs running pods with what they depend on (queue.go); stop ends its workers.
	queue workqueue.TypedRateLimitingInterface[string]
	stop  context.CancelFunc
	// nodeResolv is the node's /etc/resolv.conf, for dnsPolicy Default (and ClusterFirst without cluster DNS).
	nodeResolv []byte
	// pullBackoff is the first wait before a failed image pull is tried again (pullImage).
	pullBackoff time.Duration

	// admitMu makes admission one pod at a time, as a kubelet's (see createVM).
	admitMu sync.Mutex

	mu      sync.Mutex
	pods    map[string]*corev1.Pod // by namespace/name
	vms     map[string]*podVM      // by pod UID
	notify  func(*corev1.Pod)
	cluster *cluster // ConfigMaps, Secrets and tokens for runtime data; nil until UseCluster
	// services is the cluster's service table (SetServices), servicesGen counts its changes.
	services    []protocol.Service
	servicesGen uint64
	// orphans are the pod UIDs whose VMs the last garbage sweep found without a pod (CollectGarbage).
	orphans map[string]bool
}

var (
	_ nodeutil.Provider = (*Provider)(nil)
	_ node.PodNotifier  = (*Provider)(nil)
)

// New returns a Provider for the node; its work queue runs until Stop.
func New(cfg Config) *Provider {
	resolv, _ := os.ReadFile("/etc/resolv.conf")
	if cfg.Metrics == nil {
		cfg.Metrics = noMetrics{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Provider{cfg: cfg, started: time.Now(), nodeResolv: resolv, pods: map[string]*corev1.Pod{}, notify: func(*corev1.Pod) {},
		vms: map[string]*podVM{}, pullBackoff: pullBackoff, queue: newQueue(), stop: cancel}
	go p.run(ctx)
	return p
}

// UseBackend gives the provider the backend that runs pod VMs and the builder of their images. Call it before
// the node runs; the backend reports VM changes to VMChanged. A builder that is also a RootfsSource (vmimage.Builder
// is) brings ephemeral containers into running VMs; with another, they are Unsupported.
func (p *Provider) UseBackend(b vm.Backend, images ImageBuilder) {
	p.backend, p.builder = b, images
	p.rootfs, _ = images.(RootfsSource)
}

// Stop ends the provider's work queue. Running VMs keep running, to be adopted by the next node.
func (p *Provider) Stop() {
	p.stop()
	p.queue.ShutDown()
}

func key(namespace, name string) string { return namespace + "/" + name }

// NotifyPods registers the callback that receives every pod status change.
func (p *Provider) NotifyPods(_ context.Context, f func(*corev1.Pod)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notify = f
}

// CreatePod accepts a pod. With a backend, its VM image is built and its VM launched in the background. Without
// one it cannot run: the pod stays Pending, its containers wait with ReasonNoBackend, and a Warning Event says
// why; it is never reported Running.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	if p.backend != nil {
		p.createVM(ctx, pod)
		return nil
	}
	msg := fmt.Sprintf("node %s has no backend configured: pods cannot run until i2kit node starts with --backend", p.cfg.NodeName)
	log.G(ctx).WithField("pod", key(pod.Namespace, pod.Name)).Warn(msg)
	p.cfg.Events.Event(pod, corev1.EventTypeWarning, ReasonNoBackend, msg)
	p.store(pendingStatus(pod, p.cfg.InternalIP, ReasonNoBackend, msg, time.Now()))
	return nil
}

// UpdatePod takes note of a changed pod. Containers' resources (an in-place resize) are applied by the work queue
// within what the pod's VM has (see pushResize), and an added ephemeral container (kubectl debug) is brought into
// the running VM by it (see ephemeralDue). Otherwise a pod's VM is immutable: a container's new image, which a
// kubelet would apply in place, is not applied, and a Warning Event says so.
func (p *Provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	old, ok := p.pods[key(pod.Namespace, pod.Name)]
	if !ok {
		p.mu.Unlock()
		return errdefs.NotFoundf("pod %s/%s is not known to this node", pod.Namespace, pod.Name)
	}
	upd := withStatus(pod, old.Status, p.ephemeralViewLocked(string(pod.UID)))
	// The conditions others own are the API's (pod's); the Ready condition follows its readiness gates.
	upd.Status.Conditions = withOthersConditions(old.Status.Conditions, pod.Status.Conditions)
	regate(upd, time.Now())
	p.pods[key(pod.Namespace, pod.Name)] = upd
	notify := p.notify
	p.mu.Unlock()
	for _, why := range notApplied(old, upd, p.rootfs != nil && p.backend != nil) {
		p.cfg.Events.Event(upd, corev1.EventTypeWarning, ReasonUnsupported, why)
	}
	if !equality.Semantic.DeepEqual(upd.Status, old.Status) {
		notify(upd.DeepCopy())
	}
	// Its deadline, labels and annotations (downwardAPI volumes) may have changed.
	if v := p.vmFor(string(pod.UID)); v != nil {
		v.markVolumesStale()
	}
	p.queue.Add(string(pod.UID))
	return nil
}

// notApplied says what of a pod's update its VM does not apply, one sentence each; without ephemeral, the node
// cannot run ephemeral containers.
func notApplied(old, upd *corev1.Pod, ephemeral bool) []string {
	var out []string
	images := map[string]string{}
	for _, c := range append(append([]corev1.Container(nil), old.Spec.InitContainers...), old.Spec.Containers...) {
		images[c.Name] = c.Image
	}
	for _, c := range append(append([]corev1.Container(nil), upd.Spec.InitContainers...), upd.Spec.Containers...) {
		if was, ok := images[c.Name]; ok && was != c.Image {
			out = append(out, fmt.Sprintf("container %s keeps image %s: a pod VM's image is fixed when it is created; "+
				"replace the pod for %s (a Deployment does)", c.Name, was, c.Image))
		}
	}
	known := map[string]bool{}
	for _, c := range old.Spec.EphemeralContainers {
		known[c.Name] = true
	}
	for _, c := range upd.Spec.EphemeralContainers {
		if !known[c.Name] && !ephemeral {
			out = append(out, ephemeralUnsupported(c.Name, noEphemeral))
		}
	}
	return out
}

// withStatus is a copy of pod with status st, in which its ephemeral containers' statuses come from view (see
// ephemeralStatuses): whoever computed st need not know them.
func withStatus(pod *corev1.Pod, st corev1.PodStatus, view ephemeralView) *corev1.Pod {
	upd := pod.DeepCopy()
	upd.Status = *st.DeepCopy()
	upd.Status.EphemeralContainerStatuses = ephemeralStatuses(upd, view)
	return upd
}

// ephemeralViewLocked is what the node knows of the ephemeral containers of the pod of uid; the caller holds p.mu.
func (p *Provider) ephemeralViewLocked(uid string) ephemeralView {
	if p.rootfs == nil || p.backend == nil {
		return ephemeralView{unsupported: noEphemeral}
	}
	if v := p.vms[uid]; v != nil {
		return v.ephemeralView()
	}
	return ephemeralView{}
}

// DeletePod ends a pod's VM (by its grace period), then forgets the pod and reports it terminated, so that the pod
// controller can remove the object without waiting out the grace period. It returns once the VM's stop has begun
// (see deleteVM); called again with a shorter grace period, it moves the stop's deadline earlier. DeletePod may be
// called repeatedly; a pod that is not known is NotFound.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	if p.backend != nil {
		if v := p.vmFor(string(pod.UID)); v != nil {
			return p.deleteVM(ctx, pod, v)
		}
	}
	return p.forgetPod(ctx, pod)
}

// forgetPod drops a deleted pod whose VM has ended (or never ran), reports it terminated and, with a backend,
// removes its object (Config.RemovePod). A pod that is not known is NotFound.
func (p *Provider) forgetPod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	old, ok := p.pods[key(pod.Namespace, pod.Name)]
	if ok && old.UID == pod.UID {
		delete(p.pods, key(pod.Namespace, pod.Name))
	}
	notify := p.notify
	p.mu.Unlock()
	if !ok {
		return errdefs.NotFoundf("pod %s/%s is not known to this node", pod.Namespace, pod.Name)
	}
	notify(terminatedStatus(old, time.Now()))
	if p.backend != nil && p.cfg.RemovePod != nil {
		if err := p.cfg.RemovePod(ctx, pod); err != nil {
			log.G(ctx).WithError(err).WithField("pod", key(pod.Namespace, pod.Name)).Warn("removing the pod object")
		}
	}
	return nil
}

// GetPod returns a copy of a known pod.
func (p *Provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pod, ok := p.pods[key(namespace, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s is not known to this node", namespace, name)
	}
	return pod.DeepCopy(), nil
}

// GetPodStatus returns a copy of a known pod's status.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods returns copies of every known pod, sorted by namespace/name. A deleted pod is gone at once.
func (p *Provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(p.pods))
	for _, pod := range p.pods {
		out = append(out, pod.DeepCopy())
	}
	sort.Slice(out, func(i, j int) bool {
		return key(out[i].Namespace, out[i].Name) < key(out[j].Namespace, out[j].Name)
	})
	return out, nil
}

// PodPhases counts the node's pods by phase, for the node's metrics; a pod without a phase yet counts as Pending.
func (p *Provider) PodPhases() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for _, pod := range p.pods {
		out[string(cmp.Or(pod.Status.Phase, corev1.PodPending))]++
	}
	return out
}

// AgentSessions counts the sessions open with pod agents (connected and configured), for the node's metrics.
func (p *Provider) AgentSessions() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, v := range p.vms {
		if v.connected() != nil {
			n++
		}
	}
	return n
}

// podByUID returns the pod of a UID that has a VM state, as the node has it now, or nil: a lookup by the key the
// state keeps, not a scan of every pod (sync and VMChanged call it for each event).
func (p *Provider) podByUID(uid string) *corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[uid]
	if v == nil {
		return nil
	}
	if q, ok := p.pods[v.key]; ok && string(q.UID) == uid {
		return q.DeepCopy()
	}
	return nil
}

// current returns pod as the node has it now (UpdatePod may have changed it), or nil once it is gone or replaced.
func (p *Provider) current(pod *corev1.Pod) *corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur, ok := p.pods[key(pod.Namespace, pod.Name)]
	if !ok || cur.UID != pod.UID {
		return nil
	}
	return cur.DeepCopy()
}

func (p *Provider) store(pod *corev1.Pod) {
	p.mu.Lock()
	p.pods[key(pod.Namespace, pod.Name)] = pod
	notify := p.notify
	p.mu.Unlock()
	notify(pod.DeepCopy())
}

// GetStatsSummary reports the node's pods as their agents measure them; see summary.
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	return summary(p.cfg.NodeName, p.started, p.podStats(ctx)), nil
}

// GetMetricsResource serves /metrics/resource, what metrics-server scrapes; see resourceMetrics.
func (p *Provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	return resourceMetrics(p.podStats(ctx)), nil
}

// podStats asks every connected agent for its stats, at once; a pod whose agent does not answer within 5 s is
// left out of this sample.
func (p *Provider) podStats(ctx context.Context) []podStats {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	p.mu.Lock()
	var out []podStats
	var clients []*protocol.Client
	for _, pod := range p.pods {
		v := p.vms[string(pod.UID)]
		if v == nil {
			continue
		}
		if c := v.connected(); c != nil {
			out = append(out, podStats{Pod: pod.DeepCopy()})
			clients = append(clients, c)
		}
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if st, err := c.Stats(ctx); err == nil {
				out[i].Stats = st
			}
		}()
	}
	wg.Wait()
	return out
}

// storeIfCurrent stores a status computed in the background unless the pod was deleted (or replaced) meanwhile;
// it reports whether the pod is still current. A pod that has ended (Succeeded or Failed) keeps its status: a
// status computed before it ended and stored after (the agent's, a pull's, a VM's exit after its deadline) never
// takes it out of its terminal phase or changes why it ended, as a kubelet forces a terminal phase back.
func (p *Provider) storeIfCurrent(pod, updated *corev1.Pod) bool {
	p.mu.Lock()
	cur, ok := p.pods[key(pod.Namespace, pod.Name)]
	if !ok || cur.UID != pod.UID {
		p.mu.Unlock()
		return false
	}
	if terminal(cur.Status.Phase) {
		p.mu.Unlock()
		return true
	}
	// The status is new; the rest is what the node knows now (UpdatePod may have come meanwhile), the conditions
	// others own among it, which Ready follows.
	upd := withStatus(cur, updated.Status, p.ephemeralViewLocked(string(cur.UID)))
	upd.Status.Conditions = withOthersConditions(updated.Status.Conditions, cur.Status.Conditions)
	p.applyResizeLocked(upd)
	regate(upd, time.Now())
	p.pods[key(pod.Namespace, pod.Name)] = upd
	notify := p.notify
	p.mu.Unlock()
	notify(upd.DeepCopy())
	return true
}

// terminal reports whether a pod in phase has ended for good.
func terminal(phase corev1.PodPhase) bool {
	return phase == corev1.PodSucceeded || phase == corev1.PodFailed
}
