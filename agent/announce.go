package agent

import (
	"encoding/binary"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// announceAddress sends an ARP announcement on the interface named ifname for its IPv4 address: a request whose
// sender and target address are both the VM's own (RFC 5227), from its MAC address. Every neighbour that holds an
// entry for the address — the host, the other pod VMs on its bridge — points it at this VM at once. Addresses are
// reused by later pod VMs, each with a MAC address of its own, and the kernel's ip= configuration announces
// nothing: without it a neighbour that talked to the address's previous pod keeps sending to a MAC that is gone
// until neighbour discovery notices, seconds to tens of seconds later.
func announceAddress(ifname string) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return err
	}
	var ip net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			ip = n.IP.To4()
			break
		}
	}
	if ip == nil || len(ifi.HardwareAddr) != 6 {
		return fmt.Errorf("%s has no IPv4 address or no Ethernet address", ifname)
	}
	proto := htons(unix.ETH_P_ARP)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return fmt.Errorf("opening a packet socket, %w", err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index, Halen: 6}
	copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	if err := unix.Sendto(fd, arpAnnouncement(ifi.HardwareAddr, ip), 0, to); err != nil {
		return fmt.Errorf("sending an ARP announcement of %s on %s, %w", ip, ifname, err)
	}
	return nil
}

// arpAnnouncement is the ARP payload (the link layer's header is the kernel's) announcing that ip is at mac: an
// Ethernet/IPv4 request with ip as both the sender's and the target's protocol address and no target hardware
// address. It is a pure function; mac has 6 bytes and ip 4.
func arpAnnouncement(mac net.HardwareAddr, ip net.IP) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)      // hardware type: Ethernet
	binary.BigEndian.PutUint16(b[2:], 0x0800) // protocol type: IPv4
	b[4], b[5] = 6, 4                         // address lengths
	binary.BigEndian.PutUint16(b[6:], 1)      // operation: request
	copy(b[8:14], mac)
	copy(b[14:18], ip.To4())
	copy(b[24:28], ip.To4()) // the target hardware address (18:24) stays zero
	return b
}

// htons is v in network byte order, as the packet socket's calls take it.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
