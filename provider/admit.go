package provider

import (
	"encoding/json"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ReasonUnsupported is the pod status and Event reason for pods that ask for what a pod VM cannot honour.
const ReasonUnsupported = "Unsupported"

// admit returns why a pod cannot run as a VM, or "" when it can. What a VM cannot honour is refused, never
// silently changed:
//   - hostNetwork, hostPID, hostIPC and hostPath: the host is the hypervisor's, and a pod VM shares none of it;
//   - privileged containers: privilege inside the VM would not be what the pod asked for on a node;
//   - volumes other than emptyDir, configMap, secret, downwardAPI and projected: the node has no storage to
//     attach to a VM yet;
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
		case v.EmptyDir != nil, v.ConfigMap != nil, v.Secret != nil, v.DownwardAPI != nil, v.Projected != nil:
		default:
			why = append(why, fmt.Sprintf("volume %q of type %s (i2kit serves emptyDir, configMap, secret, downwardAPI and projected volumes)", v.Name, volumeType(v)))
		}
	}
	for _, c := range append(append([]corev1.Container(nil), s.InitContainers...), s.Containers...) {
		if sc := c.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged {
			why = append(why, fmt.Sprintf("privileged container %q", c.Name))
		}
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
		if len(sc.Sysctls) > 0 {
			out = append(out, "sysctls")
		}
	}
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if sc := c.SecurityContext; sc != nil && (sc.SeccompProfile != nil || sc.AppArmorProfile != nil || sc.SELinuxOptions != nil || sc.ProcMount != nil) {
			out = append(out, fmt.Sprintf("container %s's seccomp, AppArmor, SELinux or procMount settings", c.Name))
		}
	}
	return out
}
