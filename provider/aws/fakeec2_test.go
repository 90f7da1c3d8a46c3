package aws

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// fakeEC2 is a stateful fake of EC2API for the instance calls: instances with their tags, states, ClientTokens
// and metadata options; subnets, security groups and instance types; paging; errors injected per call; call
// counters; and eventual consistency (new instances invisible until settle). It never mutates what it has
// handed out: a change replaces the instance's pointers.
type fakeEC2 struct {
	EC2API // nil: a call the fake does not implement panics

	mu        sync.Mutex
	instances map[string]*ec2types.Instance
	order     []string             // instance IDs in launch order (paging)
	tokens    map[string]fakeToken // by ClientToken
	hidden    map[string]bool      // instances not visible yet
	subnets   map[string]ec2types.Subnet
	groups    map[string]ec2types.SecurityGroup
	types     []ec2types.InstanceTypeInfo
	typesPage int
	// noCapacity maps instance types (or "type@subnet") to the error code RunInstances answers for them.
	noCapacity map[string]string
	errs       map[string][]error // queued errors by action, one per call
	calls      map[string]int
	// lagging makes new instances invisible to DescribeInstances and to calls by ID until settle.
	lagging bool
	nextID  int
	runs    []*ec2.RunInstancesInput
	// blockRun, when set, is received from before RunInstances does anything.
	blockRun chan struct{}
	// afterRun, when set, runs after RunInstances made an instance, before it answers.
	afterRun func()
	// ignoreFilters makes DescribeInstanceTypes answer every type, as emulators do.
	ignoreFilters bool
}

type fakeToken struct{ id, params string }

func newFakeEC2() *fakeEC2 {
	f := &fakeEC2{instances: map[string]*ec2types.Instance{}, tokens: map[string]fakeToken{}, hidden: map[string]bool{},
		subnets: map[string]ec2types.Subnet{}, groups: map[string]ec2types.SecurityGroup{}, noCapacity: map[string]string{},
		errs: map[string][]error{}, calls: map[string]int{}, typesPage: 100}
	for _, s := range []struct {
		id   string
		free int32
	}{{"subnet-a", 250}, {"subnet-b", 250}, {"subnet-full", 0}} {
		f.subnets[s.id] = ec2types.Subnet{SubnetId: sdkaws.String(s.id), VpcId: sdkaws.String("vpc-1"), AvailableIpAddressCount: sdkaws.Int32(s.free)}
	}
	f.subnets["subnet-other"] = ec2types.Subnet{SubnetId: sdkaws.String("subnet-other"), VpcId: sdkaws.String("vpc-2"), AvailableIpAddressCount: sdkaws.Int32(9)}
	f.groups["sg-1"] = ec2types.SecurityGroup{GroupId: sdkaws.String("sg-1"), VpcId: sdkaws.String("vpc-1")}
	f.groups["sg-other"] = ec2types.SecurityGroup{GroupId: sdkaws.String("sg-other"), VpcId: sdkaws.String("vpc-2")}
	x86, arm := []ec2types.ArchitectureType{"i386", "x86_64"}, []ec2types.ArchitectureType{"arm64"}
	uefi := []ec2types.BootModeType{"legacy-bios", "uefi"}
	for _, t := range []struct {
		name      string
		cpus, mem int
		arch      []ec2types.ArchitectureType
		metal     bool
	}{
		{"t3.nano", 2, 512, x86, false}, {"t3.micro", 2, 1024, x86, false}, {"t3.small", 2, 2048, x86, false},
		{"t3.medium", 2, 4096, x86, false}, {"t3.large", 2, 8192, x86, false}, {"t3a.nano", 2, 512, x86, false},
		{"m6i.large", 2, 8192, x86, false}, {"m6i.xlarge", 4, 16384, x86, false}, {"m6i.metal", 128, 524288, x86, true},
		{"m6g.large", 2, 8192, arm, false}, {"m6i.9zlarge", 8, 65536, x86, false},
	} {
		f.types = append(f.types, ec2types.InstanceTypeInfo{InstanceType: ec2types.InstanceType(t.name),
			VCpuInfo: &ec2types.VCpuInfo{DefaultVCpus: sdkaws.Int32(int32(t.cpus))}, MemoryInfo: &ec2types.MemoryInfo{SizeInMiB: sdkaws.Int64(int64(t.mem))},
			ProcessorInfo: &ec2types.ProcessorInfo{SupportedArchitectures: t.arch}, BareMetal: sdkaws.Bool(t.metal), SupportedBootModes: uefi})
	}
	return f
}

func apiError(code, msg string) error { return &smithy.GenericAPIError{Code: code, Message: msg} }

// fail queues errors for the next calls of action.
func (f *fakeEC2) fail(action string, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[action] = append(f.errs[action], errs...)
}

// enter counts a call of action and pops its next queued error (f.mu held).
func (f *fakeEC2) enter(action string) error {
	f.calls[action]++
	if q := f.errs[action]; len(q) > 0 {
		f.errs[action] = q[1:]
		return q[0]
	}
	return nil
}

func (f *fakeEC2) count(action string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[action]
}

// total counts every call since resetCalls.
func (f *fakeEC2) total() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]int{}
	for k, v := range f.calls {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}

func (f *fakeEC2) resetCalls() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = map[string]int{}
}

// settle makes every instance visible.
func (f *fakeEC2) settle() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hidden = map[string]bool{}
}

// setState moves an instance to state, with a state reason when code is set.
func (f *fakeEC2) setState(id string, state ec2types.InstanceStateName, code, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := *f.instances[id]
	in.State = &ec2types.InstanceState{Name: state}
	if code != "" {
		in.StateReason = &ec2types.StateReason{Code: sdkaws.String(code), Message: sdkaws.String(msg)}
	}
	f.instances[id] = &in
}

// runAll moves every pending instance to running.
func (f *fakeEC2) runAll() {
	for _, id := range f.ids() {
		if f.state(id) == ec2types.InstanceStateNamePending {
			f.setState(id, ec2types.InstanceStateNameRunning, "", "")
		}
	}
}

// reap moves every shutting-down instance to terminated.
func (f *fakeEC2) reap() {
	for _, id := range f.ids() {
		if f.state(id) == ec2types.InstanceStateNameShuttingDown {
			f.setState(id, ec2types.InstanceStateNameTerminated, "", "")
		}
	}
}

func (f *fakeEC2) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.order)
}

func (f *fakeEC2) state(id string) ec2types.InstanceStateName {
	f.mu.Lock()
	defer f.mu.Unlock()
	if in, ok := f.instances[id]; ok {
		return in.State.Name
	}
	return ""
}

func (f *fakeEC2) instance(id string) ec2types.Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return *f.instances[id]
}

// live counts the instances not terminated whose tag key has value.
func (f *fakeEC2) live(key, value string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, in := range f.instances {
		if in.State.Name != ec2types.InstanceStateNameTerminated && tagValue(in.Tags, key) == value {
			n++
		}
	}
	return n
}

// add makes an instance directly, as another process would have.
func (f *fakeEC2) add(state ec2types.InstanceStateName, launched time.Time, tags map[string]string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	in := f.newInstanceLocked(state, launched)
	for k, v := range tags {
		in.Tags = append(in.Tags, ec2types.Tag{Key: sdkaws.String(k), Value: sdkaws.String(v)})
	}
	return *in.InstanceId
}

func (f *fakeEC2) newInstanceLocked(state ec2types.InstanceStateName, launched time.Time) *ec2types.Instance {
	f.nextID++
	id := fmt.Sprintf("i-%017x", f.nextID)
	in := &ec2types.Instance{InstanceId: sdkaws.String(id), State: &ec2types.InstanceState{Name: state},
		PrivateIpAddress: sdkaws.String(fmt.Sprintf("10.0.%d.%d", f.nextID/250, f.nextID%250+1)), LaunchTime: sdkaws.Time(launched),
		MetadataOptions: &ec2types.InstanceMetadataOptionsResponse{HttpEndpoint: ec2types.InstanceMetadataEndpointStateEnabled}}
	f.instances[id] = in
	f.order = append(f.order, id)
	return in
}

func (f *fakeEC2) RunInstances(_ context.Context, in *ec2.RunInstancesInput, _ ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error) {
	f.mu.Lock()
	block := f.blockRun
	f.mu.Unlock()
	if block != nil {
		<-block
	}
	out, err := f.runInstances(in)
	f.mu.Lock()
	after := f.afterRun
	f.mu.Unlock()
	if err == nil && after != nil {
		after()
	}
	return out, err
}

func (f *fakeEC2) runInstances(in *ec2.RunInstancesInput) (*ec2.RunInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.runs = append(f.runs, in)
	if err := f.enter("RunInstances"); err != nil {
		return nil, err
	}
	typ, subnet := string(in.InstanceType), sdkaws.ToString(in.SubnetId)
	if _, ok := f.subnets[subnet]; !ok {
		return nil, apiError("InvalidSubnetID.NotFound", "The subnet ID '"+subnet+"' does not exist")
	}
	if code := cmpOr(f.noCapacity[typ+"@"+subnet], f.noCapacity[typ]); code != "" {
		return nil, apiError(code, "We currently do not have sufficient "+typ+" capacity in the Availability Zone you requested.")
	}
	params := strings.Join([]string{sdkaws.ToString(in.ImageId), typ, subnet, sdkaws.ToString(in.UserData)}, "\x00")
	if tok, ok := f.tokens[sdkaws.ToString(in.ClientToken)]; ok && in.ClientToken != nil {
		if tok.params != params {
			return nil, apiError("IdempotentParameterMismatch", "The client token you have provided is associated with a resource that is already deleted or has different parameters.")
		}
		return &ec2.RunInstancesOutput{Instances: []ec2types.Instance{*f.instances[tok.id]}}, nil
	}
	inst := f.newInstanceLocked(ec2types.InstanceStateNamePending, time.Now())
	inst.InstanceType, inst.ImageId, inst.SubnetId, inst.ClientToken = in.InstanceType, in.ImageId, in.SubnetId, in.ClientToken
	if mo := in.MetadataOptions; mo != nil && mo.HttpEndpoint != "" {
		inst.MetadataOptions = &ec2types.InstanceMetadataOptionsResponse{HttpEndpoint: mo.HttpEndpoint, HttpTokens: mo.HttpTokens}
	}
	for _, ts := range in.TagSpecifications {
		if ts.ResourceType == ec2types.ResourceTypeInstance {
			inst.Tags = append(inst.Tags, ts.Tags...)
		}
	}
	if in.ClientToken != nil {
		f.tokens[*in.ClientToken] = fakeToken{*inst.InstanceId, params}
	}
	if f.lagging {
		f.hidden[*inst.InstanceId] = true
	}
	return &ec2.RunInstancesOutput{Instances: []ec2types.Instance{*inst}}, nil
}

func (f *fakeEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("DescribeInstances"); err != nil {
		return nil, err
	}
	var match []ec2types.Instance
	for _, id := range f.order {
		if f.hidden[id] {
			continue
		}
		if len(in.InstanceIds) > 0 && !slices.Contains(in.InstanceIds, id) {
			continue
		}
		if inst := f.instances[id]; matches(inst, in.Filters) {
			match = append(match, *inst)
		}
	}
	start := 0
	if in.NextToken != nil {
		start, _ = strconv.Atoi(*in.NextToken)
	}
	end := len(match)
	if in.MaxResults != nil {
		end = min(start+int(*in.MaxResults), len(match))
	}
	out := &ec2.DescribeInstancesOutput{}
	if start < end {
		out.Reservations = []ec2types.Reservation{{Instances: match[start:end]}}
	}
	if end < len(match) {
		out.NextToken = sdkaws.String(strconv.Itoa(end))
	}
	return out, nil
}

// matches applies the DescribeInstances filters the backend uses.
func matches(in *ec2types.Instance, filters []ec2types.Filter) bool {
	for _, f := range filters {
		name := sdkaws.ToString(f.Name)
		var v string
		switch {
		case strings.HasPrefix(name, "tag:"):
			v = tagValue(in.Tags, strings.TrimPrefix(name, "tag:"))
		case name == "instance-state-name":
			v = string(in.State.Name)
		case name == "client-token":
			v = sdkaws.ToString(in.ClientToken)
		default:
			panic("fakeEC2: filter " + name)
		}
		if !slices.Contains(f.Values, v) {
			return false
		}
	}
	return true
}

func (f *fakeEC2) TerminateInstances(_ context.Context, in *ec2.TerminateInstancesInput, _ ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("TerminateInstances"); err != nil {
		return nil, err
	}
	out := &ec2.TerminateInstancesOutput{}
	for _, id := range in.InstanceIds {
		inst, ok := f.instances[id]
		if !ok || f.hidden[id] {
			return nil, apiError("InvalidInstanceID.NotFound", "The instance ID '"+id+"' does not exist")
		}
		c := *inst
		if c.State.Name != ec2types.InstanceStateNameTerminated {
			c.State = &ec2types.InstanceState{Name: ec2types.InstanceStateNameShuttingDown}
		}
		f.instances[id] = &c
		out.TerminatingInstances = append(out.TerminatingInstances, ec2types.InstanceStateChange{InstanceId: sdkaws.String(id), CurrentState: c.State})
	}
	return out, nil
}

func (f *fakeEC2) ModifyInstanceMetadataOptions(_ context.Context, in *ec2.ModifyInstanceMetadataOptionsInput, _ ...func(*ec2.Options)) (*ec2.ModifyInstanceMetadataOptionsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("ModifyInstanceMetadataOptions"); err != nil {
		return nil, err
	}
	id := sdkaws.ToString(in.InstanceId)
	inst, ok := f.instances[id]
	if !ok || f.hidden[id] {
		return nil, apiError("InvalidInstanceID.NotFound", "The instance ID '"+id+"' does not exist")
	}
	c := *inst
	mo := *c.MetadataOptions
	if in.HttpEndpoint != "" {
		mo.HttpEndpoint = in.HttpEndpoint
	}
	c.MetadataOptions = &mo
	f.instances[id] = &c
	return &ec2.ModifyInstanceMetadataOptionsOutput{InstanceId: in.InstanceId}, nil
}

func (f *fakeEC2) DescribeInstanceTypes(_ context.Context, in *ec2.DescribeInstanceTypesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstanceTypesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("DescribeInstanceTypes"); err != nil {
		return nil, err
	}
	var match []ec2types.InstanceTypeInfo
	for _, t := range f.types {
		ok := true
		for _, fl := range in.Filters {
			if f.ignoreFilters {
				break
			}
			switch sdkaws.ToString(fl.Name) {
			case "instance-type":
				ok = ok && slices.ContainsFunc(fl.Values, func(p string) bool { m, _ := path.Match(p, string(t.InstanceType)); return m })
			case "processor-info.supported-architecture":
				ok = ok && slices.ContainsFunc(t.ProcessorInfo.SupportedArchitectures, func(a ec2types.ArchitectureType) bool { return slices.Contains(fl.Values, string(a)) })
			}
		}
		if ok {
			match = append(match, t)
		}
	}
	start := 0
	if in.NextToken != nil {
		start, _ = strconv.Atoi(*in.NextToken)
	}
	end := min(start+f.typesPage, len(match))
	out := &ec2.DescribeInstanceTypesOutput{InstanceTypes: match[start:end]}
	if end < len(match) {
		out.NextToken = sdkaws.String(strconv.Itoa(end))
	}
	return out, nil
}

func (f *fakeEC2) DescribeSubnets(_ context.Context, in *ec2.DescribeSubnetsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("DescribeSubnets"); err != nil {
		return nil, err
	}
	out := &ec2.DescribeSubnetsOutput{}
	for _, id := range in.SubnetIds {
		s, ok := f.subnets[id]
		if !ok {
			return nil, apiError("InvalidSubnetID.NotFound", "The subnet ID '"+id+"' does not exist")
		}
		out.Subnets = append(out.Subnets, s)
	}
	return out, nil
}

func (f *fakeEC2) DescribeSecurityGroups(_ context.Context, in *ec2.DescribeSecurityGroupsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSecurityGroupsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("DescribeSecurityGroups"); err != nil {
		return nil, err
	}
	out := &ec2.DescribeSecurityGroupsOutput{}
	for _, id := range in.GroupIds {
		g, ok := f.groups[id]
		if !ok {
			return nil, apiError("InvalidGroup.NotFound", "The security group '"+id+"' does not exist")
		}
		out.SecurityGroups = append(out.SecurityGroups, g)
	}
	return out, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// DescribeImages and DescribeSnapshots find nothing: the instance tests have no images, and the backend's image
// collection (a minute after start) must not panic in a test that runs that long.
func (f *fakeEC2) DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("DescribeImages"); err != nil {
		return nil, err
	}
	return &ec2.DescribeImagesOutput{}, nil
}

func (f *fakeEC2) DescribeSnapshots(context.Context, *ec2.DescribeSnapshotsInput, ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("DescribeSnapshots"); err != nil {
		return nil, err
	}
	return &ec2.DescribeSnapshotsOutput{}, nil
}
