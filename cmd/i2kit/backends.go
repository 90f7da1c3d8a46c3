package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"

	"github.com/i2kit/i2kit/netsync"
	"github.com/i2kit/i2kit/netsync/locallb"
	"github.com/i2kit/i2kit/node"
	"github.com/i2kit/i2kit/provider"
	"github.com/i2kit/i2kit/provider/aws"
	"github.com/i2kit/i2kit/provider/qemu"
	"github.com/i2kit/i2kit/provider/vm"
)

// wiring is the composition root of `i2kit node`: the table of backends by the name `backend` selects
// (node.Backends lists the same names, "none" included) and the image builder they share with `i2kit image`.
var wiring = node.Wiring{
	Backends: map[string]node.BackendFunc{
		"qemu": func(_ context.Context, c node.Config, notify func(vm.Status)) (vm.Backend, error) {
			return qemu.New(qemu.Config{RuntimeDir: c.QEMU.RuntimeDir, Bridge: c.QEMU.Bridge, PodCIDR: c.PodCIDR}, notify)
		},
		"aws": func(ctx context.Context, c node.Config, notify func(vm.Status)) (vm.Backend, error) {
			return aws.Open(ctx, c.AWS, notify) // c.AWS.Node defaults to the node's name (Config.Validate)
		},
	},
	Balancers: map[string]node.BalancerFunc{
		// The node's own load balancer: nftables DNAT from ingress addresses on the host's loopback to the pod VMs.
		"qemu": func(_ context.Context, c node.Config) (netsync.Balancer, error) {
			// One table per node; the pool must be the node's alone (its addresses on lo that no Service holds go).
			pool, err := netip.ParsePrefix(c.LoadBalancers.Pool)
			if err != nil {
				return nil, fmt.Errorf("loadBalancers.pool, %w", err)
			}
			return locallb.New(locallb.Config{Pool: pool, Table: "i2kit-lb-" + c.NodeName})
		},
	},
	Images: func(c node.ImagesConfig) (provider.ImageBuilder, io.Closer, error) {
		b, err := newBuilder(c, nil)
		if err != nil {
			return nil, nil, err
		}
		return b, b.Store, nil
	},
}
