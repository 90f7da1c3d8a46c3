package aws

import (
	"fmt"
	"strings"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

func TestConfigValidate(t *testing.T) {
	manyTags := map[string]string{}
	for i := range maxUserTags + 1 {
		manyTags[fmt.Sprint("k", i)] = "v"
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string // "" for valid
	}{
		{"valid", func(*Config) {}, ""},
		{"defaults left zero", func(c *Config) { c.InstanceTypes, c.AgentPort, c.SyncPeriod, c.Tags = nil, 0, metav1.Duration{}, nil }, ""},
		{"no region", func(c *Config) { c.Region = "" }, "aws.region: required"},
		{"no subnet", func(c *Config) { c.Subnets = nil }, "aws.subnets: at least one subnet"},
		{"an empty subnet", func(c *Config) { c.Subnets = []string{" "} }, "aws.subnets: an empty subnet ID"},
		{"a subnet twice", func(c *Config) { c.Subnets = []string{"subnet-a", "subnet-a"} }, "aws.subnets: subnet-a listed twice"},
		{"a load balancer subnet twice", func(c *Config) { c.LoadBalancerSubnets = []string{"subnet-b", "subnet-b"} }, "aws.loadBalancerSubnets: subnet-b listed twice"},
		{"an empty load balancer subnet", func(c *Config) { c.LoadBalancerSubnets = []string{""} }, "aws.loadBalancerSubnets: an empty subnet ID"},
		{"load balancer subnets", func(c *Config) { c.LoadBalancerSubnets = []string{"subnet-b"} }, ""},
		{"no security group", func(c *Config) { c.SecurityGroups = nil }, "aws.securityGroups: at least one security group"},
		{"a type in capitals", func(c *Config) { c.InstanceTypes = []string{"M6I.large"} }, `aws.instanceTypes: "M6I.large" is neither`},
		{"a type with a wildcard", func(c *Config) { c.InstanceTypes = []string{"m6i.*"} }, "aws.instanceTypes"},
		{"a flex type", func(c *Config) { c.InstanceTypes = []string{"m7i-flex.large"} }, ""},
		{"no cluster", func(c *Config) { c.Cluster = "" }, "aws.cluster: required"},
		{"no node", func(c *Config) { c.Node = "" }, "aws.node: required"},
		{"a node name too long for a tag", func(c *Config) { c.Node = strings.Repeat("n", 257) }, "aws.node"},
		{"an aws: tag", func(c *Config) { c.Tags = map[string]string{"AWS:foo": "x"} }, `aws.tags: "AWS:foo": the aws: prefix`},
		{"one of our tags", func(c *Config) { c.Tags = map[string]string{TagPodUID: "x"} }, "aws.tags: \"i2kit.io/pod-uid\" is set by the backend"},
		{"the Name tag", func(c *Config) { c.Tags = map[string]string{"Name": "x"} }, "is set by the backend"},
		{"a long tag value", func(c *Config) { c.Tags = map[string]string{"k": strings.Repeat("v", 257)} }, "aws.tags"},
		{"too many tags", func(c *Config) { c.Tags = manyTags }, fmt.Sprintf("aws.tags: %d tags, at most %d", maxUserTags+1, maxUserTags)},
		{"a port out of range", func(c *Config) { c.AgentPort = 70000 }, "aws.agentPort"},
		{"an endpoint without scheme", func(c *Config) { c.Endpoint = "localhost:4566" }, "aws.endpoint"},
		{"an emulator's endpoint", func(c *Config) { c.Endpoint = "http://127.0.0.1:4566" }, ""},
		{"an ELBv2 endpoint without scheme", func(c *Config) { c.ELBEndpoint = "localhost:4566" }, "aws.elbEndpoint"},
		{"an ELBv2 endpoint without host", func(c *Config) { c.ELBEndpoint = "http://" }, "aws.elbEndpoint"},
		{"an emulator's ELBv2 endpoint", func(c *Config) { c.ELBEndpoint = "http://127.0.0.1:4567" }, ""},
		{"a sync period too short", func(c *Config) { c.SyncPeriod = metav1.Duration{Duration: 10 * time.Millisecond} }, "aws.syncPeriod"},
		{"a negative GC age", func(c *Config) { c.GCMinAge = metav1.Duration{Duration: -time.Second} }, "aws.gcMinAge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig()
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestConfigReportsEveryProblem(t *testing.T) {
	err := Config{}.Validate()
	for _, field := range []string{"aws.region", "aws.subnets", "aws.securityGroups", "aws.cluster", "aws.node"} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("Validate of an empty configuration: %v; does not name %s", err, field)
		}
	}
}

func TestConfigDefaultsAndYAML(t *testing.T) {
	var c Config
	if err := yaml.UnmarshalStrict([]byte(`
region: eu-west-1
subnets: [subnet-1]
securityGroups: [sg-1]
cluster: prod
node: i2kit-a
syncPeriod: 30s
`), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := c.withDefaults()
	if d.SyncPeriod.Duration != 30*time.Second || d.AgentPort != DefaultAgentPort || d.GCMinAge.Duration != DefaultGCMinAge ||
		strings.Join(d.InstanceTypes, ",") != strings.Join(DefaultInstanceTypes, ",") {
		t.Errorf("with defaults: %+v", d)
	}
}

// TestNewClientsEndpoints: ELBv2 calls go to elbEndpoint, else to endpoint — never to AWS itself while the other
// APIs go to an emulator — and EC2's to endpoint; all in the configured region.
func TestNewClientsEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name, endpoint, elbEndpoint string
		wantEC2, wantELB            string // "" for AWS's own
	}{
		{"AWS", "", "", "", ""},
		{"one emulator for every API", "http://127.0.0.1:4566", "", "http://127.0.0.1:4566", "http://127.0.0.1:4566"},
		{"an ELBv2 emulator of its own", "http://127.0.0.1:4566", "http://127.0.0.1:4567", "http://127.0.0.1:4566", "http://127.0.0.1:4567"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.Endpoint, cfg.ELBEndpoint = tc.endpoint, tc.elbEndpoint
			cl, err := NewClients(t.Context(), cfg, config.WithCredentialsProvider(sdkaws.AnonymousCredentials{}))
			if err != nil {
				t.Fatal(err)
			}
			ec2o, elbo := cl.EC2.Options(), cl.ELBv2.Options()
			if got := sdkaws.ToString(ec2o.BaseEndpoint); got != tc.wantEC2 {
				t.Errorf("EC2 endpoint %q, want %q", got, tc.wantEC2)
			}
			if got := sdkaws.ToString(elbo.BaseEndpoint); got != tc.wantELB {
				t.Errorf("ELBv2 endpoint %q, want %q", got, tc.wantELB)
			}
			if ec2o.Region != cfg.Region || elbo.Region != cfg.Region {
				t.Errorf("regions %q and %q, want %q", ec2o.Region, elbo.Region, cfg.Region)
			}
		})
	}
}
