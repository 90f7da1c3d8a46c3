package locallb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/i2kit/i2kit/internal/netnstest"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/netsync"
)

// pods stands for pod VMs: addresses on the namespace's loopback, each with a TCP and a UDP server that answer
// with the pod's name.
type pods struct {
	t    *testing.T
	ips  map[string]netip.Addr
	done []func()
}

const (
	tcpPort = 8080
	udpPort = 5353
)

func newPods(t *testing.T, names ...string) *pods {
	t.Helper()
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("setting lo up: %v: %s", err, out)
	}
	p := &pods{t: t, ips: map[string]netip.Addr{}}
	for i, name := range names {
		a := netip.AddrFrom4([4]byte{10, 90, 0, byte(2 + i)})
		if out, err := exec.Command("ip", "addr", "add", a.String()+"/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("adding %s: %v: %s", a, err, out)
		}
		p.ips[name] = a
		p.serve(name, a)
	}
	t.Cleanup(func() {
		for _, f := range p.done {
			f()
		}
	})
	return p
}

func (p *pods) serve(name string, a netip.Addr) {
	l, err := net.Listen("tcp", netip.AddrPortFrom(a, tcpPort).String())
	if err != nil {
		p.t.Fatal(err)
	}
	u, err := net.ListenPacket("udp", netip.AddrPortFrom(a, udpPort).String())
	if err != nil {
		p.t.Fatal(err)
	}
	p.done = append(p.done, func() { l.Close(); u.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s := bufio.NewScanner(c)
				for s.Scan() {
					if _, err := fmt.Fprintln(c, name); err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			u.WriteTo([]byte(name), from)
		}
	}()
}

func (p *pods) targets(port int32, names ...string) []netsync.Target {
	var out []netsync.Target
	for _, n := range names {
		out = append(out, netsync.Target{IP: p.ips[n], Port: port})
	}
	return out
}

// conn is a TCP connection through the balancer; ask returns the name of the pod at its end.
type conn struct {
	net.Conn
	r *bufio.Reader
}

func dial(addr string) (*conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, r: bufio.NewReader(c)}, nil
}

func (c *conn) ask() (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c, "who"); err != nil {
		return "", err
	}
	s, err := c.r.ReadString('\n')
	return strings.TrimSpace(s), err
}

// askTCP connects, asks once, and closes.
func askTCP(addr string) (string, error) {
	c, err := dial(addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ask()
}

// askUDP sends one datagram on c and reads the answer.
func askUDP(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("who")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// spread asks ask until every pod in want has answered, and fails if another one does or if some pod in want does
// not answer in 300 tries (each answers a try with probability 1/len(want): missing one is all but impossible).
func spread(t *testing.T, ask func() (string, error), want ...string) {
	t.Helper()
	if err := trySpread(ask, want...); err != nil {
		t.Fatal(err)
	}
}

func trySpread(ask func() (string, error), want ...string) error {
	seen := map[string]int{}
	for range 300 {
		name, err := ask()
		if err != nil {
			return fmt.Errorf("asking through the balancer: %w", err)
		}
		if !slices.Contains(want, name) {
			return fmt.Errorf("pod %s answered; want only %v", name, want)
		}
		seen[name]++
		if len(seen) == len(want) {
			return nil
		}
	}
	return fmt.Errorf("in 300 tries only %v answered; want %v", seen, want)
}

// refused checks that a TCP connection is refused at once (a reset), not accepted nor left to time out.
func refused(t *testing.T, addr string) {
	t.Helper()
	if err := tryRefused(addr); err != nil {
		t.Fatal(err)
	}
}

func tryRefused(addr string) error {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("connecting to %s succeeded; want it refused", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("connecting to %s: %w; want connection refused", addr, err)
	}
	if d := time.Since(start); d > time.Second {
		return fmt.Errorf("the refusal took %v", d)
	}
	return nil
}

func service(name, uid string) netsync.ServiceKey {
	return netsync.ServiceKey{Namespace: "default", Name: name, UID: uid}
}

func lb(svc netsync.ServiceKey, tcp, udp []netsync.Target) netsync.LoadBalancer {
	return netsync.LoadBalancer{Service: svc, Name: "k8s-" + svc.UID, Listeners: []netsync.Listener{
		{Port: 53, Protocol: netsync.UDP, Target: netsync.TargetGroup{Protocol: netsync.UDP, Targets: udp}},
		{Port: 80, Protocol: netsync.TCP, Target: netsync.TargetGroup{Protocol: netsync.TCP, Targets: tcp}},
	}}
}

func ensure(t *testing.T, b *Balancer, want netsync.LoadBalancer) netip.Addr {
	t.Helper()
	ing, err := b.Ensure(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	if len(ing) != 1 {
		t.Fatalf("ingress = %+v, want one address", ing)
	}
	a, err := netip.ParseAddr(ing[0].IP)
	if err != nil || !b.cfg.Pool.Contains(a) {
		t.Fatalf("ingress = %+v, want an address of %s", ing, b.cfg.Pool)
	}
	return a
}

// addresses lists the interface's IPv4 addresses in the balancer's pool.
func addresses(t *testing.T, b *Balancer) []netip.Addr {
	t.Helper()
	link, err := netlink.LinkByName(b.cfg.Interface)
	if err != nil {
		t.Fatal(err)
	}
	as, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, a := range as {
		if ip, _ := netip.AddrFromSlice(a.IP.To4()); b.cfg.Pool.Contains(ip) {
			out = append(out, ip)
		}
	}
	return out
}

func listKeys(t *testing.T, b *Balancer) []netsync.ServiceKey {
	t.Helper()
	keys, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestBalancer drives the balancer in a network namespace with pods on the loopback and a client on the
// host side (the output hook, as `curl` on the node): spreading, an update that keeps established connections,
// refusals, a restart, two Services, and Delete leaving nothing.
func TestBalancer(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	p := newPods(t, "a", "b", "c", "d")
	cfg := Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Table: "i2kit-lb-test"}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	hello := service("hello", "0c2a8a5e-4b0d-4c55-9d61-5a3e6f1f2b7c")

	ip := ensure(t, b, lb(hello, p.targets(tcpPort, "a", "b", "c"), p.targets(udpPort, "a", "b", "c")))
	if got := addresses(t, b); !slices.Equal(got, []netip.Addr{ip}) {
		t.Fatalf("addresses of %s = %v, want [%s]", cfg.Interface, got, ip)
	}
	web, dns := netip.AddrPortFrom(ip, 80).String(), netip.AddrPortFrom(ip, 53).String()
	spread(t, func() (string, error) { return askTCP(web) }, "a", "b", "c")
	spread(t, func() (string, error) { // a new socket, a new flow, each time
		c, err := net.Dial("udp", dns)
		if err != nil {
			return "", err
		}
		defer c.Close()
		return askUDP(c)
	}, "a", "b", "c")

	// A TCP connection to b, which stays, and a UDP flow to a, which goes.
	var keep *conn
	for keep == nil {
		c, err := dial(web)
		if err != nil {
			t.Fatal(err)
		}
		if name, err := c.ask(); err != nil {
			t.Fatal(err)
		} else if name == "b" {
			keep = c
		} else {
			c.Close()
		}
	}
	defer keep.Close()
	var flow net.Conn
	for flow == nil {
		c, err := net.Dial("udp", dns)
		if err != nil {
			t.Fatal(err)
		}
		if name, err := askUDP(c); err != nil {
			t.Fatal(err)
		} else if name == "a" {
			flow = c
		} else {
			c.Close()
		}
	}
	defer flow.Close()

	t.Log("update: a leaves, d comes")
	if again := ensure(t, b, lb(hello, p.targets(tcpPort, "b", "c", "d"), p.targets(udpPort, "b", "c", "d"))); again != ip {
		t.Fatalf("the update moved the Service from %s to %s", ip, again)
	}
	if name, err := keep.ask(); err != nil || name != "b" {
		t.Fatalf("the established connection to b answered %q, %v", name, err)
	}
	spread(t, func() (string, error) { return askTCP(web) }, "b", "c", "d")
	if name, err := askUDP(flow); err != nil || name == "a" {
		t.Fatalf("the UDP flow that went to a was answered by %q, %v; want a current target", name, err)
	}

	t.Log("a host service listening on all addresses is not reachable through the ingress address")
	for _, port := range []string{"80", "81"} {
		l, err := net.Listen("tcp", ":"+port)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
	}
	refused(t, netip.AddrPortFrom(ip, 81).String())

	t.Log("no target: refused at once")
	ensure(t, b, lb(hello, nil, nil))
	refused(t, web)
	if name, err := keep.ask(); err != nil || name != "b" {
		t.Fatalf("the established connection to b answered %q, %v", name, err)
	}
	if name, err := askUDP(flow); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("the UDP flow was answered by %q, %v; want it refused", name, err)
	}

	t.Log("a restarted node finds the Service and keeps its address")
	b, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := listKeys(t, b); !slices.Equal(got, []netsync.ServiceKey{hello}) {
		t.Fatalf("List = %v, want [%v]", got, hello)
	}
	if again := ensure(t, b, lb(hello, p.targets(tcpPort, "c"), nil)); again != ip {
		t.Fatalf("after a restart the Service moved from %s to %s", ip, again)
	}
	spread(t, func() (string, error) { return askTCP(web) }, "c")
	c := mustConn(t)
	chains, err := b.chains(c)
	if err != nil {
		t.Fatal(err)
	}
	if recs, err := b.records(c, chains); err != nil || len(recs) != 1 {
		t.Fatalf("after four Ensures the Service has %d records (%v), want one", len(recs), err)
	}

	t.Log("a second Service")
	other := service("other", "9d3c1b7a-0000-4000-8000-000000000001")
	ip2 := ensure(t, b, lb(other, p.targets(tcpPort, "d"), nil))
	if ip2 == ip {
		t.Fatalf("two Services share %s", ip)
	}
	if got := listKeys(t, b); !slices.Equal(got, []netsync.ServiceKey{hello, other}) {
		t.Fatalf("List = %v, want [%v %v]", got, hello, other)
	}
	spread(t, func() (string, error) { return askTCP(netip.AddrPortFrom(ip2, 80).String()) }, "d")

	t.Log("delete, twice")
	for range 2 {
		if err := b.Delete(ctx, hello); err != nil {
			t.Fatal(err)
		}
	}
	if got := addresses(t, b); !slices.Equal(got, []netip.Addr{ip2}) {
		t.Fatalf("addresses of %s = %v, want [%s]", cfg.Interface, got, ip2)
	}
	if got := listKeys(t, b); !slices.Equal(got, []netsync.ServiceKey{other}) {
		t.Fatalf("List = %v, want [%v]", got, other)
	}
	spread(t, func() (string, error) { return askTCP(netip.AddrPortFrom(ip2, 80).String()) }, "d")
	chains, err = b.chains(mustConn(t))
	if err != nil {
		t.Fatal(err)
	}
	if chains[serviceChain(hello.UID)] {
		t.Errorf("the deleted Service's chain %s is left", serviceChain(hello.UID))
	}
	for range 2 {
		if err := b.Delete(ctx, other); err != nil {
			t.Fatal(err)
		}
	}
	assertNothingLeft(t, b)
}

// TestBalancerMovesOutOfAShrunkPool: a node restarted with another pool moves the Service's address into it.
func TestBalancerMovesOutOfAShrunkPool(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	p := newPods(t, "a")
	cfg := Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Table: "i2kit-lb-test"}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc := service("hello", "0c2a8a5e-4b0d-4c55-9d61-5a3e6f1f2b7c")
	ip := ensure(t, b, lb(svc, p.targets(tcpPort, "a"), nil))
	cfg.Pool = netip.MustParsePrefix("10.88.0.0/24")
	if b, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	ip2 := ensure(t, b, lb(svc, p.targets(tcpPort, "a"), nil))
	if got := addresses(t, b); !slices.Equal(got, []netip.Addr{ip2}) {
		t.Fatalf("addresses of the new pool = %v, want [%s]", got, ip2)
	}
	if got := addresses(t, &Balancer{cfg: Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Interface: "lo"}}); len(got) != 0 {
		t.Fatalf("addresses of the old pool = %v, want none (the Service moved from %s)", got, ip)
	}
	spread(t, func() (string, error) { return askTCP(netip.AddrPortFrom(ip2, 80).String()) }, "a")
	if err := b.Delete(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, b)
}

// TestBalancerFullPool: Services beyond the pool's size are refused, not given a shared address.
func TestBalancerFullPool(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	p := newPods(t, "a")
	b, err := New(Config{Pool: netip.MustParsePrefix("10.89.0.4/30"), Table: "i2kit-lb-test"})
	if err != nil {
		t.Fatal(err)
	}
	one := ensure(t, b, lb(service("one", "uid-1"), p.targets(tcpPort, "a"), nil))
	two := ensure(t, b, lb(service("two", "uid-2"), p.targets(tcpPort, "a"), nil))
	if one == two {
		t.Fatalf("two Services share %s", one)
	}
	if _, err := b.Ensure(context.Background(), lb(service("three", "uid-3"), nil, nil)); err == nil {
		t.Fatal("a third Service got an address of a /30")
	}
	for _, s := range []string{"one", "two"} {
		if err := b.Delete(context.Background(), service(s, "uid-"+map[string]string{"one": "1", "two": "2"}[s])); err != nil {
			t.Fatal(err)
		}
	}
	assertNothingLeft(t, b)
}

func mustConn(t *testing.T) *nftables.Conn {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// assertNothingLeft checks that no table, address or Service is left.
func assertNothingLeft(t *testing.T, b *Balancer) {
	t.Helper()
	if _, err := mustConn(t).ListTableOfFamily(b.cfg.Table, nftables.TableFamilyIPv4); err == nil {
		t.Errorf("table %s is left", b.cfg.Table)
	}
	if got := addresses(t, b); len(got) != 0 {
		t.Errorf("addresses %v are left on %s", got, b.cfg.Interface)
	}
	if got := listKeys(t, b); len(got) != 0 {
		t.Errorf("List = %v, want none", got)
	}
}

// TestBalancerSweepsAddresses: an address of the pool that no record holds (the table was flushed behind the
// node's back, or another node's pool overlaps) is removed by the next Ensure or Delete.
func TestBalancerSweepsAddresses(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	p := newPods(t, "a")
	b, err := New(Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Table: "i2kit-lb-test"})
	if err != nil {
		t.Fatal(err)
	}
	stray := func() {
		t.Helper()
		if out, err := exec.Command("ip", "addr", "add", "10.89.0.77/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("adding a stray address: %v: %s", err, out)
		}
	}
	stray()
	svc := service("hello", "0c2a8a5e-4b0d-4c55-9d61-5a3e6f1f2b7c")
	ip := ensure(t, b, lb(svc, p.targets(tcpPort, "a"), nil))
	if got := addresses(t, b); !slices.Equal(got, []netip.Addr{ip}) {
		t.Fatalf("after Ensure the pool's addresses are %v, want [%s]", got, ip)
	}
	stray()
	if err := b.Delete(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, b)
	stray()
	if err := b.Delete(context.Background(), svc); err != nil { // the table is gone too
		t.Fatal(err)
	}
	assertNothingLeft(t, b)
}

// remote is a client in a network namespace of its own, linked to the test's by a veth pair and routed through
// it: its packets reach the balancer on the prerouting hook, as a client on the LAN's or a pod VM's do. A
// goroutine locked to a thread that left the test's namespace makes its sockets.
type remote struct{ *netnstest.NS }

func newRemote(t *testing.T) *remote {
	t.Helper()
	ipCmds(t, []string{"link", "add", "cli0", "type", "veth", "peer", "name", "cli1"},
		[]string{"addr", "add", "10.91.0.1/24", "dev", "cli0"}, []string{"link", "set", "cli0", "up"})
	r := newNamespace(t, "cli1")
	r.Run(t, func() error { return setUpNIC("cli1", netip.MustParsePrefix("10.91.0.2/24"), net.IPv4(10, 91, 0, 1)) })
	return r
}

// ipCmds runs ip(8) with each of the argument lists in turn.
func ipCmds(t *testing.T, cmds ...[]string) {
	t.Helper()
	for _, args := range cmds {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
}

// setUpNIC sets lo and the NIC up, gives the NIC the address, and routes everything through the gateway.
func setUpNIC(nic string, addr netip.Prefix, gw net.IP) error {
	for _, name := range []string{"lo", nic} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if name == nic {
			a := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
			if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: a}); err != nil {
				return err
			}
		}
	}
	return netlink.RouteAdd(&netlink.Route{Gw: gw})
}

// newNamespace makes a network namespace and moves the test namespace's link nic into it.
func newNamespace(t *testing.T, nic string) *remote {
	t.Helper()
	return &remote{netnstest.New(t, nic)}
}

// TestBalancerRemoteClient: a client in another network namespace is spread over the targets and refused at once
// when there are none.
func TestBalancerRemoteClient(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	p := newPods(t, "a", "b")
	r := newRemote(t)
	b, err := New(Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Table: "i2kit-lb-test"})
	if err != nil {
		t.Fatal(err)
	}
	svc := service("hello", "0c2a8a5e-4b0d-4c55-9d61-5a3e6f1f2b7c")
	web := netip.AddrPortFrom(ensure(t, b, lb(svc, p.targets(tcpPort, "a", "b"), nil)), 80).String()
	r.Run(t, func() error { return trySpread(func() (string, error) { return askTCP(web) }, "a", "b") })
	ensure(t, b, lb(svc, nil, nil))
	r.Run(t, func() error { return tryRefused(web) })
	if err := b.Delete(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, b)
}

// The qemu backend's pod network, as provider/qemu makes it: a bridge whose address is the pods' gateway.
var (
	podNet    = netip.MustParsePrefix("10.92.0.0/24")
	podGW     = net.IPv4(10, 92, 0, 1)
	podBridge = "br-pods"
)

// newBridge makes the pod network's bridge in the test's namespace, which forwards: a node must, for a pod's or a
// LAN client's connection through a balancer to reach a pod VM (the bridge's own forwarding is enough for a pod's,
// but newRemote's interface needs it too). Bridged frames
// skip the IP hooks, as on a node without br_netfilter: where the module is loaded, it would run them through
// conntrack, which undoes the DNAT of a target's answer to a pod on the same bridge and hides the hairpin's fault.
func newBridge(t *testing.T) {
	t.Helper()
	ipCmds(t, []string{"link", "add", podBridge, "type", "bridge"},
		[]string{"addr", "add", podGW.String() + "/24", "dev", podBridge}, []string{"link", "set", podBridge, "up"})
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := os.WriteFile("/proc/sys/net/bridge/bridge-nf-call-iptables", []byte("0"), 0o644)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
}

// newBridgePod stands for a pod VM on the bridge: a network namespace whose NIC is one end of a veth pair, the
// other end a port of the bridge (the TAP), with a TCP server on tcpPort that answers each line with the pod's
// name and the address its client connects from.
func newBridgePod(t *testing.T, name string, addr netip.Addr) *remote {
	t.Helper()
	port, nic := "tap-"+name, "nic-"+name
	ipCmds(t, []string{"link", "add", port, "type", "veth", "peer", "name", nic},
		[]string{"link", "set", port, "master", podBridge}, []string{"link", "set", port, "up"})
	r := newNamespace(t, nic)
	var l net.Listener
	r.Run(t, func() error {
		if err := setUpNIC(nic, netip.PrefixFrom(addr, podNet.Bits()), podGW); err != nil {
			return err
		}
		var err error
		l, err = net.Listen("tcp", netip.AddrPortFrom(addr, tcpPort).String())
		return err
	})
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				from := c.RemoteAddr().(*net.TCPAddr).IP
				s := bufio.NewScanner(c)
				for s.Scan() {
					if _, err := fmt.Fprintln(c, name, from); err != nil {
						return
					}
				}
			}()
		}
	}()
	return r
}

// TestBalancerPodClient: a pod VM reaches a Service whose target is another pod VM on its bridge, or itself,
// through the masquerade, and the target sees the bridge's gateway as the client; a client on the host or the
// LAN keeps its address. Without Masquerade the rule goes, and a restart does not add a second one.
func TestBalancerPodClient(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	newBridge(t)
	podA := newBridgePod(t, "a", netip.MustParseAddr("10.92.0.2"))
	newBridgePod(t, "b", netip.MustParseAddr("10.92.0.3"))
	lan := newRemote(t)
	cfg := Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Table: "i2kit-lb-test", Masquerade: podNet}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	svc := service("hello", "0c2a8a5e-4b0d-4c55-9d61-5a3e6f1f2b7c")
	to := func(ip string) netsync.LoadBalancer {
		return lb(svc, []netsync.Target{target(ip, tcpPort)}, nil)
	}
	ip := ensure(t, b, to("10.92.0.3"))
	web := netip.AddrPortFrom(ip, 80).String()
	answers := func(c *remote, want string) {
		t.Helper()
		var got string
		ask := func() (err error) { got, err = askTCP(web); return err }
		if c == nil {
			err = ask()
		} else {
			err = c.Do(ask)
		}
		if err != nil || got != want {
			t.Fatalf("through %s: answer %q, %v; want %q", web, got, err, want)
		}
	}

	t.Log("pod a → b: masqueraded to the gateway")
	answers(podA, "b 10.92.0.1")
	t.Log("the host and the LAN keep their addresses (the host's client speaks from the ingress address)")
	answers(nil, "b "+ip.String())
	answers(lan, "b 10.91.0.2")

	t.Log("pod a → a itself")
	ensure(t, b, to("10.92.0.2"))
	answers(podA, "a 10.92.0.1")

	t.Log("a restarted node keeps one masquerade rule")
	if b, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	ensure(t, b, to("10.92.0.3"))
	ensure(t, b, to("10.92.0.3"))
	if n := postroutingRules(t, b); n != 1 {
		t.Fatalf("after a restart and two Ensures, chain %s has %d rules, want 1", postroutingChain, n)
	}
	answers(podA, "b 10.92.0.1")

	t.Log("without a pod network, the chain goes and the LAN still reaches b")
	noMasq := cfg
	noMasq.Masquerade = netip.Prefix{}
	if b, err = New(noMasq); err != nil {
		t.Fatal(err)
	}
	ensure(t, b, to("10.92.0.3"))
	if n := postroutingRules(t, b); n != -1 {
		t.Fatalf("without a pod network, chain %s is there with %d rules", postroutingChain, n)
	}
	answers(lan, "b 10.91.0.2")
	if err := b.Delete(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	assertNothingLeft(t, b)
}

// postroutingRules counts the rules of the balancer's postrouting chain, -1 if there is no chain, with a dump of
// its rules that it does not parse: google/nftables cannot read the masquerade rule back (see masquerade).
func postroutingRules(t *testing.T, b *Balancer) int {
	t.Helper()
	chains, err := b.chains(mustConn(t))
	if err != nil {
		t.Fatal(err)
	}
	if !chains[postroutingChain] {
		return -1
	}
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETRULE, unix.NLM_F_DUMP)
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.NFPROTO_IPV4, Version: unix.NFNETLINK_V0})
	req.AddData(nl.NewRtAttr(unix.NFTA_RULE_TABLE, nl.ZeroTerminated(b.table.Name)))
	req.AddData(nl.NewRtAttr(unix.NFTA_RULE_CHAIN, nl.ZeroTerminated(postroutingChain)))
	rules, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		t.Fatalf("listing the rules of chain %s, %v", postroutingChain, err)
	}
	return len(rules)
}
