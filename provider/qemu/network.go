package qemu

import (
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
)

// network is the host side of pod networking: one bridge whose address is the pods' gateway, and one TAP per pod.
type network struct {
	bridge string
	cidr   *net.IPNet
	gw     net.IP
}

func newNetwork(bridge, cidr string) (*network, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("pod CIDR %q: %w", cidr, err)
	}
	if n.IP.To4() == nil {
		return nil, fmt.Errorf("pod CIDR %q: only IPv4 so far", cidr)
	}
	gw := nthIP(n, 1)
	return &network{bridge: bridge, cidr: n, gw: gw}, nil
}

// ensureBridge creates the bridge with the gateway address, unless it exists, and sets it up.
//
// It gives the bridge a MAC address of its own (bridgeMAC). A Linux bridge whose address was never set takes the
// lowest of its ports' and changes it as TAPs come and go; the pod VMs keep the gateway's old MAC in their ARP
// caches, so their packets to the host (answers to the node, to its load balancer's clients, to the apiserver)
// go nowhere until the entries expire, tens of seconds later.
func (n *network) ensureBridge() error {
	if _, err := net.InterfaceByName(n.bridge); err != nil {
		if err := ip("link", "add", n.bridge, "type", "bridge"); err != nil {
			return err
		}
	}
	if err := ip("link", "set", n.bridge, "address", bridgeMAC(n.bridge).String()); err != nil {
		return err
	}
	// The host routes what pod VMs send through it: to a load balancer's ingress address whose target is a pod
	// on the bridge (translated back out of it), and out of the host. Forwarding on the bridge alone, the input
	// interface of their packets: the host's other interfaces keep their setting.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+n.bridge+"/forwarding", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enabling forwarding on bridge %s, %w", n.bridge, err)
	}
	ones, _ := n.cidr.Mask.Size()
	addr := fmt.Sprintf("%s/%d", n.gw, ones)
	if err := ip("addr", "replace", addr, "dev", n.bridge); err != nil {
		return err
	}
	return ip("link", "set", n.bridge, "up")
}

// TAPName is the name of a pod's TAP on the host: "i2k" and 12 hex digits derived from its UID (at most 15 bytes).
func TAPName(uid string) string {
	sum := sha256.Sum256([]byte(uid))
	return fmt.Sprintf("i2k%x", sum[:6])
}

// bridgeMAC derives a stable, locally administered unicast MAC address from a bridge's name.
func bridgeMAC(bridge string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("bridge/" + bridge))
	return net.HardwareAddr{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// macFor derives a stable, locally administered MAC address from a pod UID.
func macFor(uid string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("mac/" + uid))
	return net.HardwareAddr{0x52, 0x54, sum[0], sum[1], sum[2], sum[3]}
}

func (n *network) addTap(name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		if err := ip("tuntap", "add", "dev", name, "mode", "tap"); err != nil {
			return err
		}
	}
	if err := ip("link", "set", name, "master", n.bridge); err != nil {
		return err
	}
	// Hairpin: the bridge may send a frame back out of the port it came in by. Where br_netfilter passes bridged
	// frames through the IP hooks (bridge-nf-call-iptables, Docker's and Kubernetes' hosts), a pod VM's connection
	// to a load balancer's ingress address whose target is that same VM is translated at the bridge and bridged
	// back to its own port, which a bridge drops without it (the kubelet's hairpin-veth mode, for the same reason).
	if err := ip("link", "set", name, "type", "bridge_slave", "hairpin", "on"); err != nil {
		return err
	}
	return ip("link", "set", name, "up")
}

// claimAddress points the host's neighbour entry for addr, on the bridge, at mac before a new pod VM with that
// address starts. Addresses are reused and each pod VM has a MAC address of its own (macFor): the host would
// otherwise keep the previous pod's MAC for the address, reachable or stale, and send the new pod's first
// packets (a load balancer's connections, the node's) to a MAC address that is gone, for as long as neighbour
// discovery takes to notice: seconds to tens of seconds. (CNI's bridge plugin derived MACs from addresses for
// the same reason.)
func (n *network) claimAddress(addr net.IP, mac net.HardwareAddr) error {
	return ip("neigh", "replace", addr.String(), "lladdr", mac.String(), "dev", n.bridge, "nud", "reachable")
}

func (n *network) delTap(name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		return nil
	}
	return ip("link", "del", name)
}

// nthIP is the n-th address of a network.
func nthIP(n *net.IPNet, i uint32) net.IP {
	b := n.IP.To4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += i
	return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)).To4()
}

// size is the number of addresses in the network.
func (n *network) size() uint32 {
	ones, bits := n.cidr.Mask.Size()
	return 1 << uint(bits-ones)
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
