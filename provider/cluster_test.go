package provider

import (
	"reflect"
	"testing"

	"github.com/i2kit/i2kit/agent/protocol"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodConfigShareProcessNamespace(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		name  string
		share *bool
		want  bool
	}{{"unset", nil, false}, {"false", &no, false}, {"true", &yes, true}} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"},
			Spec: corev1.PodSpec{ShareProcessNamespace: tc.share, Containers: []corev1.Container{{Name: "web"}}}}
		if got := podConfig(pod, "10.0.0.2", podRuntime{}, nil).ShareProcessNamespace; got != tc.want {
			t.Errorf("%s: ShareProcessNamespace = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestPodConfigStartOrder: the agent gets the containers in a kubelet's start order (init containers first, in
// the pod's order), each init container marked, a sidecar with its own restartPolicy, and the pod's grace period.
func TestPodConfigStartOrder(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	grace := int64(5)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
		TerminationGracePeriodSeconds: &grace,
		InitContainers:                []corev1.Container{{Name: "setup"}, {Name: "proxy", RestartPolicy: &always}, {Name: "migrate"}},
		Containers:                    []corev1.Container{{Name: "web"}, {Name: "worker"}}}}
	cfg := podConfig(pod, "10.0.0.2", podRuntime{}, nil)
	type entry struct {
		name, policy string
		init         bool
	}
	var got []entry
	for _, cc := range cfg.Containers {
		got = append(got, entry{cc.Name, cc.RestartPolicy, cc.Init})
	}
	want := []entry{{"setup", "", true}, {"proxy", "Always", true}, {"migrate", "", true}, {"web", "", false}, {"worker", "", false}}
	if len(got) != len(want) {
		t.Fatalf("containers %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("container %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if g := cfg.TerminationGracePeriodSeconds; g == nil || *g != 5 {
		t.Errorf("TerminationGracePeriodSeconds = %v, want 5", g)
	}
}

// TestPodConfigSysctls checks that the pod's sysctls reach the agent in order, their names with dots between
// elements (a slash for a dot within one), as the protocol says.
func TestPodConfigSysctls(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web"}},
		SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{
			{Name: "kernel/shm_rmid_forced", Value: "1"}, {Name: "net/ipv4/conf/eth0.1/rp_filter", Value: "2"},
			{Name: "net.ipv4.ip_local_port_range", Value: "1024 65000"}}}}}
	want := []protocol.Sysctl{{Name: "kernel.shm_rmid_forced", Value: "1"}, {Name: "net.ipv4.conf.eth0/1.rp_filter", Value: "2"},
		{Name: "net.ipv4.ip_local_port_range", Value: "1024 65000"}}
	if got := podConfig(pod, "10.0.0.2", podRuntime{}, nil).Sysctls; !reflect.DeepEqual(got, want) {
		t.Errorf("Sysctls = %+v, want %+v", got, want)
	}
}

// TestPodConfigCarriesRestartRules: a container's own restartPolicy and its restartPolicyRules reach the agent,
// which decides restarts with them.
func TestPodConfigCarriesRestartRules(t *testing.T) {
	never := corev1.ContainerRestartPolicyNever
	pod := plainPod("p")
	pod.Spec.Containers[0].RestartPolicy = &never
	pod.Spec.Containers[0].RestartPolicyRules = []corev1.ContainerRestartRule{{Action: corev1.ContainerRestartRuleActionRestart,
		ExitCodes: &corev1.ContainerRestartRuleOnExitCodes{Operator: corev1.ContainerRestartRuleOnExitCodesOpNotIn, Values: []int32{0, 1}}}}
	cfg := podConfig(pod, "10.0.0.2", podRuntime{}, nil)
	want := []protocol.RestartRule{{Action: "Restart", Operator: "NotIn", Values: []int32{0, 1}}}
	if c := cfg.Containers[0]; c.RestartPolicy != "Never" || !reflect.DeepEqual(c.RestartRules, want) {
		t.Errorf("container config %q %+v, want Never %+v", c.RestartPolicy, c.RestartRules, want)
	}
}
