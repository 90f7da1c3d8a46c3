package provider

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	resourcehelper "k8s.io/component-helpers/resource"

	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
)

// launchTimeout bounds one call to the backend's Launch (and Publish); the VM itself outlives it.
const launchTimeout = 5 * time.Minute

// createVM admits a pod, then builds its image and launches its VM in the background: CreatePod must not wait
// for either. Progress shows in the pod's status and Events, as a kubelet shows pulls and starts.
func (p *Provider) createVM(ctx context.Context, pod *corev1.Pod) {
	if reason, msg := kubeletAdmit(pod, p.cfg.AllowedUnsafeSysctls); reason != "" {
		p.reject(pod, reason, msg)
		return
	}
	why := admit(pod)
	var ports []vm.HostPort
	if why == "" {
		ports, why = hostPorts(pod, p.forwardsHostPorts())
	}
	if why != "" {
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, ReasonUnsupported, why)
		p.store(failedStatus(pod, p.cfg.InternalIP, ReasonUnsupported, why, time.Now()))
		return
	}
	if reason, msg := fitsNode(pod, p.cfg.Capacity); reason != "" {
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, reason, msg)
		p.store(failedStatus(pod, p.cfg.InternalIP, reason, msg, time.Now()))
		return
	}
	if u := unenforced(pod); len(u) > 0 {
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Unenforced", "accepted but not enforced inside the pod VM (its isolation is the VM's): "+strings.Join(u, "; "))
	}
	// After a node restart the pod's VM may already run: adopt it as it is, launch nothing (it was admitted before
	// the restart, its host ports with it). Its status stays what the API server has until the agent reports.
	if st, err := p.backend.Get(ctx, string(pod.UID)); err == nil && st.State == vm.Running {
		v := p.vmOf(pod)
		v.mu.Lock()
		v.vm = st
		v.mu.Unlock()
		p.store(pod.DeepCopy())
		p.connectAgent(ctx, pod)
		return
	}
	if !p.admitOnNode(pod, ports) {
		return
	}
	p.startPull(pod, p.vmOf(pod))
}

// admitOnNode admits a pod against the node's other pods as a kubelet's general predicates do, one pod at a time:
// it rejects the pod (see reject) when its requests do not fit beside theirs (fitsRequests) or one of its host
// ports (ports) is another pod's (ReasonNodePorts), else stores it as admitted (Pending, its VM image being built)
// before the next pod is checked. It returns whether the pod was admitted.
func (p *Provider) admitOnNode(pod *corev1.Pod, ports []vm.HostPort) bool {
	p.admitMu.Lock()
	defer p.admitMu.Unlock()
	others := p.activePods(pod.UID)
	if reason, msg := fitsRequests(pod, others, p.cfg.Capacity); reason != "" {
		p.reject(pod, reason, msg)
		return false
	}
	if hostPortsTaken(ports, others) {
		p.reject(pod, ReasonNodePorts, nodePortsMessage)
		return false
	}
	p.store(pendingStatus(pod, p.cfg.InternalIP, waitingReason(pod), "building the pod's VM image", time.Now()))
	return true
}

// activePods returns the node's pods other than uid that hold what they were admitted with: those neither
// Succeeded nor Failed (a pod that terminates holds it until it ends).
func (p *Provider) activePods(uid types.UID) []*corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*corev1.Pod
	for _, other := range p.pods {
		if other.UID != uid && other.Status.Phase != corev1.PodSucceeded && other.Status.Phase != corev1.PodFailed {
			out = append(out, other)
		}
	}
	return out
}

// fitsRequests is a kubelet's admission of pod's requests beside those of the node's other pods (others, see
// activePods), against the node's capacity (its allocatable): the number of pods, then CPU and memory, as the
// scheduler's NodeResourcesFit reckons them (init containers, sidecars, overhead, resized resources). It returns
// the kubelet's reason (OutOfpods, OutOfcpu, OutOfmemory) and message for the first that does not fit, or "" and
// "". A resource the capacity leaves out is not checked. It is a pure function.
func fitsRequests(pod *corev1.Pod, others []*corev1.Pod, capacity corev1.ResourceList) (reason, msg string) {
	insufficient := func(name corev1.ResourceName, requested, used, capacity int64) (string, string) {
		return "OutOf" + string(name), fmt.Sprintf("Node didn't have enough resource: %s, requested: %d, used: %d, capacity: %d",
			name, requested, used, capacity)
	}
	if q, ok := capacity[corev1.ResourcePods]; ok && int64(len(others))+1 > q.Value() {
		return insufficient(corev1.ResourcePods, 1, int64(len(others)), q.Value())
	}
	opts := resourcehelper.PodResourcesOptions{UseStatusResources: true}
	want := resourcehelper.PodRequests(pod, opts)
	used := corev1.ResourceList{}
	for _, o := range others {
		for name, q := range resourcehelper.PodRequests(o, opts) {
			sum := used[name]
			sum.Add(q)
			used[name] = sum
		}
	}
	for _, r := range []struct {
		name  corev1.ResourceName
		value func(*resource.Quantity) int64
	}{
		{corev1.ResourceCPU, (*resource.Quantity).MilliValue},
		{corev1.ResourceMemory, (*resource.Quantity).Value},
	} {
		q, ok := capacity[r.name]
		w, u := want[r.name], used[r.name]
		if !ok || r.value(&w) <= 0 {
			continue
		}
		if c := r.value(&q); r.value(&w) > c-r.value(&u) {
			return insufficient(r.name, r.value(&w), r.value(&u), c)
		}
	}
	return "", ""
}

// reject fails a pod the node does not admit as a kubelet's rejectPod does: a Warning Event with the reason and
// message, and phase Failed with the reason and "Pod was rejected: " and the message.
func (p *Provider) reject(pod *corev1.Pod, reason, msg string) {
	p.cfg.Events.Event(pod, corev1.EventTypeWarning, reason, msg)
	p.store(failedStatus(pod, p.cfg.InternalIP, reason, "Pod was rejected: "+msg, time.Now()))
}

// startPull starts an attempt at the pod's image, then its VM, in the background; the attempt ends when the pod is
// deleted. The VM outlives it.
func (p *Provider) startPull(pod *corev1.Pod, v *podVM) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	v.mu.Lock()
	if v.deleting {
		v.mu.Unlock()
		cancel()
		return
	}
	if v.pull != nil {
		v.pull()
	}
	v.pull, v.pullDone = cancel, done
	v.mu.Unlock()
	go func() {
		defer close(done)
		defer cancel()
		p.startVM(ctx, v, pod.DeepCopy())
	}()
}

// startVM builds the pod's image, publishes it where the backend needs that, and launches the VM.
func (p *Provider) startVM(ctx context.Context, v *podVM, pod *corev1.Pod) {
	img, ok := p.pullImage(ctx, pod, v)
	v.mu.Lock()
	v.pull = nil
	v.mu.Unlock()
	if !ok {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, launchTimeout)
	defer cancel()
	mem, cpus := vmSize(pod)
	ports, _ := hostPorts(pod, p.forwardsHostPorts()) // admitted by createVM
	v.mu.Lock()
	v.imageIDs = imageIDs(pod, img)
	v.resize.launched(mem, cpus) // what an in-place resize must fit in
	v.mu.Unlock()
	plan := vm.Plan{UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name, Image: img, MemoryMiB: mem, CPUs: cpus,
		Tags: p.tags(pod), Annotations: pod.Annotations, HostPorts: ports}
	var err error
	if pub, ok := p.backend.(vm.Publisher); ok {
		t0 := time.Now()
		plan.Published, err = pub.Publish(lctx, img)
		p.cfg.Metrics.ImagePublished(time.Since(t0), err)
		if err != nil {
			err = fmt.Errorf("publishing the VM image, %w", err)
		}
	}
	var st vm.Status
	if err == nil {
		v.mu.Lock()
		v.launched, v.awaitReady = time.Now(), true // before Launch: the backend may report the VM running first
		v.mu.Unlock()
		st, err = p.backend.Launch(lctx, plan)
	}
	if err != nil {
		v.mu.Lock()
		v.launched, v.awaitReady = time.Time{}, false
		v.mu.Unlock()
		p.cfg.Metrics.VMLaunchFailed()
		msg := fmt.Sprintf("launching the VM: %v", err)
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Failed", msg)
		p.storeIfCurrent(pod, failedStatus(pod, p.cfg.InternalIP, "VMLaunchFailed", msg, time.Now()))
		return
	}
	v.mu.Lock()
	deleted := v.deleting
	v.mu.Unlock()
	if deleted || p.vmFor(v.uid) != v {
		// The pod was deleted while its VM launched: its deletion found no VM to end, so this launch ends it.
		if err := p.endVM(ctx, v); err != nil {
			log.G(ctx).WithError(err).WithField("pod", key(pod.Namespace, pod.Name)).Warn("ending the VM of a pod deleted while it launched")
		}
		return
	}
	p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "Created", "Created VM with IP %s (%d MiB, %d vCPU)", st.IP, mem, cpus)
	p.VMChanged(st) // the VM may have been running already: no change will be reported for it
}

// forwardsHostPorts reports whether the backend honours Plan.HostPorts (vm.HostPortForwarder).
func (p *Provider) forwardsHostPorts() bool {
	_, ok := p.backend.(vm.HostPortForwarder)
	return ok
}

// Tag keys every VM carries (the backend's inventory).
const (
	TagNode      = "i2kit.io/node"
	TagNamespace = "i2kit.io/pod-namespace"
	TagName      = "i2kit.io/pod-name"
	TagUID       = "i2kit.io/pod-uid"
)

func (p *Provider) tags(pod *corev1.Pod) map[string]string {
	return map[string]string{TagNode: p.cfg.NodeName, TagNamespace: pod.Namespace, TagName: pod.Name, TagUID: string(pod.UID)}
}

// VMChanged applies a VM's new state to its pod's status. The backend calls it for every change it observes.
func (p *Provider) VMChanged(st vm.Status) {
	v := p.vmFor(st.UID)
	pod := p.podByUID(st.UID)
	if v == nil || pod == nil {
		return
	}
	v.mu.Lock()
	if st.UID == v.vm.UID && rank(st.State) < rank(v.vm.State) {
		v.mu.Unlock()
		return // an older report (Launch's answer after the backend's notification)
	}
	v.vm = st
	deleting := v.deleting
	launchFailed := st.State == vm.Failed && !deleting && !v.launched.IsZero()
	if launchFailed {
		v.launched, v.awaitReady = time.Time{}, false
	}
	if st.State.Exited() {
		select {
		case <-v.exited:
		default:
			close(v.exited)
		}
	}
	v.mu.Unlock()
	switch {
	case st.State == vm.Running && !deleting:
		p.connectAgent(context.Background(), pod) // the agent reports the containers
	case st.State == vm.Failed && !deleting:
		if launchFailed {
			p.cfg.Metrics.VMLaunchFailed()
		}
		go p.disconnectAgent(st.UID, true)
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, st.Reason, st.Message)
		p.storeIfCurrent(pod, failedStatus(pod, p.cfg.InternalIP, st.Reason, st.Message, time.Now()))
	}
}

// rank orders the VM states: a VM never moves back.
func rank(s vm.State) int {
	switch s {
	case vm.Booting:
		return 1
	case vm.Running:
		return 2
	case vm.Stopping:
		return 3
	case vm.Terminated, vm.Failed:
		return 4
	}
	return 0
}

// deleteVM ends the VM of a pod being deleted by the pod's grace period, then forgets the pod (forgetPod). It returns
// once the agent was asked to stop the containers: the wait for the VM to power off goes on in the background, as a
// kubelet's pod worker kills a pod while its sync loop goes on. The pod controller holds a pod's key while DeletePod
// runs, so only then can a second delete with a shorter grace period reach the provider: deleteVM called again
// moves the deletion's deadline earlier and tells the agent (shortenDelete), never later. Without an agent that took
// the request (none runs, or it did not answer), the VM is ended before deleteVM returns.
func (p *Provider) deleteVM(ctx context.Context, pod *corev1.Pod, v *podVM) error {
	grace := deletionGrace(pod)
	by := time.Now().Add(grace)
	v.mu.Lock()
	if s := v.stop; s != nil {
		v.mu.Unlock()
		p.shortenDelete(ctx, pod, v, s, by)
		return nil
	}
	s := newVMStop(by)
	v.stop = s
	v.mu.Unlock()
	for _, c := range pod.Spec.Containers {
		p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "Killing", "Stopping container %s", c.Name)
	}
	asked := p.beginStop(ctx, pod, v, grace)
	finish := func(ctx context.Context) error {
		if asked {
			awaitExit(ctx, v, s)
		}
		err := p.endVM(ctx, v)
		p.forgetVM(v.uid)
		p.mu.Lock()
		c := p.cluster
		p.mu.Unlock()
		if c != nil {
			c.forget(v.uid)
		}
		return err
	}
	if !asked {
		if err := finish(ctx); err != nil {
			return err
		}
		return p.forgetPod(ctx, pod)
	}
	go func() {
		ctx := context.WithoutCancel(ctx)
		if err := finish(ctx); err != nil { // the pod goes all the same: garbage collection ends an orphaned VM
			log.G(ctx).WithError(err).WithField("pod", key(pod.Namespace, pod.Name)).Warn("ending the VM of a deleted pod")
		}
		if err := p.forgetPod(ctx, pod); err != nil && !errdefs.IsNotFound(err) {
			log.G(ctx).WithError(err).WithField("pod", key(pod.Namespace, pod.Name)).Warn("forgetting a deleted pod")
		}
	}()
	return nil
}

// deletionGrace is a deleted pod's grace period: its deletionGracePeriodSeconds, 30 s without one.
func deletionGrace(pod *corev1.Pod) time.Duration {
	if pod.DeletionGracePeriodSeconds != nil {
		return max(time.Duration(*pod.DeletionGracePeriodSeconds)*time.Second, 0)
	}
	return 30 * time.Second
}

// stopVM stops a pod's VM within grace: an image pull under way ends; the agent is asked, over the protocol, to
// stop the containers within the grace period and power off; the backend ends what is left when the VM has exited
// or the grace period (and powerOffMargin) is over. A VM whose agent never took the pod's configuration runs no
// container and is ended at once.
func (p *Provider) stopVM(ctx context.Context, pod *corev1.Pod, v *podVM, grace time.Duration) error {
	if p.beginStop(ctx, pod, v, grace) {
		awaitExit(ctx, v, newVMStop(time.Now().Add(grace)))
	}
	return p.endVM(ctx, v)
}

// beginStop marks the VM as being stopped on purpose, ends an image pull under way, and asks the agent of a
// configured VM to stop the containers within grace and power off. It reports whether the agent took the request.
func (p *Provider) beginStop(ctx context.Context, pod *corev1.Pod, v *podVM, grace time.Duration) bool {
	v.mu.Lock()
	v.deleting = true
	if v.pull != nil { // a pull being tried again ends with the pod
		v.pull()
	}
	configured := v.configured
	v.mu.Unlock()
	return configured && grace > 0 && p.askPowerOff(ctx, pod, grace)
}

// endVM ends the agent's session and whatever is left of the VM.
func (p *Provider) endVM(ctx context.Context, v *podVM) error {
	// The session stayed while the VM stopped: preStop hooks and the last lines of followed logs flowed through it.
	p.disconnectAgent(v.uid, true)
	err := p.backend.Terminate(context.WithoutCancel(ctx), v.uid)
	if err != nil && !vm.IsNotFound(err) {
		return fmt.Errorf("terminating the VM, %w", err)
	}
	return nil
}

// askPowerOff asks the pod's agent to stop the containers within grace and power off; it reports whether the agent
// took the request. The agent gets the whole grace period, as a kubelet gives it to preStop hooks and the stop; the
// node waits powerOffMargin more for the VM to power off (see awaitExit).
func (p *Provider) askPowerOff(ctx context.Context, pod *corev1.Pod, grace time.Duration) bool {
	c, err := p.client(ctx, pod.Namespace, pod.Name, min(grace, 5*time.Second))
	if err == nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.PowerOff(rctx, grace)
		cancel()
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("pod", key(pod.Namespace, pod.Name)).Info("asking the agent to power off; ending the VM")
		return false
	}
	return true
}

// CollectGarbage ends VMs whose pod this node no longer has — pods deleted while the node was down, or whose
// deletion was lost — once a VM has been seen without a pod on two sweeps in a row and is older than minAge: one
// sweep could race a pod being created, or a restarted node still being handed its pods. It lists the backend
// before the pods, so that a VM launched meanwhile is never taken for an orphan.
func (p *Provider) CollectGarbage(ctx context.Context, minAge time.Duration) {
	if p.backend == nil {
		return
	}
	if b, ok := p.backend.(interface{ MinOrphanAge() time.Duration }); ok { // a cloud's own, longer bound
		minAge = max(minAge, b.MinOrphanAge())
	}
	vms, err := p.backend.List(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Warn("listing the VMs for garbage collection")
		return
	}
	p.mu.Lock()
	known := map[string]bool{}
	for _, pod := range p.pods {
		known[string(pod.UID)] = true
	}
	before := p.orphans
	p.orphans = map[string]bool{}
	var end []vm.Status
	for _, st := range vms {
		if known[st.UID] || st.State == vm.Terminated {
			continue
		}
		p.orphans[st.UID] = true
		if before[st.UID] && time.Since(st.Started) >= minAge {
			end = append(end, st)
		}
	}
	p.mu.Unlock()
	for _, st := range end {
		log.G(ctx).WithField("uid", st.UID).WithField("pod", st.Namespace+"/"+st.Name).Info("ending a VM whose pod is gone")
		if err := p.backend.Terminate(ctx, st.UID); err != nil && !vm.IsNotFound(err) {
			log.G(ctx).WithError(err).WithField("uid", st.UID).Warn("ending an orphaned VM")
		}
	}
}

// podResources is what a pod asks for, from its containers' limits, else requests: the app containers' sum or
// the largest init container, whichever is more. Sums saturate rather than overflow.
func podResources(pod *corev1.Pod) (memBytes, milliCPU int64) {
	sum := func(cs []corev1.Container, max bool) (mem, milli int64) {
		for _, c := range cs {
			m, cpu := quantity(c, corev1.ResourceMemory), quantity(c, corev1.ResourceCPU)
			if max {
				mem, milli = maxi(mem, m.Value()), maxi(milli, cpu.MilliValue())
				continue
			}
			mem, milli = addSat(mem, m.Value()), addSat(milli, cpu.MilliValue())
		}
		return mem, milli
	}
	am, ac := sum(pod.Spec.Containers, false)
	im, ic := sum(pod.Spec.InitContainers, true)
	return maxi(am, im), maxi(ac, ic)
}

// vmSize derives a VM's memory (MiB) and vCPUs from what its pod asks for (podResources), plus the guest's own
// overhead; with floors. Pods larger than the node are refused before (fitsNode).
func vmSize(pod *corev1.Pod) (memMiB, cpus int) {
	mem, milli := podResources(pod)
	memMiB = int(mem>>20) + 64 // the guest kernel and agent
	memMiB = int(maxi(int64(memMiB), 128))
	cpus = int((milli + 999) / 1000)
	if cpus < 1 {
		cpus = 1
	}
	return memMiB, cpus
}

// fitsNode returns a reason and message when a pod asks for more cpu or memory than the node offers in all
// (capacity; a resource it lacks is not checked), "" when it fits. The reasons are a kubelet's admission's:
// "OutOf" and the resource's name.
func fitsNode(pod *corev1.Pod, capacity corev1.ResourceList) (reason, msg string) {
	mem, milli := podResources(pod)
	for _, r := range []struct {
		name corev1.ResourceName
		want int64 // in the unit of have
		have func(*resource.Quantity) int64
	}{
		{corev1.ResourceCPU, milli, (*resource.Quantity).MilliValue},
		{corev1.ResourceMemory, mem, (*resource.Quantity).Value},
	} {
		q, set := capacity[r.name]
		if !set || q.Sign() <= 0 || r.want <= r.have(&q) {
			continue
		}
		asked := resource.NewMilliQuantity(r.want, resource.DecimalSI)
		if r.name == corev1.ResourceMemory {
			asked = resource.NewQuantity(r.want, resource.BinarySI)
		}
		return "OutOf" + string(r.name), fmt.Sprintf("Node didn't have enough resource: %s, requested: %s, capacity: %s "+
			"(a pod's VM is sized by its containers' limits, else requests)", r.name, asked, &q)
	}
	return "", ""
}

// addSat adds two non-negative quantities, saturating at math.MaxInt64.
func addSat(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxInt64
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
	for _, v := range pod.Spec.Volumes {
		if v.Image != nil {
			s += ", " + v.Image.Reference
		}
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
