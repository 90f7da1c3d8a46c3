// Package netsync keeps what pods reach over the network in step with the cluster. Its model is plain data built by
// pure functions from Services and EndpointSlices: the service table (what kube-proxy would program on an
// ordinary node) that every pod VM's agent forwards ClusterIP traffic by.
package netsync

import (
	"cmp"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Table is the service table: one entry per cluster IP and port of every Service that has cluster IPs. It is
// sorted by IP, Port and Protocol and has no two entries for the same IP, Port and Protocol.
type Table []Service

// Service is one port of one cluster IP of a Service: connections to IP:Port over Protocol go to one of
// Endpoints, which are of IP's family, sorted and distinct. A port without endpoints has none (connections to it
// are refused, not left to time out).
type Service struct {
	// Namespace and Name are the Service's; PortName is the name of its port (empty for a lone unnamed port).
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	PortName  string `json:"portName,omitempty"`

	IP        netip.Addr      `json:"ip"`
	Port      int32           `json:"port"`
	Protocol  corev1.Protocol `json:"protocol"`
	Endpoints []Endpoint      `json:"endpoints,omitempty"`
}

// Endpoint is a backend of a Service port: a pod's address and the port it serves the Service's port on.
type Endpoint struct {
	IP   netip.Addr `json:"ip"`
	Port int32      `json:"port"`
}

// BuildTable is the service table kube-proxy would program from services and their EndpointSlices. Every cluster IP
// of a Service counts (both of a dual-stack Service's; headless and ExternalName Services have none), with the
// endpoints of the Service's EndpointSlices of that IP's address family at the slice's port of the same name and
// protocol. The endpoints are the ready ones or, when none is ready, the serving ones that are terminating, as
// kube-proxy falls back to them (KEP-1669) so that a rollout's last pods keep serving while they drain. An endpoint
// in several slices counts once. It is a pure function: the same inputs in any order give the same table.
func BuildTable(services []*corev1.Service, endpointSlices []*discoveryv1.EndpointSlice) Table {
	type key struct{ namespace, name string }
	bySvc := map[key][]*discoveryv1.EndpointSlice{}
	for _, s := range endpointSlices {
		if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
			bySvc[key{s.Namespace, name}] = append(bySvc[key{s.Namespace, name}], s)
		}
	}
	var table Table
	for _, svc := range services {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		for _, ip := range clusterIPs(svc) {
			for _, sp := range svc.Spec.Ports {
				e := Service{Namespace: svc.Namespace, Name: svc.Name, PortName: sp.Name,
					IP: ip, Port: sp.Port, Protocol: cmp.Or(sp.Protocol, corev1.ProtocolTCP)}
				e.Endpoints = endpoints(bySvc[key{svc.Namespace, svc.Name}], addressType(ip), sp.Name, e.Protocol)
				table = append(table, e)
			}
		}
	}
	slices.SortFunc(table, func(a, b Service) int {
		return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol),
			cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.PortName, b.PortName))
	})
	// The API server refuses two Services with one cluster IP, and two ports of a Service with the same number and
	// protocol; should the caches hold both for a moment, the first in this order stands, whatever the inputs' order.
	return slices.CompactFunc(table, func(a, b Service) bool {
		return a.IP == b.IP && a.Port == b.Port && a.Protocol == b.Protocol
	})
}

// clusterIPs are a Service's cluster IPs: spec.clusterIPs, or spec.clusterIP where an old object has only that;
// none for a headless Service ("None").
func clusterIPs(svc *corev1.Service) []netip.Addr {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, s := range ips {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip)
		}
	}
	return out
}

func addressType(ip netip.Addr) discoveryv1.AddressType {
	if ip.Is4() {
		return discoveryv1.AddressTypeIPv4
	}
	return discoveryv1.AddressTypeIPv6
}

// endpoints are the endpoints a Service port forwards to (see BuildTable) from the Service's slices of family, at
// their port named portName with protocol proto; sorted and distinct.
func endpoints(svcSlices []*discoveryv1.EndpointSlice, family discoveryv1.AddressType, portName string, proto corev1.Protocol) []Endpoint {
	var ready, terminating []Endpoint
	for _, s := range svcSlices {
		if s.AddressType != family {
			continue
		}
		port := slicePort(s, portName, proto)
		if port == 0 {
			continue
		}
		for _, ep := range s.Endpoints {
			// A condition the slice leaves out is true for ready and serving and false for terminating, as the API
			// defines them.
			c := ep.Conditions
			isReady := ptrOr(c.Ready, true)
			isDraining := ptrOr(c.Serving, true) && ptrOr(c.Terminating, false)
			for _, a := range ep.Addresses {
				// An address not of the slice's family would be forwarded to from the other family's IP.
				ip, err := netip.ParseAddr(a)
				if err != nil || addressType(ip) != family {
					continue
				}
				switch {
				case isReady:
					ready = append(ready, Endpoint{IP: ip, Port: port})
				case isDraining:
					terminating = append(terminating, Endpoint{IP: ip, Port: port})
				}
			}
		}
	}
	out := ready
	if len(out) == 0 {
		out = terminating
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port)) })
	return slices.Compact(out)
}

// slicePort is a slice's port named portName with protocol proto (an unset name is "", an unset protocol TCP), or
// 0 when the slice has none.
func slicePort(s *discoveryv1.EndpointSlice, portName string, proto corev1.Protocol) int32 {
	for _, p := range s.Ports {
		if p.Port != nil && ptrOr(p.Name, "") == portName && ptrOr(p.Protocol, corev1.ProtocolTCP) == proto {
			return *p.Port
		}
	}
	return 0
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
