package provider

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/agent/protocol"
)

// In-place resize (the pods/resize subresource) as a kubelet does it, within what the pod's VM can give: the VM's
// memory and vCPUs are fixed when it boots, so they are the node a resize must fit (the kubelet's allocatable).
// The work queue compares each container's resources in the pod's spec with what its agent reports applied; a
// difference that fits the VM is sent to the agent (its cgroup is rewritten, or the container restarted per its
// resizePolicy), one that does not is PodResizePending with reason Infeasible. The pod's status reports what the
// agent applied (containerStatuses[].resources, allocatedResources) and the resize conditions, recomputed at every
// status the node stores (see resizeState.status).

// resizeState is what the provider keeps of a pod's resizes, under its podVM's mu.
type resizeState struct {
	// memBytes and milliCPU are the VM's size, recorded when this process launched it (0: the VM was adopted, and
	// its size is derived from the pod: see capacity).
	memBytes, milliCPU int64
	// applied is each container's resources as the spec had them when the agent last reported them applied: the
	// status reports the spec's own quantities ("35Mi", not "36700160").
	applied map[string]corev1.ResourceRequirements
	// failed is the agent's refusal of the resize failedFor (a memory limit below the container's use).
	failed, failedFor string
	// infeasibleFor is the resize last reported Infeasible by an Event.
	infeasibleFor string
}

// resizeStep is one container's resize to send to its agent.
type resizeStep struct {
	Container string
	Req       protocol.ResizeRequest
}

// containerResources is what the agent applies for a container's spec: its requests and limits of cpu and memory,
// the CPU's weight from the request or else the limit (as the kubelet's shares).
func containerResources(c corev1.Container) protocol.Resources {
	var r protocol.Resources
	if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
		r.CPURequest = q.MilliValue()
	} else if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		r.CPURequest = q.MilliValue()
	}
	if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		r.CPULimit = q.MilliValue()
	}
	if q, ok := c.Resources.Requests[corev1.ResourceMemory]; ok {
		r.MemoryRequest = q.Value()
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		r.MemoryLimit = q.Value()
	}
	return r
}

// allContainers are a pod's init containers, then its containers.
func allContainers(pod *corev1.Pod) []corev1.Container {
	return append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...)
}

// resizeSteps are the resizes that bring the containers the agent reports (st) to the pod's spec, in the pod's
// order. A container restarts when a resource whose resizePolicy is RestartContainer changes (cpu: its request or
// limit; memory: likewise), within the pod's termination grace period.
func resizeSteps(pod *corev1.Pod, st protocol.PodStatus) []resizeStep {
	applied := map[string]*protocol.Resources{}
	for _, c := range st.Containers {
		applied[c.Name] = c.Resources
	}
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	var out []resizeStep
	for _, c := range allContainers(pod) {
		a, want := applied[c.Name], containerResources(c)
		if a == nil || *a == want {
			continue // an agent that reports nothing applied cannot be resized
		}
		cpu := a.CPURequest != want.CPURequest || a.CPULimit != want.CPULimit
		mem := a.MemoryRequest != want.MemoryRequest || a.MemoryLimit != want.MemoryLimit
		restart := cpu && resizePolicy(c, corev1.ResourceCPU) == corev1.RestartContainer ||
			mem && resizePolicy(c, corev1.ResourceMemory) == corev1.RestartContainer
		req := protocol.ResizeRequest{Resources: want, Restart: restart}
		if restart {
			req.GracePeriodSeconds = grace
		}
		out = append(out, resizeStep{Container: c.Name, Req: req})
	}
	return out
}

// resizePolicy is a container's resize policy for a resource; NotRequired unless it says otherwise.
func resizePolicy(c corev1.Container, r corev1.ResourceName) corev1.ResourceResizeRestartPolicy {
	for _, p := range c.ResizePolicy {
		if p.ResourceName == r {
			return p.RestartPolicy
		}
	}
	return corev1.NotRequired
}

// podRequests are a pod's requests of memory (bytes) and cpu (millicores) as the kubelet sums them: the
// containers' and sidecars' together, or an init container's with the sidecars started before it if more.
func podRequests(pod *corev1.Pod) (memBytes, milliCPU int64) {
	var sideMem, sideCPU, initMem, initCPU int64
	for _, c := range pod.Spec.InitContainers {
		r := containerRequests(c)
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sideMem, sideCPU = addSat(sideMem, r.MemoryRequest), addSat(sideCPU, r.CPURequest)
			initMem, initCPU = maxi(initMem, sideMem), maxi(initCPU, sideCPU)
			continue
		}
		initMem, initCPU = maxi(initMem, addSat(sideMem, r.MemoryRequest)), maxi(initCPU, addSat(sideCPU, r.CPURequest))
	}
	memBytes, milliCPU = sideMem, sideCPU
	for _, c := range pod.Spec.Containers {
		r := containerRequests(c)
		memBytes, milliCPU = addSat(memBytes, r.MemoryRequest), addSat(milliCPU, r.CPURequest)
	}
	return maxi(memBytes, initMem), maxi(milliCPU, initCPU)
}

// containerRequests are a container's requests alone (its CPURequest is not the limit's stand-in).
func containerRequests(c corev1.Container) protocol.Resources {
	var r protocol.Resources
	if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
		r.CPURequest = q.MilliValue()
	}
	if q, ok := c.Resources.Requests[corev1.ResourceMemory]; ok {
		r.MemoryRequest = q.Value()
	}
	return r
}

// infeasible is the kubelet's message when a pod's requests are more than its VM has in all (memory first), ""
// when they fit: the VM cannot grow, so such a resize waits for a new spec, never for room.
func infeasible(pod *corev1.Pod, memBytes, milliCPU int64) string {
	mem, cpu := podRequests(pod)
	switch {
	case memBytes > 0 && mem > memBytes:
		return fmt.Sprintf("Node didn't have enough capacity: memory, requested: %d, capacity: %d", mem, memBytes)
	case milliCPU > 0 && cpu > milliCPU:
		return fmt.Sprintf("Node didn't have enough capacity: cpu, requested: %d, capacity: %d", cpu, milliCPU)
	}
	return ""
}

// capacity is the VM's size: as launched; for a VM this process adopted (a node restart), as the resources its
// agent reports applied size it (st), which is its launch size unless a resize was applied before the restart.
func (rs *resizeState) capacity(pod *corev1.Pod, st protocol.PodStatus) (memBytes, milliCPU int64) {
	if rs.memBytes == 0 {
		applied := map[string]*protocol.Resources{}
		for _, c := range st.Containers {
			applied[c.Name] = c.Resources
		}
		sized := pod.DeepCopy()
		for _, cs := range [][]corev1.Container{sized.Spec.InitContainers, sized.Spec.Containers} {
			for i := range cs {
				cs[i].Resources = rs.reported(cs[i], applied[cs[i].Name])
			}
		}
		rs.launched(vmSize(sized))
	}
	return rs.memBytes, rs.milliCPU
}

// infeasible is infeasible for the VM's capacity.
func (rs *resizeState) infeasible(pod *corev1.Pod, st protocol.PodStatus) string {
	mem, cpu := rs.capacity(pod, st)
	return infeasible(pod, mem, cpu)
}

// launched records the size of the VM this process launched.
func (rs *resizeState) launched(memMiB, cpus int) {
	rs.memBytes, rs.milliCPU = int64(memMiB)<<20, int64(cpus)*1000
}

// specResources is a container's resources as its spec has them (every resource, as a kubelet reports them).
func specResources(c corev1.Container) corev1.ResourceRequirements {
	return corev1.ResourceRequirements{Requests: c.Resources.Requests.DeepCopy(), Limits: c.Resources.Limits.DeepCopy()}
}

// reported is what a container's status says its resources are: the spec's own when the agent applied them,
// else the spec's that were applied last, else (a VM adopted mid-resize) the agent's numbers as quantities.
func (rs *resizeState) reported(c corev1.Container, a *protocol.Resources) corev1.ResourceRequirements {
	spec := specResources(c)
	if a == nil || containerResources(c) == *a {
		if a != nil {
			if rs.applied == nil {
				rs.applied = map[string]corev1.ResourceRequirements{}
			}
			rs.applied[c.Name] = spec
		}
		return specResources(c)
	}
	if prev, ok := rs.applied[c.Name]; ok && containerResources(corev1.Container{Resources: prev}) == *a {
		return specResources(corev1.Container{Resources: prev})
	}
	var out corev1.ResourceRequirements
	set := func(l *corev1.ResourceList, name corev1.ResourceName, q *resource.Quantity) {
		if q.IsZero() {
			return
		}
		if *l == nil {
			*l = corev1.ResourceList{}
		}
		(*l)[name] = *q
	}
	set(&out.Requests, corev1.ResourceCPU, resource.NewMilliQuantity(a.CPURequest, resource.DecimalSI))
	set(&out.Requests, corev1.ResourceMemory, resource.NewQuantity(a.MemoryRequest, resource.BinarySI))
	set(&out.Limits, corev1.ResourceCPU, resource.NewMilliQuantity(a.CPULimit, resource.DecimalSI))
	set(&out.Limits, corev1.ResourceMemory, resource.NewQuantity(a.MemoryLimit, resource.BinarySI))
	return out
}

// status sets, in out (a pod's status about to be stored, its spec current), each running container's resources
// and allocatedResources and the resize conditions, from the agent's status st (nil before the agent reported):
// PodResizePending (Infeasible) while the spec asks more than the VM has, PodResizeInProgress while the agent has
// not applied the spec (reason Error with the agent's refusal), neither once it has. Call it with the podVM's mu
// held.
func (rs *resizeState) status(out *corev1.Pod, st *protocol.PodStatus, now time.Time) {
	s := &out.Status
	var old []corev1.PodCondition
	kept := s.Conditions[:0:0]
	for _, c := range s.Conditions {
		if c.Type == corev1.PodResizePending || c.Type == corev1.PodResizeInProgress {
			old = append(old, c)
			continue
		}
		kept = append(kept, c)
	}
	s.Conditions = kept
	if st == nil || terminal(s.Phase) {
		return
	}
	steps := resizeSteps(out, *st)
	pending := ""
	if len(steps) > 0 {
		pending = rs.infeasible(out, *st)
	}
	applied := map[string]*protocol.Resources{}
	for _, c := range st.Containers {
		applied[c.Name] = c.Resources
	}
	specs := map[string]corev1.Container{}
	for _, c := range allContainers(out) {
		specs[c.Name] = c
	}
	for _, cs := range [][]corev1.ContainerStatus{s.InitContainerStatuses, s.ContainerStatuses} {
		for i := range cs {
			spec, ok := specs[cs[i].Name]
			if !ok || cs[i].State.Running == nil {
				continue
			}
			rep := rs.reported(spec, applied[spec.Name])
			cs[i].Resources = &rep
			cs[i].AllocatedResources = spec.Resources.Requests.DeepCopy()
			if pending != "" { // an infeasible resize is not allocated
				cs[i].AllocatedResources = rep.Requests.DeepCopy()
			}
		}
	}
	if len(steps) == 0 {
		rs.failed, rs.failedFor = "", ""
		return
	}
	cond := corev1.PodCondition{Type: corev1.PodResizeInProgress, Status: corev1.ConditionTrue, ObservedGeneration: out.Generation}
	if pending != "" {
		cond.Type, cond.Reason, cond.Message = corev1.PodResizePending, corev1.PodReasonInfeasible, pending
	} else if rs.failedFor == resizeKey(steps) {
		cond.Reason, cond.Message = corev1.PodReasonError, rs.failed
	}
	cond.LastTransitionTime = metav1.NewTime(now)
	for _, o := range old {
		if o.Type == cond.Type && o.Reason == cond.Reason && o.Message == cond.Message {
			cond.LastTransitionTime = o.LastTransitionTime
		}
	}
	s.Conditions = append(s.Conditions, cond)
}

// resizeKey names a set of resizes, to tell the agent's refusal of one from a later one.
func resizeKey(steps []resizeStep) string { return fmt.Sprint(steps) }

// applyResizeLocked sets the resize part of a pod's status about to be stored (see resizeState.status). p.mu is
// held.
func (p *Provider) applyResizeLocked(out *corev1.Pod) {
	v := p.vms[string(out.UID)]
	if v == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.resize.status(out, v.status, time.Now())
}

// refreshResize stores the pod's status again with its resize part recomputed, when that changed it.
func (p *Provider) refreshResize(pod *corev1.Pod) {
	p.mu.Lock()
	cur, ok := p.pods[key(pod.Namespace, pod.Name)]
	if !ok || cur.UID != pod.UID {
		p.mu.Unlock()
		return
	}
	upd := cur.DeepCopy()
	p.applyResizeLocked(upd)
	if equality.Semantic.DeepEqual(upd.Status, cur.Status) {
		p.mu.Unlock()
		return
	}
	p.pods[key(pod.Namespace, pod.Name)] = upd
	notify := p.notify
	p.mu.Unlock()
	notify(upd.DeepCopy())
}

// pushResize sends the agent the resizes that bring its containers to the pod's spec, when they fit the VM. A
// resize that does not fit is reported (PodResizePending, a ResizeInfeasible Event once) and not sent; one the
// agent refuses is reported (PodResizeInProgress, reason Error) and tried again at the next sync, as a kubelet
// retries it. Only a failure to reach the agent is an error (the queue retries).
func (p *Provider) pushResize(ctx context.Context, pod *corev1.Pod, v *podVM, c *protocol.Client) error {
	v.pushMu.Lock()
	defer v.pushMu.Unlock()
	v.mu.Lock()
	var steps []resizeStep
	pending := ""
	if v.status != nil {
		steps = resizeSteps(pod, *v.status)
		if len(steps) > 0 {
			pending = v.resize.infeasible(pod, *v.status)
		}
	}
	key := resizeKey(steps)
	announce := pending != "" && v.resize.infeasibleFor != key
	if announce {
		v.resize.infeasibleFor = key
	}
	v.mu.Unlock()
	if announce {
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "ResizeInfeasible", "Pod resize Infeasible: "+pending)
	}
	p.refreshResize(pod)
	if len(steps) == 0 || pending != "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, s := range steps {
		err := c.Resize(ctx, s.Container, s.Req)
		var re *protocol.RemoteError
		if errors.As(err, &re) {
			v.mu.Lock()
			v.resize.failed, v.resize.failedFor = re.Message, key
			v.mu.Unlock()
			p.refreshResize(pod)
			return nil
		}
		if err != nil {
			return err
		}
	}
	v.mu.Lock()
	if v.resize.failedFor == key {
		v.resize.failed, v.resize.failedFor = "", ""
	}
	v.mu.Unlock()
	return nil // the agent's status, which reports the new resources, ends the resize
}
