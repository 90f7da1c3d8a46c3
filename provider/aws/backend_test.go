package aws

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/provider/vm"
)

// fakeChannel is the agent channel of the tests: user-data naming the pod, and dials that record the instance
// and answer one end of a pipe.
type fakeChannel struct {
	mu       sync.Mutex
	userData []byte
	dials    []string
	err      error
	// forgotten are the instances whose pinned key the backend dropped (Channel.Forget).
	forgotten []string
}

func (c *fakeChannel) Forget(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.forgotten = append(c.forgotten, id)
}

func (c *fakeChannel) UserData(p vm.Plan) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.userData != nil {
		return c.userData, nil
	}
	return []byte(`{"version":1,"hostname":"` + p.Name + `"}`), nil
}

func (c *fakeChannel) Dial(_ context.Context, id, ip string) (net.Conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dials = append(c.dials, id+"@"+ip)
	if c.err != nil {
		return nil, c.err
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

// clock is the tests' time, moved by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// statuses records a backend's notifications.
type statuses struct {
	mu  sync.Mutex
	all []vm.Status
}

func (s *statuses) add(st vm.Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all = append(s.all, st)
}

func (s *statuses) of(uid string) []vm.Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []vm.Status
	for _, st := range s.all {
		if st.UID == uid {
			out = append(out, st)
		}
	}
	return out
}

// harness is one fake account and what the backends over it share.
type harness struct {
	f     *fakeEC2
	ch    *fakeChannel
	clock *clock
	seen  *statuses

	mu     sync.Mutex
	sleeps []time.Duration
}

func newHarness() *harness {
	return &harness{f: newFakeEC2(), ch: &fakeChannel{}, clock: &clock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}, seen: &statuses{}}
}

func testConfig() Config {
	return Config{Region: "us-east-1", Subnets: []string{"subnet-a"}, SecurityGroups: []string{"sg-1"},
		InstanceTypes: []string{"t3", "m6i"}, Cluster: "c1", Node: "n1", SyncPeriod: metav1.Duration{Duration: time.Hour},
		Tags: map[string]string{"team": "infra"}}
}

// backend makes a backend over the harness's account: a second call is the node restarted. Its listing never
// runs by itself (SyncPeriod is an hour): the tests call refresh, one sync.
func (h *harness) backend(t testing.TB, edit ...func(*Config)) *Backend {
	t.Helper()
	b, err := h.newBackend(edit...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func (h *harness) newBackend(edit ...func(*Config)) (*Backend, error) {
	cfg := testConfig()
	for _, e := range edit {
		e(&cfg)
	}
	return newBackend(context.Background(), cfg, h.f, h.ch, h.seen.add, func(b *Backend) {
		b.now = h.clock.now
		b.sleep = func(ctx context.Context, d time.Duration) error {
			h.mu.Lock()
			h.sleeps = append(h.sleeps, d)
			h.mu.Unlock()
			return ctx.Err()
		}
	})
}

func testPlan(uid string) vm.Plan {
	return vm.Plan{UID: uid, Namespace: "default", Name: "pod-" + uid, Published: "ami-1", MemoryMiB: 128, CPUs: 1}
}

func sync1(t testing.TB, b *Backend) {
	t.Helper()
	if err := b.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestNewChecksTheConfiguration(t *testing.T) {
	for _, tc := range []struct {
		name   string
		edit   func(*Config)
		inject func(*fakeEC2)
		want   []string
	}{
		{"a subnet that does not exist", func(c *Config) { c.Subnets = []string{"subnet-a", "subnet-nope"} }, nil,
			[]string{"aws.subnets", "subnet-nope", "InvalidSubnetID.NotFound"}},
		{"a security group that does not exist", func(c *Config) { c.SecurityGroups = []string{"sg-nope"} }, nil,
			[]string{"aws.securityGroups", "sg-nope"}},
		{"a security group of another VPC", func(c *Config) { c.SecurityGroups = []string{"sg-other"} }, nil,
			[]string{"aws.securityGroups", "sg-other is in vpc-2"}},
		{"subnets of two VPCs", func(c *Config) { c.Subnets = []string{"subnet-a", "subnet-other"} }, nil,
			[]string{"aws.subnets", "2 VPCs (vpc-1, vpc-2)"}},
		{"a load balancer subnet that does not exist", func(c *Config) { c.LoadBalancerSubnets = []string{"subnet-nope"} }, nil,
			[]string{"aws.loadBalancerSubnets", "subnet-nope", "InvalidSubnetID.NotFound"}},
		{"a load balancer subnet of another VPC", func(c *Config) { c.LoadBalancerSubnets = []string{"subnet-other"} }, nil,
			[]string{"aws.subnets", "2 VPCs (vpc-1, vpc-2)"}},
		{"two load balancer subnets in one zone", func(c *Config) { c.LoadBalancerSubnets = []string{"subnet-a", "subnet-b"} },
			func(f *fakeEC2) {
				for _, id := range []string{"subnet-a", "subnet-b"} {
					s := f.subnets[id]
					s.AvailabilityZone = sdkaws.String("us-east-1a")
					f.subnets[id] = s
				}
			}, []string{"aws.loadBalancerSubnets", "subnet-b is in us-east-1a", "one subnet per availability zone"}},
		{"an instance family with no x86_64 type", func(c *Config) { c.InstanceTypes = []string{"t3", "m6g"} }, nil,
			[]string{"aws.instanceTypes", `"m6g" matches no x86_64 instance type`}},
		{"bare metal only", func(c *Config) { c.InstanceTypes = []string{"m6i.metal"} }, nil,
			[]string{"aws.instanceTypes", `"m6i.metal"`}},
		{"no permission to describe subnets", nil, func(f *fakeEC2) {
			f.fail("DescribeSubnets", apiError("UnauthorizedOperation", "You are not authorized to perform this operation. Encoded authorization failure message: "+strings.Repeat("x", 900)))
		}, []string{"aws.subnets", "ec2:DescribeSubnets is not permitted", "IAM policy"}},
		{"no permission to describe instance types", nil, func(f *fakeEC2) {
			f.fail("DescribeInstanceTypes", apiError("UnauthorizedOperation", "You are not authorized"))
		}, []string{"aws.instanceTypes", "ec2:DescribeInstanceTypes is not permitted"}},
		{"an invalid configuration", func(c *Config) { c.Region = "" }, nil, []string{"aws.region: required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness()
			if tc.inject != nil {
				tc.inject(h.f)
			}
			var edits []func(*Config)
			if tc.edit != nil {
				edits = append(edits, tc.edit)
			}
			_, err := h.newBackend(edits...)
			if err == nil {
				t.Fatal("New succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if len(err.Error()) > 600 {
				t.Errorf("error of %d characters: AWS's message is not bounded", len(err.Error()))
			}
		})
	}
}

func TestNewLoadsTheAllowedTypesPaged(t *testing.T) {
	h := newHarness()
	h.f.typesPage = 2
	b := h.backend(t)
	var got []string
	for _, it := range b.types {
		got = append(got, it.Name)
	}
	want := "t3.nano t3.micro t3.small t3.medium t3.large m6i.large m6i.xlarge m6i.9zlarge"
	if strings.Join(got, " ") != want {
		t.Errorf("types %v, want %s", got, want)
	}
	// The filter passed t3 and m6i (10 of the 11 types, the arm64 one left out by architecture): 5 pages of 2.
	if n := h.f.count("DescribeInstanceTypes"); n != 5 {
		t.Errorf("%d DescribeInstanceTypes calls, want 5 pages", n)
	}
}

// An emulator that ignores the filters does not widen the allowed types.
func TestNewChecksTheTypesTheAPIAnswers(t *testing.T) {
	h := newHarness()
	h.f.ignoreFilters = true
	b := h.backend(t, func(c *Config) { c.InstanceTypes = []string{"t3.micro", "m6i"} })
	if got := typeNames(b.types, 10); got != "t3.micro, m6i.large, m6i.xlarge, m6i.9zlarge" {
		t.Errorf("types %s", got)
	}
}

func TestLaunchIsIdempotentPerPod(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	ctx := context.Background()
	st, err := b.Launch(ctx, testPlan("a"))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != vm.Booting || st.ID == "" || st.IP == "" {
		t.Fatalf("launched %+v, want Booting with an ID and an IP", st)
	}
	again, err := b.Launch(ctx, testPlan("a"))
	if err != nil || again.ID != st.ID {
		t.Fatalf("second launch: %+v, %v; want %s", again, err, st.ID)
	}
	// A restarted node finds the instance by its tags and launches nothing.
	b2 := h.backend(t)
	if all, _ := b2.List(ctx); len(all) != 1 || all[0].ID != st.ID || all[0].Namespace != "default" || all[0].Name != "pod-a" {
		t.Fatalf("List after a restart: %+v", all)
	}
	after, err := b2.Launch(ctx, testPlan("a"))
	if err != nil || after.ID != st.ID {
		t.Fatalf("launch after a restart: %+v, %v; want %s", after, err, st.ID)
	}
	if n := h.f.count("RunInstances"); n != 1 {
		t.Errorf("%d RunInstances calls, want 1", n)
	}
	if n := h.f.live(TagPodUID, "a"); n != 1 {
		t.Errorf("%d instances of pod a, want 1", n)
	}
}

// A launch retried after a crash between RunInstances and recording its answer — the listing not showing the
// instance yet — gets the same instance back from its ClientToken.
func TestLaunchAfterCrashReusesTheClientToken(t *testing.T) {
	h := newHarness()
	h.f.lagging = true
	b := h.backend(t)
	st, err := b.Launch(context.Background(), testPlan("a"))
	if err != nil {
		t.Fatal(err)
	}
	b2 := h.backend(t) // the listing does not show the instance yet
	if all, _ := b2.List(context.Background()); len(all) != 0 {
		t.Fatalf("the fake shows a lagging instance: %+v", all)
	}
	again, err := b2.Launch(context.Background(), testPlan("a"))
	if err != nil || again.ID != st.ID {
		t.Fatalf("launch after the crash: %+v, %v; want %s", again, err, st.ID)
	}
	if n := h.f.live(TagPodUID, "a"); n != 1 {
		t.Errorf("%d instances of pod a, want 1", n)
	}
}

// A restarted node whose user-data changed (a new CA) gets IdempotentParameterMismatch for the pod's token: the
// instance that token launched is the pod's.
func TestLaunchAdoptsTheInstanceOfAMismatchedToken(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	st, err := b.Launch(context.Background(), testPlan("a"))
	if err != nil {
		t.Fatal(err)
	}
	h.ch.userData = []byte(`{"version":1,"nodeCA":"another"}`)
	b2 := h.backend(t)
	b2.mu.Lock()
	delete(b2.insts, "a") // as if the listing had missed it
	b2.mu.Unlock()
	again, err := b2.Launch(context.Background(), testPlan("a"))
	if err != nil || again.ID != st.ID {
		t.Fatalf("launch with other user-data: %+v, %v; want %s", again, err, st.ID)
	}
	if n := h.f.live(TagPodUID, "a"); n != 1 {
		t.Errorf("%d instances of pod a, want 1", n)
	}
}

func TestLaunchLocksThePod(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	unlock, err := b.lockLaunch(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.Launch(cctx, testPlan("a")); !errors.Is(err, context.Canceled) {
		t.Errorf("a launch while another runs: %v, want it to wait (and give up with its context)", err)
	}
	if _, err := b.Launch(context.Background(), testPlan("b")); err != nil {
		t.Errorf("another pod's launch: %v", err)
	}
	unlock()
	if _, err := b.Launch(context.Background(), testPlan("a")); err != nil {
		t.Errorf("launch after the other ended: %v", err)
	}
}

func TestRunInstancesRequest(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	p := testPlan("a")
	p.Annotations = map[string]string{AnnotationInstanceMetadata: "enabled"}
	if _, err := b.Launch(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	in := h.f.runs[0]
	switch {
	case *in.ImageId != "ami-1" || in.InstanceType != "t3.nano" || *in.SubnetId != "subnet-a" || in.SecurityGroupIds[0] != "sg-1":
		t.Errorf("launched %s as %s in %s with %v", *in.ImageId, in.InstanceType, *in.SubnetId, in.SecurityGroupIds)
	case len(*in.ClientToken) > 64 || *in.ClientToken != clientToken("a", candidate{"t3.nano", "subnet-a"}):
		t.Errorf("ClientToken %q", *in.ClientToken)
	case *in.UserData != base64.StdEncoding.EncodeToString([]byte(`{"version":1,"hostname":"pod-a"}`)):
		t.Errorf("user-data %q is not the channel's, in base64", *in.UserData)
	case in.MetadataOptions.HttpTokens != "required" || *in.MetadataOptions.HttpPutResponseHopLimit != 1 || in.MetadataOptions.HttpEndpoint != "enabled":
		t.Errorf("metadata options %+v", in.MetadataOptions)
	case in.InstanceInitiatedShutdownBehavior != ec2types.ShutdownBehaviorTerminate:
		t.Errorf("shutdown behaviour %q", in.InstanceInitiatedShutdownBehavior)
	case len(in.TagSpecifications) != 1 || in.TagSpecifications[0].ResourceType != ec2types.ResourceTypeInstance:
		t.Errorf("tag specifications %+v", in.TagSpecifications)
	}
	want := map[string]string{TagCluster: "c1", TagNode: "n1", TagPodNamespace: "default", TagPodName: "pod-a", TagPodUID: "a",
		TagName: "default/pod-a", "team": "infra", tagInstanceMetadata: "enabled"}
	tags := in.TagSpecifications[0].Tags
	if len(tags) != len(want) {
		t.Errorf("%d tags, want %d", len(tags), len(want))
	}
	for k, v := range want {
		if got := tagValue(tags, k); got != v {
			t.Errorf("tag %s = %q, want %q", k, got, v)
		}
	}
}

func TestLaunchRefusesWhatCannotRun(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	for _, tc := range []struct {
		name string
		edit func(*vm.Plan)
		want string
	}{
		{"no AMI", func(p *vm.Plan) { p.Published = "" }, "no AMI"},
		{"too large", func(p *vm.Plan) { p.CPUs = 64 }, "no allowed instance type has 64 vCPUs"},
		{"an annotation naming a type not allowed", func(p *vm.Plan) { p.Annotations = map[string]string{AnnotationInstanceType: "c7i.large"} }, "not allowed"},
		{"user-data over 16 KiB", func(p *vm.Plan) { h.ch.userData = make([]byte, 16<<10+1) }, "user-data of 16385 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPlan("x")
			tc.edit(&p)
			defer func() { h.ch.userData = nil }()
			if _, err := b.Launch(context.Background(), p); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("launch: %v, want %q", err, tc.want)
			}
		})
	}
	if n := h.f.count("RunInstances"); n != 0 {
		t.Errorf("%d RunInstances calls, want none", n)
	}
}

func TestUnauthorizedLaunchNamesTheAction(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	h.f.fail("RunInstances", apiError("UnauthorizedOperation", "You are not authorized to perform this operation."))
	_, err := b.Launch(context.Background(), testPlan("a"))
	if err == nil || !strings.Contains(err.Error(), "ec2:RunInstances is not permitted") || !strings.Contains(err.Error(), "IAM policy") || !IsUnauthorized(err) {
		t.Fatalf("launch: %v, want an error naming ec2:RunInstances", err)
	}
	if n := h.f.count("RunInstances"); n != 1 {
		t.Errorf("%d RunInstances calls, want 1: a refusal is not a capacity problem", n)
	}
}
