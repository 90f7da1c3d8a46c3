package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/boot"
)

// A cloud boot (boot.ConfigParam=boot.CloudConfig on the kernel command line, the aws backend's images) differs
// from a QEMU one in three ways: the network is the kernel's (ip=dhcp), the configuration is the instance
// metadata service's user-data, and the channel is TLS on the network (see tlsserve.go) instead of a
// virtio-serial port. The pod's runtime configuration still comes from the node over the protocol.
//
// The agent needs the metadata service only at boot: it reads user-data, its instance ID and private address
// once, and never uses the instance's credentials. So, unless the pod opted in (UserData.KeepMetadata), it then
// shuts the service off from everything in the VM, itself included — the containers share the VM's network
// namespace, so a rule that spared the agent would spare them. The node turns the endpoint off in EC2 as well
// once the agent has connected; the guest rule holds from before any container runs until then, and after, should
// the endpoint be turned back on.

// cloudInstance is what the first part of a cloud boot learned: the agent's TLS identity and the metadata.
type cloudInstance struct {
	id tls.Certificate
	md instanceMetadata
}

// hostnameRE is what the agent accepts as a hostname from user-data: a DNS subdomain that sethostname(2) takes.
var hostnameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,62}[a-z0-9])?$`)

// cloudBoot makes the agent's key and prints its fingerprint (boot.KeyLine) on the console as the first line of
// the cloud boot — before it reads anything from the network, so that no text from user-data can precede it, and
// before any container starts — then reads the instance's metadata.
func cloudBoot(ctx context.Context, console io.Writer, m *imdsClient, newKey func() (tls.Certificate, error)) (cloudInstance, error) {
	id, err := newKey()
	if err != nil {
		return cloudInstance{}, err
	}
	fmt.Fprintln(console, boot.KeyLine(boot.KeyFingerprint(id.Leaf)))
	md, err := m.read(ctx)
	if err != nil {
		return cloudInstance{}, err
	}
	if md.UserData.Hostname != "" && !hostnameRE.MatchString(md.UserData.Hostname) {
		return cloudInstance{}, fmt.Errorf("user-data: hostname %q is not a DNS name of at most 64 characters", md.UserData.Hostname)
	}
	return cloudInstance{id: id, md: md}, nil
}

// hostname is the containers' hostname: the user-data's, or def.
func (ci cloudInstance) hostname(def string) string {
	if h := ci.md.UserData.Hostname; h != "" {
		return h
	}
	return def
}

// serve shuts the metadata service off with block (unless the pod keeps it), then serves h over TLS on addr
// (":<agentPort>" on an instance) in the background. It returns the address it listens on.
func (ci cloudInstance) serve(addr string, h http.Handler, block func() error, say func(string, ...any)) (net.Addr, error) {
	if !ci.md.UserData.KeepMetadata {
		if err := block(); err != nil {
			return nil, fmt.Errorf("shutting the instance metadata service off from the pod, %w", err)
		}
	}
	ts, err := newTLSServer(ci.id, ci.md.UserData.NodeCA, h)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s, %w", addr, err)
	}
	say("i2kit-agent: instance %s, serving the protocol with TLS on %s port %d (metadata service kept: %t)",
		ci.md.InstanceID, ci.md.LocalIPv4, ln.Addr().(*net.TCPAddr).Port, ci.md.UserData.KeepMetadata)
	go func() {
		err := ts.Serve(ln)
		say("i2kit-agent: the TLS channel stopped: %v", err)
	}()
	return ln.Addr(), nil
}

// metadataTable is the nftables table (family inet) that rejects every packet the VM sends to the instance
// metadata service (IPv4 and IPv6 addresses), at once and visibly (ICMP administratively prohibited) so that an
// SDK in a container moves on instead of waiting out its time-outs. Its chain hooks output after destination
// NAT (filter priority > NAT's): a Service whose endpoint is the metadata address (a selector-less Service's
// hand-written EndpointSlice) is rejected after the services table rewrote the destination.
const metadataTable = "i2kit-metadata"

// blockMetadata installs metadataTable in one transaction, replacing what it held.
func blockMetadata() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables, %w", err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: metadataTable})
	c.FlushTable(t)
	ch := c.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	for _, r := range metadataRules() {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("programming %s, %w", metadataTable, err)
	}
	return nil
}

// metadataRules are the rules of metadataTable's output chain, one per address family. It is a pure function.
func metadataRules() [][]expr.Any {
	reject := &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}
	return [][]expr.Any{
		{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, // daddr
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net.ParseIP(imdsIPv4).To4()},
			reject,
		},
		{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16}, // daddr
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net.ParseIP(imdsIPv6).To16()},
			reject,
		},
	}
}
