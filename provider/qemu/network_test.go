package qemu

import (
	"net"
	"strings"
	"testing"

	"github.com/i2kit/i2kit/internal/netnstest"
	"github.com/vishvananda/netlink"
)

// TestAReusedAddressReachesItsNewPod: a pod VM that gets the address of one that ended has a MAC address of its
// own; once its address is claimed, as the backend does before the VM starts, the node reaches it at once rather
// than send to the old pod's MAC until neighbour discovery notices (the entry was just confirmed: tens of
// seconds). On a real bridge, pods as network namespaces.
func TestAReusedAddressReachesItsNewPod(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	n, err := newNetwork("br-reuse", "10.93.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	if err := ip("link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	if err := n.ensureBridge(); err != nil {
		t.Fatal(err)
	}
	// Another pod keeps the bridge up (with carrier) when the first one ends, as pods do on a node: a bridge
	// without a port loses its carrier, and its neighbour entries with it.
	newPodNS(t, "other", net.IPv4(10, 93, 0, 3).To4(), n)
	addr := net.IPv4(10, 93, 0, 2).To4()
	at := net.JoinHostPort(addr.String(), "8080")
	old := newPodNS(t, "old", addr, n)
	old.serve(t, "old", addr, 8080, 5353)
	if got, err := askTCP(at); err != nil || !strings.HasPrefix(got, "old ") {
		t.Fatalf("the first pod answered %q, %v", got, err)
	}
	// The first pod ends (its TAP goes); the node's neighbour entry for its address stays, as on a node.
	if err := ip("link", "del", "tap-old"); err != nil {
		t.Fatal(err)
	}
	next := newPodNS(t, "next", addr, n)
	next.serve(t, "next", addr, 8080, 5353)
	var mac net.HardwareAddr
	next.Run(t, func() error {
		l, err := netlink.LinkByName("nic-next")
		if err == nil {
			mac = l.Attrs().HardwareAddr
		}
		return err
	})
	if err := n.claimAddress(addr, mac); err != nil {
		t.Fatal(err)
	}
	if got, err := askTCP(at); err != nil || !strings.HasPrefix(got, "next ") {
		t.Fatalf("the pod that reuses %s answered %q, %v; want it at once", addr, got, err)
	}
}
