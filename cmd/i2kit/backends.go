package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"

	"github.com/i2kit/i2kit/metrics"
	"github.com/i2kit/i2kit/netsync"
	"github.com/i2kit/i2kit/netsync/locallb"
	"github.com/i2kit/i2kit/node"
	"github.com/i2kit/i2kit/provider"
	"github.com/i2kit/i2kit/provider/aws"
	"github.com/i2kit/i2kit/provider/qemu"
	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
)

// wiring is the composition root of `i2kit node`: the table of backends by the name `backend` selects
// (node.Backends lists the same names, "none" included) and the image builder they share with `i2kit image`.
var wiring = node.Wiring{
	Backends: map[string]node.BackendFunc{
		"qemu": func(_ context.Context, c node.Config, notify func(vm.Status), _ *metrics.Metrics) (vm.Backend, error) {
			return qemu.New(qemu.Config{RuntimeDir: c.QEMU.RuntimeDir, Bridge: c.QEMU.Bridge, PodCIDR: c.PodCIDR}, notify)
		},
		"aws": func(ctx context.Context, c node.Config, notify func(vm.Status), m *metrics.Metrics) (vm.Backend, error) {
			// c.AWS.Node defaults to the node's name (Config.Validate); every EC2, EBS and ELBv2 call counts in m.
			return aws.Open(ctx, c.AWS, notify, aws.WithCallMetrics(m))
		},
	},
	Balancers: map[string]node.BalancerFunc{
		// The node's own load balancer: nftables DNAT from ingress addresses on the host's loopback to the pod VMs.
		"qemu": func(_ context.Context, c node.Config, _ vm.Backend) (netsync.Balancer, error) {
			// One table per node; the pool must be the node's alone (its addresses on lo that no Service holds go).
			pool, err := netip.ParsePrefix(c.LoadBalancers.Pool)
			if err != nil {
				return nil, fmt.Errorf("loadBalancers.pool, %w", err)
			}
			// Pod VMs' connections through it are masqueraded: their targets share their bridge (hairpin).
			podNet, err := netip.ParsePrefix(c.PodCIDR)
			if err != nil {
				return nil, fmt.Errorf("podCIDR, %w", err)
			}
			return locallb.New(locallb.Config{Pool: pool, Table: "i2kit-lb-" + c.NodeName, Masquerade: podNet})
		},
		// Network Load Balancers with ip targets, in the backend's subnets and VPC, through its SDK configuration.
		"aws": func(_ context.Context, c node.Config, b vm.Backend) (netsync.Balancer, error) {
			ab, ok := b.(*aws.Backend)
			if !ok {
				return nil, fmt.Errorf("the aws load balancer runs beside the aws backend, not %T", b)
			}
			return ab.Balancer(c.LoadBalancers.Cluster)
		},
	},
	Images: func(c node.ImagesConfig, m *metrics.Metrics) (provider.ImageBuilder, io.Closer, error) {
		b, err := newBuilder(c, nil)
		if err != nil {
			return nil, nil, err
		}
		if m != nil { // a nil *Metrics in the interface would be a Metrics that is not nil
			b.Metrics = m
		}
		return b, b.Store, nil
	},
}

// An NLB takes one listener per port: the node merges a Service's TCP and UDP ports of one number for it.
var _ node.TCPUDPMerger = (*aws.NLBBalancer)(nil)
var _ node.NodeLocal = (*locallb.Balancer)(nil)

// The node's metrics are what the image builder and the cloud clients record.
var (
	_ vmimage.Metrics  = (*metrics.Metrics)(nil)
	_ aws.CallRecorder = (*metrics.Metrics)(nil)
)
