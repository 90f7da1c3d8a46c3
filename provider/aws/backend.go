package aws

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/virtual-kubelet/virtual-kubelet/log"

	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
)

// Format is the vmimage format the aws backend boots: raw-efi (one GPT disk with an EFI system partition) whose
// kernel command line makes the agent read its user-data from IMDS and take the network from DHCP; written into an
// EBS snapshot and registered as a UEFI AMI.
const Format = "ec2"

// Backend runs each pod as an EC2 instance. Its view of the instances is a cache that one paginated,
// tag-filtered DescribeInstances refreshes every SyncPeriod, for all the node's pods at once; Get and List read
// the cache, Launch and Terminate update it.
type Backend struct {
	cfg    Config
	ec2    EC2API
	ch     agentChannel
	notify func(vm.Status)
	// pub makes images bootable (an AMI per image); nil until UsePublisher.
	pub *publisher
	// elb is the ELBv2 client of the backend's load balancers (Balancer); Open sets it.
	elb ELBv2API

	// types are the allowed instance types, cheapest first; subnets the configured ones.
	types []instanceType
	// defaultTypes says the configuration listed no types: DefaultInstanceTypes need not all exist in a region.
	defaultTypes bool
	subnets      []string
	full         map[string]bool // subnets without a free address at start
	// vpcID is the subnets' VPC ("" when the API names none); lbSubnets are the NLBs' (one per zone):
	// aws.loadBalancerSubnets, or the first of the subnets in each availability zone, in the configuration's order.
	vpcID     string
	lbSubnets []string
	// shunned holds instance types (in a subnet) that just failed for capacity, and subnets out of addresses.
	shunned *expiringSet

	// Knobs the tests turn: the clock, how a back-off waits, the listing's page size.
	now      func() time.Time
	sleep    func(context.Context, time.Duration) error
	pageSize int32

	refreshMu sync.Mutex // one listing at a time

	mu        sync.Mutex
	insts     map[string]*instance     // by pod UID
	launching map[string]chan struct{} // pod UIDs being launched; closed when done
	// dropped are instances the backend let go of while a listing may still show them shutting down, by ID: a
	// listing never adopts them again.
	dropped map[string]bool

	// uses are the AMIs this backend launched from, published or saw running (imagegc.go); gc paces the image
	// garbage collector.
	uses imageUses
	gc   imageGCKnobs

	stop context.CancelFunc
	done chan struct{}
}

var (
	_ vm.Backend   = (*Backend)(nil)
	_ vm.Publisher = (*Backend)(nil)
)

const (
	// defaultPageSize is DescribeInstances' largest page.
	defaultPageSize = 1000
	// shunFor is how long an instance type that failed for capacity is tried last.
	shunFor = 3 * time.Minute
	// settleTime is how long a launched instance may stay invisible to DescribeInstances (eventual consistency)
	// before the backend takes it for lost.
	settleTime = 5 * time.Minute
)

// New makes the backend of cfg over the EC2 API c: it checks that the subnets and security groups exist, loads
// the allowed instance types, and adopts the node's instances from their tags (List right after New shows them).
// Its listing then runs every SyncPeriod until Close; ctx bounds only New's own calls and carries the logger.
// notify receives every status change the backend observes; ch reaches the instances' agents.
func New(ctx context.Context, cfg Config, c EC2API, ch agentChannel, notify func(vm.Status)) (*Backend, error) {
	return newBackend(ctx, cfg, c, ch, notify, nil)
}

// newBackend is New; tweak, when not nil, turns the tests' knobs before the backend calls AWS.
func newBackend(ctx context.Context, cfg Config, c EC2API, ch agentChannel, notify func(vm.Status), tweak func(*Backend)) (*Backend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if notify == nil {
		notify = func(vm.Status) {}
	}
	b := &Backend{cfg: cfg.withDefaults(), defaultTypes: len(cfg.InstanceTypes) == 0, ec2: c, ch: ch, notify: notify, now: time.Now, sleep: sleepCtx,
		pageSize: defaultPageSize, insts: map[string]*instance{}, launching: map[string]chan struct{}{},
		dropped: map[string]bool{}, gc: defaultImageGC}
	b.shunned = &expiringSet{ttl: shunFor, now: func() time.Time { return b.now() }}
	if tweak != nil {
		tweak(b)
	}
	if err := b.checkNetwork(ctx); err != nil {
		return nil, err
	}
	if err := b.loadTypes(ctx); err != nil {
		return nil, err
	}
	if err := b.refresh(ctx); err != nil {
		return nil, fmt.Errorf("adopting the node's instances, %w", err)
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	b.stop, b.done = cancel, make(chan struct{})
	go b.loop(lctx)
	return b, nil
}

// Close stops the backend's listing; the instances keep running, to be adopted by the next backend.
func (b *Backend) Close() error {
	b.stop()
	<-b.done
	return nil
}

// Format is the vmimage format the backend boots.
func (b *Backend) Format() string { return Format }

// UsePublisher makes the backend publish images through the EBS direct APIs of c (an AMI per image, see
// publish.go); Open does it.
func (b *Backend) UsePublisher(c EBSAPI, opts UploadOptions) {
	b.pub = newPublisher(b.ec2, c, b.cfg.Cluster, b.cfg.Tags, opts)
}

// Publish makes img bootable: the AMI of its content, shared by every pod of the image (vm.Publisher).
func (b *Backend) Publish(ctx context.Context, img *vmimage.Image) (string, error) {
	if b.pub == nil {
		return "", fmt.Errorf("publishing image %s: the backend has no EBS client", img.Key)
	}
	ami, err := b.pub.Publish(ctx, img)
	if err == nil {
		// A pod is about to launch from it: the garbage collector must not take it meanwhile.
		b.uses.mark(ami, b.now())
	}
	return ami, err
}

func (b *Backend) loop(ctx context.Context) {
	defer close(b.done)
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		b.imageGCLoop(ctx)
	}()
	defer func() { <-gcDone }()
	t := time.NewTicker(b.cfg.SyncPeriod.Duration)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, 2*b.cfg.SyncPeriod.Duration+time.Minute)
		if err := b.refresh(rctx); err != nil {
			log.G(ctx).WithError(err).Warn("listing the node's instances")
		}
		if err := b.recordUses(rctx); err != nil {
			log.G(ctx).WithError(err).Warn("recording the use of the node's images")
		}
		cancel()
	}
}

// checkNetwork checks that the configured subnets exist, in one VPC, the load balancers' one per zone, and the
// security groups too, in that VPC; it orders the subnets with free addresses first and notes the VPC and the load
// balancers' subnets.
func (b *Backend) checkNetwork(ctx context.Context) error {
	ids := slices.Clone(b.cfg.Subnets)
	for _, id := range b.cfg.LoadBalancerSubnets {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	sn, err := b.ec2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: ids})
	if err != nil {
		field := "aws.subnets"
		if len(ids) > len(b.cfg.Subnets) {
			field += " and aws.loadBalancerSubnets"
		}
		return fmt.Errorf("%s: checking %s, %w", field, strings.Join(ids, ", "), apiErr("DescribeSubnets", err))
	}
	free, zones, vpcs := map[string]int32{}, map[string]string{}, map[string]bool{}
	for _, s := range sn.Subnets {
		id := sdkaws.ToString(s.SubnetId)
		free[id] = sdkaws.ToInt32(s.AvailableIpAddressCount)
		zones[id] = sdkaws.ToString(s.AvailabilityZone)
		if s.VpcId != nil {
			vpcs[*s.VpcId] = true
		}
	}
	for _, f := range []struct {
		field string
		ids   []string
	}{{"subnets", b.cfg.Subnets}, {"loadBalancerSubnets", b.cfg.LoadBalancerSubnets}} {
		for _, id := range f.ids {
			if _, ok := free[id]; !ok {
				return fmt.Errorf("aws.%s: %s does not exist in %s", f.field, id, b.cfg.Region)
			}
		}
	}
	if len(vpcs) > 1 {
		// A security group, a target group and an NLB each belong to one VPC.
		return fmt.Errorf("aws.subnets: they are in %d VPCs (%s), want one", len(vpcs), strings.Join(slices.Sorted(maps.Keys(vpcs)), ", "))
	}
	for vpc := range vpcs {
		b.vpcID = vpc
	}
	b.subnets, b.full = b.cfg.Subnets, map[string]bool{}
	for _, id := range b.cfg.Subnets {
		b.full[id] = free[id] == 0
	}
	b.lbSubnets = onePerZone(b.cfg.Subnets, zones)
	if lbs := b.cfg.LoadBalancerSubnets; len(lbs) > 0 {
		if kept := onePerZone(lbs, zones); len(kept) < len(lbs) {
			i := slices.IndexFunc(lbs, func(id string) bool { return !slices.Contains(kept, id) })
			return fmt.Errorf("aws.loadBalancerSubnets: %s is in %s with another: an NLB takes one subnet per availability zone", lbs[i], zones[lbs[i]])
		}
		b.lbSubnets = lbs
	}

	sg, err := b.ec2.DescribeSecurityGroups(ctx, &ec2.DescribeSecurityGroupsInput{GroupIds: b.cfg.SecurityGroups})
	if err != nil {
		return fmt.Errorf("aws.securityGroups: checking %s, %w", strings.Join(b.cfg.SecurityGroups, ", "), apiErr("DescribeSecurityGroups", err))
	}
	groups := map[string]string{}
	for _, g := range sg.SecurityGroups {
		groups[sdkaws.ToString(g.GroupId)] = sdkaws.ToString(g.VpcId)
	}
	for _, id := range b.cfg.SecurityGroups {
		vpc, ok := groups[id]
		switch {
		case !ok:
			return fmt.Errorf("aws.securityGroups: %s does not exist in %s", id, b.cfg.Region)
		case vpc != "" && len(vpcs) > 0 && !vpcs[vpc]:
			return fmt.Errorf("aws.securityGroups: %s is in %s, not in the subnets' VPC", id, vpc)
		}
	}
	return nil
}

// onePerZone is the first of subnets in each availability zone (a subnet of no known zone is one of its own), in
// their order.
func onePerZone(subnets []string, zones map[string]string) []string {
	var out []string
	seen := map[string]bool{}
	for _, id := range subnets {
		z := cmp.Or(zones[id], "subnet "+id)
		if !seen[z] {
			seen[z] = true
			out = append(out, id)
		}
	}
	return out
}

// loadTypes loads the allowed x86_64 instance types (DescribeInstanceTypes, paged), cheapest first; every entry
// of the configuration must match one.
func (b *Backend) loadTypes(ctx context.Context) error {
	in := &ec2.DescribeInstanceTypesInput{MaxResults: sdkaws.Int32(100), Filters: []ec2types.Filter{
		{Name: sdkaws.String("processor-info.supported-architecture"), Values: []string{string(ec2types.ArchitectureTypeX8664)}},
		{Name: sdkaws.String("instance-type")},
	}}
	for _, entry := range b.cfg.InstanceTypes {
		in.Filters[1].Values = append(in.Filters[1].Values, typeFilter(entry))
	}
	pages := ec2.NewDescribeInstanceTypesPaginator(b.ec2, in)
	seen := map[string]bool{}
	for pages.HasMorePages() {
		out, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("aws.instanceTypes: loading %s, %w", strings.Join(b.cfg.InstanceTypes, ", "), apiErr("DescribeInstanceTypes", err))
		}
		for _, info := range out.InstanceTypes {
			t, ok := typeFromInfo(info)
			// The filter is the API's; the check is ours, for emulators that ignore filters.
			if !ok || seen[t.Name] || !allowedType(b.cfg.InstanceTypes, t.Name) {
				continue
			}
			seen[t.Name] = true
			b.types = append(b.types, t)
		}
	}
	if len(b.types) == 0 {
		return fmt.Errorf("aws.instanceTypes: none of %q is an x86_64 instance type with UEFI boot in %s", b.cfg.InstanceTypes, b.cfg.Region)
	}
	for _, entry := range b.cfg.InstanceTypes {
		// The default families need not all exist in every region; what the user listed must.
		if b.defaultTypes {
			break
		}
		if !slices.ContainsFunc(b.types, func(t instanceType) bool { return allowedType([]string{entry}, t.Name) }) {
			return fmt.Errorf("aws.instanceTypes: %q matches no x86_64 instance type with UEFI boot in %s", entry, b.cfg.Region)
		}
	}
	sortTypes(b.types)
	return nil
}

// Get returns a pod's VM as the last listing, launch or termination left it.
func (b *Backend) Get(_ context.Context, uid string) (vm.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if in, ok := b.insts[uid]; ok {
		return in.st, nil
	}
	return vm.Status{}, fmt.Errorf("pod %s: %w", uid, vm.ErrNotFound)
}

// List returns every VM the backend knows: launched, adopted, failed, or terminated and not yet gone.
func (b *Backend) List(context.Context) ([]vm.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]vm.Status, 0, len(b.insts))
	for _, in := range b.insts {
		out = append(out, in.st)
	}
	slices.SortFunc(out, func(x, y vm.Status) int { return cmp.Compare(x.UID, y.UID) })
	return out, nil
}

// expiringSet is a set whose members leave it ttl after they were last added.
type expiringSet struct {
	ttl time.Duration
	now func() time.Time

	mu    sync.Mutex
	until map[string]time.Time
}

func (s *expiringSet) add(k string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.until == nil {
		s.until = map[string]time.Time{}
	}
	s.until[k] = s.now().Add(s.ttl)
}

func (s *expiringSet) has(k string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.until[k]
	if ok && !s.now().Before(t) {
		delete(s.until, k)
		return false
	}
	return ok
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// throttleBackoff is the wait before the (n+1)th call after n throttled ones: exponential from throttleBase, at most
// throttleCap, with jitter in its upper half so that the node's launches do not call again in step.
func throttleBackoff(n int) time.Duration { return jitteredBackoff(throttleBase, throttleCap, n) }

const (
	throttleBase = 250 * time.Millisecond
	throttleCap  = 5 * time.Second
	// throttleRetries bounds the calls again after throttling: the wait is at most about 10 s in all.
	throttleRetries = 5
)

// call calls f, the EC2 action action, again while AWS throttles it, with back-off (bounded); its error is
// classified (apiErr).
func (b *Backend) call(ctx context.Context, action string, f func(context.Context) error) error {
	for n := 0; ; n++ {
		err := f(ctx)
		if err == nil || !IsThrottled(err) || n == throttleRetries {
			return apiErr(action, err)
		}
		if werr := b.sleep(ctx, throttleBackoff(n)); werr != nil {
			return fmt.Errorf("waiting to call ec2:%s again after throttling, %w", action, werr)
		}
	}
}

func boolInt(v bool) int {
	if v {
		return 1
	}
	return 0
}
