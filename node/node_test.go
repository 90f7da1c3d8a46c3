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

// TestModelOptions: the models name the cluster and node, and merge TCP and UDP for a balancer that says it takes
// one listener per port — and only for it.
func TestModelOptions(t *testing.T) {
	c := Config{NodeName: "n1", LoadBalancers: LoadBalancersConfig{Cluster: "c1"}}
	for _, tc := range []struct {
		name string
		b    netsync.Balancer
		want bool
	}{
		{"a listener per port and protocol", balancer{}, false},
		{"one listener per port", merger{merge: true}, true},
		{"a merger that does not merge", merger{merge: false}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := netsync.ModelOptions{Cluster: "c1", Node: "n1", MergeTCPUDP: tc.want}
			if got := modelOptions(c, tc.b); got != want {
				t.Errorf("modelOptions = %+v, want %+v", got, want)
			}
		})
	}
}
