package provider

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/agent"
	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
)

// UseBackend gives the provider the backend that runs pod VMs and the builder of their images. Call it before
// the node runs; the backend reports VM changes to VMChanged.
func (p *Provider) UseBackend(b vm.Backend, images ImageBuilder) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.backend, p.builder = b, images
}

// createVM admits a pod, then builds its image and launches its VM in the background: CreatePod must not wait
// for either. Progress shows in the pod's status and Events, as a kubelet shows pulls and starts.
func (p *Provider) createVM(ctx context.Context, pod *corev1.Pod) {
	if why := admit(pod); why != "" {
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, ReasonUnsupported, why)
		p.store(failedStatus(pod, p.cfg.InternalIP, ReasonUnsupported, why, time.Now()))
		return
	}
	if u := unenforced(pod); len(u) > 0 {
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Unenforced", "accepted but not enforced inside the pod VM (its isolation is the VM's): "+strings.Join(u, "; "))
	}
	// After a node restart the pod's VM may already run: adopt it as it is, launch nothing. Its status stays
	// what the API server has until the agent reports.
	if st, err := p.backend.Get(string(pod.UID)); err == nil && st.State == vm.Running {
		p.store(pod.DeepCopy())
		p.connectAgent(ctx, pod)
		return
	}
	p.store(pendingStatus(pod, p.cfg.InternalIP, "ContainerCreating", "building the pod's VM image", time.Now()))
	// The VM outlives the request (its logger stays); pulling its image lasts until the pod is deleted.
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	run := &pullRun{cancel: cancel, done: make(chan struct{})}
	p.mu.Lock()
	if prev := p.pulling[string(pod.UID)]; prev != nil {
		prev.cancel()
	}
	p.pulling[string(pod.UID)] = run
	p.mu.Unlock()
	go p.startVM(pctx, run, pod.DeepCopy())
}

// pullRun is a pod's image pull under way; done is closed when it ends.
type pullRun struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (p *Provider) startVM(ctx context.Context, run *pullRun, pod *corev1.Pod) {
	img, ok := p.pullImage(ctx, pod)
	close(run.done)
	p.mu.Lock()
	if p.pulling[string(pod.UID)] == run {
		delete(p.pulling, string(pod.UID))
	}
	p.mu.Unlock()
	run.cancel()
	if !ok {
		return
	}
	p.mu.Lock()
	p.images[string(pod.UID)] = imageIDs(pod, img)
	p.mu.Unlock()
	disks := img.DiskPaths()
	mem, cpus := vmSize(pod)
	st, err := p.backend.Launch(vm.Spec{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name,
		Kernel: img.Kernel, Initramfs: img.Initramfs, Cmdline: img.Spec.Kernel.Cmdline + " " + agent.ConfigParam + "=channel",
		Disks: disks, MemoryMiB: mem, CPUs: cpus})
	if err != nil {
		msg := fmt.Sprintf("launching the VM: %v", err)
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Failed", msg)
		p.storeIfCurrent(pod, failedStatus(pod, p.cfg.InternalIP, "VMLaunchFailed", msg, time.Now()))
		return
	}
	p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "Created", "Created VM with IP %s (%d MiB, %d vCPU)", st.IP, mem, cpus)
	p.VMChanged(st) // an adopted VM may already run: no change will be reported for it
}

// VMChanged applies a VM's new state to its pod's status.
func (p *Provider) VMChanged(st vm.Status) {
	p.mu.Lock()
	var pod *corev1.Pod
	for _, q := range p.pods {
		if string(q.UID) == st.UID {
			pod = q.DeepCopy()
		}
	}
	p.mu.Unlock()
	if pod == nil {
		return
	}
	switch st.State {
	case vm.Running:
		p.connectAgent(context.Background(), pod) // the agent reports the containers
	case vm.Failed:
		go p.disconnectAgent(st.UID)
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, st.Reason, st.Message)
		p.storeIfCurrent(pod, failedStatus(pod, p.cfg.InternalIP, st.Reason, st.Message, time.Now()))
	}
}

// deleteVM ends a pod's VM within the pod's grace period.
func (p *Provider) deleteVM(ctx context.Context, pod *corev1.Pod) error {
	grace := 30 * time.Second
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	for _, c := range pod.Spec.Containers {
		p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "Killing", "Stopping container %s", c.Name)
	}
	p.mu.Lock()
	if run := p.pulling[string(pod.UID)]; run != nil { // a pull being tried again ends with the pod
		run.cancel()
		delete(p.pulling, string(pod.UID))
	}
	p.mu.Unlock()
	// The session with the agent stays while the VM stops: preStop hooks and the last lines of followed logs
	// still flow through it.
	err := p.backend.Terminate(ctx, string(pod.UID), grace)
	p.disconnectAgent(string(pod.UID))
	p.mu.Lock()
	delete(p.images, string(pod.UID))
	c := p.cluster
	p.mu.Unlock()
	if c != nil {
		c.forget(string(pod.UID))
	}
	if err != nil && !errors.Is(err, vm.ErrNotFound) {
		return fmt.Errorf("terminating the VM, %w", err)
	}
	return nil
}

// storeIfCurrent stores a status computed in the background unless the pod was deleted (or replaced) meanwhile;
// it reports whether the pod is still current.
func (p *Provider) storeIfCurrent(pod, updated *corev1.Pod) bool {
	p.mu.Lock()
	cur, ok := p.pods[key(pod.Namespace, pod.Name)]
	if !ok || cur.UID != pod.UID {
		p.mu.Unlock()
		return false
	}
	// The status is new; the rest is what the node knows now (UpdatePod may have come meanwhile).
	upd := withStatus(cur, updated.Status)
	p.pods[key(pod.Namespace, pod.Name)] = upd
	notify := p.notify
	p.mu.Unlock()
	notify(upd.DeepCopy())
	return true
}

// vmSize derives a VM's memory (MiB) and vCPUs from its containers' limits, else requests: the app containers'
// sum or the largest init container, whichever is more, plus the guest's own overhead; with floors.
func vmSize(pod *corev1.Pod) (memMiB, cpus int) {
	sum := func(cs []corev1.Container, max bool) (mem, milli int64) {
		for _, c := range cs {
			m, cpu := quantity(c, corev1.ResourceMemory), quantity(c, corev1.ResourceCPU)
			if max {
				mem, milli = maxi(mem, m.Value()), maxi(milli, cpu.MilliValue())
				continue
			}
			mem, milli = mem+m.Value(), milli+cpu.MilliValue()
		}
		return mem, milli
	}
	am, ac := sum(pod.Spec.Containers, false)
	im, ic := sum(pod.Spec.InitContainers, true)
	mem, milli := maxi(am, im), maxi(ac, ic)
	memMiB = int(mem>>20) + 64 // the guest kernel and agent
	memMiB = int(maxi(int64(memMiB), 128))
	cpus = int((milli + 999) / 1000)
	if cpus < 1 {
		cpus = 1
	}
	return memMiB, cpus
}

func quantity(c corev1.Container, r corev1.ResourceName) resource.Quantity {
	if q, ok := c.Resources.Limits[r]; ok {
		return q
	}
	return c.Resources.Requests[r]
}

func maxi(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// imageIDs names each container's image by digest, as a kubelet's imageID does.
func imageIDs(pod *corev1.Pod, img *vmimage.Image) map[string]string {
	out := map[string]string{}
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		for _, d := range img.Disks {
			if d.Ref != c.Image {
				continue
			}
			repo := c.Image
			if ref, err := name.ParseReference(c.Image, name.Insecure); err == nil {
				repo = ref.Context().Name()
			}
			out[c.Name] = repo + "@" + d.Digest
		}
	}
	return out
}

func images(pod *corev1.Pod) string {
	var s string
	for i, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if i > 0 {
			s += ", "
		}
		s += c.Image
	}
	return s
}

// failedStatus is a pod's status when it cannot run or its VM ended on its own: phase Failed with the reason.
func failedStatus(pod *corev1.Pod, hostIP, reason, msg string, now time.Time) *corev1.Pod {
	out := pendingStatus(pod, hostIP, reason, msg, now)
	t := metav1.NewTime(now)
	out.Status.Phase = corev1.PodFailed
	out.Status.Reason, out.Status.Message = reason, msg
	for _, cs := range [][]corev1.ContainerStatus{out.Status.InitContainerStatuses, out.Status.ContainerStatuses} {
		for i := range cs {
			cs[i].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 137, Reason: reason, Message: msg, StartedAt: t, FinishedAt: t}}
		}
	}
	return out
}

// CollectGarbage ends VMs whose pod this node no longer has, once they are older than grace: pods deleted while
// the node was down, or whose deletion was lost. It lists the backend before the pods, so that a VM launched
// meanwhile is never taken for an orphan.
func (p *Provider) CollectGarbage(ctx context.Context, grace time.Duration) {
	p.mu.Lock()
	backend := p.backend
	p.mu.Unlock()
	if backend == nil {
		return
	}
	vms := backend.List()
	p.mu.Lock()
	known := map[string]bool{}
	for _, pod := range p.pods {
		known[string(pod.UID)] = true
	}
	p.mu.Unlock()
	for _, st := range vms {
		if known[st.UID] || time.Since(st.Started) < grace {
			continue
		}
		log.G(ctx).WithField("uid", st.UID).WithField("pod", st.Namespace+"/"+st.Name).Info("ending a VM whose pod is gone")
		if err := backend.Terminate(ctx, st.UID, 10*time.Second); err != nil && !errors.Is(err, vm.ErrNotFound) {
			log.G(ctx).WithError(err).WithField("uid", st.UID).Warn("ending an orphaned VM")
		}
	}
}
