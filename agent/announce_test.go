package agent

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/internal/netnstest"
)

func TestARPAnnouncement(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x01, 0x02, 0x03, 0x04}
	got := arpAnnouncement(mac, net.IPv4(10, 88, 0, 7))
	want := []byte{
		0, 1, 8, 0, 6, 4, 0, 1, // Ethernet, IPv4, 6- and 4-byte addresses, request
		0x52, 0x54, 0x01, 0x02, 0x03, 0x04, 10, 88, 0, 7, // sender: the VM
		0, 0, 0, 0, 0, 0, 10, 88, 0, 7, // target: no hardware address, the VM's own IP
	}
	if !bytes.Equal(got, want) {
		t.Errorf("announcement\n% x\nwant\n% x", got, want)
	}
}

// TestAnnounceAddressUpdatesNeighbours: a host whose neighbour entry for the VM's address holds another MAC (the
// address's previous pod's) points it at the VM's once the VM announces. The VM is a network namespace behind a
// veth pair, in a network namespace made for the test (as root, with unshare(1)).
func TestAnnounceAddressUpdatesNeighbours(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	vmIP := net.IPv4(10, 94, 0, 2).To4()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "host0"}, PeerName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	host, err := netlink.LinkByName("host0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 94, 0, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		t.Fatal(err)
	}
	gone := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1} // the previous pod's, just confirmed
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: host.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_REACHABLE,
		IP: vmIP, HardwareAddr: gone}); err != nil {
		t.Fatal(err)
	}
	vm := netnstest.New(t, "eth0")
	var mac net.HardwareAddr
	vm.Run(t, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: vmIP, Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		for { // the veth's carrier comes up asynchronously: until then nothing is sent
			if l, err = netlink.LinkByName("eth0"); err == nil && l.Attrs().OperState == netlink.OperUp {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		return announceAddress("eth0")
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		ns, err := netlink.NeighList(host.Attrs().Index, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		var now net.HardwareAddr
		for _, n := range ns {
			if n.IP.Equal(vmIP) {
				now = n.HardwareAddr
			}
		}
		if bytes.Equal(now, mac) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the host's entry for %s holds %s after the announcement, want the VM's %s", vmIP, now, mac)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
