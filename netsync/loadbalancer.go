package netsync

import (
	"context"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
)

// Services of type LoadBalancer: a desired model, built by pure functions from the Service and its EndpointSlices
// (BuildLoadBalancer, lbmodel.go), that a Balancer realises — the cloud's load balancers (an NLB with ip targets on
// AWS) or the node's own (locally). The controller (lbcontroller.go) claims Services by loadBalancerClass, keeps a
// finalizer on them, reconciles, sweeps orphans and reports as Kubernetes' service controller does.

// LoadBalancerClass is the loadBalancerClass that names i2kit's load balancers.
const LoadBalancerClass = "i2kit.io/load-balancer"

// ServiceKey identifies a Service and, through its UID, one incarnation of it: a Service deleted and created
// again under the same name is another key.
type ServiceKey struct {
	Namespace, Name, UID string
}

// LoadBalancer is the desired state of one Service's load balancer.
type LoadBalancer struct {
	Service ServiceKey
	// Name is deterministic from the Service's UID and at most 32 characters (AWS's limit).
	Name string
	// Internal says the load balancer is reachable only inside the network (the scheme annotation).
	Internal bool
	// Listeners are sorted by Port then Protocol; one per Service port and protocol (TCP and UDP on one port
	// may merge into TCP_UDP where the balancer supports it: the builder decides, see lbmodel.go).
	Listeners []Listener
	// Tags mark what the balancer creates: cluster, node, Service namespace/name/UID.
	Tags map[string]string
}

// Listener is one port of the load balancer and where its traffic goes.
type Listener struct {
	Port     int32
	Protocol Protocol
	Target   TargetGroup
}

// Protocol is a listener's or target group's protocol.
type Protocol string

const (
	TCP    Protocol = "TCP"
	UDP    Protocol = "UDP"
	TCPUDP Protocol = "TCP_UDP"
)

// TargetGroup is the set of ready endpoints a listener spreads traffic over, and how their health is checked.
type TargetGroup struct {
	// Name is deterministic and at most 32 characters.
	Name        string
	Protocol    Protocol
	HealthCheck HealthCheck
	// Targets are the ready endpoints, sorted and distinct; empty means connections are refused.
	Targets []Target
}

// Target is one endpoint: a pod's address and port.
type Target struct {
	IP   netip.Addr
	Port int32
}

// HealthCheck says how a balancer checks a target (defaults, or the Service's annotations).
type HealthCheck struct {
	Protocol Protocol // TCP, or "HTTP"/"HTTPS" from an annotation
	// Port is "traffic-port" or a number; Path is for HTTP(S).
	Port, Path                           string
	IntervalSeconds                      int32
	HealthyThreshold, UnhealthyThreshold int32
}

// Balancer realises load balancers. Implementations list what exists by their tags and make only the calls that
// differ; every call is idempotent and may be retried.
type Balancer interface {
	// Ensure makes the Service's load balancer match lb — creating it, changing only what differs, registering
	// new targets (healthy) before deregistering old ones — and returns the addresses to publish in the Service's
	// status.loadBalancer.ingress. An error with addresses says the load balancer exists and answers at them but
	// is not done (new targets still coming up): the addresses are published and the sync is tried again.
	Ensure(ctx context.Context, lb LoadBalancer) ([]corev1.LoadBalancerIngress, error)
	// Delete removes the Service's load balancer and everything it made; nil once nothing is left.
	Delete(ctx context.Context, svc ServiceKey) error
	// List returns the Services whose load balancers exist (by tags): the orphan sweep deletes those whose
	// Service is gone.
	List(ctx context.Context) ([]ServiceKey, error)
}
