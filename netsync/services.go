// Package netsync keeps what pods reach over the network in step with the cluster: the service table every pod
// VM's agent forwards ClusterIP traffic with (kube-proxy's job on an ordinary node).
package netsync

import (
	"cmp"
	"context"
	"net"
	"reflect"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/i2kit/i2kit/agent/protocol"
)

// ServiceTable is the service table kube-proxy would program from services and their EndpointSlices: for every
// IPv4 ClusterIP of a Service (not headless, not ExternalName) and each of its ports, the ready endpoints of the
// Service's EndpointSlices for the port of the same name and protocol. The table is sorted and has no
// duplicates, so that equal inputs give equal tables. It is a pure function.
func ServiceTable(services []*corev1.Service, endpointSlices []*discoveryv1.EndpointSlice) []protocol.Service {
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range endpointSlices {
		if name := s.Labels[discoveryv1.LabelServiceName]; name != "" && s.AddressType == discoveryv1.AddressTypeIPv4 {
			bySvc[s.Namespace+"/"+name] = append(bySvc[s.Namespace+"/"+name], s)
		}
	}
	var table []protocol.Service
	for _, svc := range services {
		if svc.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		for _, ip := range ips {
			if ip == corev1.ClusterIPNone || net.ParseIP(ip).To4() == nil {
				continue
			}
			for _, sp := range svc.Spec.Ports {
				proto := cmp.Or(sp.Protocol, corev1.ProtocolTCP)
				e := protocol.Service{IP: ip, Port: int(sp.Port), Protocol: string(proto)}
				for _, s := range bySvc[svc.Namespace+"/"+svc.Name] {
					e.Endpoints = append(e.Endpoints, readyEndpoints(s, sp.Name, proto)...)
				}
				slices.SortFunc(e.Endpoints, func(a, b protocol.Endpoint) int {
					return cmp.Or(cmp.Compare(a.IP, b.IP), cmp.Compare(a.Port, b.Port))
				})
				e.Endpoints = slices.Compact(e.Endpoints)
				table = append(table, e)
			}
		}
	}
	slices.SortFunc(table, func(a, b protocol.Service) int {
		return cmp.Or(cmp.Compare(a.IP, b.IP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
	})
	return table
}

// readyEndpoints are the addresses of a slice's ready endpoints (a nil condition counts as ready, as the API
// defines it) at the slice's port of that name and protocol.
func readyEndpoints(s *discoveryv1.EndpointSlice, portName string, proto corev1.Protocol) []protocol.Endpoint {
	port := 0
	for _, p := range s.Ports {
		if p.Port != nil && ptrOr(p.Name, "") == portName && ptrOr(p.Protocol, corev1.ProtocolTCP) == proto {
			port = int(*p.Port)
		}
	}
	if port == 0 {
		return nil
	}
	var out []protocol.Endpoint
	for _, ep := range s.Endpoints {
		if !ptrOr(ep.Conditions.Ready, true) {
			continue
		}
		for _, a := range ep.Addresses {
			out = append(out, protocol.Endpoint{IP: a, Port: port})
		}
	}
	return out
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// coalesce is how long a change waits for the next before the table is rebuilt: a rollout moves many endpoints
// at once, and every pod VM receives each table.
const coalesce = 200 * time.Millisecond

// WatchServices watches the cluster's Services and EndpointSlices and calls set with the service table once the
// caches have synced and then after every change that alters it, until ctx ends. Calls to set are sequential.
func WatchServices(ctx context.Context, client kubernetes.Interface, set func([]protocol.Service)) {
	f := informers.NewSharedInformerFactory(client, 0)
	svcs, eps := f.Core().V1().Services(), f.Discovery().V1().EndpointSlices()
	kick := make(chan struct{}, 1)
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke(kick) },
		UpdateFunc: func(any, any) { poke(kick) },
		DeleteFunc: func(any) { poke(kick) },
	}
	svcs.Informer().AddEventHandler(h) //nolint:errcheck
	eps.Informer().AddEventHandler(h)  //nolint:errcheck
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), svcs.Informer().HasSynced, eps.Informer().HasSynced) {
		return
	}
	var last []protocol.Service
	first := true
	for {
		s, _ := svcs.Lister().List(labels.Everything())
		e, _ := eps.Lister().List(labels.Everything())
		if table := ServiceTable(s, e); first || !reflect.DeepEqual(table, last) {
			set(table)
			last, first = table, false
		}
		select {
		case <-ctx.Done():
			return
		case <-kick:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(coalesce):
		}
	}
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
