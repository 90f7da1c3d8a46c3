// Package locallb is the node's own load balancer for Services of type LoadBalancer, for the qemu backend: each
// Service gets an ingress address from a pool, added to a host interface, and the kernel spreads the connections
// to it over the Service's ready pod VMs with nftables DNAT.
//
// nftables rather than a proxy in the node's process: no byte is copied through the node, connections keep
// flowing while the node restarts, and conntrack keeps every established connection on its target while the
// rules change. The rules are the state: each Service's rule carries a record (its key and address) as its
// comment, so List, Delete and a restarted node read them back; nothing else is stored.
package locallb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/netsync"
)

// Config says where the balancer's addresses and rules live.
type Config struct {
	// Pool is the IPv4 prefix ingress addresses are taken from (a /16 to a /32), e.g. 10.89.0.0/24. The host must
	// not use it otherwise: every packet for an address of the pool that no Service translates is refused.
	Pool netip.Prefix
	// Interface names the existing interface that the ingress addresses are added to, each as a /32
	// (DefaultInterface if empty). The balancer neither creates nor deletes it, but every address of the pool on
	// it is the balancer's: one that no Service holds is removed. Linux answers ARP for a local address on any
	// interface, so a client on the host's LAN reaches the addresses when the pool is routed or on-link there.
	Interface string
	// Table names the nftables table (family ip) of the rules (DefaultTable if empty); one per node.
	Table string
	// Masquerade is the pod network, the IPv4 prefix of the pod VMs on the host's bridge (the node's pod CIDR), apart
	// from the pool; zero: none. Connections from it through a balancer are masqueraded, so that a pod VM reaches a
	// Service whose targets share its bridge, itself included (see masquerade); every other client keeps its
	// address. Applied by the next Ensure, which also removes the rule when it is zero.
	Masquerade netip.Prefix
}

const (
	// DefaultInterface is the loopback: always there, never down, nothing else routes through it.
	DefaultInterface = "lo"
	DefaultTable     = "i2kit-lb"
)

// The chains of the table: the nat base chains for packets that arrive (prerouting) and that the host sends
// (output) both jump to servicesChain, which holds one rule per Service (its record) jumping on its ingress
// address to the Service's chain (serviceChain), which holds the DNAT rules; inputChain refuses what is left;
// postroutingChain, only with Config.Masquerade, masquerades the pod network's connections through a balancer.
const (
	preroutingChain  = "prerouting"
	outputChain      = "output"
	inputChain       = "input"
	postroutingChain = "postrouting"
	servicesChain    = "services"
)

// Balancer is a netsync.Balancer on this host. Its calls are serialised; two Balancers must not share a table
// or an interface.
type Balancer struct {
	cfg   Config
	table *nftables.Table
	mu    sync.Mutex
}

var _ netsync.Balancer = (*Balancer)(nil)

// NodeLocal says that the balancer reaches only the pod VMs on its own host: the node gives it no endpoint of
// another node as a target (see node.NodeLocal).
func (b *Balancer) NodeLocal() bool { return true }

// New checks the configuration; it touches nothing until the first Ensure.
func New(cfg Config) (*Balancer, error) {
	if err := checkPool(cfg.Pool); err != nil {
		return nil, err
	}
	cfg.Pool = cfg.Pool.Masked()
	if err := checkMasquerade(cfg.Masquerade, cfg.Pool); err != nil {
		return nil, err
	}
	cfg.Masquerade = cfg.Masquerade.Masked()
	if cfg.Interface == "" {
		cfg.Interface = DefaultInterface
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if len(cfg.Interface) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("interface name %q is longer than %d bytes", cfg.Interface, unix.IFNAMSIZ-1)
	}
	return &Balancer{cfg: cfg, table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: cfg.Table}}, nil
}

// Ensure gives the Service an ingress address (the one it holds, or a new one from the pool when it has none or
// the pool changed) and replaces its rules with lb's in one nftables transaction, then adds the address to the
// interface and removes the pool's addresses that no Service holds (one it moved from, or those a lost table
// left). The record is written before the address is added and the address removed before the record (Delete),
// so an address of the pool without a record is garbage. UDP flows to a target the Service no longer has are forgotten by
// conntrack, so their next datagram picks a current target (or is refused); TCP connections stay where they are.
func (b *Balancer) Ensure(ctx context.Context, lb netsync.LoadBalancer) ([]corev1.LoadBalancerIngress, error) {
	if err := checkKey(lb.Service); err != nil {
		return nil, fmt.Errorf("ensuring load balancer, %w", err)
	}
	ps, err := ports(lb.Listeners)
	if err != nil {
		return nil, fmt.Errorf("ensuring load balancer of %s/%s, %w", lb.Service.Namespace, lb.Service.Name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	ingress, prev, held, err := b.ensureRules(lb.Service, ps)
	if err != nil {
		return nil, fmt.Errorf("ensuring load balancer of %s/%s, %w", lb.Service.Namespace, lb.Service.Name, err)
	}
	if err := b.addAddress(ingress); err != nil {
		return nil, fmt.Errorf("ensuring load balancer of %s/%s, %w", lb.Service.Namespace, lb.Service.Name, err)
	}
	if prev.IsValid() && !held[prev] { // moved from outside the pool, where the sweep does not look
		if err := b.delAddress(prev); err != nil {
			return nil, fmt.Errorf("ensuring load balancer of %s/%s, %w", lb.Service.Namespace, lb.Service.Name, err)
		}
		if err := forgetStaleUDP(prev, nil); err != nil {
			return nil, fmt.Errorf("ensuring load balancer of %s/%s, %w", lb.Service.Namespace, lb.Service.Name, err)
		}
	}
	if err := b.sweepAddresses(held); err != nil {
		return nil, fmt.Errorf("ensuring load balancer of %s/%s, %w", lb.Service.Namespace, lb.Service.Name, err)
	}
	if err := forgetStaleUDP(ingress, ps); err != nil {
		return nil, fmt.Errorf("ensuring load balancer of %s/%s, %w", lb.Service.Namespace, lb.Service.Name, err)
	}
	return []corev1.LoadBalancerIngress{{IP: ingress.String()}}, nil
}

// ensureRules writes the Service's rules and record and returns its address, the address it held before if that
// differs, and the addresses that the records hold once it is done.
func (b *Balancer) ensureRules(svc netsync.ServiceKey, ps []port) (ingress, prev netip.Addr, held map[netip.Addr]bool, err error) {
	c, err := nftables.New()
	if err != nil {
		return netip.Addr{}, netip.Addr{}, nil, fmt.Errorf("opening nftables, %w", err)
	}
	chains, err := b.chains(c)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, nil, err
	}
	recs, err := b.records(c, chains)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, nil, err
	}
	used := map[netip.Addr]bool{}
	var mine []*nftables.Rule
	for _, r := range recs {
		if r.Service == svc {
			ingress = r.Ingress
			mine = append(mine, r.rule)
		} else {
			used[r.Ingress] = true
		}
	}
	if !ingress.IsValid() || used[ingress] || !b.cfg.Pool.Contains(ingress) {
		prev = ingress
		if ingress, err = allocate(b.cfg.Pool, svc.UID, used); err != nil {
			return netip.Addr{}, netip.Addr{}, nil, err
		}
	}

	t := c.AddTable(b.table)
	nat := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeNAT, Hooknum: hook,
			Priority: nftables.ChainPriorityNATDest})
	}
	pre, out := nat(preroutingChain, nftables.ChainHookPrerouting), nat(outputChain, nftables.ChainHookOutput)
	in := c.AddChain(&nftables.Chain{Name: inputChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	services := c.AddChain(&nftables.Chain{Name: servicesChain, Table: t})
	// The base chains are rewritten each time, which also applies a pool changed since the table was made.
	for _, ch := range []*nftables.Chain{pre, out} {
		c.FlushChain(ch)
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: servicesJump()})
	}
	c.FlushChain(in)
	for _, r := range poolRejects(b.cfg.Pool) {
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: r})
	}
	// Rewritten too: one rule with a pod network, whatever a previous node left, and no chain without one.
	post := &nftables.Chain{Name: postroutingChain, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource}
	switch {
	case b.cfg.Masquerade.IsValid():
		c.AddChain(post)
		c.FlushChain(post)
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: masquerade(b.cfg.Masquerade, b.cfg.Pool)})
	case chains[postroutingChain]:
		c.FlushChain(post)
		c.DelChain(post)
	}
	own := c.AddChain(&nftables.Chain{Name: serviceChain(svc.UID), Table: t})
	c.FlushChain(own)
	for _, r := range portRules(ps) {
		c.AddRule(&nftables.Rule{Table: t, Chain: own, Exprs: r})
	}
	// The Service's record is replaced (same address, same chain: a no-op for packets) so that exactly one remains.
	for _, r := range mine {
		if err := c.DelRule(r); err != nil {
			return netip.Addr{}, netip.Addr{}, nil, fmt.Errorf("replacing the record of %s, %w", svc.UID, err)
		}
	}
	rec := record{Service: svc, Ingress: ingress}
	c.AddRule(&nftables.Rule{Table: t, Chain: services, Exprs: serviceJump(ingress, own.Name),
		UserData: userdata.AppendString(nil, userdata.TypeComment, rec.comment())})
	if err := c.Flush(); err != nil {
		return netip.Addr{}, netip.Addr{}, nil, fmt.Errorf("programming nftables table %s, %w", b.table.Name, err)
	}
	used[ingress] = true
	return ingress, prev, used, nil
}

// Delete removes the Service's address, then its rules and record in one transaction (the whole table with the
// last Service), then the pool's addresses that no Service holds. A Service that has nothing is not an error.
func (b *Balancer) Delete(ctx context.Context, svc netsync.ServiceKey) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.delete(svc); err != nil {
		return fmt.Errorf("deleting load balancer of %s/%s, %w", svc.Namespace, svc.Name, err)
	}
	return nil
}

func (b *Balancer) delete(svc netsync.ServiceKey) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables, %w", err)
	}
	chains, err := b.chains(c)
	if err != nil {
		return err
	}
	recs, err := b.records(c, chains)
	if err != nil {
		return err
	}
	var mine []taggedRecord
	others := 0
	held := map[netip.Addr]bool{}
	for _, r := range recs {
		if r.Service == svc {
			mine = append(mine, r)
		} else {
			others++
			held[r.Ingress] = true
		}
	}
	for _, r := range mine {
		if err := b.delAddress(r.Ingress); err != nil {
			return err
		}
	}
	switch {
	case others == 0 && len(chains) > 0:
		c.DelTable(b.table) // with every chain and rule in it
	case others > 0:
		for _, r := range mine {
			if err := c.DelRule(r.rule); err != nil {
				return fmt.Errorf("deleting the record of %s, %w", svc.UID, err)
			}
		}
		if name := serviceChain(svc.UID); chains[name] {
			ch := &nftables.Chain{Name: name, Table: b.table}
			c.FlushChain(ch)
			c.DelChain(ch)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("deleting rules from nftables table %s, %w", b.table.Name, err)
	}
	for _, r := range mine {
		if err := forgetStaleUDP(r.Ingress, nil); err != nil {
			return err
		}
	}
	return b.sweepAddresses(held)
}

// List returns the Services that have a record, sorted.
func (b *Balancer) List(ctx context.Context) ([]netsync.ServiceKey, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("listing load balancers: opening nftables, %w", err)
	}
	chains, err := b.chains(c)
	if err != nil {
		return nil, fmt.Errorf("listing load balancers, %w", err)
	}
	recs, err := b.records(c, chains)
	if err != nil {
		return nil, fmt.Errorf("listing load balancers, %w", err)
	}
	var out []netsync.ServiceKey
	for _, r := range recs {
		if !slices.Contains(out, r.Service) {
			out = append(out, r.Service)
		}
	}
	slices.SortFunc(out, func(a, b netsync.ServiceKey) int {
		return cmpKeys(a, b)
	})
	return out, nil
}

func cmpKeys(a, b netsync.ServiceKey) int {
	for _, p := range [][2]string{{a.Namespace, b.Namespace}, {a.Name, b.Name}, {a.UID, b.UID}} {
		if p[0] != p[1] {
			if p[0] < p[1] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// taggedRecord is a record and the rule that carries it.
type taggedRecord struct {
	record
	rule *nftables.Rule
}

// records reads the records of the services chain; none when the table does not exist. A rule whose comment is
// not a record is not ours to interpret and is skipped.
func (b *Balancer) records(c *nftables.Conn, chains map[string]bool) ([]taggedRecord, error) {
	if !chains[servicesChain] {
		return nil, nil
	}
	ch := &nftables.Chain{Name: servicesChain, Table: b.table}
	rules, err := c.GetRules(b.table, ch)
	if err != nil {
		return nil, fmt.Errorf("listing the rules of chain %s, %w", servicesChain, err)
	}
	var out []taggedRecord
	for _, r := range rules {
		s, ok := userdata.GetString(r.UserData, userdata.TypeComment)
		if !ok {
			continue
		}
		rec, err := parseRecord(s)
		if err != nil {
			continue
		}
		r.Table, r.Chain = b.table, ch
		out = append(out, taggedRecord{record: rec, rule: r})
	}
	return out, nil
}

// chains lists the names of the table's chains; none when the table does not exist.
func (b *Balancer) chains(c *nftables.Conn) (map[string]bool, error) {
	all, err := c.ListChainsOfTableFamily(b.table.Family)
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains, %w", err)
	}
	names := map[string]bool{}
	for _, ch := range all {
		if ch.Table != nil && ch.Table.Name == b.table.Name {
			names[ch.Name] = true
		}
	}
	return names, nil
}

// addAddress adds the address to the interface, which is set up.
func (b *Balancer) addAddress(a netip.Addr) error {
	link, err := netlink.LinkByName(b.cfg.Interface)
	if err != nil {
		return fmt.Errorf("finding interface %s, %w", b.cfg.Interface, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting interface %s up, %w", b.cfg.Interface, err)
	}
	if err := netlink.AddrReplace(link, hostAddr(a)); err != nil {
		return fmt.Errorf("adding address %s to interface %s, %w", a, b.cfg.Interface, err)
	}
	return nil
}

// delAddress removes the address from the interface; an address or interface that is not there is not an error.
func (b *Balancer) delAddress(a netip.Addr) error {
	link, err := netlink.LinkByName(b.cfg.Interface)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finding interface %s, %w", b.cfg.Interface, err)
	}
	if err := netlink.AddrDel(link, hostAddr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("removing address %s from interface %s, %w", a, b.cfg.Interface, err)
	}
	return nil
}

// sweepAddresses removes the interface's addresses of the pool that are not in held, and UDP flows to them.
func (b *Balancer) sweepAddresses(held map[netip.Addr]bool) error {
	link, err := netlink.LinkByName(b.cfg.Interface)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finding interface %s, %w", b.cfg.Interface, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the addresses of interface %s, %w", b.cfg.Interface, err)
	}
	for _, na := range addrs {
		a, ok := netip.AddrFromSlice(na.IP.To4())
		if !ok || !b.cfg.Pool.Contains(a) || held[a] {
			continue
		}
		if err := netlink.AddrDel(link, &na); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing address %s from interface %s, %w", a, b.cfg.Interface, err)
		}
		if err := forgetStaleUDP(a, nil); err != nil {
			return err
		}
	}
	return nil
}

func hostAddr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}
}

// forgetStaleUDP deletes the conntrack entries of UDP flows to the ingress address whose target is not one of
// ps's for their port. Without it a client that keeps its socket (a DNS resolver, a game) would send to a removed
// target, or to a Service that has none, for as long as it keeps sending: conntrack never looks at the rules
// again for a flow it knows. TCP is left alone: an established connection to a leaving target drains.
func forgetStaleUDP(ingress netip.Addr, ps []port) error {
	f := staleUDP{ingress: ingress, current: map[uint16][]netsync.Target{}}
	for _, p := range ps {
		if p.proto == unix.IPPROTO_UDP {
			f.current[p.port] = p.targets
		}
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f); err != nil {
		return fmt.Errorf("forgetting UDP flows to %s, %w", ingress, err)
	}
	return nil
}

// staleUDP matches the conntrack entries that forgetStaleUDP deletes.
type staleUDP struct {
	ingress netip.Addr
	current map[uint16][]netsync.Target // by listener port
}

func (f staleUDP) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst, ok := netip.AddrFromSlice(flow.Forward.DstIP)
	if !ok || dst.Unmap() != f.ingress {
		return false
	}
	src, ok := netip.AddrFromSlice(flow.Reverse.SrcIP) // the target that answers
	if !ok {
		return true
	}
	return !slices.Contains(f.current[flow.Forward.DstPort], netsync.Target{IP: src.Unmap(), Port: int32(flow.Reverse.SrcPort)})
}
