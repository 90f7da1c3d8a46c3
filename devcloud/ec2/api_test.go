package ec2

import (
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/sivchari/kumo"
)

func TestTags(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := ctxT(t)
	ami, snap := e.image(t, "tags")
	out, err := e.run(t, ami, "t", 1, "a", "1")
	if err != nil {
		t.Fatal(err)
	}
	id := ids(out)[0]
	if _, err := e.ec2.CreateTags(ctx, &awsec2.CreateTagsInput{Resources: []string{id, ami, snap},
		Tags: []types.Tag{{Key: aws.String("i2kit.io/last-used"), Value: aws.String("2026-12-06")}, {Key: aws.String("a"), Value: aws.String("2")}}}); err != nil {
		t.Fatal(err)
	}
	d, err := e.ec2.DescribeTags(ctx, &awsec2.DescribeTagsInput{Filters: []types.Filter{{Name: aws.String("key"), Values: []string{"i2kit.io/last-used"}}}})
	if err != nil || len(d.Tags) != 3 {
		t.Fatalf("DescribeTags = %+v, %v; want the tag on three resources", d, err)
	}
	in, _ := e.srv.Instance(id)
	if v, _ := tagValue(in.Tags, "a"); v != "2" {
		t.Errorf("CreateTags did not overwrite a: %v", in.Tags)
	}
	if _, err := e.ec2.DeleteTags(ctx, &awsec2.DeleteTagsInput{Resources: []string{id}, Tags: []types.Tag{{Key: aws.String("a"), Value: aws.String("wrong")}}}); err != nil {
		t.Fatal(err)
	}
	if in, _ := e.srv.Instance(id); len(in.Tags) != 2 {
		t.Errorf("DeleteTags with a non-matching value removed a tag: %v", in.Tags)
	}
	if _, err := e.ec2.DeleteTags(ctx, &awsec2.DeleteTagsInput{Resources: []string{id}, Tags: []types.Tag{{Key: aws.String("a")}}}); err != nil {
		t.Fatal(err)
	}
	if in, _ := e.srv.Instance(id); len(in.Tags) != 1 {
		t.Errorf("DeleteTags left %v", in.Tags)
	}
	// Atomic: one unknown ID and nothing is tagged.
	_, err = e.ec2.CreateTags(ctx, &awsec2.CreateTagsInput{Resources: []string{id, "i-0000000000000dead"}, Tags: []types.Tag{{Key: aws.String("x"), Value: aws.String("y")}}})
	wantCode(t, err, "InvalidInstanceID.NotFound")
	if in, _ := e.srv.Instance(id); len(in.Tags) != 1 {
		t.Errorf("a refused CreateTags tagged %v", in.Tags)
	}
	_, err = e.ec2.CreateTags(ctx, &awsec2.CreateTagsInput{Resources: []string{id}, Tags: []types.Tag{{Key: aws.String("aws:reserved"), Value: aws.String("y")}}})
	wantCode(t, err, "InvalidParameterValue")
}

func TestInstanceTypesSubnetsGroups(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := ctxT(t)
	var all []types.InstanceTypeInfo
	p := awsec2.NewDescribeInstanceTypesPaginator(e.ec2, &awsec2.DescribeInstanceTypesInput{MaxResults: aws.Int32(5)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, out.InstanceTypes...)
	}
	if len(all) != 15 {
		t.Fatalf("%d instance types, want 15", len(all))
	}
	one, err := e.ec2.DescribeInstanceTypes(ctx, &awsec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{types.InstanceTypeM6iXlarge}})
	if err != nil || len(one.InstanceTypes) != 1 {
		t.Fatalf("DescribeInstanceTypes(m6i.xlarge) = %v, %v", one, err)
	}
	it := one.InstanceTypes[0]
	if aws.ToInt32(it.VCpuInfo.DefaultVCpus) != 4 || aws.ToInt64(it.MemoryInfo.SizeInMiB) != 16384 ||
		it.ProcessorInfo.SupportedArchitectures[0] != types.ArchitectureTypeX8664 || it.NetworkInfo.EnaSupport != types.EnaSupportRequired ||
		len(it.SupportedBootModes) != 2 || it.Hypervisor != types.InstanceTypeHypervisorNitro {
		t.Errorf("m6i.xlarge = %+v", it)
	}
	_, err = e.ec2.DescribeInstanceTypes(ctx, &awsec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{types.InstanceTypeP4d24xlarge}})
	wantCode(t, err, "InvalidInstanceType")
	big, err := e.ec2.DescribeInstanceTypes(ctx, &awsec2.DescribeInstanceTypesInput{Filters: []types.Filter{{Name: aws.String("vcpu-info.default-vcpus"), Values: []string{"8"}}}})
	if err != nil || len(big.InstanceTypes) != 3 {
		t.Errorf("8-vCPU types = %d, %v; want 3", len(big.InstanceTypes), err)
	}

	subs, err := e.ec2.DescribeSubnets(ctx, &awsec2.DescribeSubnetsInput{Filters: []types.Filter{{Name: aws.String("vpc-id"), Values: []string{DefaultVpcID}}}})
	if err != nil || len(subs.Subnets) != 2 || aws.ToString(subs.Subnets[0].CidrBlock) != "10.0.1.0/24" || aws.ToInt32(subs.Subnets[0].AvailableIpAddressCount) != 251 {
		t.Errorf("DescribeSubnets = %+v, %v", subs, err)
	}
	_, err = e.ec2.DescribeSubnets(ctx, &awsec2.DescribeSubnetsInput{SubnetIds: []string{"subnet-0000000000000dead"}})
	wantCode(t, err, "InvalidSubnetID.NotFound")
	groups, err := e.ec2.DescribeSecurityGroups(ctx, &awsec2.DescribeSecurityGroupsInput{GroupIds: []string{DefaultSecurityGroups()[0].ID}})
	if err != nil || len(groups.SecurityGroups) != 1 || aws.ToString(groups.SecurityGroups[0].VpcId) != DefaultVpcID {
		t.Errorf("DescribeSecurityGroups = %+v, %v", groups, err)
	}
	_, err = e.ec2.DescribeSecurityGroups(ctx, &awsec2.DescribeSecurityGroupsInput{GroupIds: []string{"sg-0000000000000dead"}})
	wantCode(t, err, "InvalidGroup.NotFound")
}

// noBackoff retries at once: tests wait on conditions, never on time.
type noBackoff struct{}

func (noBackoff) BackoffDelay(int, error) (time.Duration, error) { return 0, nil }

func TestFaults(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := ctxT(t)
	ami, _ := e.image(t, "faults")

	e.srv.FailInstanceType("t3.micro", "InsufficientInstanceCapacity")
	_, err := e.run(t, ami, "", 1)
	wantCode(t, err, "InsufficientInstanceCapacity")
	e.srv.FailInstanceType("t3.micro", "")

	e.srv.Deny("RunInstances")
	_, err = e.run(t, ami, "", 1)
	wantCode(t, err, "UnauthorizedOperation")
	if !strings.Contains(err.Error(), "ec2:RunInstances") {
		t.Errorf("the refusal does not name the IAM action: %v", err)
	}
	e.srv.Allow("RunInstances")

	// Throttling: the SDK's retryer sees RequestLimitExceeded, retries, and the third attempt succeeds.
	retrying := awsec2.NewFromConfig(sdkConfig(3), func(o *awsec2.Options) {
		o.BaseEndpoint = aws.String(e.url)
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts, so.Backoff, so.RateLimiter = 3, noBackoff{}, ratelimit.None
		})
	})
	e.srv.ResetCalls()
	e.srv.Throttle("DescribeInstances", 2)
	if _, err := retrying.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{}); err != nil {
		t.Fatalf("DescribeInstances through throttling: %v", err)
	}
	if n := e.srv.Calls("DescribeInstances"); n != 3 {
		t.Errorf("DescribeInstances was called %d times, want 3", n)
	}
	e.srv.Throttle("DescribeInstances", 1)
	_, err = e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{})
	wantCode(t, err, "RequestLimitExceeded")
	e.srv.Throttle("PutSnapshotBlock", 1)
	wantCode(t, put(e, t, "snap-0000000000000dead", 0, make([]byte, blockSize), make([]byte, 32)), "RequestThrottledException")

	// Eventual consistency: the new instance is unknown to the next two describes.
	e.srv.HideNewInstances(2)
	out, err := e.run(t, ami, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.HideNewInstances(0)
	id := ids(out)[0]
	for range 2 {
		_, err = e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{InstanceIds: []string{id}})
		wantCode(t, err, "InvalidInstanceID.NotFound")
	}
	if _, err := e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Errorf("the instance is still invisible: %v", err)
	}

	// Held transitions: pending until released.
	release := e.srv.HoldTransitions()
	out, err = e.run(t, ami, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	held := ids(out)[0]
	if in, _ := e.srv.Instance(held); in.State != "pending" {
		t.Errorf("held instance is %s", in.State)
	}
	release()
	release()
	if err := e.srv.WaitState(ctx, held, "running"); err != nil {
		t.Fatal(err)
	}

	_, err = e.ec2.RunInstances(ctx, func() *awsec2.RunInstancesInput { in := runInput(ami, "", 1); in.DryRun = aws.Bool(true); return in }())
	wantCode(t, err, "DryRunOperation")
	if n := e.srv.Calls("RunInstances"); n != 3 { // since ResetCalls: hidden, held, dry run
		t.Errorf("RunInstances counted %d calls", n)
	}
}

func TestUnknownActionAndFallback(t *testing.T) {
	e := newEnv(t, Options{})
	_, err := e.ec2.DescribeVpcs(ctxT(t), &awsec2.DescribeVpcsInput{})
	wantCode(t, err, "InvalidAction")
	_, err = e.ec2.CreateLaunchTemplate(ctxT(t), &awsec2.CreateLaunchTemplateInput{LaunchTemplateName: aws.String("x"),
		LaunchTemplateData: &types.RequestLaunchTemplateData{}})
	wantCode(t, err, "InvalidAction")

	// Another service's Query request (another Version) goes to the fallback untouched.
	var got string
	f := New(Options{Fallback: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		got = r.PostForm.Get("Action")
	})})
	req, _ := http.NewRequest(http.MethodPost, "/", strings.NewReader(url.Values{"Action": {"DescribeLoadBalancers"}, "Version": {"2015-12-01"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	f.ServeHTTP(discard{}, req)
	if got != "DescribeLoadBalancers" {
		t.Errorf("the fallback saw %q", got)
	}
}

type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(b []byte) (int, error) { return len(b), nil }
func (discard) WriteHeader(int)             {}

// TestKumoNetwork launches into a VPC and subnet created in kumo through this endpoint.
func TestKumoNetwork(t *testing.T) {
	k := kumo.NewServer()
	t.Cleanup(k.Close)
	ku, _ := url.Parse(k.URL)
	e := newEnv(t, Options{Fallback: httputil.NewSingleHostReverseProxy(ku)})
	ctx := ctxT(t)
	vpc, err := e.ec2.CreateVpc(ctx, &awsec2.CreateVpcInput{CidrBlock: aws.String("10.77.0.0/16")})
	if err != nil {
		t.Fatalf("CreateVpc through the fallback: %v", err)
	}
	sub, err := e.ec2.CreateSubnet(ctx, &awsec2.CreateSubnetInput{VpcId: vpc.Vpc.VpcId, CidrBlock: aws.String("10.77.3.0/24"),
		AvailabilityZone: aws.String("us-east-1c")})
	if err != nil {
		t.Fatalf("CreateSubnet: %v", err)
	}
	sg, err := e.ec2.CreateSecurityGroup(ctx, &awsec2.CreateSecurityGroupInput{GroupName: aws.String("pods-" + t.Name()),
		Description: aws.String("pods"), VpcId: vpc.Vpc.VpcId})
	if err != nil {
		t.Fatalf("CreateSecurityGroup: %v", err)
	}
	subnetID := aws.ToString(sub.Subnet.SubnetId)
	d, err := e.ec2.DescribeSubnets(ctx, &awsec2.DescribeSubnetsInput{SubnetIds: []string{subnetID}})
	if err != nil || len(d.Subnets) != 1 || aws.ToString(d.Subnets[0].CidrBlock) != "10.77.3.0/24" {
		t.Fatalf("DescribeSubnets(kumo's) = %+v, %v", d, err)
	}
	ami, _ := e.image(t, "kumo")
	in := runInput(ami, "", 1)
	in.ClientToken, in.SubnetId, in.SecurityGroupIds = nil, aws.String(subnetID), []string{aws.ToString(sg.GroupId)}
	out, err := e.ec2.RunInstances(ctx, in)
	if err != nil {
		t.Fatalf("RunInstances into kumo's subnet: %v", err)
	}
	got := out.Instances[0]
	if ip := netip.MustParseAddr(aws.ToString(got.PrivateIpAddress)); !netip.MustParsePrefix("10.77.3.0/24").Contains(ip) ||
		aws.ToString(got.VpcId) != aws.ToString(vpc.Vpc.VpcId) {
		t.Errorf("instance in kumo's subnet: ip %s, vpc %s", ip, aws.ToString(got.VpcId))
	}
	in.ClientToken, in.SecurityGroupIds = nil, []string{DefaultSecurityGroups()[0].ID}
	_, err = e.ec2.RunInstances(ctx, in)
	wantCode(t, err, "InvalidParameter") // the group is in another VPC
	if _, err := e.ec2.CreateTags(ctx, &awsec2.CreateTagsInput{Resources: []string{subnetID},
		Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}}); err != nil {
		t.Errorf("tagging kumo's subnet: %v", err)
	}
}
