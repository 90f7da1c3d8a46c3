package netsync

import (
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/agent/protocol"
)

func ptr[T any](v T) *T { return &v }

func TestServiceTable(t *testing.T) {
	svc := func(ns, name, ip string, ports ...corev1.ServicePort) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Spec: corev1.ServiceSpec{ClusterIP: ip, Ports: ports}}
	}
	slice := func(ns, svcName string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svcName + "-x",
			Labels: map[string]string{discoveryv1.LabelServiceName: svcName}}, AddressType: discoveryv1.AddressTypeIPv4,
			Ports: ports, Endpoints: eps}
	}
	ready := func(ips ...string) discoveryv1.Endpoint { return discoveryv1.Endpoint{Addresses: ips} }
	notReady := func(ips ...string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: ips, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false)}}
	}
	services := []*corev1.Service{
		svc("default", "kubernetes", "10.0.0.1", corev1.ServicePort{Name: "https", Port: 443, Protocol: corev1.ProtocolTCP}),
		svc("kube-system", "kube-dns", "10.0.0.10",
			corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
			corev1.ServicePort{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP}),
		svc("default", "web", "10.0.0.20", corev1.ServicePort{Port: 80}), // unnamed port, protocol defaulted
		svc("default", "empty", "10.0.0.30", corev1.ServicePort{Port: 80}),
		svc("default", "headless", corev1.ClusterIPNone, corev1.ServicePort{Port: 80}),
		{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "x.example"}},
	}
	slices := []*discoveryv1.EndpointSlice{
		slice("default", "kubernetes", []discoveryv1.EndpointPort{{Name: ptr("https"), Port: ptr(int32(26443)), Protocol: ptr(corev1.ProtocolTCP)}}, ready("10.250.0.1")),
		slice("kube-system", "kube-dns", []discoveryv1.EndpointPort{
			{Name: ptr("dns"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolUDP)},
			{Name: ptr("dns-tcp"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolTCP)}},
			ready("10.92.0.3"), ready("10.92.0.2"), notReady("10.92.0.9")),
		slice("default", "web", []discoveryv1.EndpointPort{{Name: ptr(""), Port: ptr(int32(8080))}}, ready("10.92.0.5", "10.92.0.5")),
		slice("other", "web", []discoveryv1.EndpointPort{{Name: ptr(""), Port: ptr(int32(9999))}}, ready("10.92.0.77")), // another namespace's
		slice("default", "headless", []discoveryv1.EndpointPort{{Name: ptr(""), Port: ptr(int32(80))}}, ready("10.92.0.8")),
	}
	want := []protocol.Service{
		{IP: "10.0.0.1", Port: 443, Protocol: "TCP", Endpoints: []protocol.Endpoint{{IP: "10.250.0.1", Port: 26443}}},
		{IP: "10.0.0.10", Port: 53, Protocol: "TCP", Endpoints: []protocol.Endpoint{{IP: "10.92.0.2", Port: 5353}, {IP: "10.92.0.3", Port: 5353}}},
		{IP: "10.0.0.10", Port: 53, Protocol: "UDP", Endpoints: []protocol.Endpoint{{IP: "10.92.0.2", Port: 5353}, {IP: "10.92.0.3", Port: 5353}}},
		{IP: "10.0.0.20", Port: 80, Protocol: "TCP", Endpoints: []protocol.Endpoint{{IP: "10.92.0.5", Port: 8080}}},
		{IP: "10.0.0.30", Port: 80, Protocol: "TCP"},
	}
	if got := ServiceTable(services, slices); !reflect.DeepEqual(got, want) {
		t.Errorf("ServiceTable:\n got %+v\nwant %+v", got, want)
	}
	// The same inputs in another order give the same table.
	rev := []*corev1.Service{services[5], services[4], services[3], services[2], services[1], services[0]}
	if got := ServiceTable(rev, []*discoveryv1.EndpointSlice{slices[4], slices[3], slices[2], slices[1], slices[0]}); !reflect.DeepEqual(got, want) {
		t.Errorf("ServiceTable depends on the order of its inputs:\n got %+v", got)
	}
}
