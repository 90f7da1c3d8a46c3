package agent

import (
	"slices"
	"testing"

	"github.com/google/nftables/expr"

	"github.com/i2kit/i2kit/agent/protocol"
)

func TestServiceRules(t *testing.T) {
	table := []protocol.Service{
		{IP: "10.0.0.1", Port: 443, Protocol: "TCP", Endpoints: []protocol.Endpoint{{IP: "10.250.0.1", Port: 26443}}},
		{IP: "10.0.0.10", Port: 53, Protocol: "UDP", Endpoints: []protocol.Endpoint{{IP: "10.92.0.2", Port: 5353}, {IP: "10.92.0.3", Port: 5353}, {IP: "10.92.0.4", Port: 5353}}},
		{IP: "10.0.0.20", Port: 80, Protocol: "TCP"},                                                            // no endpoints: rejected
		{IP: "10.0.0.30", Port: 80, Protocol: "SCTP", Endpoints: []protocol.Endpoint{{IP: "1.2.3.4", Port: 1}}}, // not forwarded
		{IP: "fd00::1", Port: 80, Protocol: "TCP", Endpoints: []protocol.Endpoint{{IP: "fd00::2", Port: 80}}},   // IPv4 only
	}
	dnat, reject := serviceRules(table)
	if len(dnat) != 4 || len(reject) != 1 {
		t.Fatalf("got %d DNAT and %d reject rules, want 4 and 1", len(dnat), len(reject))
	}
	// The i-th of n endpoints is taken when a random number modulo n-i is 0; the last always.
	var moduli []uint32
	for _, r := range dnat {
		m := uint32(1)
		for _, e := range r {
			if ng, ok := e.(*expr.Numgen); ok {
				m = ng.Modulus
			}
		}
		moduli = append(moduli, m)
		if _, ok := r[len(r)-1].(*expr.NAT); !ok {
			t.Errorf("a DNAT rule does not end with the NAT statement: %#v", r[len(r)-1])
		}
	}
	if want := []uint32{1, 3, 2, 1}; !slices.Equal(moduli, want) {
		t.Errorf("moduli = %v, want %v", moduli, want)
	}
	if _, ok := reject[0][len(reject[0])-1].(*expr.Reject); !ok {
		t.Errorf("the rule of a port without endpoints does not reject")
	}
}
