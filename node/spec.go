package node

import (
	"fmt"
	"runtime"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/internal/version"
)

// Spec renders the Node object the node registers, from a validated configuration. It is a pure function.
func Spec(c Config) (*corev1.Node, error) {
	taints, err := ParseTaints(c.Taints)
	if err != nil {
		return nil, err
	}
	res := corev1.ResourceList{}
	for name, q := range map[corev1.ResourceName]string{
		corev1.ResourceCPU: c.Capacity.CPU, corev1.ResourceMemory: c.Capacity.Memory,
		corev1.ResourcePods: c.Capacity.Pods, corev1.ResourceEphemeralStorage: c.Capacity.EphemeralStorage,
	} {
		v, err := resource.ParseQuantity(q)
		if err != nil {
			return nil, fmt.Errorf("capacity.%s %q: %w", name, q, err)
		}
		res[name] = v
	}
	labels := map[string]string{
		"type":                             "virtual-kubelet",
		"kubernetes.io/role":               "agent",
		"kubernetes.io/os":                 "linux",
		"kubernetes.io/arch":               runtime.GOARCH,
		"kubernetes.io/hostname":           c.NodeName,
		"node.kubernetes.io/instance-type": "i2kit-" + c.Backend,
	}
	for k, v := range c.Labels {
		labels[k] = v
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: c.NodeName, Labels: labels},
		Spec:       corev1.NodeSpec{Taints: taints, PodCIDR: c.PodCIDR, PodCIDRs: []string{c.PodCIDR}},
		Status: corev1.NodeStatus{
			Phase:       corev1.NodeRunning,
			Capacity:    res,
			Allocatable: res.DeepCopy(),
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "i2kit node is ready (backend "+c.Backend+")"),
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "each pod runs in a VM of its own"),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "each pod runs in a VM of its own"),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "each pod runs in a VM of its own"),
				// Reported False, not left empty: tooling that waits for schedulable nodes waits on it.
				cond(corev1.NodeNetworkUnavailable, corev1.ConditionFalse, "RouteCreated", "pod VMs get addresses from "+c.PodCIDR),
			},
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: c.InternalIP},
				{Type: corev1.NodeHostName, Address: c.NodeName},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(c.Port)}},
			NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion:          version.KubeletVersion,
				OperatingSystem:         "linux",
				Architecture:            runtime.GOARCH,
				OSImage:                 "i2kit " + version.Version + " (every pod a microVM)",
				KernelVersion:           "per-pod VM kernel",
				ContainerRuntimeVersion: "i2kit://" + version.Version,
			},
		},
	}, nil
}
