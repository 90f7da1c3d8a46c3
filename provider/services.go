package provider

import (
	"context"
	"fmt"
	"time"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/netsync"
)

// SetServices gives the provider the cluster's service table (netsync.Watch) and sends it to every pod VM's agent,
// which forwards ClusterIP connections by it. A VM configured later receives it with its pod's configuration,
// before any container starts.
func (p *Provider) SetServices(table netsync.Table) {
	wire := wireServices(table)
	p.mu.Lock()
	p.services = wire
	p.servicesGen++
	p.mu.Unlock()
	p.enqueueAll("", false)
}

// wireServices is a service table in the agent protocol's form. Pod VMs have IPv4 addresses only, so a dual-stack
// Service's IPv6 cluster IP (and IPv6-only Services) are left out; netsync gives each cluster IP endpoints of its
// own family. It is a pure function.
func wireServices(table netsync.Table) []protocol.Service {
	out := make([]protocol.Service, 0, len(table))
	for _, s := range table {
		if !s.IP.Is4() {
			continue
		}
		w := protocol.Service{IP: s.IP.String(), Port: int(s.Port), Protocol: string(s.Protocol)}
		for _, ep := range s.Endpoints {
			w.Endpoints = append(w.Endpoints, protocol.Endpoint{IP: ep.IP.String(), Port: int(ep.Port)})
		}
		out = append(out, w)
	}
	return out
}

// serviceTable is the current service table and its generation.
func (p *Provider) serviceTable() ([]protocol.Service, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.services, p.servicesGen
}

// pushServices sends the current service table to a connected agent that has an older one.
func (p *Provider) pushServices(ctx context.Context, v *podVM, c *protocol.Client) error {
	v.pushMu.Lock() // the last table read is the last sent
	defer v.pushMu.Unlock()
	table, gen := p.serviceTable()
	v.mu.Lock()
	stale := v.servicesGen < gen
	v.mu.Unlock()
	if !stale {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.SetServices(ctx, table); err != nil {
		return fmt.Errorf("sending the service table, %w", err)
	}
	v.mu.Lock()
	if v.client == c && v.servicesGen < gen {
		v.servicesGen = gen
	}
	v.mu.Unlock()
	return nil
}
