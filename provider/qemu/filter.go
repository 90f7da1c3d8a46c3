package qemu

import (
	"bytes"
	"fmt"
	"net"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// tapFilter keeps each pod's TAP to its VM's own addresses: a frame that enters the bridge from a TAP passes only
// if its source MAC is the VM's and it is IPv4 from the VM's address or ARP for the VM's MAC and address. Without
// it a container with CAP_NET_RAW could send as another pod or as the gateway, or ARP-spoof them.
//
// The rules live in one nftables table of the bridge family, named after the bridge, with two base chains: on the
// prerouting hook, which every frame a port receives passes before the bridge learns its source MAC and forwards it
// or passes it up to the host (filtering there, rather than on the forward hook, also keeps a spoofed MAC out of
// the bridge's forwarding database, where it would steer another pod's traffic to the spoofer), and on the input
// hook, which the link-local frames the bridge delivers to the host without prerouting pass. Each base chain jumps,
// for frames whose input port is a TAP, to a chain named after the TAP holding its rules; the jump rules carry the
// TAP's name as their user data. A TAP that has no chain is not filtered: the backend adds the chain before QEMU
// opens the TAP.
//
// Calls are serialised; each is one nftables transaction, so a frame sees a TAP's old rules or its new ones.
type tapFilter struct {
	table *nftables.Table
	mu    sync.Mutex
}

func newTapFilter(bridge string) *tapFilter {
	return &tapFilter{table: &nftables.Table{Family: nftables.TableFamilyBridge, Name: "i2kit-" + bridge}}
}

// baseChains are the chains the kernel runs; they jump to the TAPs' chains.
func (f *tapFilter) baseChains() []*nftables.Chain {
	mk := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: f.table, Type: nftables.ChainTypeFilter, Hooknum: hook,
			Priority: nftables.ChainPriorityFilter}
	}
	return []*nftables.Chain{mk("prerouting", nftables.ChainHookPrerouting), mk("input", nftables.ChainHookInput)}
}

func (f *tapFilter) isBase(name string) bool { return name == "prerouting" || name == "input" }

// ensure creates the table and its base chains unless they exist; it fails where the kernel has no nftables for
// the bridge family, on which the backend must not run pods.
func (f *tapFilter) ensure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.ensureLocked()
	return err
}

func (f *tapFilter) ensureLocked() (*nftables.Conn, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening nftables, %w", err)
	}
	c.AddTable(f.table)
	for _, b := range f.baseChains() {
		c.AddChain(b)
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("creating nftables table %s, %w", f.table.Name, err)
	}
	return c, nil
}

// allow makes the TAP accept only frames from mac and the IPv4 address ip, replacing any rules it had: it is
// idempotent, and safe to call for a TAP that does not exist yet (the rules match its name).
func (f *tapFilter) allow(tap string, mac net.HardwareAddr, ip net.IP) error {
	rules, err := tapRules(mac, ip)
	if err != nil {
		return fmt.Errorf("filtering TAP %s, %w", tap, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.ensureLocked()
	if err != nil {
		return fmt.Errorf("filtering TAP %s, %w", tap, err)
	}
	bases := f.baseChains()
	old, err := f.jumps(c, map[string]bool{"prerouting": true, "input": true}, tap)
	if err != nil {
		return fmt.Errorf("filtering TAP %s, %w", tap, err)
	}
	ch := c.AddChain(&nftables.Chain{Name: tap, Table: f.table})
	c.FlushChain(ch)
	for _, r := range rules {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: ch, Exprs: r})
	}
	for _, r := range old {
		if err := c.DelRule(r); err != nil {
			return fmt.Errorf("filtering TAP %s, %w", tap, err)
		}
	}
	for _, b := range bases {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: b, Exprs: jumpRule(tap), UserData: []byte(tap)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("filtering TAP %s, %w", tap, err)
	}
	return nil
}

// remove drops the TAP's rules; a TAP without rules is not an error.
func (f *tapFilter) remove(tap string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("removing the filter of TAP %s: opening nftables, %w", tap, err)
	}
	chains, err := f.chains(c)
	if err != nil {
		return fmt.Errorf("removing the filter of TAP %s, %w", tap, err)
	}
	if err := f.removeLocked(c, chains, tap); err != nil {
		return fmt.Errorf("removing the filter of TAP %s, %w", tap, err)
	}
	return nil
}

// retain drops the rules of every TAP but those in keep: the rules of VMs that ended while no backend ran.
func (f *tapFilter) retain(keep map[string]bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("pruning TAP filters: opening nftables, %w", err)
	}
	chains, err := f.chains(c)
	if err != nil {
		return fmt.Errorf("pruning TAP filters, %w", err)
	}
	for name := range chains {
		if f.isBase(name) || keep[name] {
			continue
		}
		if err := f.removeLocked(c, chains, name); err != nil {
			return fmt.Errorf("pruning TAP filters, %w", err)
		}
	}
	return nil
}

func (f *tapFilter) removeLocked(c *nftables.Conn, chains map[string]bool, tap string) error {
	if !chains["prerouting"] && !chains["input"] && !chains[tap] {
		return nil // no table, or nothing of this TAP's
	}
	old, err := f.jumps(c, chains, tap)
	if err != nil {
		return err
	}
	for _, r := range old {
		if err := c.DelRule(r); err != nil {
			return err
		}
	}
	if chains[tap] {
		ch := &nftables.Chain{Name: tap, Table: f.table}
		c.FlushChain(ch)
		c.DelChain(ch)
	}
	return c.Flush()
}

// chains lists the names of the table's chains; none when the table does not exist.
func (f *tapFilter) chains(c *nftables.Conn) (map[string]bool, error) {
	all, err := c.ListChainsOfTableFamily(f.table.Family)
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains, %w", err)
	}
	names := map[string]bool{}
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == f.table.Name {
			names[ch.Name] = true
		}
	}
	return names, nil
}

// jumps returns the rules of the base chains (those of them in chains, which exist) that jump to the TAP's chain.
func (f *tapFilter) jumps(c *nftables.Conn, chains map[string]bool, tap string) ([]*nftables.Rule, error) {
	var out []*nftables.Rule
	for _, b := range f.baseChains() {
		if !chains[b.Name] {
			continue
		}
		rules, err := c.GetRules(f.table, b)
		if err != nil {
			return nil, fmt.Errorf("listing the rules of chain %s, %w", b.Name, err)
		}
		for _, r := range rules {
			if bytes.Equal(r.UserData, []byte(tap)) {
				r.Table, r.Chain = f.table, b
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// Offsets in the headers the rules read (Ethernet, then IPv4 or ARP for Ethernet and IPv4).
const (
	etherSrc   = 6  // source MAC in the Ethernet header
	etherType  = 12 // EtherType in the Ethernet header
	ipv4Src    = 12 // source address in the IPv4 header
	arpFixed   = 0  // hardware type, protocol type and address lengths in the ARP header
	arpSender  = 8  // sender hardware address in the ARP header
	arpSenderP = 14 // sender protocol address in the ARP header
)

// arpEthernetIPv4 is the start of an ARP header for Ethernet (1) and IPv4 (0x0800) with 6- and 4-byte addresses;
// only with it are the sender's addresses where the rules read them.
var arpEthernetIPv4 = []byte{0x00, 0x01, 0x08, 0x00, 6, 4}

// tapRules renders a TAP's rules, evaluated in order for frames entering the bridge from it:
//
//	ether saddr != mac                                   drop
//	ether type ip, ip saddr == ip                        accept
//	ether type arp, Ethernet/IPv4 ARP,
//	  arp sender hardware address == mac, sender ip == ip accept
//	                                                      drop
//
// so a frame with another source MAC, IPv4 from another address, ARP claiming another MAC or address, and any other
// EtherType (IPv6, VLAN tags, anything else: pods are IPv4-only) are dropped. No address 0.0.0.0 is allowed: the
// kernel's ip= parameter configures the VM, which never asks DHCP. A frame too short for a rule's field does not
// match that rule, so it falls through to the final drop. It is a pure function.
func tapRules(mac net.HardwareAddr, ip net.IP) ([][]expr.Any, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("MAC %q is not an Ethernet address", mac)
	}
	ip4 := ip.To4()
	if ip4 == nil {
		return nil, fmt.Errorf("address %q is not IPv4", ip)
	}
	load := func(base expr.PayloadBase, off, n uint32) *expr.Payload {
		return &expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n}
	}
	eq := func(b []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b} }
	verdict := func(k expr.VerdictKind) *expr.Verdict { return &expr.Verdict{Kind: k} }
	ll, nh := expr.PayloadBaseLLHeader, expr.PayloadBaseNetworkHeader
	return [][]expr.Any{
		{load(ll, etherSrc, 6), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(mac)}, verdict(expr.VerdictDrop)},
		{load(ll, etherType, 2), eq([]byte{0x08, 0x00}),
			load(nh, ipv4Src, 4), eq([]byte(ip4)), verdict(expr.VerdictAccept)},
		{load(ll, etherType, 2), eq([]byte{0x08, 0x06}),
			load(nh, arpFixed, 6), eq(arpEthernetIPv4),
			load(nh, arpSender, 6), eq([]byte(mac)),
			load(nh, arpSenderP, 4), eq([]byte(ip4)), verdict(expr.VerdictAccept)},
		{verdict(expr.VerdictDrop)},
	}, nil
}

// jumpRule sends the frames entering from the TAP to its chain. Interface names compare as the kernel's
// IFNAMSIZ-byte, NUL-padded buffers.
func jumpRule(tap string) []expr.Any {
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, tap)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: tap},
	}
}
