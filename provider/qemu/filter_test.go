package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/i2kit/i2kit/internal/netnstest"
	"golang.org/x/sys/unix"
)

func TestTapRules(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x01, 0x02, 0x03, 0x04}
	ip := net.IPv4(10, 92, 0, 7)
	load := func(base expr.PayloadBase, off, n uint32) *expr.Payload {
		return &expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n}
	}
	eq := func(b ...byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }
	ll, nh := expr.PayloadBaseLLHeader, expr.PayloadBaseNetworkHeader
	drop, accept := &expr.Verdict{Kind: expr.VerdictDrop}, &expr.Verdict{Kind: expr.VerdictAccept}
	want := [][]expr.Any{
		// ether saddr != 52:54:01:02:03:04 drop
		{load(ll, 6, 6), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(mac)}, drop},
		// ether type ip ip saddr 10.92.0.7 accept
		{load(ll, 12, 2), eq(8, 0), load(nh, 12, 4), eq(10, 92, 0, 7), accept},
		// ether type arp, htype 1 ptype ip hlen 6 plen 4, arp saddr ether 52:54:01:02:03:04, arp saddr ip 10.92.0.7 accept
		{load(ll, 12, 2), eq(8, 6), load(nh, 0, 6), eq(0, 1, 8, 0, 6, 4),
			load(nh, 8, 6), eq(0x52, 0x54, 1, 2, 3, 4), load(nh, 14, 4), eq(10, 92, 0, 7), accept},
		// everything else
		{drop},
	}
	for _, tc := range []struct {
		name    string
		mac     net.HardwareAddr
		ip      net.IP
		want    [][]expr.Any
		wantErr bool
	}{
		{name: "pod", mac: mac, ip: ip, want: want},
		{name: "4-in-6 address", mac: mac, ip: ip.To16(), want: want},
		{name: "IPv6 address", mac: mac, ip: net.ParseIP("fd00::7"), wantErr: true},
		{name: "no address", mac: mac, wantErr: true},
		{name: "EUI-64", mac: net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8}, ip: ip, wantErr: true},
		{name: "no MAC", ip: ip, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tapRules(tc.mac, tc.ip)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want an error: %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("rules differ:\n got %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestJumpRule(t *testing.T) {
	got := jumpRule("i2k0123456789ab")
	name := []byte("i2k0123456789ab\x00") // IFNAMSIZ bytes
	want := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: "i2k0123456789ab"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("jumpRule = %#v, want %#v", got, want)
	}
}

// TestTapFilter proves the filter on a real bridge without VMs: in a fresh network namespace, two veth pairs
// stand for pods A and B, one end a port of the bridge (the TAP), the other the VM's NIC. From A's NIC it sends
// frames that impersonate B or the gateway, and two honest ones; B's NIC and the host (the bridge device) must
// see only the honest ones. Then the host sends to B's MAC, which must reach B: a spoofed frame taught the bridge
// nothing.
func TestTapFilter(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}

	type pod struct {
		port, nic string
		mac       net.HardwareAddr
		ip        net.IP
	}
	a := pod{port: "i2ka", nic: "vma", mac: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xa}, ip: net.IPv4(10, 92, 0, 2).To4()}
	b := pod{port: "i2kb", nic: "vmb", mac: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xb}, ip: net.IPv4(10, 92, 0, 3).To4()}
	gw := net.IPv4(10, 92, 0, 1).To4()
	// The kernel sends nothing of its own from the NICs: IPv6 router solicitations would teach the bridge B's MAC
	// again behind the test's back.
	for _, conf := range []string{"all", "default"} {
		if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+conf+"/disable_ipv6", []byte("1"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n, err := newNetwork("br-test", "10.92.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.ensureBridge(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []pod{a, b} {
		for _, args := range [][]string{
			{"link", "add", p.port, "type", "veth", "peer", "name", p.nic},
			{"link", "set", p.nic, "address", p.mac.String()},
			// The NICs share the host's stack here: without this, B's would answer ARP for the bridge's address.
			{"link", "set", p.nic, "arp", "off"},
			{"link", "set", p.port, "master", n.bridge},
			{"link", "set", p.port, "up"},
			{"link", "set", p.nic, "up"},
		} {
			if err := ip(args...); err != nil {
				t.Fatal(err)
			}
		}
	}

	f := newTapFilter(n.bridge)
	for _, p := range []pod{a, a, b} { // twice for A: allow replaces
		if err := f.allow(p.port, p.mac, p.ip); err != nil {
			t.Fatal(err)
		}
	}
	assertFilters(t, f, a.port, b.port)

	bNIC, host := capture(t, b.nic), capture(t, n.bridge)
	aNIC := sender(t, a.nic)
	// B speaks first, so the bridge learns where B's MAC is.
	send(t, sender(t, b.nic), ipv4Frame(b.mac, b.ip, gw, "b-hello"))
	frames := []struct {
		name   string
		frame  []byte
		passes bool
	}{
		{"B's MAC and IP", ipv4Frame(b.mac, b.ip, gw, "spoof-mac"), false},
		{"B's MAC with A's own IP", ipv4Frame(b.mac, a.ip, gw, "spoof-mac-own-ip"), false}, // only the MAC rule stops it
		{"B's IP", ipv4Frame(a.mac, b.ip, gw, "spoof-ip"), false},
		{"the gateway's IP", ipv4Frame(a.mac, gw, b.ip, "spoof-gw"), false},
		{"ARP claiming B's IP", arpFrame(a.mac, a.mac, b.ip, gw, "arp-spoof-ip"), false},
		{"ARP claiming the gateway's IP", arpFrame(a.mac, a.mac, gw, b.ip, "arp-spoof-gw"), false},
		{"ARP with B's MAC as sender", arpFrame(a.mac, b.mac, a.ip, gw, "arp-spoof-mac"), false},
		{"ARP from 0.0.0.0", arpFrame(a.mac, a.mac, net.IPv4zero.To4(), b.ip, "arp-probe"), false},
		{"IPv6", ipv6Frame(a.mac, "ipv6"), false},
		{"a VLAN tag and B's IP", vlanFrame(a.mac, 5, ipv4Frame(a.mac, b.ip, gw, "vlan")), false},
		{"honest ARP", arpFrame(a.mac, a.mac, a.ip, gw, "good-arp"), true},
		{"honest IPv4", ipv4Frame(a.mac, a.ip, gw, "good-ip"), true}, // last: once it is in, so is every frame before
	}
	var want []string
	for _, fr := range frames {
		send(t, aNIC, fr.frame)
		if fr.passes {
			want = append(want, fr.name)
		}
	}
	names := map[string]string{"b-hello": "B's hello"}
	for _, fr := range frames {
		names[marker(fr.frame)] = fr.name
	}
	for _, c := range []struct {
		where string
		fd    int
	}{{"B's NIC", bNIC}, {"the host", host}} {
		var got []string
		for _, m := range receiveUntil(t, c.fd, "good-ip") {
			if m != "b-hello" {
				got = append(got, names[m])
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s received frames with %q, want only %q", c.where, got, want)
		}
	}

	// The bridge still knows B's MAC on B's port: the host's frame to it reaches B.
	send(t, sender(t, n.bridge), unicastFrame(b.mac, gw, "to-b"))
	if got := receiveUntil(t, bNIC, "to-b"); !slices.Contains(got, "to-b") {
		t.Errorf("B's NIC did not receive the host's frame to B's MAC: a spoofed frame moved it to A's port")
	}

	if err := f.remove(a.port); err != nil {
		t.Fatal(err)
	}
	if err := f.remove(a.port); err != nil { // a second time: nothing to remove
		t.Fatal(err)
	}
	assertFilters(t, f, b.port)
	if err := f.allow(a.port, a.mac, a.ip); err != nil {
		t.Fatal(err)
	}
	if err := f.retain(map[string]bool{b.port: true}); err != nil {
		t.Fatal(err)
	}
	assertFilters(t, f, b.port)
	if err := f.remove(b.port); err != nil {
		t.Fatal(err)
	}
	assertFilters(t, f)
	if err := newTapFilter("no-such-table").remove(a.port); err != nil {
		t.Errorf("removing from a table that does not exist: %v", err)
	}
}

// assertFilters checks that exactly the given TAPs have a chain and one jump to it from each base chain.
func assertFilters(t *testing.T, f *tapFilter, taps ...string) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := f.chains(c)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for name := range chains {
		if !f.isBase(name) {
			got = append(got, name)
		}
	}
	slices.Sort(got)
	if want := slices.Sorted(slices.Values(taps)); !slices.Equal(got, want) {
		t.Errorf("TAP chains = %q, want %q", got, want)
	}
	for _, tap := range taps {
		if j, err := f.jumps(c, chains, tap); err != nil || len(j) != 2 {
			t.Errorf("TAP %s has %d jump rules (%v), want one per base chain", tap, len(j), err)
		}
	}
}

const markerPrefix = "i2kit-test:"

func marker(frame []byte) string {
	i := bytes.Index(frame, []byte(markerPrefix))
	if i < 0 {
		return ""
	}
	rest := frame[i+len(markerPrefix):]
	if j := bytes.IndexByte(rest, ';'); j >= 0 {
		return string(rest[:j])
	}
	return ""
}

func ether(dst, src net.HardwareAddr, typ uint16) []byte {
	return binary.BigEndian.AppendUint16(append(slices.Clone(dst), src...), typ)
}

var broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// ipv6Frame is a well-formed IPv6 datagram (no next header) from a link-local address to all nodes.
func ipv6Frame(src net.HardwareAddr, name string) []byte {
	payload := []byte(markerPrefix + name + ";")
	h := []byte{0x60, 0, 0, 0, 0, 0, 59, 255}
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	h = append(append(h, net.ParseIP("fe80::5054:ff:fe00:a")...), net.ParseIP("ff02::1")...)
	return append(append(ether(net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, src, 0x86dd), h...), payload...)
}

// vlanFrame puts an 802.1Q tag with the VLAN ID into a frame.
func vlanFrame(src net.HardwareAddr, vid uint16, frame []byte) []byte {
	f := binary.BigEndian.AppendUint16(ether(net.HardwareAddr(frame[:6]), src, 0x8100), vid)
	return append(f, frame[12:]...)
}

// ipv4Frame is a broadcast IPv4 datagram (protocol 253, for experiments) with a valid header: the bridge's
// netfilter glue drops malformed ones, which would prove nothing.
func ipv4Frame(src net.HardwareAddr, from, to net.IP, name string) []byte {
	return ipv4To(broadcast, src, from, to, name)
}

func ipv4To(dst, src net.HardwareAddr, from, to net.IP, name string) []byte {
	payload := []byte(markerPrefix + name + ";")
	h := []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 253, 0, 0}
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	h = append(append(h, from.To4()...), to.To4()...)
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(h[10:], ^uint16(sum))
	return append(append(ether(dst, src, 0x0800), h...), payload...)
}

// unicastFrame is an IPv4 datagram from the host (the bridge) to a MAC.
func unicastFrame(dst net.HardwareAddr, from net.IP, name string) []byte {
	return ipv4To(dst, net.HardwareAddr{0x02, 0, 0, 0, 0, 1}, from, net.IPv4(10, 92, 0, 3), name)
}

// arpFrame is a broadcast ARP request from the Ethernet source src, whose sender is (sha, spa), for tpa.
func arpFrame(src, sha net.HardwareAddr, spa, tpa net.IP, name string) []byte {
	f := append(ether(broadcast, src, 0x0806), 0, 1, 8, 0, 6, 4, 0, 1)
	f = append(append(f, sha...), spa.To4()...)
	f = append(append(f, make([]byte, 6)...), tpa.To4()...)
	return append(f, markerPrefix+name+";"...) // in the padding
}

func packetSocket(t *testing.T, ifname string) int {
	t.Helper()
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		t.Fatal(err)
	}
	return fd
}

// capture opens a packet socket on an interface whose reads give up after 5 s.
func capture(t *testing.T, ifname string) int {
	fd := packetSocket(t, ifname)
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

// sender opens a packet socket to send frames on an interface.
func sender(t *testing.T, ifname string) int { return packetSocket(t, ifname) }

// send writes a frame from a thread pinned to one CPU: frames a veth receives queue on the sending CPU's backlog,
// so frames sent from one CPU arrive in the order sent.
func send(t *testing.T, fd int, frame []byte) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var all, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &all) //nolint:errcheck
	if _, err := unix.Write(fd, frame); err != nil {
		t.Fatalf("sending frame %q: %v", marker(frame), err)
	}
}

// receiveUntil returns the markers of the frames that come in (not those the interface sends) up to and including
// the frame marked last; it fails the test if that frame does not come.
func receiveUntil(t *testing.T, fd int, last string) []string {
	t.Helper()
	var got []string
	buf := make([]byte, 2048)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("waiting for frame %q (got %q): %v", last, got, err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		m := marker(buf[:n])
		if m == "" {
			continue // the kernel's own: IPv6 neighbour discovery and the like
		}
		got = append(got, m)
		if m == last {
			return got
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestBridgeKeepsItsMAC: the bridge's MAC address, the pod VMs' gateway's, stays what ensureBridge set while TAPs
// with lower addresses join and leave (a bridge left to itself takes its lowest port's), also for a bridge that
// existed before; the host forwards what arrives on the bridge; and a pod's TAP is in hairpin mode.
func TestBridgeKeepsItsMAC(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	// A bridge made by an older node, its address left to the kernel.
	if err := ip("link", "add", "br-mac", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	n, err := newNetwork("br-mac", "10.92.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.ensureBridge(); err != nil {
		t.Fatal(err)
	}
	want := bridgeMAC("br-mac").String()
	check := func(when string) {
		t.Helper()
		i, err := net.InterfaceByName("br-mac")
		if err != nil {
			t.Fatal(err)
		}
		if got := i.HardwareAddr.String(); got != want {
			t.Errorf("%s: the bridge's MAC is %s, want %s", when, got, want)
		}
	}
	check("set up")
	if fwd, err := os.ReadFile("/proc/sys/net/ipv4/conf/br-mac/forwarding"); err != nil || string(fwd) != "1\n" {
		t.Errorf("forwarding on the bridge: %q, %v; want 1", fwd, err)
	}
	for i, tap := range []string{"tap-a", "tap-b"} {
		for _, args := range [][]string{
			{"tuntap", "add", "dev", tap, "mode", "tap"},
			{"link", "set", tap, "address", fmt.Sprintf("02:00:00:00:00:%02x", 2-i)},
			{"link", "set", tap, "master", "br-mac"},
		} {
			if err := ip(args...); err != nil {
				t.Fatal(err)
			}
		}
		check("after " + tap + " joined")
	}
	if err := ip("link", "del", "tap-b"); err != nil {
		t.Fatal(err)
	}
	check("after the lowest TAP left")

	// A pod's TAP, as addTap makes it, sends frames back out of itself (hairpin).
	if err := n.addTap("tap-c"); err != nil {
		t.Fatal(err)
	}
	// (/sys shows the namespace the test started in: ask ip, which speaks netlink in this one.)
	out, err := exec.Command("ip", "-d", "link", "show", "tap-c").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hairpin on") {
		t.Errorf("a pod's TAP is not in hairpin mode: %v\n%s", err, out)
	}
}
