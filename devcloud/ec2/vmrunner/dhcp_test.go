package vmrunner

import (
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/i2kit/i2kit/devcloud/ec2"
)

// clientMessage builds a client's DHCP message as the kernel's ip=dhcp does, with the given options.
func clientMessage(mac net.HardwareAddr, xid uint32, ciaddr net.IP, opts ...byte) []byte {
	b := make([]byte, dhcpFixedLen)
	b[0], b[1], b[2] = bootRequest, 1, 6
	binary.BigEndian.PutUint32(b[4:8], xid)
	binary.BigEndian.PutUint16(b[10:12], 0x8000)
	copy(b[12:16], ciaddr.To4())
	copy(b[28:34], mac)
	copy(b[236:240], dhcpMagic)
	return append(append(b, opts...), optEnd)
}

// option returns the value of option code in a reply, and whether it is there.
func option(t *testing.T, reply []byte, code byte) ([]byte, bool) {
	t.Helper()
	opts := reply[dhcpFixedLen:]
	for i := 0; i < len(opts) && opts[i] != optEnd; {
		if opts[i] == optPad {
			i++
			continue
		}
		l := int(opts[i+1])
		if opts[i] == code {
			return opts[i+2 : i+2+l], true
		}
		i += 2 + l
	}
	return nil, false
}

func TestDHCPAnswers(t *testing.T) {
	mac := net.HardwareAddr{0x02, 1, 2, 3, 4, 5}
	server := net.IPv4(10, 0, 1, 1).To4()
	lease := dhcpLease{IP: net.IPv4(10, 0, 1, 7).To4(), Mask: net.CIDRMask(24, 32), Router: server, Hostname: "ip-10-0-1-7", Time: time.Hour}
	zero := net.IPv4zero
	for _, tc := range []struct {
		name     string
		msg      []byte
		wantType byte // 0: no answer
	}{
		{"discover is offered the instance's address", clientMessage(mac, 42, zero, optMessageType, 1, dhcpDiscover), dhcpOffer},
		{"request of the offered address is acknowledged", clientMessage(mac, 42, zero, optMessageType, 1, dhcpRequest,
			optRequestedIP, 4, 10, 0, 1, 7, optServerID, 4, 10, 0, 1, 1), dhcpAck},
		{"renewal (ciaddr) is acknowledged", clientMessage(mac, 42, lease.IP, optMessageType, 1, dhcpRequest), dhcpAck},
		{"request of another address is refused", clientMessage(mac, 42, zero, optMessageType, 1, dhcpRequest,
			optRequestedIP, 4, 10, 0, 1, 9), dhcpNak},
		{"request to another server is not ours", clientMessage(mac, 42, zero, optMessageType, 1, dhcpRequest,
			optRequestedIP, 4, 10, 0, 1, 7, optServerID, 4, 10, 0, 1, 2), 0},
		{"release is ignored", clientMessage(mac, 42, lease.IP, optMessageType, 1, 7), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := parseDHCP(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			reply, ok := dhcpAnswer(req, server, lease)
			if tc.wantType == 0 {
				if ok {
					t.Fatalf("answered %v", reply)
				}
				return
			}
			if !ok {
				t.Fatal("no answer")
			}
			if len(reply) < dhcpMinReply || reply[0] != bootReply || binary.BigEndian.Uint32(reply[4:8]) != 42 ||
				net.HardwareAddr(reply[28:34]).String() != mac.String() || binary.BigEndian.Uint16(reply[10:12]) != 0x8000 {
				t.Fatalf("reply header %x", reply[:34])
			}
			if typ, _ := option(t, reply, optMessageType); len(typ) != 1 || typ[0] != tc.wantType {
				t.Fatalf("message type %v, want %d", typ, tc.wantType)
			}
			if id, _ := option(t, reply, optServerID); !net.IP(id).Equal(server) {
				t.Errorf("server identifier %v", id)
			}
			if tc.wantType == dhcpNak {
				if !net.IP(reply[16:20]).Equal(net.IPv4zero) {
					t.Errorf("a NAK offers %v", net.IP(reply[16:20]))
				}
				return
			}
			if yi := net.IP(reply[16:20]); !yi.Equal(lease.IP) {
				t.Errorf("yiaddr %v, want %v", yi, lease.IP)
			}
			mask, _ := option(t, reply, optSubnetMask)
			router, _ := option(t, reply, optRouter)
			secs, _ := option(t, reply, optLeaseTime)
			host, _ := option(t, reply, optHostname)
			if net.IP(mask).String() != "255.255.255.0" || !net.IP(router).Equal(server) || binary.BigEndian.Uint32(secs) != 3600 || string(host) != "ip-10-0-1-7" {
				t.Errorf("options mask %v router %v lease %v hostname %q", mask, router, secs, host)
			}
		})
	}
}

func TestParseDHCPRefusesMalformed(t *testing.T) {
	mac := net.HardwareAddr{0x02, 1, 2, 3, 4, 5}
	good := clientMessage(mac, 1, net.IPv4zero, optMessageType, 1, dhcpDiscover)
	badMagic := append([]byte(nil), good...)
	badMagic[236] = 0
	notEthernet := append([]byte(nil), good...)
	notEthernet[2] = 16
	reply := append([]byte(nil), good...)
	reply[0] = bootReply
	for name, b := range map[string][]byte{
		"short":               good[:200],
		"no magic cookie":     badMagic,
		"not Ethernet":        notEthernet,
		"a reply":             reply,
		"no message type":     clientMessage(mac, 1, net.IPv4zero),
		"option past the end": clientMessage(mac, 1, net.IPv4zero, optMessageType, 1, dhcpDiscover, optRequestedIP, 200, 10)[:dhcpFixedLen+6],
		"length byte missing": append(good[:dhcpFixedLen+3:dhcpFixedLen+3], optRequestedIP),
	} {
		if _, err := parseDHCP(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	if _, err := parseDHCP(good); err != nil {
		t.Errorf("a good DISCOVER: %v", err)
	}
}

// TestLeaseOnItsSubnetOnly: a DHCP request names its MAC address itself; the lease of an instance is given only on
// its own subnet's bridge, never to a guest on another subnet that asks with its MAC.
func TestLeaseOnItsSubnetOnly(t *testing.T) {
	_, cidrA, _ := net.ParseCIDR("10.0.1.0/24")
	_, cidrB, _ := net.ParseCIDR("10.0.2.0/24")
	a := &subnet{bridge: "a", cidr: cidrA, gw: net.IPv4(10, 0, 1, 1)}
	b := &subnet{bridge: "b", cidr: cidrB, gw: net.IPv4(10, 0, 2, 1)}
	v := &vm{inst: ec2.Instance{ID: "i-1", PrivateIP: "10.0.1.7"}, subnet: a}
	r := &Runner{byMAC: map[string]*vm{"52:54:00:00:00:01": v}}
	if l, ok := r.lease(a, "52:54:00:00:00:01"); !ok || !l.IP.Equal(net.IPv4(10, 0, 1, 7)) {
		t.Errorf("lease on its own subnet: %+v %v", l, ok)
	}
	if l, ok := r.lease(b, "52:54:00:00:00:01"); ok {
		t.Errorf("lease given on another subnet: %+v", l)
	}
}
