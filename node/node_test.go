package node

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/netsync"
)

// balancer is a netsync.Balancer that does nothing.
type balancer struct{}

func (balancer) Ensure(context.Context, netsync.LoadBalancer) ([]corev1.LoadBalancerIngress, error) {
	return nil, nil
}
func (balancer) Delete(context.Context, netsync.ServiceKey) error   { return nil }
func (balancer) List(context.Context) ([]netsync.ServiceKey, error) { return nil, nil }

// merger is a balancer that says whether it merges TCP and UDP ports of one number.
type merger struct {
	balancer
	merge bool
}

func (m merger) MergeTCPUDP() bool { return m.merge }

// local is a balancer that says whether it reaches only its own host's pods.
type local struct {
	balancer
	local bool
}

func (l local) NodeLocal() bool { return l.local }

// TestModelOptions: the models name the cluster and node, merge TCP and UDP for a balancer that says it takes
// one listener per port, and keep the node's own endpoints only for a balancer that says it reaches no other —
// and only for them.
func TestModelOptions(t *testing.T) {
	c := Config{NodeName: "n1", LoadBalancers: LoadBalancersConfig{Cluster: "c1"}}
	for _, tc := range []struct {
		name string
		b    netsync.Balancer
		want netsync.ModelOptions
	}{
		{"a listener per port and protocol", balancer{}, netsync.ModelOptions{}},
		{"one listener per port", merger{merge: true}, netsync.ModelOptions{MergeTCPUDP: true}},
		{"a merger that does not merge", merger{merge: false}, netsync.ModelOptions{}},
		{"the node's pods only", local{local: true}, netsync.ModelOptions{OnlyNode: "n1"}},
		{"a local balancer that is not", local{local: false}, netsync.ModelOptions{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			want.Cluster, want.Node = "c1", "n1"
			if got := modelOptions(c, tc.b); got != want {
				t.Errorf("modelOptions = %+v, want %+v", got, want)
			}
		})
	}
}
