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
