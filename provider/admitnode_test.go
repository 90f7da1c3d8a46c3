package provider

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/provider/vm"
)

// requesting is a pod whose one container requests cpu and memory ("" for none).
func requesting(cpu, memory string) *corev1.Pod {
	pod := plainPod("p")
	pod.Spec.Containers = pod.Spec.Containers[:1]
	req := corev1.ResourceList{}
	if cpu != "" {
		req[corev1.ResourceCPU] = mustQ(cpu)
	}
	if memory != "" {
		req[corev1.ResourceMemory] = mustQ(memory)
	}
	pod.Spec.Containers[0].Resources.Requests = req
	return pod
}

func TestFitsRequests(t *testing.T) {
	node := corev1.ResourceList{corev1.ResourceCPU: mustQ("2"), corev1.ResourceMemory: mustQ("4Gi"), corev1.ResourcePods: mustQ("3")}
	withInit := requesting("100m", "")
	withInit.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "x", Resources: corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: mustQ("1500m")}}}}
	withOverhead := requesting("100m", "")
	withOverhead.Spec.Overhead = corev1.ResourceList{corev1.ResourceCPU: mustQ("1")}
	for _, tc := range []struct {
		name     string
		pod      *corev1.Pod
		others   []*corev1.Pod
		capacity corev1.ResourceList
		reason   string
		msg      string
	}{
		{"alone", requesting("2", "4Gi"), nil, node, "", ""},
		{"beside others, exactly", requesting("1", "1Gi"), []*corev1.Pod{requesting("1", "3Gi")}, node, "", ""},
		{"cpu", requesting("500m", ""), []*corev1.Pod{requesting("1", ""), requesting("600m", "")}, node,
			"OutOfcpu", "Node didn't have enough resource: cpu, requested: 500, used: 1600, capacity: 2000"},
		{"memory", requesting("", "1Gi"), []*corev1.Pod{requesting("", "3584Mi")}, node,
			"OutOfmemory", "Node didn't have enough resource: memory, requested: 1073741824, used: 3758096384, capacity: 4294967296"},
		{"pods first", requesting("5", ""), []*corev1.Pod{requesting("", ""), requesting("", ""), requesting("", "")}, node,
			"OutOfpods", "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3"},
		{"no request is never refused", requesting("", ""), []*corev1.Pod{requesting("2", "4Gi")}, node, "", ""},
		{"an init container's request counts", withInit, []*corev1.Pod{requesting("1", "")}, node,
			"OutOfcpu", "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000"},
		{"overhead counts", withOverhead, []*corev1.Pod{requesting("1", "")}, node,
			"OutOfcpu", "Node didn't have enough resource: cpu, requested: 1100, used: 1000, capacity: 2000"},
		{"a resource the node does not list", requesting("64", ""), nil, corev1.ResourceList{corev1.ResourceMemory: mustQ("1Gi")}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reason, msg := fitsRequests(tc.pod, tc.others, tc.capacity)
			if reason != tc.reason || msg != tc.msg {
				t.Errorf("got %q %q, want %q %q", reason, msg, tc.reason, tc.msg)
			}
		})
	}
}

// TestOutOfResourcesIsRejected: a pod whose requests do not fit beside those of the node's running pods is
// rejected as a kubelet rejects it (Failed, OutOfcpu, "Pod was rejected: ..."), and admitted once the pod that
// holds the CPU has ended.
func TestOutOfResourcesIsRejected(t *testing.T) {
	p, _, _ := newTestProvider()
	p.cfg.Capacity = corev1.ResourceList{corev1.ResourceCPU: mustQ("2"), corev1.ResourceMemory: mustQ("4Gi")}
	b := &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}
	p.UseBackend(b, fakeImages{})
	big, next := requesting("1500m", ""), requesting("1", "")
	big.Name, big.UID, next.Name, next.UID = "big", "uid-big", "next", "uid-next"
	if err := p.CreatePod(context.Background(), big); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "big", corev1.PodRunning)
	if err := p.CreatePod(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	got, _ := p.GetPod(context.Background(), "default", "next")
	if want := "Pod was rejected: Node didn't have enough resource: cpu, requested: 1000, used: 1500, capacity: 2000"; got.Status.Phase != corev1.PodFailed ||
		got.Status.Reason != "OutOfcpu" || got.Status.Message != want {
		t.Fatalf("status %s/%s (%q), want Failed/OutOfcpu (%q)", got.Status.Phase, got.Status.Reason, got.Status.Message, want)
	}
	if err := p.DeletePod(context.Background(), next); err != nil {
		t.Fatal(err)
	}
	st, _ := b.Get(context.Background(), "uid-big")
	st.State, st.Reason = vm.Failed, "VMExited"
	b.set(st)
	p.VMChanged(st)
	waitPhase(t, p, "big", corev1.PodFailed)
	again := requesting("1", "")
	again.Name, again.UID = "again", "uid-again"
	if err := p.CreatePod(context.Background(), again); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "again", corev1.PodRunning)
}
