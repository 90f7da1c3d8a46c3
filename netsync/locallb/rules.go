package locallb

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/netsync"
)

// The pure half of the balancer: the nftables rules of a Service, the record that names its owner, and the
// choice of its ingress address. Nothing here touches the kernel.

// ctDirOriginal is IP_CT_DIR_ORIGINAL, the direction of a connection's first packet (the reply's is 1).
const ctDirOriginal = 0

// Offsets in the IPv4 and transport headers the rules read.
const (
	ipv4Src  = 12 // source address in the IPv4 header
	ipv4Dst  = 16 // destination address in the IPv4 header
	portDest = 2  // destination port in the TCP and UDP headers
)

// servicesJump sends every packet of a nat base chain to the services chain, where each Service has its rule.
func servicesJump() []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: servicesChain}}
}

// serviceJump sends the packets for a Service's ingress address to its chain.
func serviceJump(ingress netip.Addr, chain string) []expr.Any {
	a := ingress.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4Dst, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: chain},
	}
}

// poolRejects refuse, on the input hook, every packet for an address of the pool in a connection's original
// direction — there, a translated packet is for its target, so these are the packets nothing translated: a TCP
// connection is reset, anything else gets ICMP port unreachable. So a Service with no ready target, or a port that
// no listener has, is refused at once, and the host's own services listening on all addresses are not reachable
// through an ingress address. Packets in the reply direction pass: a client on the host speaks from the ingress
// address itself, so the answers of its targets, and the resets and ICMP errors these rules send it, are for an
// address of the pool.
func poolRejects(pool netip.Prefix) [][]expr.Any {
	match := append([]expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4Dst, Len: 4}},
		inPrefix(pool)...)
	match = append(match,
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ctDirOriginal}})
	return [][]expr.Any{
		append(clone(match),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}),
		append(clone(match), &expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}), // port unreachable
	}
}

// masquerade masquerades, on the postrouting hook, the connections from the pod network (pods) to an address of
// the pool: their source becomes the host's address on the interface they leave by, the bridge's gateway address.
// A pod client needs it because it shares the bridge with the targets. The host DNATs its connection to a target
// and routes it back out the bridge; the target answers the client's address directly over the bridge, so the host
// never sees the answer (bridged frames skip the IP hooks: no br_netfilter), conntrack cannot give it the ingress
// address as its source, and the client drops it; a pod that is its own target even gets a packet from its own
// address, which Linux drops as a martian. Masqueraded, the target answers the host, where conntrack undoes both
// translations. Only pod sources: every other client (the host, the LAN) is off the bridge, so the targets answer
// it through their gateway, the host, anyway, and it keeps its address, which the pods see (logs, allow-lists).
// A pod client's target sees the gateway instead: the price of not putting every bridged frame through the IP
// hooks (br_netfilter), which would slow all pod-to-pod traffic to spare the pods that call their own Services.
// Only connections through a balancer: the original destination (the packet's is the target's by now) is in the
// pool, so the pods' other traffic keeps its source. It is a pure function.
//
// google/nftables v0.3.0 sends a ct expression's direction as 32 bits where the kernel reads 8, which is right
// for the original direction (0) only, and fails to parse the kernel's 8 bits back (google/nftables#317, fixed
// after v0.3.0): so nothing reads this rule back; Ensure only flushes and rewrites its chain.
func masquerade(pods, pool netip.Prefix) []expr.Any {
	r := append([]expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4Src, Len: 4}},
		inPrefix(pods)...)
	r = append(r, &expr.Ct{Register: 1, Key: expr.CtKeyDST, Direction: ctDirOriginal})
	r = append(r, inPrefix(pool)...)
	return append(r, &expr.Masq{})
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

// port is one port a Service listens on, with the targets it spreads over.
type port struct {
	proto   byte // unix.IPPROTO_TCP or unix.IPPROTO_UDP
	port    uint16
	targets []netsync.Target
}

// ports checks a Service's listeners and splits TCP_UDP into a TCP and a UDP port. A listener with a port out of
// range, an unknown protocol, a target that is not IPv4 or has a port out of range, or a second listener on a port
// and protocol is an error: the balancer refuses a model it cannot realise rather than serve part of it.
func ports(ls []netsync.Listener) ([]port, error) {
	var out []port
	seen := map[[2]uint16]bool{}
	for _, l := range ls {
		if l.Port <= 0 || l.Port > 65535 {
			return nil, fmt.Errorf("listener port %d is out of range", l.Port)
		}
		var protos []byte
		switch l.Protocol {
		case netsync.TCP:
			protos = []byte{unix.IPPROTO_TCP}
		case netsync.UDP:
			protos = []byte{unix.IPPROTO_UDP}
		case netsync.TCPUDP:
			protos = []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP}
		default:
			return nil, fmt.Errorf("listener %d: protocol %q is not TCP, UDP or TCP_UDP", l.Port, l.Protocol)
		}
		for _, t := range l.Target.Targets {
			if !t.IP.Is4() {
				return nil, fmt.Errorf("listener %d: target %s is not IPv4", l.Port, t.IP)
			}
			if t.Port <= 0 || t.Port > 65535 {
				return nil, fmt.Errorf("listener %d: target %s port %d is out of range", l.Port, t.IP, t.Port)
			}
		}
		for _, p := range protos {
			k := [2]uint16{uint16(p), uint16(l.Port)}
			if seen[k] {
				return nil, fmt.Errorf("listener %d/%s: a second listener on the port and protocol", l.Port, l.Protocol)
			}
			seen[k] = true
			out = append(out, port{proto: p, port: uint16(l.Port), targets: l.Target.Targets})
		}
	}
	return out, nil
}

// portRules renders a Service's chain, which sees only packets for its ingress address: for a port with n
// targets, n DNAT rules, the i-th taken with probability 1/(n-i) (a random number modulo n-i equals 0; the last
// always), which picks each target with probability 1/n, as the agent spreads a ClusterIP (agent/services.go). A
// port without targets has no rule: its packets fall through to the pool's reject. Only a connection's first
// packet passes the nat hooks; the rest follow conntrack, so replacing the rules keeps established connections
// where they are. It is a pure function.
func portRules(ps []port) [][]expr.Any {
	var out [][]expr.Any
	for _, p := range ps {
		match := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p.proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: portDest, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.port)},
		}
		for i, t := range p.targets {
			r := clone(match)
			if left := len(p.targets) - i; left > 1 {
				r = append(r,
					&expr.Numgen{Register: 1, Modulus: uint32(left), Type: unix.NFT_NG_RANDOM},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)})
			}
			a := t.IP.As4()
			r = append(r,
				&expr.Immediate{Register: 1, Data: a[:]},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(uint16(t.Port))},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2})
			out = append(out, r)
		}
	}
	return out
}

func clone(e []expr.Any) []expr.Any { return append([]expr.Any(nil), e...) }

// serviceChain names a Service's chain after its UID: Delete, which has only the key, finds it.
func serviceChain(uid string) string {
	sum := sha256.Sum256([]byte(uid))
	return fmt.Sprintf("svc-%x", sum[:8])
}

// record is what a Service's rule in the services chain carries as its nftables comment: whose it is and which
// ingress address it holds. The records are the balancer's inventory (List) and its allocations (an address in a
// record is taken); the table survives a restart of the node, so a Service keeps its address.
type record struct {
	Service netsync.ServiceKey
	Ingress netip.Addr
}

// recordPrefix starts every record, so that a comment that is not one of ours is never taken for one.
const recordPrefix = "i2kit-lb/v1"

var (
	// dnsName is a Kubernetes namespace or Service name (DNS-1123 labels and subdomains, at most 253 bytes).
	dnsName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	// uidPattern bounds a UID to what the API server issues (a UUID) and a little more.
	uidPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
)

// checkKey refuses keys that a record could not carry: a comment is at most 256 bytes and its fields are
// separated by spaces.
func checkKey(k netsync.ServiceKey) error {
	if !dnsName.MatchString(k.Namespace) || len(k.Namespace) > 63 {
		return fmt.Errorf("namespace %q is not a DNS label", k.Namespace)
	}
	if !dnsName.MatchString(k.Name) || len(k.Name) > 63 {
		return fmt.Errorf("service name %q is not a DNS label", k.Name)
	}
	if !uidPattern.MatchString(k.UID) {
		return fmt.Errorf("service UID %q is not a UID", k.UID)
	}
	return nil
}

// comment renders the record: "i2kit-lb/v1 <namespace>/<name> <uid> <ingress>", at most 11+1+127+1+64+1+15 bytes.
func (r record) comment() string {
	return fmt.Sprintf("%s %s/%s %s %s", recordPrefix, r.Service.Namespace, r.Service.Name, r.Service.UID, r.Ingress)
}

// parseRecord reads a comment that comment wrote; anything else is an error.
func parseRecord(s string) (record, error) {
	f := strings.Fields(s)
	if len(f) != 4 || f[0] != recordPrefix {
		return record{}, fmt.Errorf("comment %q is not a record", s)
	}
	ns, name, ok := strings.Cut(f[1], "/")
	if !ok {
		return record{}, fmt.Errorf("comment %q names no service", s)
	}
	k := netsync.ServiceKey{Namespace: ns, Name: name, UID: f[2]}
	if err := checkKey(k); err != nil {
		return record{}, fmt.Errorf("comment %q, %w", s, err)
	}
	a, err := netip.ParseAddr(f[3])
	if err != nil || !a.Is4() {
		return record{}, fmt.Errorf("comment %q has no IPv4 ingress address", s)
	}
	return record{Service: k, Ingress: a}, nil
}

// checkPool accepts an IPv4 pool of /16 to /32: larger ones would only make a full pool slow to search.
func checkPool(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("ingress pool %s is not an IPv4 prefix", p)
	}
	if p.Bits() < 16 {
		return fmt.Errorf("ingress pool %s is larger than a /16", p)
	}
	return nil
}

// checkMasquerade accepts no pod network (the zero prefix) or an IPv4 one apart from the pool: a pod network that
// held an address of the pool would make the pool's addresses both pods' and ingresses, and /0 would masquerade
// every client.
func checkMasquerade(pods, pool netip.Prefix) error {
	if pods == (netip.Prefix{}) {
		return nil
	}
	if !pods.IsValid() || !pods.Addr().Is4() {
		return fmt.Errorf("pod network %s is not an IPv4 prefix", pods)
	}
	if pods.Overlaps(pool) {
		return fmt.Errorf("pod network %s overlaps the ingress pool %s", pods, pool)
	}
	return nil
}

// allocate picks a Service's ingress address: the pool's usable addresses (all but the network and broadcast
// addresses in a pool of /30 or larger) are tried in order from one derived from the UID, and the first that no
// other Service holds is taken. So a Service gets the same address each time the pool is the same and its
// derived address is free — across a host reboot too, when the records are gone. It is a pure function.
func allocate(pool netip.Prefix, uid string, used map[netip.Addr]bool) (netip.Addr, error) {
	pool = pool.Masked()
	first := binary.BigEndian.Uint32(pool.Addr().AsSlice())
	n := uint32(1) << (32 - pool.Bits())
	if pool.Bits() <= 30 {
		first, n = first+1, n-2
	}
	sum := sha256.Sum256([]byte(uid))
	start := binary.BigEndian.Uint32(sum[:4]) % n
	for i := range n {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], first+(start+i)%n)
		if a := netip.AddrFrom4(b); !used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("ingress pool %s has no free address", pool)
}
