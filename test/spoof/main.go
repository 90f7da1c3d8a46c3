// Command spoof is the hostile pod of the end-to-end anti-spoofing test. Without arguments it waits for SIGTERM.
// `spoof send VICTIM_MAC VICTIM_IP GATEWAY_IP` writes raw Ethernet frames on eth0 (CAP_NET_RAW) that impersonate
// the victim pod or the gateway — IPv4 from the victim's MAC and/or address or the gateway's address, ARP requests
// whose sender is the victim or the gateway — then one honest IPv4 frame, last. Each frame carries a marker
// "i2kit-spoof:<name>;" (in the payload, or an ARP frame's padding) that the test looks for on the host's bridge.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"
)

// MarkerPrefix starts the marker of every frame spoof sends.
const MarkerPrefix = "i2kit-spoof:"

func main() {
	if len(os.Args) == 1 {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
		return
	}
	if err := send(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "spoof:", err)
		os.Exit(1)
	}
}

func send(args []string) error {
	if len(args) != 4 || args[0] != "send" {
		return errors.New("usage: spoof send VICTIM_MAC VICTIM_IP GATEWAY_IP")
	}
	victimMAC, err := net.ParseMAC(args[1])
	if err != nil {
		return err
	}
	victimIP, gw := net.ParseIP(args[2]).To4(), net.ParseIP(args[3]).To4()
	if victimIP == nil || gw == nil {
		return fmt.Errorf("addresses %q and %q: want IPv4", args[2], args[3])
	}
	ifi, err := net.InterfaceByName("eth0")
	if err != nil {
		return err
	}
	self := ifi.HardwareAddr
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
	if ip == nil {
		return errors.New("eth0 has no IPv4 address")
	}
	frames := []struct {
		name  string
		frame []byte
	}{
		{"victim-mac-and-ip", ipv4(victimMAC, victimIP, "victim-mac-and-ip")},
		{"victim-mac", ipv4(victimMAC, ip, "victim-mac")},
		{"victim-ip", ipv4(self, victimIP, "victim-ip")},
		{"gateway-ip", ipv4(self, gw, "gateway-ip")},
		// A request's sender is learnt by whoever it asks: the gateway would map the victim's address to this VM.
		{"arp-as-victim", arp(self, self, victimIP, gw, "arp-as-victim")},
		// ... and the victim the gateway's.
		{"arp-as-gateway", arp(self, self, gw, victimIP, "arp-as-gateway")},
		{"arp-victim-mac", arp(self, victimMAC, ip, gw, "arp-victim-mac")},
		{"honest", ipv4(self, ip, "honest")},
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return fmt.Errorf("opening a packet socket (CAP_NET_RAW?), %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		return err
	}
	for _, f := range frames {
		if _, err := unix.Write(fd, f.frame); err != nil {
			return fmt.Errorf("sending %s, %w", f.name, err)
		}
		fmt.Println("sent", f.name)
	}
	return nil
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func ether(dst, src net.HardwareAddr, typ uint16) []byte {
	return binary.BigEndian.AppendUint16(append(slices.Clone(dst), src...), typ)
}

// ipv4 is a broadcast IPv4 datagram (protocol 253, for experiments) with a valid header: the bridge's netfilter
// glue drops malformed ones, which would prove nothing.
func ipv4(src net.HardwareAddr, from net.IP, name string) []byte {
	payload := []byte(MarkerPrefix + name + ";")
	h := []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 253, 0, 0}
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	h = append(append(h, from.To4()...), 255, 255, 255, 255)
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
	return append(append(ether(broadcast, src, 0x0800), h...), payload...)
}

// arp is a broadcast ARP request from the Ethernet source src, whose sender is (sha, spa), for tpa.
func arp(src, sha net.HardwareAddr, spa, tpa net.IP, name string) []byte {
	f := append(ether(broadcast, src, 0x0806), 0, 1, 8, 0, 6, 4, 0, 1)
	f = append(append(f, sha...), spa.To4()...)
	f = append(append(f, make([]byte, 6)...), tpa.To4()...)
	return append(f, MarkerPrefix+name+";"...) // in the padding
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
