package qemu

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/provider/vm"
)

// portForwarder forwards the node's ports to pod VMs (a pod's hostPorts), as the CNI portmap plugin does for a
// kubelet: a connection or datagram to a port of the node is translated to the VM's address and container port.
//
// The rules live in one nftables table of the ip family, named after the bridge. Two nat base chains — prerouting
// for what arrives, output for what the node itself sends — jump, for packets to an address of the node (the
// loopback's included), to portsChain, which holds each VM's DNAT rules carrying its pod UID as user data. A
// postrouting chain masquerades the translated connections that leave by the bridge from the loopback or from a
// pod: a pod VM answers them through the node, where conntrack undoes both translations (see masqueradeRules). The
// node reaches a pod at localhost:PORT only with route_localnet on the bridge (Linux routes no 127.0.0.0/8 address
// off the loopback otherwise), which also lets a pod VM send to the node's 127.0.0.1: an input chain drops what
// arrives from the bridge for the loopback's addresses, but the answers to the node's own connections
// (localnetGuard).
//
// Calls are serialised; each is one nftables transaction, so a packet sees a VM's old rules or its new ones.
type portForwarder struct {
	table  *nftables.Table
	bridge string
	pods   netip.Prefix
	mu     sync.Mutex
}

// The chains of the table.
const (
	hpPrerouting  = "prerouting"
	hpOutput      = "output"
	hpPostrouting = "postrouting"
	hpInput       = "input"
	portsChain    = "hostports"
)

func newPortForwarder(bridge string, pods *net.IPNet) (*portForwarder, error) {
	a, ok := netip.AddrFromSlice(pods.IP.To4())
	if !ok {
		return nil, fmt.Errorf("pod network %s is not IPv4", pods)
	}
	ones, _ := pods.Mask.Size()
	return &portForwarder{table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: "i2kit-hostports-" + bridge},
		bridge: bridge, pods: netip.PrefixFrom(a, ones).Masked()}, nil
}

// dnatPriority runs the DNAT chains just after the node's load balancer (locallb, at dstnat): the first nat chain
// that translates a connection decides, so a Service's ingress address keeps its ports even where a hostPort is on
// every address.
var dnatPriority = nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest + 1)

// baseChain is a chain the kernel runs, with its fixed rules.
type baseChain struct {
	chain *nftables.Chain
	rules [][]expr.Any
}

func (f *portForwarder) baseChains() []baseChain {
	mk := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority, rules ...[]expr.Any) baseChain {
		return baseChain{&nftables.Chain{Name: name, Table: f.table, Type: typ, Hooknum: hook, Priority: prio}, rules}
	}
	return []baseChain{
		mk(hpPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, dnatPriority, localJump()),
		mk(hpOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, dnatPriority, localJump()),
		mk(hpPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource,
			masqueradeRules(f.bridge, f.pods)...),
		mk(hpInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter, localnetGuard(f.bridge)),
	}
}

// ensure creates the table, its chains and their fixed rules (rewritten, in one transaction) and sets
// route_localnet on the bridge, which must exist. It fails where the kernel has no nftables NAT.
func (f *portForwarder) ensure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables, %w", err)
	}
	c.AddTable(f.table)
	c.AddChain(&nftables.Chain{Name: portsChain, Table: f.table})
	for _, b := range f.baseChains() {
		c.AddChain(b.chain)
		c.FlushChain(b.chain)
		for _, r := range b.rules {
			c.AddRule(&nftables.Rule{Table: f.table, Chain: b.chain, Exprs: r})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("creating nftables table %s, %w", f.table.Name, err)
	}
	// After the guard: the bridge routes the loopback's addresses only once what a pod sends to them is dropped.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+f.bridge+"/route_localnet", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enabling route_localnet on bridge %s, %w", f.bridge, err)
	}
	return nil
}

// add forwards the host ports to the VM of pod uid at address ip, replacing whatever it forwarded: it is
// idempotent, and with no ports it removes the VM's rules.
func (f *portForwarder) add(uid string, ip net.IP, ports []vm.HostPort) error {
	rules, err := forwardRules(ip, ports)
	if err != nil {
		return fmt.Errorf("forwarding the host ports of VM %s, %w", uid, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("forwarding the host ports of VM %s: opening nftables, %w", uid, err)
	}
	ch := &nftables.Chain{Name: portsChain, Table: f.table}
	old, err := f.rulesOf(c, map[string]bool{uid: true})
	if err != nil {
		return fmt.Errorf("forwarding the host ports of VM %s, %w", uid, err)
	}
	for _, r := range old {
		if err := c.DelRule(r); err != nil {
			return fmt.Errorf("forwarding the host ports of VM %s, %w", uid, err)
		}
	}
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: ch, Exprs: r, UserData: []byte(uid)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("forwarding the host ports of VM %s, %w", uid, err)
	}
	return nil
}

// remove drops the VM's rules; a VM without rules, or no table, is not an error.
func (f *portForwarder) remove(uid string) error {
	if err := f.prune(func(u string) bool { return u == uid }); err != nil {
		return fmt.Errorf("removing the host ports of VM %s, %w", uid, err)
	}
	return nil
}

// retain drops the rules of every VM but those in keep: the rules of VMs that ended while no backend ran.
func (f *portForwarder) retain(keep map[string]bool) error {
	if err := f.prune(func(u string) bool { return !keep[u] }); err != nil {
		return fmt.Errorf("pruning host ports, %w", err)
	}
	return nil
}

func (f *portForwarder) prune(drop func(uid string) bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables, %w", err)
	}
	rules, err := f.rulesOf(c, nil)
	if err != nil {
		return err
	}
	n := 0
	for _, r := range rules {
		if drop(string(r.UserData)) {
			if err := c.DelRule(r); err != nil {
				return err
			}
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return c.Flush()
}

// rulesOf returns the rules of portsChain whose user data is a UID in uids (every rule when uids is nil); none
// when the table does not exist.
func (f *portForwarder) rulesOf(c *nftables.Conn, uids map[string]bool) ([]*nftables.Rule, error) {
	tables, err := c.ListTablesOfFamily(f.table.Family)
	if err != nil {
		return nil, fmt.Errorf("listing nftables tables, %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == f.table.Name }) {
		return nil, nil
	}
	ch := &nftables.Chain{Name: portsChain, Table: f.table}
	rules, err := c.GetRules(f.table, ch)
	if err != nil {
		return nil, fmt.Errorf("listing the rules of chain %s, %w", portsChain, err)
	}
	var out []*nftables.Rule
	for _, r := range rules {
		if uids == nil || uids[string(r.UserData)] {
			r.Table, r.Chain = f.table, ch
			out = append(out, r)
		}
	}
	return out, nil
}

// Offsets in the IPv4 and transport headers the rules read.
const (
	ipv4Dst  = 16 // destination address in the IPv4 header
	portDest = 2  // destination port in the TCP and UDP headers
)

// ctStatusDNAT is IPS_DST_NAT, the conntrack status bit of a connection whose destination was translated.
const ctStatusDNAT = 1 << 5

// loopback is the IPv4 loopback network, 127.0.0.0/8.
var loopback = netip.MustParsePrefix("127.0.0.0/8")

// localJump sends the packets for an address of the node (fib daddr type local: the loopback's, the bridge's,
// every interface's) to portsChain.
func localJump() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: portsChain},
	}
}

// masqueradeRules masquerade, on the postrouting hook, the translated connections (ct status dnat) that leave by
// the bridge from the loopback or from the pod network. From the loopback: a VM cannot answer 127.0.0.1, which is
// its own. From a pod: the target would answer the pod straight over the bridge, from its own address where the
// pod expects the node's, and the pod would drop it; masqueraded, both answer the node, where conntrack undoes the
// translations. Every other client (the LAN) is off the bridge: the VM answers it through the node anyway, and it
// keeps its address, which the pod sees. It is a pure function.
func masqueradeRules(bridge string, pods netip.Prefix) [][]expr.Any {
	var out [][]expr.Any
	for _, from := range []netip.Prefix{loopback, pods} {
		r := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4Src, Len: 4},
		}
		r = append(r, inPrefix(from)...)
		r = append(r,
			&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(ctStatusDNAT), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
			&expr.Masq{})
		out = append(out, r)
	}
	return out
}

// localnetGuard drops, on the input hook, what arrives from the bridge for an address of the loopback, but the
// packets of connections the node made (ct state established or related: the answers to its connections to
// localhost:PORT, whose destination conntrack has turned back into 127.0.0.1). route_localnet lets the bridge
// deliver such packets, and without the guard a pod VM would reach every service of the node that listens on the
// loopback only, as kube-proxy's neighbours could (CVE-2020-8558). It is a pure function.
func localnetGuard(bridge string) []expr.Any {
	r := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(bridge)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4Dst, Len: 4},
	}
	r = append(r, inPrefix(loopback)...)
	return append(r,
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
		&expr.Verdict{Kind: expr.VerdictDrop})
}

// forwardRules renders a VM's rules in portsChain, which sees only packets for an address of the node:
//
//	[ip daddr HOSTIP] meta l4proto P th dport PORT dnat ip to VMIP:CONTAINERPORT
//
// one per host port, the address test only for a port on one address. Only a connection's first packet passes
// the nat hooks; the rest follow conntrack. A protocol other than TCP and UDP, a port out of range or an address
// that is not IPv4 is an error: the backend refuses what it cannot forward rather than forward part of it. It is
// a pure function.
func forwardRules(vmIP net.IP, ports []vm.HostPort) ([][]expr.Any, error) {
	to, ok := netip.AddrFromSlice(vmIP.To4())
	if !ok {
		return nil, fmt.Errorf("VM address %q is not IPv4", vmIP)
	}
	var out [][]expr.Any
	for _, p := range ports {
		var proto byte
		switch p.Protocol {
		case vm.TCP:
			proto = unix.IPPROTO_TCP
		case vm.UDP:
			proto = unix.IPPROTO_UDP
		default:
			return nil, fmt.Errorf("host port %d: protocol %q is not TCP or UDP", p.Port, p.Protocol)
		}
		if p.Port < 1 || p.Port > 65535 || p.ContainerPort < 1 || p.ContainerPort > 65535 {
			return nil, fmt.Errorf("host port %d to container port %d: a port is 1 to 65535", p.Port, p.ContainerPort)
		}
		var r []expr.Any
		if p.HostIP != "" {
			a, err := netip.ParseAddr(p.HostIP)
			if err != nil || !a.Is4() {
				return nil, fmt.Errorf("host port %d: host IP %q is not IPv4", p.Port, p.HostIP)
			}
			b := a.As4()
			r = append(r,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4Dst, Len: 4},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b[:]})
		}
		vmAddr := to.As4()
		r = append(r,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: portDest, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(p.Port))},
			&expr.Immediate{Register: 1, Data: vmAddr[:]},
			&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(p.ContainerPort))},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2})
		out = append(out, r)
	}
	return out, nil
}

// hostPortConflict returns an error naming the first of want's host ports that a port of held (other VMs', by
// their pods' namespace/name) or an earlier one of want already takes: same protocol and port, and the same
// address or either on every address. Two VMs cannot share a port: the first rule would take all its traffic.
// It is a pure function.
func hostPortConflict(want []vm.HostPort, held map[string][]vm.HostPort) error {
	for i, w := range want {
		for uid, ps := range held {
			for _, h := range ps {
				if w.Overlaps(h) {
					return fmt.Errorf("host port %s is taken by pod %s", w, uid)
				}
			}
		}
		for _, e := range want[:i] {
			if w.Overlaps(e) {
				return fmt.Errorf("host port %s is asked for twice", w)
			}
		}
	}
	return nil
}

// inPrefix matches when register 1, which holds an IPv4 address, is in the IPv4 prefix.
func inPrefix(p netip.Prefix) []expr.Any {
	net4 := p.Masked().Addr().As4()
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	return []expr.Any{
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net4[:]},
	}
}

// ifname is an interface name as the kernel compares it: an IFNAMSIZ-byte, NUL-padded buffer.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}
