package provider

import (
	"context"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"

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
	agents := make([]*podAgent, 0, len(p.agents))
	for _, a := range p.agents {
		agents = append(agents, a)
	}
	p.mu.Unlock()
	for _, a := range agents {
		go p.pushServices(context.Background(), a)
	}
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

// pushServices sends the current service table to a connected agent that has an older one. A failure is left to
// the next change or the next session, which sends the table with the pod's configuration.
func (p *Provider) pushServices(ctx context.Context, a *podAgent) {
	a.pushMu.Lock() // the last table read is the last sent
	defer a.pushMu.Unlock()
	table, gen := p.serviceTable()
	a.mu.Lock()
	c := a.client
	stale := c != nil && a.servicesGen < gen
	a.mu.Unlock()
	if !stale {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.SetServices(ctx, table); err != nil {
		log.G(ctx).WithError(err).Warn("sending the service table to a pod's agent")
		return
	}
	a.mu.Lock()
	if a.client == c && a.servicesGen < gen {
		a.servicesGen = gen
	}
	a.mu.Unlock()
}
