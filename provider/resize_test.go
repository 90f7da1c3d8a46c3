package provider

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/agent/protocol"
)

const mi = 1 << 20

// resources builds requirements as the e2e specs do (resource.MustParse of each string; "" is unset).
func resources(cpuReq, cpuLim, memReq, memLim string) corev1.ResourceRequirements {
	var r corev1.ResourceRequirements
	set := func(l *corev1.ResourceList, name corev1.ResourceName, v string) {
		if v == "" {
			return
		}
		if *l == nil {
			*l = corev1.ResourceList{}
		}
		(*l)[name] = resource.MustParse(v)
	}
	set(&r.Requests, corev1.ResourceCPU, cpuReq)
	set(&r.Limits, corev1.ResourceCPU, cpuLim)
	set(&r.Requests, corev1.ResourceMemory, memReq)
	set(&r.Limits, corev1.ResourceMemory, memLim)
	return r
}

func resizePod(r corev1.ResourceRequirements, policy ...corev1.ContainerResizePolicy) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default", UID: "uid-p", Generation: 2},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c1", Resources: r, ResizePolicy: policy}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{Name: "c1",
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}}}
}

func agentReports(r protocol.Resources) protocol.PodStatus {
	return protocol.PodStatus{Containers: []protocol.ContainerStatus{{Name: "c1", Resources: &r}}}
}

func TestContainerResources(t *testing.T) {
	for _, tc := range []struct {
		r    corev1.ResourceRequirements
		want protocol.Resources
	}{
		{resources("20m", "30m", "35Mi", "45Mi"), protocol.Resources{CPURequest: 20, CPULimit: 30, MemoryRequest: 35 * mi, MemoryLimit: 45 * mi}},
		// The CPU weight follows the limit when there is no request, as the kubelet's shares do.
		{resources("", "30m", "", "45Mi"), protocol.Resources{CPURequest: 30, CPULimit: 30, MemoryLimit: 45 * mi}},
		{resources("", "", "", ""), protocol.Resources{}},
	} {
		if got := containerResources(corev1.Container{Resources: tc.r}); got != tc.want {
			t.Errorf("%v: %+v, want %+v", tc.r, got, tc.want)
		}
	}
}

func TestResizeSteps(t *testing.T) {
	applied := protocol.Resources{CPURequest: 20, CPULimit: 30, MemoryRequest: 35 * mi, MemoryLimit: 45 * mi}
	restartCPU := corev1.ContainerResizePolicy{ResourceName: corev1.ResourceCPU, RestartPolicy: corev1.RestartContainer}
	restartMem := corev1.ContainerResizePolicy{ResourceName: corev1.ResourceMemory, RestartPolicy: corev1.RestartContainer}
	grace := int64(7)
	for _, tc := range []struct {
		name    string
		pod     *corev1.Pod
		st      protocol.PodStatus
		want    int
		restart bool
	}{
		{"applied", resizePod(resources("20m", "30m", "35Mi", "45Mi")), agentReports(applied), 0, false},
		{"nothing reported", resizePod(resources("20m", "35m", "35Mi", "45Mi")), protocol.PodStatus{Containers: []protocol.ContainerStatus{{Name: "c1"}}}, 0, false},
		{"in place", resizePod(resources("20m", "35m", "35Mi", "50Mi")), agentReports(applied), 1, false},
		{"cpu restarts", resizePod(resources("20m", "35m", "35Mi", "45Mi"), restartCPU), agentReports(applied), 1, true},
		{"memory changes, cpu would restart", resizePod(resources("20m", "30m", "35Mi", "50Mi"), restartCPU), agentReports(applied), 1, false},
		{"a memory request restarts", resizePod(resources("20m", "30m", "40Mi", "45Mi"), restartMem), agentReports(applied), 1, true},
	} {
		tc.pod.Spec.TerminationGracePeriodSeconds = &grace
		steps := resizeSteps(tc.pod, tc.st)
		if len(steps) != tc.want {
			t.Errorf("%s: %d steps, want %d", tc.name, len(steps), tc.want)
			continue
		}
		if tc.want == 0 {
			continue
		}
		s := steps[0]
		if s.Container != "c1" || s.Req.Restart != tc.restart || s.Req.Resources != containerResources(tc.pod.Spec.Containers[0]) {
			t.Errorf("%s: step %+v", tc.name, s)
		}
		if tc.restart && s.Req.GracePeriodSeconds != 7 {
			t.Errorf("%s: grace %d, want the pod's 7", tc.name, s.Req.GracePeriodSeconds)
		}
	}
}

func TestInfeasible(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pod := resizePod(resources("20m", "30m", "1Gi", "1Gi"))
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		mem  int64
		cpu  int64
		want string
	}{
		{"fits", resizePod(resources("20m", "30m", "35Mi", "45Mi")), 128 * mi, 1000, ""},
		{"memory", pod, 128 * mi, 1000, "Node didn't have enough capacity: memory, requested: 1073741824, capacity: 134217728"},
		{"cpu", resizePod(resources("1500m", "2", "35Mi", "45Mi")), 128 * mi, 1000, "Node didn't have enough capacity: cpu, requested: 1500, capacity: 1000"},
		// Requests, not limits, must fit: a limit is a cap.
		{"a limit beyond", resizePod(resources("20m", "4", "35Mi", "1Gi")), 128 * mi, 1000, ""},
		// A sidecar counts beside the containers; an init container alone, with the sidecars before it.
		{"sidecar", &corev1.Pod{Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "s", RestartPolicy: &always, Resources: resources("", "", "60Mi", "")},
				{Name: "i", Resources: resources("", "", "100Mi", "")}},
			Containers: []corev1.Container{{Name: "c", Resources: resources("", "", "10Mi", "")}}}},
			128 * mi, 1000, "Node didn't have enough capacity: memory, requested: 167772160, capacity: 134217728"},
	} {
		if got := infeasible(tc.pod, tc.mem, tc.cpu); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func conditionsOf(pod *corev1.Pod) map[corev1.PodConditionType]corev1.PodCondition {
	out := map[corev1.PodConditionType]corev1.PodCondition{}
	for _, c := range pod.Status.Conditions {
		out[c.Type] = c
	}
	return out
}

// TestResizeStatus: the container's status resources are the spec's own quantities once applied (compared as the
// e2e specs compare them, with reflect.DeepEqual), the previous ones while a resize is under way, and the resize
// conditions are a kubelet's.
func TestResizeStatus(t *testing.T) {
	orig := resources("20m", "30m", "35Mi", "45Mi")
	resized := resources("20m", "35m", "35Mi", "50Mi")
	applied := agentReports(containerResources(corev1.Container{Resources: orig}))
	now := time.Unix(1000, 0)
	rs := &resizeState{memBytes: 128 * mi, milliCPU: 1000}

	// Applied, before any resize: the spec's resources, allocatedResources the requests, no resize condition.
	out := resizePod(orig)
	out.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue},
		{Type: corev1.PodResizeInProgress, Status: corev1.ConditionTrue}}
	rs.status(out, &applied, now)
	cs := out.Status.ContainerStatuses[0]
	if cs.Resources == nil || !reflect.DeepEqual(*cs.Resources, resources("20m", "30m", "35Mi", "45Mi")) {
		t.Errorf("resources %+v", cs.Resources)
	}
	if !reflect.DeepEqual(cs.AllocatedResources, resources("20m", "", "35Mi", "").Requests) {
		t.Errorf("allocatedResources %+v", cs.AllocatedResources)
	}
	if c := conditionsOf(out); len(c) != 1 || c[corev1.PodReady].Status != corev1.ConditionTrue {
		t.Errorf("conditions %+v", out.Status.Conditions)
	}

	// Resized, not yet applied: in progress, the status still what was applied, the allocation the new requests.
	out = resizePod(resized)
	rs.status(out, &applied, now)
	cs = out.Status.ContainerStatuses[0]
	if !reflect.DeepEqual(*cs.Resources, orig) {
		t.Errorf("resources while resizing %+v", cs.Resources)
	}
	ip, ok := conditionsOf(out)[corev1.PodResizeInProgress]
	if !ok || ip.Status != corev1.ConditionTrue || ip.Reason != "" || ip.ObservedGeneration != 2 || !ip.LastTransitionTime.Time.Equal(now) {
		t.Errorf("in progress %+v", ip)
	}

	// The agent refused it: reason Error, the agent's message; the transition time changes with the reason.
	rs.failed, rs.failedFor = "container c1: attempting to set memory limit (10240) below current usage (2000000)", resizeKey(resizeSteps(out, applied))
	later := now.Add(time.Minute)
	rs.status(out, &applied, later)
	ip = conditionsOf(out)[corev1.PodResizeInProgress]
	if ip.Reason != corev1.PodReasonError || ip.Message != rs.failed || !ip.LastTransitionTime.Time.Equal(later) {
		t.Errorf("refused %+v", ip)
	}
	rs.status(out, &applied, later.Add(time.Minute))
	if again := conditionsOf(out)[corev1.PodResizeInProgress]; !again.LastTransitionTime.Equal(&ip.LastTransitionTime) || len(out.Status.Conditions) != 1 {
		t.Errorf("a condition unchanged moved: %+v", out.Status.Conditions)
	}

	// Applied: the new spec's quantities, no condition, the refusal forgotten.
	done := agentReports(containerResources(corev1.Container{Resources: resized}))
	rs.status(out, &done, later)
	if !reflect.DeepEqual(*out.Status.ContainerStatuses[0].Resources, resized) || len(out.Status.Conditions) != 0 || rs.failed != "" {
		t.Errorf("after the resize: %+v %+v", out.Status.ContainerStatuses[0].Resources, out.Status.Conditions)
	}

	// More memory than the VM has: pending, infeasible, nothing allocated.
	out = resizePod(resources("20m", "35m", "1Gi", "1Gi"))
	rs.status(out, &done, now)
	pending, ok := conditionsOf(out)[corev1.PodResizePending]
	if !ok || pending.Reason != corev1.PodReasonInfeasible ||
		pending.Message != "Node didn't have enough capacity: memory, requested: 1073741824, capacity: 134217728" {
		t.Errorf("pending %+v", out.Status.Conditions)
	}
	if _, ok := conditionsOf(out)[corev1.PodResizeInProgress]; ok {
		t.Error("an infeasible resize is in progress")
	}
	if got := out.Status.ContainerStatuses[0].AllocatedResources; !reflect.DeepEqual(got, resized.Requests) {
		t.Errorf("allocatedResources %+v, want the applied requests", got)
	}

	// A pod that ended has no resize.
	out = resizePod(resized)
	out.Status.Phase = corev1.PodFailed
	out.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodResizePending}}
	rs.status(out, &applied, now)
	if len(out.Status.Conditions) != 0 {
		t.Errorf("conditions of an ended pod %+v", out.Status.Conditions)
	}
}

// TestAdoptedVMCapacity: a VM this process did not launch is as large as the resources its agent applies size
// it, not as the resized spec would.
func TestAdoptedVMCapacity(t *testing.T) {
	rs := &resizeState{}
	applied := agentReports(containerResources(corev1.Container{Resources: resources("20m", "30m", "35Mi", "45Mi")}))
	pod := resizePod(resources("20m", "30m", "1Gi", "1Gi"))
	if mem, cpu := rs.capacity(pod, applied); mem != 128*mi || cpu != 1000 {
		t.Errorf("capacity %d, %d; want 128 MiB, 1 CPU", mem, cpu)
	}
}
