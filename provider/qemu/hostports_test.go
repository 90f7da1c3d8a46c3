package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/i2kit/i2kit/internal/netnstest"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/provider/vm"
)

func TestForwardRules(t *testing.T) {
	vmIP := net.IPv4(10, 92, 0, 7)
	eq := func(b ...byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }
	// meta l4proto P th dport PORT dnat ip to 10.92.0.7:CP
	forward := func(proto byte, port, cport uint16) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, eq(proto),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, eq(byte(port>>8), byte(port)),
			&expr.Immediate{Register: 1, Data: []byte{10, 92, 0, 7}},
			&expr.Immediate{Register: 2, Data: []byte{byte(cport >> 8), byte(cport)}},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2},
		}
	}
	// ip daddr 192.0.2.10
	daddr := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, eq(192, 0, 2, 10)}
	for _, tc := range []struct {
		name    string
		ip      net.IP
		ports   []vm.HostPort
		want    [][]expr.Any
		wantErr bool
	}{
		{name: "none", ip: vmIP},
		{name: "TCP on every address", ip: vmIP, ports: []vm.HostPort{{Protocol: vm.TCP, Port: 5000, ContainerPort: 5000}},
			want: [][]expr.Any{forward(unix.IPPROTO_TCP, 5000, 5000)}},
		{name: "UDP, and TCP on one address", ip: vmIP, ports: []vm.HostPort{
			{Protocol: vm.UDP, Port: 15353, ContainerPort: 53},
			{Protocol: vm.TCP, HostIP: "192.0.2.10", Port: 18080, ContainerPort: 8080}},
			want: [][]expr.Any{forward(unix.IPPROTO_UDP, 15353, 53), append(append([]expr.Any{}, daddr...), forward(unix.IPPROTO_TCP, 18080, 8080)...)}},
		{name: "4-in-6 VM address", ip: vmIP.To16(), ports: []vm.HostPort{{Protocol: vm.TCP, Port: 80, ContainerPort: 8080}},
			want: [][]expr.Any{forward(unix.IPPROTO_TCP, 80, 8080)}},
		{name: "SCTP", ip: vmIP, ports: []vm.HostPort{{Protocol: "SCTP", Port: 5000, ContainerPort: 5000}}, wantErr: true},
		{name: "no protocol", ip: vmIP, ports: []vm.HostPort{{Port: 5000, ContainerPort: 5000}}, wantErr: true},
		{name: "host port 0", ip: vmIP, ports: []vm.HostPort{{Protocol: vm.TCP, ContainerPort: 5000}}, wantErr: true},
		{name: "container port out of range", ip: vmIP, ports: []vm.HostPort{{Protocol: vm.TCP, Port: 5000, ContainerPort: 65536}}, wantErr: true},
		{name: "IPv6 host IP", ip: vmIP, ports: []vm.HostPort{{Protocol: vm.TCP, HostIP: "fd00::1", Port: 5000, ContainerPort: 5000}}, wantErr: true},
		{name: "host IP not an address", ip: vmIP, ports: []vm.HostPort{{Protocol: vm.TCP, HostIP: "node", Port: 5000, ContainerPort: 5000}}, wantErr: true},
		{name: "IPv6 VM address", ip: net.ParseIP("fd00::7"), wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := forwardRules(tc.ip, tc.ports)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want an error: %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("rules differ:\n got %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestFixedRules(t *testing.T) {
	br := []byte("br-pods\x00\x00\x00\x00\x00\x00\x00\x00\x00") // IFNAMSIZ bytes
	eq := func(b []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }
	mask := func(m, x []byte) *expr.Bitwise {
		return &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: x}
	}
	zero := []byte{0, 0, 0, 0}
	ne := binaryutil.NativeEndian.PutUint32
	t.Run("localJump", func(t *testing.T) {
		// fib daddr type local jump hostports
		want := []expr.Any{&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true}, eq(ne(2)),
			&expr.Verdict{Kind: expr.VerdictJump, Chain: "hostports"}}
		if got := localJump(); !reflect.DeepEqual(got, want) {
			t.Errorf("got %#v\nwant %#v", got, want)
		}
	})
	t.Run("masqueradeRules", func(t *testing.T) {
		// oifname br-pods ip saddr PREFIX ct status & dnat != 0 masquerade
		rule := func(m, n []byte) []expr.Any {
			return []expr.Any{&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1}, eq(br),
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, mask(m, zero), eq(n),
				&expr.Ct{Register: 1, Key: expr.CtKeySTATUS}, mask(ne(0x20), zero),
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: zero}, &expr.Masq{}}
		}
		want := [][]expr.Any{rule([]byte{255, 0, 0, 0}, []byte{127, 0, 0, 0}), rule([]byte{255, 255, 255, 0}, []byte{10, 92, 0, 0})}
		if got := masqueradeRules("br-pods", netip.MustParsePrefix("10.92.0.0/24")); !reflect.DeepEqual(got, want) {
			t.Errorf("got %#v\nwant %#v", got, want)
		}
	})
	t.Run("localnetGuard", func(t *testing.T) {
		// iifname br-pods ip daddr 127.0.0.0/8 ct state & (established|related) == 0 drop
		want := []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, eq(br),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			mask([]byte{255, 0, 0, 0}, zero), eq([]byte{127, 0, 0, 0}),
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE}, mask(ne(2|4), zero), eq(zero), &expr.Verdict{Kind: expr.VerdictDrop}}
		if got := localnetGuard("br-pods"); !reflect.DeepEqual(got, want) {
			t.Errorf("got %#v\nwant %#v", got, want)
		}
	})
}

func TestHostPortConflict(t *testing.T) {
	tcp := func(ip string, port int32) vm.HostPort {
		return vm.HostPort{Protocol: vm.TCP, HostIP: ip, Port: port, ContainerPort: 80}
	}
	held := map[string][]vm.HostPort{"default/registry": {tcp("", 5000)}, "default/web": {tcp("192.0.2.10", 8080)}}
	for _, tc := range []struct {
		name string
		want []vm.HostPort
		err  string
	}{
		{name: "none", want: nil},
		{name: "another port", want: []vm.HostPort{tcp("", 5001)}},
		{name: "another protocol", want: []vm.HostPort{{Protocol: vm.UDP, Port: 5000, ContainerPort: 53}}},
		{name: "another address of a port held on one", want: []vm.HostPort{tcp("192.0.2.11", 8080)}},
		{name: "held on every address", want: []vm.HostPort{tcp("", 5001), tcp("127.0.0.1", 5000)}, err: "host port 127.0.0.1:5000/TCP is taken by pod default/registry"},
		{name: "held on this address", want: []vm.HostPort{tcp("192.0.2.10", 8080)}, err: "taken by pod default/web"},
		{name: "every address of a port held on one", want: []vm.HostPort{tcp("", 8080)}, err: "host port 8080/TCP is taken by pod default/web"},
		{name: "twice in one pod", want: []vm.HostPort{tcp("", 9000), tcp("192.0.2.10", 9000)}, err: "asked for twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := hostPortConflict(tc.want, held)
			if (err == nil) != (tc.err == "") || err != nil && !strings.Contains(err.Error(), tc.err) {
				t.Errorf("err = %v, want %q", err, tc.err)
			}
		})
	}
}

// podNS stands for a pod VM on the bridge: a network namespace whose NIC is one end of a veth pair, the other end
// a port of the bridge (the TAP). Its loopback stays down, so that what it sends to 127.0.0.1 leaves by its NIC,
// as a hostile guest's may.
type podNS struct{ *netnstest.NS }

func newPodNS(t *testing.T, name string, addr net.IP, n *network) *podNS {
	t.Helper()
	port, nic := "tap-"+name, "nic-"+name
	for _, args := range [][]string{
		{"link", "add", port, "type", "veth", "peer", "name", nic},
		{"link", "set", port, "master", n.bridge},
		{"link", "set", port, "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	p := &podNS{netnstest.New(t, nic)}
	ones, _ := n.cidr.Mask.Size()
	p.Run(t, func() error {
		l, err := netlink.LinkByName(nic)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: addr, Mask: net.CIDRMask(ones, 32)}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		// A guest may route the loopback's addresses to its gateway; its kernel is its own.
		if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+nic+"/route_localnet", []byte("1"), 0o644); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Gw: n.gw})
	})
	return p
}

// serve listens on addr:tcpPort and addr:udpPort in the pod's namespace: TCP answers one line, "NAME FROM" (the
// client's address as the pod sees it); UDP echoes "NAME".
func (p *podNS) serve(t *testing.T, name string, addr net.IP, tcpPort, udpPort int) {
	t.Helper()
	var l net.Listener
	var u net.PacketConn
	p.Run(t, func() error {
		var err error
		if l, err = net.Listen("tcp", net.JoinHostPort(addr.String(), fmt.Sprint(tcpPort))); err != nil {
			return err
		}
		u, err = net.ListenPacket("udp", net.JoinHostPort(addr.String(), fmt.Sprint(udpPort)))
		return err
	})
	t.Cleanup(func() { l.Close(); u.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, name, c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			u.WriteTo([]byte(name), from) //nolint:errcheck
		}
	}()
}

// askTCP connects to addr and returns the pod's line.
func askTCP(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	s, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(s), err
}

// askUDP sends a datagram to addr and returns the answer.
func askUDP(addr string) (string, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	if _, err := c.Write([]byte("who")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// refused checks that nothing forwards addr: a TCP connection to it is refused by the host itself.
func refused(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("connecting to %s succeeded; want it refused", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("connecting to %s: %w; want connection refused", addr, err)
	}
	return nil
}

// TestPortForwarder forwards host ports on a real bridge, without VMs: in a fresh network namespace (the node), a
// second one stands for pod A's VM at 10.92.0.2 with TCP and UDP servers, a third for pod B; 192.0.2.10 is
// the node's own address. The node reaches A at 127.0.0.1, at its own address and at the bridge's; a
// port on one address answers there only; B reaches A through the node's address; B cannot reach what the node
// serves on the loopback; after remove nothing is forwarded.
func TestPortForwarder(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	n, err := newNetwork("br-hp", "10.92.0.0/24")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"addr", "add", "192.0.2.10/32", "dev", "lo"}, // the node's own address, as on its LAN interface
	} {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.ensureBridge(); err != nil {
		t.Fatal(err)
	}
	aIP, bIP := net.IPv4(10, 92, 0, 2).To4(), net.IPv4(10, 92, 0, 3).To4()
	a := newPodNS(t, "a", aIP, n)
	a.serve(t, "a", aIP, 8080, 5353)
	b := newPodNS(t, "b", bIP, n)

	// A service of the node's on the loopback only, which no pod may reach.
	private, err := net.Listen("tcp", "127.0.0.1:2222")
	if err != nil {
		t.Fatal(err)
	}
	defer private.Close()
	go func() {
		for {
			c, err := private.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "node")
			c.Close()
		}
	}()

	f, err := newPortForwarder(n.bridge, n.cidr)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // ensure is idempotent (each start of the backend)
		if err := f.ensure(); err != nil {
			t.Fatal(err)
		}
	}
	ports := []vm.HostPort{
		{Protocol: vm.TCP, Port: 18080, ContainerPort: 8080},
		{Protocol: vm.UDP, Port: 15353, ContainerPort: 5353},
		{Protocol: vm.TCP, HostIP: "192.0.2.10", Port: 18081, ContainerPort: 8080},
	}
	for range 2 { // add replaces: once as many rules as ports
		if err := f.add("uid-a", aIP, ports); err != nil {
			t.Fatal(err)
		}
	}
	assertForwards(t, f, "uid-a", 3)

	// The node: the pod sees the loopback's connections come from the bridge's address (masqueraded), the others
	// from the address the node connects from.
	for addr, want := range map[string]string{
		"127.0.0.1:18080":  "a 10.92.0.1",
		"192.0.2.10:18080": "a 192.0.2.10",
		"10.92.0.1:18080":  "a 10.92.0.1",
		"192.0.2.10:18081": "a 192.0.2.10",
		"127.0.0.1:2222":   "node",
		"192.0.2.10:2222":  "", // refused: the node's private service is on the loopback only
		"127.0.0.1:18081":  "", // refused: 18081 is forwarded on 192.0.2.10 only
		"10.92.0.1:18081":  "",
		"192.0.2.10:18082": "",
	} {
		got, err := askTCP(addr)
		switch {
		case want == "" && err == nil:
			t.Errorf("%s answered %q; want it refused", addr, got)
		case want == "" && !errors.Is(err, syscall.ECONNREFUSED):
			t.Errorf("%s: %v; want connection refused", addr, err)
		case want != "" && (err != nil || got != want):
			t.Errorf("%s answered %q, %v; want %q", addr, got, err, want)
		}
	}
	for _, addr := range []string{"127.0.0.1:15353", "192.0.2.10:15353"} {
		if got, err := askUDP(addr); err != nil || got != "a" {
			t.Errorf("UDP %s answered %q, %v; want a", addr, got, err)
		}
	}

	// Pod B, through the node's addresses: masqueraded, A answers the node, which answers B.
	b.Run(t, func() error {
		for _, addr := range []string{"192.0.2.10:18080", "10.92.0.1:18080"} {
			if got, err := askTCP(addr); err != nil || got != "a 10.92.0.1" {
				return fmt.Errorf("from pod B, %s answered %q, %v; want %q", addr, got, err, "a 10.92.0.1")
			}
		}
		return nil
	})
	// Pod B, to the node's loopback: route_localnet lets the bridge take it in, the guard drops it.
	b.Run(t, func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:2222", time.Second)
		if err == nil {
			c.Close()
			return errors.New("pod B reached the node's 127.0.0.1:2222")
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			return fmt.Errorf("pod B to the node's 127.0.0.1:2222: %w; want it dropped (a timeout)", err)
		}
		return nil
	})

	if err := f.remove("uid-a"); err != nil {
		t.Fatal(err)
	}
	if err := f.remove("uid-a"); err != nil { // a second remove is no error
		t.Fatal(err)
	}
	assertForwards(t, f, "uid-a", 0)
	for _, addr := range []string{"127.0.0.1:18080", "192.0.2.10:18080", "192.0.2.10:18081"} {
		if err := refused(addr); err != nil {
			t.Error(err)
		}
	}
	if got, err := askUDP("127.0.0.1:15353"); err == nil {
		t.Errorf("UDP 127.0.0.1:15353 answered %q after remove", got)
	}

	// retain: the rules of VMs gone while no backend ran go, the others stay.
	if err := f.add("uid-a", aIP, ports[:1]); err != nil {
		t.Fatal(err)
	}
	if err := f.add("uid-gone", bIP, []vm.HostPort{{Protocol: vm.TCP, Port: 19090, ContainerPort: 80}}); err != nil {
		t.Fatal(err)
	}
	if err := f.retain(map[string]bool{"uid-a": true}); err != nil {
		t.Fatal(err)
	}
	assertForwards(t, f, "uid-a", 1)
	assertForwards(t, f, "uid-gone", 0)
	if got, err := askTCP("127.0.0.1:18080"); err != nil || got != "a 10.92.0.1" {
		t.Errorf("after retain, 127.0.0.1:18080 answered %q, %v", got, err)
	}
}

// assertForwards checks that the VM of uid has n rules.
func assertForwards(t *testing.T, f *portForwarder, uid string, n int) {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := f.rulesOf(c, map[string]bool{uid: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != n {
		t.Errorf("VM %s has %d rules, want %d", uid, len(rules), n)
	}
}
