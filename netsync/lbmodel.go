package netsync

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The tags a Balancer puts on everything it creates for a Service (LoadBalancer.Tags), and lists and sweeps by.
const (
	TagCluster          = "i2kit.io/cluster"
	TagNode             = "i2kit.io/node"
	TagServiceNamespace = "i2kit.io/service-namespace"
	TagServiceName      = "i2kit.io/service-name"
	TagServiceUID       = "i2kit.io/service-uid"
)

// The Service annotations the model reads: aws-load-balancer-controller's, so that a Service written for it works
// here unchanged. Others of its annotations (timeouts, success codes, subnets, attributes) are not read.
const (
	annotationPrefix = "service.beta.kubernetes.io/aws-load-balancer-"
	// AnnotationScheme is "internal" (the default, as aws-load-balancer-controller's) or "internet-facing".
	AnnotationScheme = annotationPrefix + "scheme"
	// AnnotationInternal is the legacy form of AnnotationScheme ("true" or "false"), read when that is absent.
	AnnotationInternal = annotationPrefix + "internal"
	// AnnotationHealthCheckProtocol is TCP (the default), HTTP or HTTPS, in any case.
	AnnotationHealthCheckProtocol = annotationPrefix + "healthcheck-protocol"
	// AnnotationHealthCheckPort is "traffic-port" (the default), a port number, or the name of a Service port
	// whose targetPort is a number.
	AnnotationHealthCheckPort = annotationPrefix + "healthcheck-port"
	// AnnotationHealthCheckPath is the path an HTTP(S) check requests ("/" by default); a TCP check has none.
	AnnotationHealthCheckPath = annotationPrefix + "healthcheck-path"
	// AnnotationHealthCheckInterval is the seconds between checks, 5 to 300 (10 by default).
	AnnotationHealthCheckInterval = annotationPrefix + "healthcheck-interval"
	// AnnotationHealthyThreshold and AnnotationUnhealthyThreshold are the consecutive checks, 2 to 10 (3 by
	// default), that turn a target healthy or unhealthy.
	AnnotationHealthyThreshold   = annotationPrefix + "healthcheck-healthy-threshold"
	AnnotationUnhealthyThreshold = annotationPrefix + "healthcheck-unhealthy-threshold"

	// annotationSourceRanges is Kubernetes' own way to restrict clients, which the model refuses (as it does
	// spec.loadBalancerSourceRanges): no balancer implements it, and ignoring it would open what the user closed.
	annotationSourceRanges = "service.beta.kubernetes.io/load-balancer-source-ranges"
)

// TrafficPort is HealthCheck.Port for "check the port traffic goes to".
const TrafficPort = "traffic-port"

// DefaultHealthCheck is a target group's health check when the Service's annotations say nothing: a TCP connection
// to the traffic port every 10 seconds, 3 in a row to turn healthy or unhealthy (aws-load-balancer-controller's
// defaults for ip targets). A UDP listener's targets are checked over TCP too (an NLB checks no UDP): a pod that
// serves UDP only needs the port annotation to name a TCP port it answers on.
var DefaultHealthCheck = HealthCheck{Protocol: TCP, Port: TrafficPort, IntervalSeconds: 10, HealthyThreshold: 3,
	UnhealthyThreshold: 3}

// ModelOptions are what BuildLoadBalancer needs beyond the Service and its EndpointSlices.
type ModelOptions struct {
	// Cluster and Node name the cluster and the node in the tags (and Cluster in the names' hashes).
	Cluster, Node string
	// MergeTCPUDP makes a TCP and a UDP port of one number a single TCP_UDP listener, for balancers that take one
	// listener per port (an NLB); without it they are two listeners.
	MergeTCPUDP bool
	// OnlyNode, when set, keeps as targets only the endpoints on the node of that name, for a balancer that reaches
	// no other node's pods (the qemu backend's, on the host of the node's pod VMs). An endpoint that names no node
	// is dropped then.
	OnlyNode string
}

// BuildLoadBalancer is the load balancer a Service of type LoadBalancer asks for, from the Service and its
// EndpointSlices (slices may hold other Services' too; only the Service's own count). It is a pure function: the
// same inputs in any order give the same model.
//
//   - One listener per Service port and protocol (TCP or UDP; SCTP is refused, as no balancer here carries it),
//     or one TCP_UDP listener for a TCP and a UDP port of one number with o.MergeTCPUDP; sorted by port, protocol.
//   - A listener's targets are the endpoints kube-proxy would forward its port to (see BuildTable): the slice port
//     of the Service port's name and protocol, the ready endpoints or, when none is ready, the serving ones that
//     are terminating; of the Service's primary IP family; sorted and distinct. A TCP_UDP listener's are the
//     endpoints that serve both protocols on one port; with o.OnlyNode, of the endpoints on that node only (the
//     fallback to terminating ones included). No target means connections are refused.
//   - Health checks: DefaultHealthCheck, changed by the annotations above; an invalid value is an error naming the
//     annotation.
//   - Internal unless the scheme annotation says internet-facing, as aws-load-balancer-controller decides.
//   - Names: "i2kit-<namespace>-<name>-<hash>", at most 32 characters of [a-zA-Z0-9-] starting and ending with an
//     alphanumeric; the hash is of the cluster, the Service's UID and the scheme (a scheme cannot change in place
//     on AWS: another scheme is another load balancer, which may then exist beside the old one while it is
//     replaced); for a target group, of the load balancer's name and the listener's port and protocol
//     (immutable on AWS too; a target group serves one load balancer).
//   - Tags: TagCluster, TagNode and the Service's namespace, name and UID.
//
// It returns an error for what no balancer can do as asked: a Service without a UID, SCTP, source ranges, an
// invalid annotation. The error does not depend on the EndpointSlices.
func BuildLoadBalancer(svc *corev1.Service, endpointSlices []*discoveryv1.EndpointSlice, o ModelOptions) (LoadBalancer, error) {
	if svc.UID == "" {
		return LoadBalancer{}, fmt.Errorf("service %s/%s has no UID to name its load balancer by", svc.Namespace, svc.Name)
	}
	if len(svc.Spec.LoadBalancerSourceRanges) > 0 {
		return LoadBalancer{}, fmt.Errorf("spec.loadBalancerSourceRanges is not supported")
	}
	if _, ok := svc.Annotations[annotationSourceRanges]; ok {
		return LoadBalancer{}, fmt.Errorf("annotation %s is not supported", annotationSourceRanges)
	}
	internal, err := isInternal(svc.Annotations)
	if err != nil {
		return LoadBalancer{}, err
	}
	hc, err := healthCheck(svc)
	if err != nil {
		return LoadBalancer{}, err
	}
	schemeName := "internet-facing"
	if internal {
		schemeName = "internal"
	}
	lb := LoadBalancer{
		Service:  ServiceKey{Namespace: svc.Namespace, Name: svc.Name, UID: string(svc.UID)},
		Name:     resourceName(svc, o.Cluster, string(svc.UID), schemeName),
		Internal: internal,
		Tags: map[string]string{TagCluster: o.Cluster, TagNode: o.Node, TagServiceNamespace: svc.Namespace,
			TagServiceName: svc.Name, TagServiceUID: string(svc.UID)},
	}

	var own []*discoveryv1.EndpointSlice
	for _, s := range endpointSlices {
		if s.Namespace == svc.Namespace && s.Labels[discoveryv1.LabelServiceName] == svc.Name {
			own = append(own, s)
		}
	}
	if o.OnlyNode != "" {
		own = onNode(own, o.OnlyNode)
	}
	family := primaryFamily(svc)
	type portKey struct {
		port  int32
		proto Protocol
	}
	targets := map[portKey][]Target{}
	var keys []portKey
	for _, sp := range svc.Spec.Ports {
		proto := cmp.Or(sp.Protocol, corev1.ProtocolTCP)
		switch proto {
		case corev1.ProtocolTCP, corev1.ProtocolUDP:
		default:
			return LoadBalancer{}, fmt.Errorf("port %d/%s: only TCP and UDP ports are supported", sp.Port, proto)
		}
		k := portKey{sp.Port, Protocol(proto)}
		if _, dup := targets[k]; dup {
			continue // the API server refuses two ports of one number and protocol; the first stands
		}
		var ts []Target
		for _, ep := range endpoints(own, family, sp.Name, proto) {
			ts = append(ts, Target(ep))
		}
		targets[k] = ts
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b portKey) int { return cmp.Or(cmp.Compare(a.port, b.port), cmp.Compare(a.proto, b.proto)) })
	for i := 0; i < len(keys); i++ {
		k, ts := keys[i], targets[keys[i]]
		// Sorted, a TCP and a UDP port of one number are neighbours, TCP first.
		if o.MergeTCPUDP && k.proto == TCP && i+1 < len(keys) && keys[i+1] == (portKey{k.port, UDP}) {
			k, ts = portKey{k.port, TCPUDP}, intersect(ts, targets[keys[i+1]])
			i++
		}
		lb.Listeners = append(lb.Listeners, Listener{Port: k.port, Protocol: k.proto, Target: TargetGroup{
			Name:        resourceName(svc, lb.Name, strconv.Itoa(int(k.port)), string(k.proto)),
			Protocol:    k.proto,
			HealthCheck: hc,
			Targets:     ts,
		}})
	}
	return lb, nil
}

// onNode is copies of slices that hold only their endpoints on node.
func onNode(slices []*discoveryv1.EndpointSlice, node string) []*discoveryv1.EndpointSlice {
	out := make([]*discoveryv1.EndpointSlice, 0, len(slices))
	for _, s := range slices {
		c := *s
		c.Endpoints = nil
		for _, ep := range s.Endpoints {
			if ep.NodeName != nil && *ep.NodeName == node {
				c.Endpoints = append(c.Endpoints, ep)
			}
		}
		out = append(out, &c)
	}
	return out
}

// intersect is the targets in both a and b, which are sorted and distinct; so is the result.
func intersect(a, b []Target) []Target {
	var out []Target
	for _, t := range a {
		if _, found := slices.BinarySearchFunc(b, t, compareTargets); found {
			out = append(out, t)
		}
	}
	return out
}

func compareTargets(a, b Target) int { return cmp.Or(a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port)) }

// primaryFamily is the address family of a Service's first cluster IP family, IPv4 when it names none: a target
// group holds addresses of one family.
func primaryFamily(svc *corev1.Service) discoveryv1.AddressType {
	if len(svc.Spec.IPFamilies) > 0 {
		if svc.Spec.IPFamilies[0] == corev1.IPv6Protocol {
			return discoveryv1.AddressTypeIPv6
		}
		return discoveryv1.AddressTypeIPv4
	}
	if ip, err := netip.ParseAddr(svc.Spec.ClusterIP); err == nil {
		return addressType(ip)
	}
	return discoveryv1.AddressTypeIPv4
}

// isInternal says whether the Service's load balancer is internal: AnnotationScheme, else AnnotationInternal, else
// internal (aws-load-balancer-controller's default: nothing is exposed to the internet unless asked).
func isInternal(annotations map[string]string) (internal bool, err error) {
	if v, ok := annotations[AnnotationScheme]; ok {
		switch v {
		case "internal":
			return true, nil
		case "internet-facing":
			return false, nil
		}
		return false, fmt.Errorf("annotation %s: %q is neither internal nor internet-facing", AnnotationScheme, v)
	}
	if v, ok := annotations[AnnotationInternal]; ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("annotation %s: %q is neither true nor false", AnnotationInternal, v)
		}
		return b, nil
	}
	return true, nil
}

// healthCheck is DefaultHealthCheck changed by the Service's health check annotations.
func healthCheck(svc *corev1.Service) (HealthCheck, error) {
	hc := DefaultHealthCheck
	a := svc.Annotations
	if v, ok := a[AnnotationHealthCheckProtocol]; ok {
		switch p := Protocol(strings.ToUpper(v)); p {
		case TCP, "HTTP", "HTTPS":
			hc.Protocol = p
		default:
			return HealthCheck{}, fmt.Errorf("annotation %s: %q is not TCP, HTTP or HTTPS", AnnotationHealthCheckProtocol, v)
		}
	}
	if hc.Protocol != TCP {
		hc.Path = "/"
		if v, ok := a[AnnotationHealthCheckPath]; ok {
			// A balancer writes the path into a request line: no space, control or non-ASCII character may
			// end the line or smuggle a header.
			if !strings.HasPrefix(v, "/") || len(v) > 1024 || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r > '~' }) {
				return HealthCheck{}, fmt.Errorf("annotation %s: %q is not a path (\"/\" then at most 1,023 printable ASCII characters)", AnnotationHealthCheckPath, v)
			}
			hc.Path = v
		}
	}
	if v, ok := a[AnnotationHealthCheckPort]; ok {
		port, err := healthCheckPort(svc, v)
		if err != nil {
			return HealthCheck{}, fmt.Errorf("annotation %s: %w", AnnotationHealthCheckPort, err)
		}
		hc.Port = port
	}
	for _, f := range []struct {
		annotation string
		min, max   int64
		v          *int32
	}{
		{AnnotationHealthCheckInterval, 5, 300, &hc.IntervalSeconds},
		{AnnotationHealthyThreshold, 2, 10, &hc.HealthyThreshold},
		{AnnotationUnhealthyThreshold, 2, 10, &hc.UnhealthyThreshold},
	} {
		v, ok := a[f.annotation]
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil || n < f.min || n > f.max {
			return HealthCheck{}, fmt.Errorf("annotation %s: %q is not a whole number from %d to %d", f.annotation, v, f.min, f.max)
		}
		*f.v = int32(n)
	}
	return hc, nil
}

// healthCheckPort is the health check port an annotation value names: TrafficPort, a port number, or the number a
// Service port of that name targets (a named targetPort may be a different number on every pod, so it names none).
func healthCheckPort(svc *corev1.Service, v string) (string, error) {
	if v == TrafficPort {
		return v, nil
	}
	if n, err := strconv.ParseInt(v, 10, 32); err == nil {
		if n < 1 || n > 65535 {
			return "", fmt.Errorf("%q is not a port number", v)
		}
		return strconv.Itoa(int(n)), nil
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Name != v || sp.Name == "" {
			continue
		}
		if sp.TargetPort.Type == intstr.String {
			return "", fmt.Errorf("port %q targets the named port %q, which has no single number", v, sp.TargetPort.StrVal)
		}
		if sp.TargetPort.IntVal == 0 { // an unset targetPort is the port's own number
			return strconv.Itoa(int(sp.Port)), nil
		}
		return strconv.Itoa(int(sp.TargetPort.IntVal)), nil
	}
	return "", fmt.Errorf("%q is neither %s, a port number nor the name of a port of the Service", v, TrafficPort)
}

// resourceName is a name for something made for svc: "i2kit-", up to 7 alphanumerics of the namespace and of the
// name (for people reading a console), and 10 hex digits of a hash of parts (for uniqueness); at most 32 characters
// of [a-zA-Z0-9-], starting and ending with an alphanumeric.
func resourceName(svc *corev1.Service, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0}) // no two lists of parts hash alike: ("ab","c") is not ("a","bc")
	}
	return fmt.Sprintf("i2kit-%.7s-%.7s-%.10s", alnum(svc.Namespace), alnum(svc.Name), hex.EncodeToString(h.Sum(nil)))
}

// alnum is s without the characters that are not ASCII letters or digits.
func alnum(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return -1
	}, s)
}
