package provider

import (
	"encoding/json"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ReasonUnsupported is the pod status and Event reason for pods that ask for what a pod VM cannot honour.
const ReasonUnsupported = "Unsupported"

// Reasons of a kubelet's admission handlers, which the node gives for the pods a kubelet would refuse.
const (
	// ReasonPodOSNotSupported: spec.os.name is not the node's OS (lifecycle.PodOSNotSupported).
	ReasonPodOSNotSupported = "PodOSNotSupported"
	// ReasonPodOSSelectorMismatch: the pod's kubernetes.io/os label is not the node's OS
	// (lifecycle.PodOSSelectorNodeLabelDoesNotMatch).
	ReasonPodOSSelectorMismatch = "PodOSSelectorNodeLabelDoesNotMatch"
	// ReasonSysctlForbidden: a sysctl is neither safe nor allowed by the node (sysctl.ForbiddenReason).
	ReasonSysctlForbidden = "SysctlForbidden"
	// ReasonNodePorts: a host port the pod asks for is another pod's on the node (the NodePorts predicate).
	ReasonNodePorts = "NodePorts"
)

// nodePortsMessage is a kubelet's message for ReasonNodePorts (its predicate failure's).
const nodePortsMessage = "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"

// nodeOS is the OS every pod VM runs, what a kubelet compares with its own runtime.GOOS.
const nodeOS = "linux"

// safeSysctls are the sysctls a kubelet allows every pod (pkg/kubelet/sysctl's safe list, whose kernel-version
// conditions every guest kernel meets): each is namespaced and affects no other pod.
var safeSysctls = []string{
	"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
	"net.ipv4.ip_unprivileged_port_start", "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
	"net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem",
	"net.ipv4.tcp_wmem", "net.ipv4.tcp_slow_start_after_idle", "net.ipv4.tcp_notsent_lowat",
}

// kubeletAdmit runs a kubelet's admission checks that apply to a pod VM, in a kubelet's order, and returns the
// reason and message of the first that refuses the pod, or "" and "". allowedUnsafe are the node's
// allowedUnsafeSysctls: sysctl names, or prefixes ending in "*". Unlike a kubelet's --allowed-unsafe-sysctls they
// may name sysctls that are not namespaced (vm.*, kernel.*): the VM's kernel is the pod's alone. A kubelet's
// refusal of namespaced sysctls with hostNetwork or hostIPC is moot: admit refuses those pods.
func kubeletAdmit(pod *corev1.Pod, allowedUnsafe []string) (reason, msg string) {
	if sc := pod.Spec.SecurityContext; sc != nil {
		for _, s := range sc.Sysctls {
			if name := normalizeSysctl(s.Name); !sysctlAllowed(name, allowedUnsafe) {
				return ReasonSysctlForbidden, fmt.Sprintf("forbidden sysctl: %q not allowlisted", name)
			}
		}
	}
	if os, set := pod.Labels[corev1.LabelOSStable]; set && os != nodeOS {
		return ReasonPodOSSelectorMismatch, "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label"
	}
	if pod.Spec.OS != nil && string(pod.Spec.OS.Name) != nodeOS {
		return ReasonPodOSNotSupported, "Failed to admit pod as the OS field doesn't match node OS"
	}
	return "", ""
}

// sysctlAllowed reports whether the sysctl name (in its dotted form, see normalizeSysctl) is safe or matches one of
// allowedUnsafe.
func sysctlAllowed(name string, allowedUnsafe []string) bool {
	for _, p := range append(append([]string(nil), safeSysctls...), allowedUnsafe...) {
		p = normalizeSysctl(p)
		if prefix, ok := strings.CutSuffix(p, "*"); ok && strings.HasPrefix(name, prefix) || p == name {
			return true
		}
	}
	return false
}

// normalizeSysctl is a sysctl's name with dots between its elements, as sysctl(8) reads either separator: when the
// first separator is a slash ("net/ipv4/conf/eth0.1/rp_filter"), slashes and dots swap
// ("net.ipv4.conf.eth0/1.rp_filter"), a dot within an element becoming a slash.
func normalizeSysctl(name string) string {
	i := strings.IndexAny(name, "./")
	if i < 0 || name[i] == '.' {
		return name
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.':
			return '/'
		case '/':
			return '.'
		}
		return r
	}, name)
}

// admit returns why a pod cannot run as a VM, or "" when it can. What a VM cannot honour is refused, never
// silently changed:
//   - hostNetwork, hostPID, hostIPC and hostPath: the host is the hypervisor's, and a pod VM shares none of it;
//   - volumes other than emptyDir, configMap, secret, downwardAPI, projected and image: the node has no storage
//     to attach to a VM yet;
//   - "oci:" images: they name a directory on the node (for `i2kit image build`); a pod's images come from
//     registries.
func admit(pod *corev1.Pod) string {
	var why []string
	s := pod.Spec
	if s.HostNetwork {
		why = append(why, "hostNetwork (a pod VM has its own network)")
	}
	if s.HostPID || s.HostIPC {
		why = append(why, "hostPID/hostIPC (a pod VM shares no process or IPC namespace with the host)")
	}
	for _, v := range s.Volumes {
		switch {
		case v.HostPath != nil:
			why = append(why, fmt.Sprintf("hostPath volume %q (the host's files are not the VM's)", v.Name))
		case v.Image != nil && strings.HasPrefix(v.Image.Reference, "oci:"):
			why = append(why, fmt.Sprintf("image volume %q names a path on the node (oci:); images come from registries", v.Name))
		case v.EmptyDir != nil, v.ConfigMap != nil, v.Secret != nil, v.DownwardAPI != nil, v.Projected != nil, v.Image != nil:
		default:
			why = append(why, fmt.Sprintf("volume %q of type %s (i2kit serves emptyDir, configMap, secret, downwardAPI, projected and image volumes)", v.Name, volumeType(v)))
		}
	}
	for _, c := range append(append([]corev1.Container(nil), s.InitContainers...), s.Containers...) {
		if strings.HasPrefix(c.Image, "oci:") {
			why = append(why, fmt.Sprintf("container %q's image names a path on the node (oci:); pod images come from registries", c.Name))
		}
	}
	if len(why) == 0 {
		return ""
	}
	return "this pod cannot run as an i2kit VM: " + strings.Join(why, "; ")
}

// volumeType names a volume's source as the API does (persistentVolumeClaim, nfs, csi, ...).
func volumeType(v corev1.Volume) string {
	b, err := json.Marshal(v.VolumeSource)
	if err != nil {
		return "unknown"
	}
	var m map[string]json.RawMessage
	json.Unmarshal(b, &m) //nolint:errcheck
	for k := range m {
		return k
	}
	return "unknown"
}

// unenforced lists what a pod asks for that the VM accepts without enforcing it inside the guest: the pod runs
// (its isolation is the VM's), and a Warning Event says so. imagePullSecrets are honoured (pullImage).
func unenforced(pod *corev1.Pod) []string {
	var out []string
	if sc := pod.Spec.SecurityContext; sc != nil {
		if sc.SeccompProfile != nil || sc.AppArmorProfile != nil || sc.SELinuxOptions != nil {
			out = append(out, "the pod's seccomp, AppArmor and SELinux profiles")
		}
	}
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if sc := c.SecurityContext; sc != nil && (sc.SeccompProfile != nil || sc.AppArmorProfile != nil || sc.SELinuxOptions != nil || sc.ProcMount != nil) {
			out = append(out, fmt.Sprintf("container %s's seccomp, AppArmor, SELinux or procMount settings", c.Name))
		}
	}
	return out
}
