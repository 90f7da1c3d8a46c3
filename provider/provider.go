// Package provider is i2kit's virtual-kubelet provider: it turns the pods bound to the node into VMs through a
// backend and reports their status back as a kubelet does.
package provider

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

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
}

// Provider implements nodeutil.Provider and node.PodNotifier. It keeps the pods bound to the node in memory; the
// API server is the durable state. Until a backend runs pod VMs, every pod stays Pending with ReasonNoBackend.
type Provider struct {
	cfg Config

	mu      sync.Mutex
	pods    map[string]*corev1.Pod // by namespace/name
	notify  func(*corev1.Pod)
	backend vm.Backend   // nil: no backend configured
	images  ImageBuilder // with backend
}

var (
	_ nodeutil.Provider = (*Provider)(nil)
	_ node.PodNotifier  = (*Provider)(nil)
)

// New returns a Provider for the node.
func New(cfg Config) *Provider {
	return &Provider{cfg: cfg, pods: map[string]*corev1.Pod{}, notify: func(*corev1.Pod) {}}
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
	p.mu.Lock()
	hasBackend := p.backend != nil
	p.mu.Unlock()
	if hasBackend {
		p.createVM(ctx, pod)
		return nil
	}
	msg := fmt.Sprintf("node %s has no backend configured: pods cannot run until i2kit node starts with --backend", p.cfg.NodeName)
	log.G(ctx).WithField("pod", key(pod.Namespace, pod.Name)).Warn(msg)
	p.cfg.Events.Event(pod, corev1.EventTypeWarning, ReasonNoBackend, msg)
	p.store(pendingStatus(pod, p.cfg.InternalIP, ReasonNoBackend, msg, time.Now()))
	return nil
}

// UpdatePod takes note of a changed pod spec. Pods are immutable VMs: nothing else changes in place.
func (p *Provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	old, ok := p.pods[key(pod.Namespace, pod.Name)]
	if !ok {
		return errdefs.NotFoundf("pod %s/%s is not known to this node", pod.Namespace, pod.Name)
	}
	upd := pod.DeepCopy()
	upd.Status = old.Status
	p.pods[key(pod.Namespace, pod.Name)] = upd
	return nil
}

// DeletePod ends a pod's VM (within its grace period), forgets the pod and reports it terminated, so that the pod
// controller can remove the object without waiting out the grace period. DeletePod may be called repeatedly; a pod that is not known is NotFound.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	backend := p.backend
	p.mu.Unlock()
	if backend != nil {
		if err := p.deleteVM(ctx, pod); err != nil {
			return err
		}
	}
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
	if backend != nil && p.cfg.RemovePod != nil {
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

func (p *Provider) store(pod *corev1.Pod) {
	p.mu.Lock()
	p.pods[key(pod.Namespace, pod.Name)] = pod
	notify := p.notify
	p.mu.Unlock()
	notify(pod.DeepCopy())
}

// errNotRunning is what the streaming routes answer for pods that have no VM.
func (p *Provider) errNotRunning(namespace, name string) error {
	if _, err := p.GetPod(context.Background(), namespace, name); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.backend != nil {
		return errdefs.InvalidInputf("pod %s/%s: logs, exec, attach and port-forward are not available in this build of i2kit", namespace, name)
	}
	return errdefs.InvalidInputf("pod %s/%s is not running: node %s has no backend configured", namespace, name, p.cfg.NodeName)
}

// GetContainerLogs fails: no pod runs without a backend.
func (p *Provider) GetContainerLogs(_ context.Context, namespace, podName, _ string, _ api.ContainerLogOpts) (io.ReadCloser, error) {
	return nil, p.errNotRunning(namespace, podName)
}

// RunInContainer fails: no pod runs without a backend.
func (p *Provider) RunInContainer(_ context.Context, namespace, podName, _ string, _ []string, _ api.AttachIO) error {
	return p.errNotRunning(namespace, podName)
}

// AttachToContainer fails: no pod runs without a backend.
func (p *Provider) AttachToContainer(_ context.Context, namespace, podName, _ string, _ api.AttachIO) error {
	return p.errNotRunning(namespace, podName)
}

// PortForward fails: no pod runs without a backend.
func (p *Provider) PortForward(_ context.Context, namespace, pod string, _ int32, _ io.ReadWriteCloser) error {
	return p.errNotRunning(namespace, pod)
}

// GetStatsSummary reports the node with no running pod.
func (p *Provider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: p.cfg.NodeName, StartTime: metav1.Now()}}, nil
}

// GetMetricsResource reports no pod metrics: no pod runs without a backend.
func (p *Provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}
