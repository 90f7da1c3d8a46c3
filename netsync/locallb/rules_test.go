package locallb

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/google/nftables/expr"

	"github.com/i2kit/i2kit/netsync"
)

func target(s string, port int32) netsync.Target {
	return netsync.Target{IP: netip.MustParseAddr(s), Port: port}
}

func TestPortRules(t *testing.T) {
	tcp80 := func() []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 80}},
		}
	}
	udp53 := func() []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{17}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 53}},
		}
	}
	// pick is "numgen random mod n == 0" (the register holds a host-endian 32-bit number).
	pick := func(n uint32) []expr.Any {
		return []expr.Any{
			&expr.Numgen{Register: 1, Modulus: n, Type: 1}, // random,
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 0, 0, 0}},
		}
	}
	dnat := func(a, b, c, d byte, port uint16) []expr.Any {
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: []byte{a, b, c, d}},
			&expr.Immediate{Register: 2, Data: []byte{byte(port >> 8), byte(port)}},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: 2, RegAddrMin: 1, RegProtoMin: 2},
		}
	}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	three := netsync.TargetGroup{Targets: []netsync.Target{
		target("10.92.0.2", 8080), target("10.92.0.3", 8080), target("10.92.0.4", 8081)}}
	for _, tc := range []struct {
		name      string
		listeners []netsync.Listener
		want      [][]expr.Any
	}{
		{name: "no listener"},
		{
			name:      "no target: no rule, the pool's reject refuses",
			listeners: []netsync.Listener{{Port: 80, Protocol: netsync.TCP}},
		},
		{
			name: "one target: no random pick",
			listeners: []netsync.Listener{{Port: 80, Protocol: netsync.TCP,
				Target: netsync.TargetGroup{Targets: []netsync.Target{target("10.92.0.2", 8080)}}}},
			want: [][]expr.Any{cat(tcp80(), dnat(10, 92, 0, 2, 8080))},
		},
		{
			name:      "three targets: 1/3, then 1/2, then the last",
			listeners: []netsync.Listener{{Port: 80, Protocol: netsync.TCP, Target: three}},
			want: [][]expr.Any{
				cat(tcp80(), pick(3), dnat(10, 92, 0, 2, 8080)),
				cat(tcp80(), pick(2), dnat(10, 92, 0, 3, 8080)),
				cat(tcp80(), dnat(10, 92, 0, 4, 8081)),
			},
		},
		{
			name: "TCP_UDP is a TCP and a UDP port",
			listeners: []netsync.Listener{{Port: 53, Protocol: netsync.TCPUDP,
				Target: netsync.TargetGroup{Targets: []netsync.Target{target("10.92.0.2", 5353)}}}},
			want: [][]expr.Any{
				cat(tcp80()[:2], udp53()[2:], dnat(10, 92, 0, 2, 5353)),
				cat(udp53(), dnat(10, 92, 0, 2, 5353)),
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps, err := ports(tc.listeners)
			if err != nil {
				t.Fatal(err)
			}
			if got := portRules(ps); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("rules differ:\n got %#v\nwant %#v", got, tc.want)
			}
		})
	}
}

func TestPortsRefuses(t *testing.T) {
	ok := netsync.TargetGroup{Targets: []netsync.Target{target("10.92.0.2", 8080)}}
	for _, tc := range []struct {
		name      string
		listeners []netsync.Listener
		want      string
	}{
		{"port 0", []netsync.Listener{{Port: 0, Protocol: netsync.TCP, Target: ok}}, "out of range"},
		{"port 65536", []netsync.Listener{{Port: 65536, Protocol: netsync.TCP, Target: ok}}, "out of range"},
		{"SCTP", []netsync.Listener{{Port: 80, Protocol: "SCTP", Target: ok}}, "protocol"},
		{"IPv6 target", []netsync.Listener{{Port: 80, Protocol: netsync.TCP,
			Target: netsync.TargetGroup{Targets: []netsync.Target{target("fd00::2", 8080)}}}}, "not IPv4"},
		{"target port 0", []netsync.Listener{{Port: 80, Protocol: netsync.TCP,
			Target: netsync.TargetGroup{Targets: []netsync.Target{target("10.92.0.2", 0)}}}}, "out of range"},
		{"UDP twice", []netsync.Listener{{Port: 53, Protocol: netsync.TCPUDP, Target: ok},
			{Port: 53, Protocol: netsync.UDP, Target: ok}}, "second listener"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ports(tc.listeners)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestPoolRejects(t *testing.T) {
	match := []expr.Any{
		// ip daddr & 255.255.255.0 == 10.89.0.0
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 255, 255, 0}, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{10, 89, 0, 0}},
		// ct direction original
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
	}
	want := [][]expr.Any{
		append(clone(match),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6}},
			&expr.Reject{Type: 1}), // tcp reset
		append(clone(match), &expr.Reject{Type: 0, Code: 3}), // icmp port unreachable
	}
	if got := poolRejects(netip.MustParsePrefix("10.89.0.0/24")); !reflect.DeepEqual(got, want) {
		t.Errorf("rules differ:\n got %#v\nwant %#v", got, want)
	}
}

func TestMasquerade(t *testing.T) {
	want := []expr.Any{
		// ip saddr & 255.255.255.0 == 10.92.0.0
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 255, 255, 0}, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{10, 92, 0, 0}},
		// ct original ip daddr & 255.255.0.0 == 10.89.0.0
		&expr.Ct{Register: 1, Key: expr.CtKeyDST, Direction: 0},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 255, 0, 0}, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{10, 89, 0, 0}},
		&expr.Masq{},
	}
	got := masquerade(netip.MustParsePrefix("10.92.0.0/24"), netip.MustParsePrefix("10.89.0.0/16"))
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rule differs:\n got %#v\nwant %#v", got, want)
	}
	// A /32 pool: the original destination is the one address.
	got = masquerade(netip.MustParsePrefix("10.92.0.0/24"), netip.MustParsePrefix("10.89.0.9/32"))
	if b := got[4].(*expr.Bitwise); !reflect.DeepEqual(b.Mask, []byte{255, 255, 255, 255}) {
		t.Errorf("a /32 pool's mask = %v", b.Mask)
	}
}

func TestServiceJump(t *testing.T) {
	want := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{10, 89, 0, 7}},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: "svc-0011223344556677"},
	}
	if got := serviceJump(netip.MustParseAddr("10.89.0.7"), "svc-0011223344556677"); !reflect.DeepEqual(got, want) {
		t.Errorf("rule differs:\n got %#v\nwant %#v", got, want)
	}
	if a, b := serviceChain("uid-a"), serviceChain("uid-b"); a == b || len(a) != 20 || a != serviceChain("uid-a") {
		t.Errorf("chain names %q, %q: want distinct, stable, 20 bytes", a, b)
	}
}

func TestRecord(t *testing.T) {
	long := strings.Repeat("a", 63)
	r := record{Service: netsync.ServiceKey{Namespace: long, Name: long, UID: strings.Repeat("f", 64)},
		Ingress: netip.MustParseAddr("255.255.255.254")}
	if c := r.comment(); len(c) > 255 { // NFT_USERDATA_MAXLEN, with the comment's NUL
		t.Errorf("the longest record is %d bytes", len(c))
	}
	r.Service = netsync.ServiceKey{Namespace: "default", Name: "hello", UID: "0c2a8a5e-4b0d-4c55-9d61-5a3e6f1f2b7c"}
	if c := r.comment(); c != "i2kit-lb/v1 default/hello 0c2a8a5e-4b0d-4c55-9d61-5a3e6f1f2b7c 255.255.255.254" {
		t.Errorf("comment = %q", c)
	}
	got, err := parseRecord(r.comment())
	if err != nil || got != r {
		t.Errorf("parseRecord(comment) = %+v, %v; want %+v", got, err, r)
	}
	for _, bad := range []string{
		"",
		"someone else's comment",
		"i2kit-lb/v2 default/hello uid 10.89.0.1",
		"i2kit-lb/v1 default hello uid 10.89.0.1",
		"i2kit-lb/v1 default/hello uid 10.89.0.1 extra",
		"i2kit-lb/v1 default/hello uid fd00::1",
		"i2kit-lb/v1 default/hello uid not-an-address",
		"i2kit-lb/v1 Default/hello uid 10.89.0.1",
		"i2kit-lb/v1 default/hel/lo uid 10.89.0.1",
		"i2kit-lb/v1 default/hello u;d 10.89.0.1",
	} {
		if _, err := parseRecord(bad); err == nil {
			t.Errorf("parseRecord(%q) succeeded", bad)
		}
	}
}

func TestCheckKey(t *testing.T) {
	for _, tc := range []struct {
		key netsync.ServiceKey
		ok  bool
	}{
		{netsync.ServiceKey{Namespace: "default", Name: "hello", UID: "0c2a8a5e-4b0d-4c55-9d61-5a3e6f1f2b7c"}, true},
		{netsync.ServiceKey{Namespace: "default", Name: "hello"}, false},
		{netsync.ServiceKey{Namespace: "default", Name: "hello world", UID: "u"}, false},
		{netsync.ServiceKey{Namespace: "", Name: "hello", UID: "u"}, false},
		{netsync.ServiceKey{Namespace: "default", Name: strings.Repeat("a", 64), UID: "u"}, false},
		{netsync.ServiceKey{Namespace: "default", Name: "hello", UID: strings.Repeat("u", 65)}, false},
	} {
		if err := checkKey(tc.key); (err == nil) != tc.ok {
			t.Errorf("checkKey(%+v) = %v, want ok: %v", tc.key, err, tc.ok)
		}
	}
}

func TestAllocate(t *testing.T) {
	pool := netip.MustParsePrefix("10.89.0.0/24")
	a, err := allocate(pool, "uid-a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := allocate(pool, "uid-a", nil); again != a {
		t.Errorf("allocate is not stable: %s then %s", a, again)
	}
	if !pool.Contains(a) || a == netip.MustParseAddr("10.89.0.0") || a == netip.MustParseAddr("10.89.0.255") {
		t.Errorf("allocate = %s, want a host address of %s", a, pool)
	}
	// Taken: the next address, wrapping inside the usable range.
	if b, _ := allocate(pool, "uid-a", map[netip.Addr]bool{a: true}); b == a || !pool.Contains(b) {
		t.Errorf("with %s taken, allocate = %s", a, b)
	}

	for _, tc := range []struct {
		name string
		pool string
		used []string
		want []string // any of
		err  bool
	}{
		{name: "/30: the two host addresses", pool: "10.89.0.4/30", want: []string{"10.89.0.5", "10.89.0.6"}},
		{name: "/30 with one taken", pool: "10.89.0.4/30", used: []string{"10.89.0.5"}, want: []string{"10.89.0.6"}},
		{name: "/30 with the other taken", pool: "10.89.0.4/30", used: []string{"10.89.0.6"}, want: []string{"10.89.0.5"}},
		{name: "/30 full", pool: "10.89.0.4/30", used: []string{"10.89.0.5", "10.89.0.6"}, err: true},
		{name: "/31: both", pool: "10.89.0.4/31", used: []string{"10.89.0.4"}, want: []string{"10.89.0.5"}},
		{name: "/32: the one", pool: "10.89.0.9/32", want: []string{"10.89.0.9"}},
		{name: "/32 taken", pool: "10.89.0.9/32", used: []string{"10.89.0.9"}, err: true},
		{name: "unmasked pool", pool: "10.89.0.6/30", used: []string{"10.89.0.5"}, want: []string{"10.89.0.6"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			used := map[netip.Addr]bool{}
			for _, u := range tc.used {
				used[netip.MustParseAddr(u)] = true
			}
			got, err := allocate(netip.MustParsePrefix(tc.pool), "uid-a", used)
			if (err != nil) != tc.err {
				t.Fatalf("allocate = %s, %v; want an error: %v", got, err, tc.err)
			}
			if !tc.err && !strings.Contains(" "+strings.Join(tc.want, " ")+" ", " "+got.String()+" ") {
				t.Errorf("allocate = %s, want one of %v", got, tc.want)
			}
		})
	}
}

func TestNewChecksConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/24")}, true},
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/16")}, true},
		{Config{Pool: netip.MustParsePrefix("10.0.0.0/8")}, false},
		{Config{Pool: netip.MustParsePrefix("fd00::/120")}, false},
		{Config{}, false},
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Interface: "a-name-of-16-byt"}, false},
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Masquerade: netip.MustParsePrefix("10.92.0.0/24")}, true},
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Masquerade: netip.MustParsePrefix("10.92.0.7/24")}, true},
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Masquerade: netip.MustParsePrefix("10.89.0.0/25")}, false},
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Masquerade: netip.MustParsePrefix("10.0.0.0/8")}, false},
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Masquerade: netip.MustParsePrefix("0.0.0.0/0")}, false},
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Masquerade: netip.MustParsePrefix("fd00::/64")}, false},
		{Config{Pool: netip.MustParsePrefix("10.89.0.0/24"), Masquerade: netip.PrefixFrom(netip.MustParseAddr("10.92.0.0"), 33)}, false},
	} {
		b, err := New(tc.cfg)
		if (err == nil) != tc.ok {
			t.Errorf("New(%+v) = %v, want ok: %v", tc.cfg, err, tc.ok)
		}
		if err == nil && (b.cfg.Interface != DefaultInterface || b.cfg.Table != DefaultTable) {
			t.Errorf("New(%+v) did not default the interface and table: %+v", tc.cfg, b.cfg)
		}
		if err == nil && b.cfg.Masquerade != tc.cfg.Masquerade.Masked() {
			t.Errorf("New(%+v) has pod network %s, want it masked", tc.cfg, b.cfg.Masquerade)
		}
	}
}
