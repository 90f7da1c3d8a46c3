package provider

import (
	"net/netip"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/netsync"
)

func TestWireServices(t *testing.T) {
	addr := netip.MustParseAddr
	for _, tc := range []struct {
		name  string
		table netsync.Table
		want  []protocol.Service
	}{
		{"empty", nil, []protocol.Service{}},
		{"ports and endpoints", netsync.Table{
			{Namespace: "kube-system", Name: "kube-dns", PortName: "dns-tcp", IP: addr("10.0.0.10"), Port: 53, Protocol: corev1.ProtocolTCP,
				Endpoints: []netsync.Endpoint{{IP: addr("10.92.0.2"), Port: 5353}, {IP: addr("10.92.0.3"), Port: 5353}}},
			{Namespace: "kube-system", Name: "kube-dns", PortName: "dns", IP: addr("10.0.0.10"), Port: 53, Protocol: corev1.ProtocolUDP,
				Endpoints: []netsync.Endpoint{{IP: addr("10.92.0.2"), Port: 5353}}},
			{Namespace: "default", Name: "empty", IP: addr("10.0.0.30"), Port: 80, Protocol: corev1.ProtocolSCTP},
		}, []protocol.Service{
			{IP: "10.0.0.10", Port: 53, Protocol: "TCP", Endpoints: []protocol.Endpoint{{IP: "10.92.0.2", Port: 5353}, {IP: "10.92.0.3", Port: 5353}}},
			{IP: "10.0.0.10", Port: 53, Protocol: "UDP", Endpoints: []protocol.Endpoint{{IP: "10.92.0.2", Port: 5353}}},
			{IP: "10.0.0.30", Port: 80, Protocol: "SCTP"},
		}},
		{"IPv6 cluster IPs are left out", netsync.Table{
			{Namespace: "default", Name: "dual", IP: addr("10.0.0.50"), Port: 80, Protocol: corev1.ProtocolTCP,
				Endpoints: []netsync.Endpoint{{IP: addr("10.92.0.10"), Port: 8080}}},
			{Namespace: "default", Name: "dual", IP: addr("fd00:10::50"), Port: 80, Protocol: corev1.ProtocolTCP,
				Endpoints: []netsync.Endpoint{{IP: addr("fd00:92::10"), Port: 8080}}},
		}, []protocol.Service{
			{IP: "10.0.0.50", Port: 80, Protocol: "TCP", Endpoints: []protocol.Endpoint{{IP: "10.92.0.10", Port: 8080}}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := wireServices(tc.table); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("wireServices:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
