package agent

import (
	"fmt"
	"net"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/protocol"
)

// servicesTable is the nftables table (family ip) that forwards ClusterIP traffic, as kube-proxy's nftables mode
// does on a node: the containers share the VM's network namespace, so their connections leave through the output
// hook, where a DNAT rule per endpoint sends them to one chosen at random; the reply is translated back by
// conntrack. A Service port without endpoints is rejected at once (ICMP port unreachable), not left to time out.
const servicesTable = "i2kit-services"

// services programs the VM's service table; calls are serialised.
type services struct {
	mu sync.Mutex
}

// set replaces the whole table in one nftables transaction: a connection sees the old rules or the new, never
// none. Services whose IP is not IPv4 or whose protocol is not TCP or UDP are skipped.
func (s *services) set(table []protocol.Service) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables, %w", err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: servicesTable})
	c.FlushTable(t)
	nat := c.AddChain(&nftables.Chain{Name: "nat-output", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	filter := c.AddChain(&nftables.Chain{Name: "filter-output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	dnat, reject := serviceRules(table)
	for _, e := range dnat {
		c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: e})
	}
	for _, e := range reject {
		c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: e})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("programming %d service ports, %w", len(table), err)
	}
	return nil
}

// serviceRules builds the rules for a service table: for a port with n endpoints, n DNAT rules, the i-th taken
// with probability 1/(n-i) (a random number modulo n-i equals 0; the last always), which picks each endpoint with
// probability 1/n; for a port without endpoints, one reject rule. It is a pure function.
func serviceRules(table []protocol.Service) (dnat, reject [][]expr.Any) {
	for _, svc := range table {
		ip := net.ParseIP(svc.IP).To4()
		var proto byte
		switch svc.Protocol {
		case "TCP", "":
			proto = unix.IPPROTO_TCP
		case "UDP":
			proto = unix.IPPROTO_UDP
		}
		if ip == nil || proto == 0 || svc.Port <= 0 || svc.Port > 65535 {
			continue
		}
		match := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(uint16(svc.Port))},
		}
		var eps []protocol.Endpoint
		for _, ep := range svc.Endpoints {
			if net.ParseIP(ep.IP).To4() != nil && ep.Port > 0 && ep.Port <= 65535 {
				eps = append(eps, ep)
			}
		}
		if len(eps) == 0 {
			reject = append(reject, append(clone(match), &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3})) // port unreachable
			continue
		}
		for i, ep := range eps {
			r := clone(match)
			if left := len(eps) - i; left > 1 {
				r = append(r,
					&expr.Numgen{Register: 1, Modulus: uint32(left), Type: unix.NFT_NG_RANDOM},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)})
			}
			r = append(r,
				&expr.Immediate{Register: 1, Data: net.ParseIP(ep.IP).To4()},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(ep.Port))},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2})
			dnat = append(dnat, r)
		}
	}
	return dnat, reject
}

func clone(e []expr.Any) []expr.Any { return append([]expr.Any(nil), e...) }
