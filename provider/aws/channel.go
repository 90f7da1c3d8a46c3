package aws

// The agent channel on EC2, and its threat model.
//
// The node reaches an instance's agent over TLS 1.3 on the instance's private IP (Channel.Dial), both ends
// authenticated:
//   - The agent accepts only a client certificate signed by the node's CA (ca.go), whose certificate it reads from
//     user-data. User-data is readable by any principal allowed ec2:DescribeInstanceAttribute and by anything in the
//     instance that reaches the metadata service, so it carries public material only (UserData): the CA's
//     certificate, never a key, token or password. Reading it gains nothing.
//   - The node accepts only the agent's own key. The agent makes its key at boot (it never leaves the instance) and
//     prints the key's fingerprint on the serial console before any container runs. Only the instance writes its
//     console (its kernel, and whatever in the guest may open the console device), and only principals allowed
//     ec2:GetConsoleOutput read it, through EC2's authenticated API (Latest: the live buffer, not the snapshot
//     taken at boot); so the fingerprint reaches the node by a channel nobody on the network can forge. The node
//     pins the first key line it sees and keeps the pin as the instance's tag TagAgentKey, written before its
//     first connection; later it trusts the tag (and its memory), never the console again.
//
// Why "first" is safe: the pod's containers start only when the node configures them over this channel, which it
// opens only after the pin is kept; so when the console is read, nothing but the kernel and the agent has written
// to it. A workload that later prints a key line of its own changes nothing.
//
// What pinning defends against: anything else that answers on the instance's private IP (another instance that
// took over a released address, an ARP or routing attacker inside the VPC, a stale instance) cannot complete the
// handshake without the agent's private key, and so never receives the pod's configuration (its secrets) nor
// the node's commands.
//
// What it does not defend against: whoever may call ec2:CreateTags on the instance can replace the pin, and
// whoever may read the node's state directory holds the CA's key; both are the node's own privileges. A
// workload that escapes to root in the guest owns the VM, the agent's key included: the channel cannot help that,
// nor does it need to, since that VM runs only that pod. An agent that restarts makes a new key and is refused
// (a rebooted instance's pod must be replaced, not reconnected).

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/provider/vm"
)

// maxConsole bounds the console output searched for the key line: EC2 returns at most 64 KiB.
const maxConsole = 64 << 10

// errAgentKey is why a handshake failed when the server's key is not the pinned one.
var errAgentKey = errors.New("the agent's TLS key is not the one pinned from its console")

// Channel is the agent channel on EC2 (see the threat model above). It is safe for concurrent use.
type Channel struct {
	ec2  EC2API
	ca   *CA
	port int

	// consoleLimit bounds the console output read (maxConsole).
	consoleLimit int64
	// retryMin and retryMax bound the back-off between console reads while the key line is not there yet.
	retryMin, retryMax time.Duration

	mu   sync.Mutex
	pins map[string]*pinSlot // by instance ID
}

// pinSlot is one instance's pin; its semaphore is held while the pin is resolved, so that one reader at a time
// reads the console and writes the tag.
type pinSlot struct {
	sem chan struct{}
	fp  string // "" until resolved
}

var _ agentChannel = (*Channel)(nil)

// NewChannel returns the agent channel for instances whose agents serve on port (1-65535) and trust ca. Its EC2
// calls are DescribeInstances, GetConsoleOutput and CreateTags.
func NewChannel(api EC2API, ca *CA, port int) *Channel {
	return &Channel{ec2: api, ca: ca, port: port, consoleLimit: maxConsole, retryMin: time.Second,
		retryMax: 10 * time.Second, pins: map[string]*pinSlot{}}
}

// UserData returns an instance's user-data for p: boot.UserData as JSON (RunInstances wants it base64-encoded).
// It holds public material only: the pod's name, the agent's port, the node CA's certificate and the pod's
// instance-metadata opt-in.
func (c *Channel) UserData(p vm.Plan) ([]byte, error) {
	keep := false
	switch v := p.Annotations[AnnotationInstanceMetadata]; v {
	case "", "disabled":
	case "enabled":
		keep = true
	default:
		return nil, fmt.Errorf("annotation %s=%q: want enabled or disabled", AnnotationInstanceMetadata, v)
	}
	b, err := json.Marshal(boot.UserData{
		Version:      boot.UserDataVersion,
		Hostname:     p.Name,
		AgentPort:    c.port,
		NodeCA:       string(c.ca.CertPEM()),
		KeepMetadata: keep,
	})
	if err != nil {
		return nil, fmt.Errorf("encoding user-data, %w", err)
	}
	if len(b) > boot.MaxUserData {
		return nil, fmt.Errorf("user-data of %d bytes is over the agent's limit of %d", len(b), boot.MaxUserData)
	}
	return b, nil
}

// Dial returns a TLS connection to the agent of a running instance at privateIP, authenticated both ways: it
// presents the node's client certificate and accepts only the agent key pinned for the instance. The first Dial of
// an instance finds the pin (the instance's TagAgentKey, else the first key line of its console, which it then
// keeps as the tag), waiting while the agent has not printed it yet, until ctx ends; every Dial waits, as long,
// while the agent does not listen yet.
func (c *Channel) Dial(ctx context.Context, instanceID, privateIP string) (net.Conn, error) {
	ip, err := netip.ParseAddr(privateIP)
	if err != nil {
		return nil, fmt.Errorf("instance %s has no usable private IP (%q)", instanceID, privateIP)
	}
	fp, err := c.pin(ctx, instanceID)
	if err != nil {
		return nil, err
	}
	addr := netip.AddrPortFrom(ip, uint16(c.port)).String()
	raw, err := dialListening(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("dialling the agent of %s, %w", instanceID, err)
	}
	conn := tls.Client(raw, c.tlsConfig(fp))
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("authenticating the agent of %s at %s, %w", instanceID, addr, err)
	}
	return conn, nil
}

// dialListening dials addr, again while it refuses the connection, until ctx ends: the agent prints its key
// before it reads its metadata and listens (cloudBoot), so a dial that follows the key line may come first.
func dialListening(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
			return conn, err
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return nil, fmt.Errorf("%s refuses connections, %w", addr, err)
		}
	}
}

// Forget drops an instance's pin from memory (its tag stays): the backend calls it once the instance is
// terminated, so that the pins held are those of live instances.
func (c *Channel) Forget(instanceID string) {
	c.mu.Lock()
	delete(c.pins, instanceID)
	c.mu.Unlock()
}

// tlsConfig is the client's side of the channel: TLS 1.3 only, the node's certificate, the agent's key pinned.
func (c *Channel) tlsConfig(fp string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The agent's certificate is self-signed and names nothing a CA could vouch for: the chain and name
		// checks are replaced by the pin VerifyConnection checks. One never goes without the other.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || boot.KeyFingerprint(cs.PeerCertificates[0]) != fp {
				return errAgentKey
			}
			return nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.ca.ClientCertificate()
		},
	}
}

// pin returns the instance's pinned key fingerprint, resolving it on first use.
func (c *Channel) pin(ctx context.Context, id string) (string, error) {
	c.mu.Lock()
	s := c.pins[id]
	if s == nil {
		s = &pinSlot{sem: make(chan struct{}, 1)}
		c.pins[id] = s
	}
	c.mu.Unlock()
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return "", fmt.Errorf("waiting for the agent key of %s, %w", id, ctx.Err())
	}
	defer func() { <-s.sem }()
	if s.fp != "" {
		return s.fp, nil
	}
	fp, err := c.resolve(ctx, id)
	if err != nil {
		return "", err
	}
	s.fp = fp
	return fp, nil
}

// resolve finds an instance's pin: its tag when it has one, else the console's first key line, kept as the tag
// before it is used.
func (c *Channel) resolve(ctx context.Context, id string) (string, error) {
	fp, tagged, err := c.taggedKey(ctx, id)
	if err != nil || tagged {
		return fp, err
	}
	if fp, err = c.consoleKey(ctx, id); err != nil {
		return "", err
	}
	key := TagAgentKey
	_, err = c.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{id}, Tags: []types.Tag{{Key: &key, Value: &fp}}})
	if err != nil {
		return "", channelCallError("ec2:CreateTags", id, fmt.Errorf("keeping the agent's key as a tag, %w", err))
	}
	return fp, nil
}

// taggedKey returns the instance's TagAgentKey. A tag that is not a well-formed fingerprint is an error, not a
// reason to read the console again.
func (c *Channel) taggedKey(ctx context.Context, id string) (string, bool, error) {
	out, err := c.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		return "", false, channelCallError("ec2:DescribeInstances", id, err)
	}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			if in.InstanceId == nil || *in.InstanceId != id {
				continue
			}
			for _, t := range in.Tags {
				if t.Key == nil || *t.Key != TagAgentKey || t.Value == nil {
					continue
				}
				// a fingerprint is well-formed when the console parser would take it
				if fp, ok := boot.FirstKeyLine(strings.NewReader(boot.KeyLine(*t.Value)), 256); ok && fp == *t.Value {
					return fp, true, nil
				}
				return "", false, fmt.Errorf("instance %s: tag %s=%q is not a key fingerprint", id, TagAgentKey, *t.Value)
			}
			return "", false, nil
		}
	}
	return "", false, fmt.Errorf("instance %s: not found by ec2:DescribeInstances, %w", id, vm.ErrNotFound)
}

// consoleKey reads the instance's console until it holds a key line, backing off between reads, until ctx ends.
func (c *Channel) consoleKey(ctx context.Context, id string) (string, error) {
	wait, latest := c.retryMin, true
	for {
		out, err := c.ec2.GetConsoleOutput(ctx, &ec2.GetConsoleOutputInput{InstanceId: &id, Latest: &latest})
		if err != nil {
			return "", channelCallError("ec2:GetConsoleOutput", id, fmt.Errorf("reading the console, %w", err))
		}
		if out.Output != nil {
			// The output is decoded as it is scanned: at most consoleLimit bytes of it are ever decoded.
			dec := base64.NewDecoder(base64.StdEncoding, strings.NewReader(*out.Output))
			if fp, ok := boot.FirstKeyLine(dec, c.consoleLimit); ok {
				return fp, nil
			}
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return "", fmt.Errorf("waiting for the agent of %s to print its key on the console, %w", id, err)
		}
		wait = min(2*wait, c.retryMax)
	}
}

// channelCallError wraps an EC2 call's error with the IAM action it needed, saying so plainly when AWS refused
// it: the pod's Event then names the permission the node's role lacks.
func channelCallError(action, id string, err error) error {
	if IsUnauthorized(err) {
		return fmt.Errorf("the node is not allowed %s on instance %s (its IAM policy must grant it), %w", action, id, err)
	}
	return fmt.Errorf("calling %s on instance %s, %w", action, id, err)
}
