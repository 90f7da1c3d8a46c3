package provider

import (
	"testing"

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
