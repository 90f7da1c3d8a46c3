package provider

import (
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
//   - env from sources (valueFrom, envFrom) and volumes (including the service account token that is mounted
//     unless automountServiceAccountToken is false): runtime data the agent does not take yet (plain env values
//     are sent to it after boot);
//   - tty: a container's main process runs without a terminal (kubectl exec -it has one).
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
		default:
			why = append(why, fmt.Sprintf("volume %q (volumes are not supported yet; set automountServiceAccountToken: false to leave out the token volume)", v.Name))
		}
	}
	for _, c := range append(append([]corev1.Container(nil), s.InitContainers...), s.Containers...) {
		if sc := c.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged {
			why = append(why, fmt.Sprintf("privileged container %q", c.Name))
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil {
				why = append(why, fmt.Sprintf("env %s of container %q from a source (valueFrom is not supported yet)", e.Name, c.Name))
			}
		}
		if len(c.EnvFrom) > 0 {
			why = append(why, fmt.Sprintf("envFrom of container %q (not supported yet)", c.Name))
		}
		if c.TTY {
			why = append(why, fmt.Sprintf("tty of container %q (containers run without a terminal; kubectl exec -it has one)", c.Name))
		}
	}
	if len(why) == 0 {
		return ""
	}
	return "this pod cannot run as an i2kit VM: " + strings.Join(why, "; ")
}
