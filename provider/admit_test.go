package provider

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestAdmit(t *testing.T) {
	yes := true
	base := func() *corev1.Pod {
		return &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "x"}}}}
	}
	for _, tc := range []struct {
		name   string
		mutate func(*corev1.Pod)
		want   string
	}{
		{"plain pod", func(*corev1.Pod) {}, ""},
		{"hostNetwork", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "hostNetwork"},
		{"hostPID", func(p *corev1.Pod) { p.Spec.HostPID = true }, "hostPID"},
		{"hostPath", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}
		}, `hostPath volume "h"`},
		{"token volume", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access-x", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}}}
		}, ""},
		{"pvc", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"}}}}
		}, `volume "data" of type persistentVolumeClaim`},
		{"privileged: the VM is the pod's own", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{Privileged: &yes}
		}, ""},
		{"oci layout image", func(p *corev1.Pod) { p.Spec.Containers[0].Image = "oci:/var/lib/i2kit/x" }, `container "web"'s image names a path on the node`},
		{"init container's oci layout image", func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "oci:/tmp/layout:1"}}
		}, `container "init"'s image names a path`},
		{"env value", func(p *corev1.Pod) { p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "A", Value: "b"}} }, ""},
		{"env from a source", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "A", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}}
		}, ""},
		{"envFrom", func(p *corev1.Pod) {
			p.Spec.Containers[0].EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{}}}
		}, ""},
		{"tty", func(p *corev1.Pod) { p.Spec.Containers[0].TTY, p.Spec.Containers[0].Stdin = true, true }, ""},
		{"shareProcessNamespace", func(p *corev1.Pod) { p.Spec.ShareProcessNamespace = &yes }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := base()
			tc.mutate(p)
			got := admit(p)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("admit = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestUnenforced(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*corev1.Pod)
		want   string
	}{
		{"plain pod", func(*corev1.Pod) {}, ""},
		{"imagePullSecrets are honoured", func(p *corev1.Pod) {
			p.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "regcred"}}
		}, ""},
		{"sysctls are applied in the guest", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "net.core.somaxconn", Value: "1024"}}}
		}, ""},
		{"a container's seccomp profile", func(p *corev1.Pod) {
			p.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}
		}, "container web's seccomp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "x"}}}}
			tc.mutate(p)
			got := strings.Join(unenforced(p), "; ")
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("unenforced = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestKubeletAdmit(t *testing.T) {
	sysctls := func(names ...string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{}
			for _, n := range names {
				p.Spec.SecurityContext.Sysctls = append(p.Spec.SecurityContext.Sysctls, corev1.Sysctl{Name: n, Value: "1"})
			}
		}
	}
	allowed := []string{"kernel.msg*", "net.core.somaxconn", "vm.max_map_count"}
	for _, tc := range []struct {
		name       string
		mutate     func(*corev1.Pod)
		reason     string
		msgContain string
	}{
		{"plain pod", func(*corev1.Pod) {}, "", ""},
		{"os linux", func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Linux} }, "", ""},
		{"os windows", func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Windows} }, ReasonPodOSNotSupported,
			"Failed to admit pod as the OS field doesn't match node OS"},
		{"os label linux", func(p *corev1.Pod) { p.Labels = map[string]string{corev1.LabelOSStable: "linux"} }, "", ""},
		{"os label windows", func(p *corev1.Pod) { p.Labels = map[string]string{corev1.LabelOSStable: "windows"} },
			ReasonPodOSSelectorMismatch, "`kubernetes.io/os` label doesn't match node label"},
		{"safe sysctl", sysctls("kernel.shm_rmid_forced"), "", ""},
		{"safe sysctl with slashes", sysctls("kernel/shm_rmid_forced"), "", ""},
		{"safe sysctls", sysctls("net.ipv4.ip_local_port_range", "net.ipv4.tcp_notsent_lowat"), "", ""},
		{"unsafe sysctl allowed by a pattern", sysctls("kernel.msgmax"), "", ""},
		{"unsafe sysctl allowed by name", sysctls("net.core.somaxconn"), "", ""},
		{"node-level sysctl allowed by name", sysctls("vm.max_map_count"), "", ""},
		{"unsafe sysctl refused", sysctls("kernel.shmmax"), ReasonSysctlForbidden, `forbidden sysctl: "kernel.shmmax" not allowlisted`},
		{"a safe one then an unsafe one", sysctls("kernel.shm_rmid_forced", "kernel.sem"), ReasonSysctlForbidden, `"kernel.sem"`},
		{"a name only the prefix of a safe one", sysctls("kernel.shm_rmid"), ReasonSysctlForbidden, `"kernel.shm_rmid"`},
		{"slashes normalised before the check", sysctls("net/ipv4/conf/eth0.1/rp_filter"), ReasonSysctlForbidden,
			`"net.ipv4.conf.eth0/1.rp_filter"`},
		{"sysctls are checked before the OS", func(p *corev1.Pod) {
			sysctls("kernel.sem")(p)
			p.Spec.OS = &corev1.PodOS{Name: corev1.Windows}
		}, ReasonSysctlForbidden, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "x"}}}}
			tc.mutate(p)
			reason, msg := kubeletAdmit(p, allowed)
			if reason != tc.reason || !strings.Contains(msg, tc.msgContain) {
				t.Errorf("kubeletAdmit = %q, %q; want %q with %q", reason, msg, tc.reason, tc.msgContain)
			}
		})
	}
	p := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "kernel.msgmax", Value: "1"}}}}}
	if reason, _ := kubeletAdmit(p, nil); reason != ReasonSysctlForbidden {
		t.Errorf("kernel.msgmax without allowedUnsafeSysctls: reason %q, want %s", reason, ReasonSysctlForbidden)
	}
}
