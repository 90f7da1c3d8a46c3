package aws

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/provider/vm"
)

// Config is the aws backend's configuration, the "aws" section of the node's config file. Zero values of the
// optional fields mean their defaults (withDefaults).
type Config struct {
	// Region is the AWS region the node's instances run in.
	Region string `json:"region,omitempty"`
	// Subnets are the subnets instances are launched into, pods spread over them; they must exist.
	Subnets []string `json:"subnets,omitempty"`
	// LoadBalancerSubnets are the subnets of the Network Load Balancers of Services of type LoadBalancer, at most
	// one per availability zone, in the VPC of Subnets; empty means the first of Subnets in each zone. An
	// internet-facing NLB needs public subnets (routed to an internet gateway), where the instances need not be.
	LoadBalancerSubnets []string `json:"loadBalancerSubnets,omitempty"`
	// SecurityGroups are attached to every instance; they must exist, in the subnets' VPC. They must let the
	// node reach AgentPort on the instances.
	SecurityGroups []string `json:"securityGroups,omitempty"`
	// InstanceTypes are the allowed instance types ("m6i.large") or families ("t3"); empty means
	// DefaultInstanceTypes. A pod runs on the cheapest allowed type that fits it.
	InstanceTypes []string `json:"instanceTypes,omitempty"`
	// Tags are added to every instance.
	Tags map[string]string `json:"tags,omitempty"`
	// Cluster and Node name this node's instances in their tags: the inventory, and what a restart adopts.
	Cluster string `json:"cluster,omitempty"`
	Node    string `json:"node,omitempty"`
	// AgentPort is the TCP port the agent serves on the instance's private IP (default 7443).
	AgentPort int `json:"agentPort,omitempty"`
	// Endpoint is the EC2 API's base URL, for emulators; empty means AWS's own for the region.
	Endpoint string `json:"endpoint,omitempty"`
	// ELBEndpoint is the Elastic Load Balancing v2 API's base URL (the Network Load Balancers of Services of type
	// LoadBalancer), for emulators; empty means Endpoint — an emulator that serves every API at one URL
	// (LocalStack, kumo, devcloud with a fallback) needs no more — and AWS's own for the region when both are
	// empty. It is never AWS's own while Endpoint names an emulator: a test setup does not make real load balancers.
	ELBEndpoint string `json:"elbEndpoint,omitempty"`
	// SyncPeriod is how often the backend lists its instances (default 10s): an instance stopped or terminated
	// from outside fails its pod within one period.
	SyncPeriod metav1.Duration `json:"syncPeriod,omitempty"`
	// GCMinAge is how old an instance whose pod is gone must be before the garbage collector ends it (default 2m).
	GCMinAge metav1.Duration `json:"gcMinAge,omitempty"`
	// ImageMaxUnused is how long the cluster's AMIs and snapshots may go unused before the backend deregisters
	// and deletes them (default 168h): unused means no instance of the cluster runs from the AMI and no launch
	// recorded it (the i2kit.io/last-used tag, or its creation) for that long.
	ImageMaxUnused metav1.Duration `json:"imageMaxUnused,omitempty"`
	// AgentCA is the node's own CA for the agent channel (PEM files); unset, one is made once and kept in
	// StateDir, so that a restarted node is still trusted by the agents of the instances it adopts.
	AgentCA CAFiles `json:"agentCA,omitempty"`
	// StateDir keeps what the node makes for itself (the agent CA); default /var/lib/i2kit/aws.
	StateDir string `json:"stateDir,omitempty"`
}

// CAFiles names a CA's certificate and key files (PEM).
type CAFiles struct {
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
}

// DefaultStateDir is where the node keeps its agent CA unless told otherwise.
const DefaultStateDir = "/var/lib/i2kit/aws"

// DefaultInstanceTypes are the families allowed when Config.InstanceTypes is empty: current x86_64 Nitro
// general-purpose, compute- and memory-optimised families, all of which boot UEFI AMIs and have ENA.
var DefaultInstanceTypes = []string{"t3", "t3a", "m6i", "m6a", "m7i", "c6i", "c7i", "r6i", "r7i"}

// Defaults of the optional fields.
const (
	DefaultAgentPort  = 7443
	DefaultSyncPeriod = 10 * time.Second
	DefaultGCMinAge   = 2 * time.Minute
	// DefaultImageMaxUnused keeps an image a week after its last pod: a Deployment rolled back within days finds
	// its AMI still there.
	DefaultImageMaxUnused = 7 * 24 * time.Hour
	// minSyncPeriod keeps the listing within the account's API rate.
	minSyncPeriod = time.Second
	// maxUserTags leaves room for the backend's own tags within EC2's 50 tags per resource.
	maxUserTags = 50 - 8
)

// instanceTypeName is a type ("m6i.large", "m7i-flex.xlarge") or a family ("t3").
var instanceTypeName = regexp.MustCompile(`^[a-z][a-z0-9-]*(\.[a-z0-9-]+)?$`)

// withDefaults returns c with its optional fields' defaults filled in.
func (c Config) withDefaults() Config {
	if len(c.InstanceTypes) == 0 {
		c.InstanceTypes = DefaultInstanceTypes
	}
	if c.AgentPort == 0 {
		c.AgentPort = DefaultAgentPort
	}
	if c.SyncPeriod.Duration == 0 {
		c.SyncPeriod.Duration = DefaultSyncPeriod
	}
	if c.GCMinAge.Duration == 0 {
		c.GCMinAge.Duration = DefaultGCMinAge
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.ImageMaxUnused.Duration == 0 {
		c.ImageMaxUnused.Duration = DefaultImageMaxUnused
	}
	return c
}

// Validate checks the configuration without calling AWS; every error names its field ("aws.subnets: ...").
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("aws.%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if c.Region == "" {
		bad("region", "required")
	}
	ids := func(field string, list []string, what string) {
		if len(list) == 0 {
			bad(field, "at least one %s", what)
		}
		seen := map[string]bool{}
		for _, id := range list {
			switch {
			case strings.TrimSpace(id) == "":
				bad(field, "an empty %s ID", what)
			case seen[id]:
				bad(field, "%s listed twice", id)
			}
			seen[id] = true
		}
	}
	ids("subnets", c.Subnets, "subnet")
	if len(c.LoadBalancerSubnets) > 0 {
		ids("loadBalancerSubnets", c.LoadBalancerSubnets, "subnet")
	}
	ids("securityGroups", c.SecurityGroups, "security group")
	for _, t := range c.InstanceTypes {
		if !instanceTypeName.MatchString(t) {
			bad("instanceTypes", "%q is neither an instance type (m6i.large) nor a family (m6i)", t)
		}
	}
	for _, f := range []struct{ field, v string }{{"cluster", c.Cluster}, {"node", c.Node}} {
		if f.v == "" || len(f.v) > 256 {
			bad(f.field, "required, at most 256 characters (it is a tag value)")
		}
	}
	if len(c.Tags) > maxUserTags {
		bad("tags", "%d tags, at most %d (EC2 allows 50 per instance; the backend sets the others)", len(c.Tags), maxUserTags)
	}
	for k, v := range c.Tags {
		switch {
		case k == "" || len(k) > 128 || len(v) > 256:
			bad("tags", "%q: keys are 1 to 128 characters, values at most 256", k)
		case strings.HasPrefix(strings.ToLower(k), "aws:"):
			bad("tags", "%q: the aws: prefix is AWS's own", k)
		case strings.HasPrefix(k, "i2kit.io/") || k == TagName:
			bad("tags", "%q is set by the backend", k)
		}
	}
	if c.AgentPort < 0 || c.AgentPort > 65535 {
		bad("agentPort", "%d is not a TCP port", c.AgentPort)
	}
	for _, f := range []struct{ field, v string }{{"endpoint", c.Endpoint}, {"elbEndpoint", c.ELBEndpoint}} {
		if f.v == "" {
			continue
		}
		if u, err := url.Parse(f.v); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad(f.field, "%q is not an http(s) URL", f.v)
		}
	}
	if d := c.SyncPeriod.Duration; d != 0 && d < minSyncPeriod {
		bad("syncPeriod", "%s is less than %s", d, minSyncPeriod)
	}
	if (c.AgentCA.Cert == "") != (c.AgentCA.Key == "") {
		bad("agentCA", "cert and key go together (or neither: the node makes its own CA in stateDir)")
	}
	if c.GCMinAge.Duration < 0 {
		bad("gcMinAge", "%s is negative", c.GCMinAge.Duration)
	}
	if c.ImageMaxUnused.Duration < 0 {
		bad("imageMaxUnused", "%s is negative", c.ImageMaxUnused.Duration)
	}
	return errors.Join(errs...)
}

// Clients are the SDK clients of the backend and of its load balancers, all made from one SDK configuration: one
// region, one credential chain, one HTTP client.
type Clients struct {
	EC2   *ec2.Client
	EBS   *ebs.Client
	ELBv2 *elbv2.Client
}

// NewClients makes the clients of cfg from the SDK's default credential chain (environment, web identity, instance
// profile), in cfg's region, EC2's and EBS's at cfg.Endpoint when set, ELBv2's at cfg.ELBEndpoint or else
// cfg.Endpoint. opts change how the configuration loads, after the region (tests give an HTTP client and
// credentials).
func NewClients(ctx context.Context, cfg Config, opts ...func(*config.LoadOptions) error) (Clients, error) {
	ac, err := config.LoadDefaultConfig(ctx, append([]func(*config.LoadOptions) error{config.WithRegion(cfg.Region)}, opts...)...)
	if err != nil {
		return Clients{}, fmt.Errorf("loading the AWS configuration, %w", err)
	}
	if cfg.Endpoint != "" {
		ac.BaseEndpoint = sdkaws.String(cfg.Endpoint)
	}
	return Clients{
		EC2: ec2.NewFromConfig(ac),
		// Snapshot uploads run many blocks in parallel: the EBS client keeps a connection per worker.
		EBS: ebs.NewFromConfig(ac, func(o *ebs.Options) { o.HTTPClient = ebsHTTPClient(0) }),
		ELBv2: elbv2.NewFromConfig(ac, func(o *elbv2.Options) {
			if cfg.ELBEndpoint != "" {
				o.BaseEndpoint = sdkaws.String(cfg.ELBEndpoint)
			}
		}),
	}, nil
}

// Open makes the backend of cfg as the node runs it: SDK clients (NewClients, opts passed on), the node's agent CA
// (loaded, or made once in StateDir), the agent channel, and the backend (New), which keeps the ELBv2 client for
// its load balancers (Balancer).
func Open(ctx context.Context, cfg Config, notify func(vm.Status), opts ...func(*config.LoadOptions) error) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cl, err := NewClients(ctx, cfg, opts...)
	if err != nil {
		return nil, err
	}
	ca, err := LoadCA(cfg.AgentCA.Cert, cfg.AgentCA.Key, cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("aws.agentCA, %w", err)
	}
	b, err := New(ctx, cfg, cl.EC2, NewChannel(cl.EC2, ca, cfg.AgentPort), notify)
	if err != nil {
		return nil, err
	}
	b.UsePublisher(cl.EBS, UploadOptions{})
	b.elb = cl.ELBv2
	return b, nil
}

// MinOrphanAge is how old a VM whose pod is gone must be before the node's garbage collector ends it.
func (b *Backend) MinOrphanAge() time.Duration { return b.cfg.GCMinAge.Duration }
