package main

import (
	"context"
	"strings"
	"testing"

	"github.com/i2kit/i2kit/node"
)

// TestEveryBackendHasABalancer: Services of type LoadBalancer get an address with every backend built in.
func TestEveryBackendHasABalancer(t *testing.T) {
	for name := range wiring.Backends {
		if wiring.Balancers[name] == nil {
			t.Errorf("backend %s has no load balancer: its Services of type LoadBalancer stay pending", name)
		}
	}
}

// TestAWSBalancerNeedsTheAWSBackend: the aws load balancer shares the aws backend's network and clients, and says
// so when given another.
func TestAWSBalancerNeedsTheAWSBackend(t *testing.T) {
	_, err := wiring.Balancers["aws"](context.Background(), node.DefaultConfig(), nil)
	if err == nil || !strings.Contains(err.Error(), "aws backend") {
		t.Errorf("the aws load balancer without the aws backend: %v", err)
	}
}
