package provider

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/provider/vm"
)

// hostPorts returns the node ports a pod's containers ask for (ports with a hostPort), to be forwarded to its VM
// as the CNI portmap plugin does for a kubelet, or why the pod cannot have them here ("" when it can): on a
// backend that forwards none (forwards false: each pod VM is a cloud instance with an address of its own), any
// hostPort; on any backend, SCTP and IPv6 host addresses (the pods are IPv4 only). Init containers' ports count
// too: a sidecar serves for the pod's life, and the VM holds the ports for all of it. A hostIP of 0.0.0.0 means
// every address, as "" does. It is a pure function.
func hostPorts(pod *corev1.Pod, forwards bool) ([]vm.HostPort, string) {
	var out []vm.HostPort
	var why []string
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		for _, p := range c.Ports {
			if p.HostPort == 0 {
				continue
			}
			proto := p.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			name := fmt.Sprintf("hostPort %d/%s of container %q", p.HostPort, proto, c.Name)
			if !forwards {
				why = append(why, name+" (this node's backend runs each pod VM on an instance of its own, whose ports are not the node's: use a Service)")
				continue
			}
			hp := vm.HostPort{Port: p.HostPort, ContainerPort: p.ContainerPort}
			switch proto {
			case corev1.ProtocolTCP:
				hp.Protocol = vm.TCP
			case corev1.ProtocolUDP:
				hp.Protocol = vm.UDP
			default:
				why = append(why, name+" (i2kit forwards TCP and UDP host ports)")
				continue
			}
			if p.HostPort < 1 || p.HostPort > 65535 || p.ContainerPort < 1 || p.ContainerPort > 65535 {
				why = append(why, name+fmt.Sprintf(" to container port %d (a port is 1 to 65535)", p.ContainerPort))
				continue
			}
			if p.HostIP != "" {
				a, err := netip.ParseAddr(p.HostIP)
				switch {
				case err != nil || !a.Unmap().Is4():
					why = append(why, name+fmt.Sprintf(" on host IP %q (pod VMs are IPv4 only)", p.HostIP))
					continue
				case !a.Unmap().IsUnspecified():
					hp.HostIP = a.Unmap().String()
				}
			}
			out = append(out, hp)
		}
	}
	if len(why) > 0 {
		return nil, "this pod cannot run as an i2kit VM: " + strings.Join(why, "; ")
	}
	return out, ""
}

// hostPortsTaken reports whether one of ports (a pod's, see hostPorts) overlaps a host port of one of others (the
// node's other active pods, see activePods). It is a pure function.
func hostPortsTaken(ports []vm.HostPort, others []*corev1.Pod) bool {
	for _, other := range others {
		held, _ := hostPorts(other, true)
		for _, h := range held {
			for _, w := range ports {
				if w.Overlaps(h) {
					return true
				}
			}
		}
	}
	return false
}
