package vmrunner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// imdsAddr is the instance metadata service's address, on every subnet bridge.
const imdsAddr = "169.254.169.254"

// subnet is the host side of one subnet CIDR: a bridge whose address is the subnet's first (the instances'
// router, the DHCP server), carrying the metadata address, with a DHCP server bound to it.
type subnet struct {
	bridge string
	cidr   *net.IPNet
	gw     net.IP
	dhcp   net.PacketConn
}

// bridgeName is the bridge of a subnet CIDR: prefix and a hash of the CIDR, within IFNAMSIZ.
func bridgeName(prefix, cidr string) string {
	sum := sha256.Sum256([]byte(cidr))
	return prefix + hex.EncodeToString(sum[:])[:15-len(prefix)]
}

// tapName is an instance's TAP: "ec2t" and 11 hex digits of a hash of its ID.
func tapName(id string) string {
	sum := sha256.Sum256([]byte("tap/" + id))
	return "ec2t" + hex.EncodeToString(sum[:])[:11]
}

// macFor derives an instance's MAC address from its ID: locally administered, unicast, stable (EC2's are 02:...).
func macFor(id string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("mac/" + id))
	return net.HardwareAddr{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// bridgeMAC is a bridge's own MAC address: a bridge that never had one set takes its lowest port's and changes it
// as TAPs come and go, leaving the guests' ARP caches pointing nowhere.
func bridgeMAC(bridge string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("bridge/" + bridge))
	return net.HardwareAddr{0x02, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// firstAddr is the first address of an IPv4 network, its router on EC2 (VPC+1).
func firstAddr(n *net.IPNet) net.IP {
	ip := n.IP.To4()
	return net.IPv4(ip[0], ip[1], ip[2], ip[3]+1).To4()
}

// makeBridge creates (or takes over) the subnet's bridge, with the gateway address first — the source address of
// the DHCP server's broadcasts — then the metadata address, and sets it up.
func makeBridge(name string, n *net.IPNet, gw net.IP) error {
	if _, err := net.InterfaceByName(name); err != nil {
		if err := ip("link", "add", name, "type", "bridge"); err != nil {
			return err
		}
	}
	ones, _ := n.Mask.Size()
	for _, args := range [][]string{
		{"link", "set", name, "address", bridgeMAC(name).String()},
		{"addr", "replace", fmt.Sprintf("%s/%d", gw, ones), "dev", name},
		{"addr", "replace", imdsAddr + "/32", "dev", name},
		{"link", "set", name, "up"},
	} {
		if err := ip(args...); err != nil {
			return err
		}
	}
	return nil
}

func addTAP(name, bridge string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		if err := ip("tuntap", "add", "dev", name, "mode", "tap"); err != nil {
			return err
		}
	}
	if err := ip("link", "set", name, "master", bridge); err != nil {
		return err
	}
	return ip("link", "set", name, "up")
}

// delLink deletes a link; a link already gone is not an error.
func delLink(name string) error {
	if _, err := net.InterfaceByName(name); err != nil {
		return nil
	}
	return ip("link", "del", name)
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// listenDHCP opens the DHCP server's socket on one bridge: 0.0.0.0:67 bound to the device (one server per bridge,
// each hearing only its own link's broadcasts), allowed to broadcast its answers.
func listenDHCP(bridge string) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				return
			}
			serr = unix.BindToDevice(int(fd), bridge)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", fmt.Sprintf("0.0.0.0:%d", dhcpServerPort))
	if err != nil {
		return nil, fmt.Errorf("listening for DHCP on %s, %w", bridge, err)
	}
	return pc, nil
}

// serveDHCP answers the clients of one subnet until pc is closed; lease finds a client's lease by MAC address.
func serveDHCP(pc net.PacketConn, serverID net.IP, lease func(mac string) (dhcpLease, bool)) {
	buf := make([]byte, maxDHCPPacket)
	bcast := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpClientPort}
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed with its subnet; an unbound UDP socket has no other error to wait out
		}
		req, err := parseDHCP(buf[:n])
		if err != nil {
			continue
		}
		l, ok := lease(req.CHAddr.String())
		if !ok {
			continue
		}
		if reply, ok := dhcpAnswer(req, serverID, l); ok {
			_, _ = pc.WriteTo(reply, bcast)
		}
	}
}

func setIPTTL(fd, ttl int) error { return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_TTL, ttl) }

func hashHex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
