package aws

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"slices"
	"strings"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/virtual-kubelet/virtual-kubelet/log"

	"github.com/i2kit/i2kit/provider/vm"
)

// instance is the backend's view of one pod's instance.
type instance struct {
	st vm.Status
	// image is the AMI the instance runs from: the image garbage collector keeps it.
	image string
	// launched is when this backend launched the instance (zero for one adopted from a listing); seen says a
	// listing has shown it, state is what the last listing said.
	launched time.Time
	seen     bool
	state    ec2types.InstanceStateName
	// terminating says the backend's Terminate ended the instance; retryTerminate that EC2 did not know the
	// instance yet when asked (eventual consistency), so the next listing that shows it asks again.
	terminating, retryTerminate bool
	// ended says a listing showed the instance shutting down, or no longer showed it: nothing is left to end.
	ended bool
	// keepMetadata says the pod opted in to the instance metadata service; metadataOff that its endpoint is off;
	// metadataBusy that a call to turn it off is under way.
	keepMetadata, metadataOff, metadataBusy bool
}

// The launch's bounds.
const (
	// maxLaunchAttempts bounds the RunInstances calls of one launch over the (type, subnet) candidates.
	maxLaunchAttempts = 12
	// maxUserData is EC2's limit on user-data before base64.
	maxUserData = 16 << 10
	// metadataTimeout bounds the call that turns the metadata endpoint off.
	metadataTimeout = 10 * time.Second
)

// tagInstanceMetadata keeps a pod's opt-in to the metadata service on its instance, so that a restarted node
// honours it: it carries the annotation's key and value.
const tagInstanceMetadata = AnnotationInstanceMetadata

// candidate is one way to launch a pod: an instance type in a subnet.
type candidate struct{ typ, subnet string }

func (c candidate) key() string { return c.typ + "@" + c.subnet }

// Launch launches a pod's instance, once per pod UID: a pod the backend knows (launched, or adopted from the tags
// after a restart) gets its instance back. Otherwise the candidates are tried in order — the cheapest allowed
// type that fits first, in the pod's subnet first — each with its own ClientToken derived from the pod UID, the
// type and the subnet, so that a retried or restarted launch gets the instance the first made; a type without
// capacity falls to the next and is shunned for a while.
func (b *Backend) Launch(ctx context.Context, p vm.Plan) (vm.Status, error) {
	if p.UID == "" {
		return vm.Status{}, errors.New("launching a VM: the plan has no pod UID")
	}
	unlock, err := b.lockLaunch(ctx, p.UID)
	if err != nil {
		return vm.Status{}, fmt.Errorf("launching the VM of pod %s/%s, %w", p.Namespace, p.Name, err)
	}
	defer unlock()
	if st, err := b.Get(ctx, p.UID); err == nil {
		return st, nil
	}
	if p.Published == "" {
		return vm.Status{}, fmt.Errorf("launching the VM of pod %s/%s: no AMI (the image was not published)", p.Namespace, p.Name)
	}
	types, err := chooseTypes(b.types, p)
	if err != nil {
		return vm.Status{}, err
	}
	ud, err := b.ch.UserData(p)
	if err != nil {
		return vm.Status{}, fmt.Errorf("launching the VM of pod %s/%s: making its user-data, %w", p.Namespace, p.Name, err)
	}
	if len(ud) > maxUserData {
		return vm.Status{}, fmt.Errorf("launching the VM of pod %s/%s: user-data of %d bytes, EC2 takes %d", p.Namespace, p.Name, len(ud), maxUserData)
	}
	userData := base64.StdEncoding.EncodeToString(ud)
	var tried []string
	var last error
	full := map[string]bool{} // subnets out of addresses, found during this launch
	for _, c := range b.candidates(p.UID, types) {
		if len(tried) == maxLaunchAttempts {
			break
		}
		if full[c.subnet] {
			continue
		}
		token := clientToken(p.UID, c)
		out, err := b.runInstance(ctx, p, c, token, userData)
		if isIdempotentMismatch(err) {
			// This token launched an instance with other parameters (another user-data after a restart): it is
			// the pod's.
			out, err = b.findByToken(ctx, token)
		}
		switch {
		case err == nil:
			b.uses.mark(p.Published, b.now())
			return b.launched(ctx, p, out), nil
		case IsInsufficientCapacity(err):
			b.shunned.add(c.key())
		case isSubnetFull(err):
			b.shunned.add(c.subnet)
			full[c.subnet] = true
		default:
			return vm.Status{}, fmt.Errorf("launching the VM of pod %s/%s, %w", p.Namespace, p.Name, err)
		}
		log.G(ctx).WithError(err).WithField("uid", p.UID).WithField("type", c.typ).WithField("subnet", c.subnet).
			Info("no capacity for the pod's instance; trying the next type")
		tried = append(tried, c.typ+" in "+c.subnet)
		last = err
	}
	return vm.Status{}, fmt.Errorf("launching the VM of pod %s/%s: tried %s, %w", p.Namespace, p.Name, strings.Join(tried, ", "), last)
}

// lockLaunch makes the caller the only launcher of uid until unlock.
func (b *Backend) lockLaunch(ctx context.Context, uid string) (unlock func(), err error) {
	for {
		b.mu.Lock()
		busy, ok := b.launching[uid]
		if !ok {
			done := make(chan struct{})
			b.launching[uid] = done
			b.mu.Unlock()
			return func() {
				b.mu.Lock()
				delete(b.launching, uid)
				b.mu.Unlock()
				close(done)
			}, nil
		}
		b.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// candidates orders the ways to launch a pod: by type (cheapest first), then by subnet in an order of the pod's
// own (rendezvous hashing spreads the pods over the subnets, and gives a pod the same order after a restart, so its
// ClientTokens are the same); shunned ones last.
func (b *Backend) candidates(uid string, types []instanceType) []candidate {
	rank := func(s string) uint64 {
		h := fnv.New64a()
		h.Write([]byte(uid + "\x00" + s))
		return h.Sum64()
	}
	// Subnets without free addresses at start go last; the hash orders within each part.
	subnets := slices.Clone(b.subnets)
	slices.SortStableFunc(subnets, func(x, y string) int {
		return cmp.Or(cmp.Compare(boolInt(b.full[x]), boolInt(b.full[y])), cmp.Compare(rank(x), rank(y)))
	})
	var out []candidate
	for _, t := range types {
		for _, s := range subnets {
			out = append(out, candidate{t.Name, s})
		}
	}
	shunned := func(c candidate) int { return boolInt(b.shunned.has(c.key()) || b.shunned.has(c.subnet)) }
	slices.SortStableFunc(out, func(x, y candidate) int { return cmp.Compare(shunned(x), shunned(y)) })
	return out
}

// clientToken is the ClientToken of a pod's launch as candidate c: at most 64 ASCII characters, the same for the
// same pod, type and subnet. A token is bound to its parameters, hence one per candidate; a second instance for
// the pod is prevented by the inventory, which Launch reads first.
func clientToken(uid string, c candidate) string {
	sum := sha256.Sum256([]byte("i2kit\x00" + uid + "\x00" + c.typ + "\x00" + c.subnet))
	return "i2kit-" + hex.EncodeToString(sum[:24])
}

// runInstance calls RunInstances for a pod as candidate c.
func (b *Backend) runInstance(ctx context.Context, p vm.Plan, c candidate, token, userData string) (*ec2types.Instance, error) {
	tags := instanceTags(b.cfg, p)
	in := &ec2.RunInstancesInput{
		ImageId:          sdkaws.String(p.Published),
		InstanceType:     ec2types.InstanceType(c.typ),
		MinCount:         sdkaws.Int32(1),
		MaxCount:         sdkaws.Int32(1),
		ClientToken:      sdkaws.String(token),
		SubnetId:         sdkaws.String(c.subnet),
		SecurityGroupIds: b.cfg.SecurityGroups,
		UserData:         sdkaws.String(userData),
		// The agent reads what it needs at boot with IMDSv2; a hop limit of 1 keeps the tokens off any forwarded
		// path, and the node turns the endpoint off once the agent has connected (DialAgent).
		MetadataOptions: &ec2types.InstanceMetadataOptionsRequest{
			HttpTokens:              ec2types.HttpTokensStateRequired,
			HttpPutResponseHopLimit: sdkaws.Int32(1),
			HttpEndpoint:            ec2types.InstanceMetadataEndpointStateEnabled,
		},
		// A VM that powers off (the agent's answer to the end of its pod) ends its instance and its cost.
		InstanceInitiatedShutdownBehavior: ec2types.ShutdownBehaviorTerminate,
		TagSpecifications:                 []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: tags}},
	}
	var out *ec2.RunInstancesOutput
	err := b.call(ctx, "RunInstances", func(ctx context.Context) (err error) {
		out, err = b.ec2.RunInstances(ctx, in)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(out.Instances) != 1 || out.Instances[0].InstanceId == nil {
		return nil, fmt.Errorf("ec2:RunInstances answered %d instances, want 1", len(out.Instances))
	}
	return &out.Instances[0], nil
}

// findByToken finds the node's instance that ClientToken token launched.
func (b *Backend) findByToken(ctx context.Context, token string) (*ec2types.Instance, error) {
	in := &ec2.DescribeInstancesInput{Filters: append(b.inventoryFilters(),
		ec2types.Filter{Name: sdkaws.String("client-token"), Values: []string{token}})}
	var out *ec2.DescribeInstancesOutput
	err := b.call(ctx, "DescribeInstances", func(ctx context.Context) (err error) {
		out, err = b.ec2.DescribeInstances(ctx, in)
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, r := range out.Reservations {
		for i := range r.Instances {
			return &r.Instances[i], nil
		}
	}
	return nil, fmt.Errorf("an instance was launched for the pod with other parameters and is not visible yet (ClientToken %s)", token)
}

// launched records the instance a launch made (or found) and returns its status.
func (b *Backend) launched(ctx context.Context, p vm.Plan, ei *ec2types.Instance) vm.Status {
	in := &instance{launched: b.now(), keepMetadata: p.Annotations[AnnotationInstanceMetadata] == "enabled",
		image: p.Published, st: vm.Status{UID: p.UID, Namespace: p.Namespace, Name: p.Name, ID: *ei.InstanceId, State: vm.Booting, Started: b.now()}}
	in.update(ei)
	b.mu.Lock()
	cur, known := b.insts[p.UID]
	if known && cur.st.ID == in.st.ID {
		in = cur // a listing found it first, reported it, and may know more
	} else {
		b.insts[p.UID] = in
	}
	st := in.st
	b.mu.Unlock()
	log.G(ctx).WithField("uid", p.UID).WithField("instance", st.ID).Info("launched the pod's instance")
	if in != cur {
		b.notify(st)
	}
	return st
}

// instanceTags are the tags of a pod's instance: the configured ones, then the backend's, which win. The plan's
// own Tags are the provider's names for the same facts; the backend's cluster and node are the inventory's.
func instanceTags(cfg Config, p vm.Plan) []ec2types.Tag {
	m := map[string]string{}
	for k, v := range cfg.Tags {
		m[k] = v
	}
	name := p.Namespace + "/" + p.Name
	m[TagCluster], m[TagNode] = cfg.Cluster, cfg.Node
	m[TagPodNamespace], m[TagPodName], m[TagPodUID], m[TagName] = p.Namespace, p.Name, p.UID, name[:min(len(name), 256)]
	if p.Annotations[AnnotationInstanceMetadata] == "enabled" {
		m[tagInstanceMetadata] = "enabled"
	}
	tags := make([]ec2types.Tag, 0, len(m))
	for k, v := range m {
		tags = append(tags, ec2types.Tag{Key: sdkaws.String(k), Value: sdkaws.String(v)})
	}
	slices.SortFunc(tags, func(x, y ec2types.Tag) int { return cmp.Compare(*x.Key, *y.Key) })
	return tags
}

// inventoryFilters select the node's live instances.
func (b *Backend) inventoryFilters() []ec2types.Filter {
	return []ec2types.Filter{
		{Name: sdkaws.String("tag:" + TagCluster), Values: []string{b.cfg.Cluster}},
		{Name: sdkaws.String("tag:" + TagNode), Values: []string{b.cfg.Node}},
		{Name: sdkaws.String("instance-state-name"), Values: []string{"pending", "running", "shutting-down", "stopping", "stopped"}},
	}
}

// refresh lists the node's instances — one paginated, tag-filtered DescribeInstances for all its pods — and
// brings the cache in line: it adopts instances it did not know, maps their states, fails those ended from
// outside, and ends duplicates (two instances of one pod, only possible after a crash during a fallback).
func (b *Backend) refresh(ctx context.Context) error {
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	var listed []ec2types.Instance
	pages := ec2.NewDescribeInstancesPaginator(b.ec2, &ec2.DescribeInstancesInput{Filters: b.inventoryFilters(),
		MaxResults: sdkaws.Int32(b.pageSize)})
	for pages.HasMorePages() {
		out, err := pages.NextPage(ctx)
		if err != nil {
			return apiErr("DescribeInstances", err)
		}
		for _, r := range out.Reservations {
			listed = append(listed, r.Instances...)
		}
	}
	changed, extra := b.apply(listed)
	for _, st := range changed {
		b.notify(st)
	}
	if len(extra) > 0 {
		err := b.call(ctx, "TerminateInstances", func(ctx context.Context) error {
			_, err := b.ec2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: extra})
			return err
		})
		if err != nil && !isInstanceNotFound(err) {
			return fmt.Errorf("ending duplicate instances %s, %w", strings.Join(extra, ", "), err)
		}
	}
	return nil
}

// apply merges a listing into the cache. It returns the statuses that changed, and the instances to terminate:
// duplicates, and instances whose termination EC2 did not know yet.
func (b *Backend) apply(listed []ec2types.Instance) (changed []vm.Status, terminate []string) {
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	ids := map[string]bool{}
	byUID := map[string][]*ec2types.Instance{}
	for i := range listed {
		ei := &listed[i]
		id := sdkaws.ToString(ei.InstanceId)
		ids[id] = true
		uid := tagValue(ei.Tags, TagPodUID)
		if id == "" || uid == "" || b.dropped[id] {
			continue
		}
		byUID[uid] = append(byUID[uid], ei)
	}
	for id := range b.dropped {
		if !ids[id] {
			delete(b.dropped, id) // terminated: no listing shows it again
		}
	}
	for uid, eis := range byUID {
		in := b.insts[uid]
		if in == nil {
			// Adopt the oldest: the one the pod ran on before the restart.
			slices.SortFunc(eis, func(x, y *ec2types.Instance) int {
				return cmp.Or(sdkaws.ToTime(x.LaunchTime).Compare(sdkaws.ToTime(y.LaunchTime)), cmp.Compare(*x.InstanceId, *y.InstanceId))
			})
			in = adopt(uid, eis[0])
			b.insts[uid] = in
			changed = append(changed, in.st)
		}
		for _, ei := range eis {
			if *ei.InstanceId != in.st.ID {
				if alive(ei.State) {
					terminate = append(terminate, *ei.InstanceId)
				}
				continue
			}
			before := in.st
			in.seen = true
			if in.terminating {
				in.update(ei)
				if !alive(ei.State) {
					b.dropLocked(uid, in)
				} else if in.retryTerminate {
					terminate = append(terminate, in.st.ID)
				}
				continue
			}
			in.update(ei)
			if in.st != before {
				changed = append(changed, in.st)
			}
		}
	}
	for uid, in := range b.insts {
		if ids[in.st.ID] {
			continue
		}
		switch {
		case in.terminating:
			b.dropLocked(uid, in)
		case in.st.State == vm.Failed || !in.seen && now.Sub(in.launched) < settleTime:
			// A failed VM stays until terminated; a new instance may not be listed yet.
		case in.seen:
			in.ended = true
			in.fail("InstanceTerminated", fmt.Sprintf("instance %s is gone: it was terminated from outside the node", in.st.ID))
			changed = append(changed, in.st)
		default:
			in.fail("InstanceNotFound", fmt.Sprintf("instance %s, launched %s ago, never appeared in DescribeInstances",
				in.st.ID, now.Sub(in.launched).Round(time.Second)))
			changed = append(changed, in.st)
		}
	}
	return changed, terminate
}

// adopt makes a cache entry for an instance a listing found, from its tags.
func adopt(uid string, ei *ec2types.Instance) *instance {
	in := &instance{seen: true, keepMetadata: tagValue(ei.Tags, tagInstanceMetadata) == "enabled", st: vm.Status{
		UID: uid, Namespace: tagValue(ei.Tags, TagPodNamespace), Name: tagValue(ei.Tags, TagPodName), ID: *ei.InstanceId, State: vm.Booting}}
	in.update(ei)
	return in
}

// update applies what EC2 says of the instance to its status. A failed or terminated VM stays so.
func (in *instance) update(ei *ec2types.Instance) {
	if ip := sdkaws.ToString(ei.PrivateIpAddress); ip != "" {
		in.st.IP = ip
	}
	if ei.LaunchTime != nil {
		in.st.Started = *ei.LaunchTime
	}
	if id := sdkaws.ToString(ei.ImageId); id != "" {
		in.image = id
	}
	if ei.MetadataOptions != nil && ei.MetadataOptions.HttpEndpoint == ec2types.InstanceMetadataEndpointStateDisabled {
		in.metadataOff = true
	}
	if ei.State == nil {
		return
	}
	in.state = ei.State.Name
	in.ended = !alive(ei.State)
	if in.terminating || in.st.State.Exited() {
		return
	}
	why := ""
	if ei.StateReason != nil {
		why = " (" + sdkaws.ToString(ei.StateReason.Message) + ")"
	}
	switch in.state {
	case ec2types.InstanceStateNamePending:
		in.st.State = vm.Booting
	case ec2types.InstanceStateNameRunning:
		in.st.State = vm.Running
	case ec2types.InstanceStateNameStopping, ec2types.InstanceStateNameStopped:
		in.fail("InstanceStopped", fmt.Sprintf("instance %s was stopped from outside the node%s", in.st.ID, why))
	case ec2types.InstanceStateNameShuttingDown, ec2types.InstanceStateNameTerminated:
		if ei.StateReason != nil && sdkaws.ToString(ei.StateReason.Code) == "Client.InstanceInitiatedShutdown" {
			in.fail("InstanceShutdown", fmt.Sprintf("instance %s shut itself down: the VM powered off%s", in.st.ID, why))
			return
		}
		in.fail("InstanceTerminated", fmt.Sprintf("instance %s was terminated from outside the node%s", in.st.ID, why))
	}
}

func (in *instance) fail(reason, msg string) {
	in.st.State, in.st.Reason, in.st.Message = vm.Failed, reason, msg
}

// alive reports whether an instance in state s has not begun to end.
func alive(s *ec2types.InstanceState) bool {
	return s == nil || (s.Name != ec2types.InstanceStateNameShuttingDown && s.Name != ec2types.InstanceStateNameTerminated)
}

// tagValue is the value of the tag key, "" when there is none.
func tagValue(tags []ec2types.Tag, key string) string {
	for _, t := range tags {
		if sdkaws.ToString(t.Key) == key {
			return sdkaws.ToString(t.Value)
		}
	}
	return ""
}

// Terminate ends a pod's instance. The VM shows as Terminated until a listing shows the instance shutting down
// or gone; then, or at once for an instance already ending or gone, the backend forgets it, and a later Terminate
// returns an error that IsNotFound.
func (b *Backend) Terminate(ctx context.Context, uid string) error {
	b.mu.Lock()
	in, ok := b.insts[uid]
	if !ok {
		b.mu.Unlock()
		return fmt.Errorf("terminating the VM of pod %s: %w", uid, vm.ErrNotFound)
	}
	id := in.st.ID
	if in.ended && !in.terminating {
		// Ended from outside: nothing is left to end.
		st := b.forgetLocked(uid, in)
		b.mu.Unlock()
		b.notify(st)
		return nil
	}
	b.mu.Unlock()
	err := b.call(ctx, "TerminateInstances", func(ctx context.Context) error {
		_, err := b.ec2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}})
		return err
	})
	if err != nil && !isInstanceNotFound(err) {
		return fmt.Errorf("terminating the VM of pod %s, %w", uid, err)
	}
	b.mu.Lock()
	if b.insts[uid] != in {
		b.mu.Unlock()
		return nil // a listing saw it end meanwhile
	}
	if err != nil && (in.seen || b.now().Sub(in.launched) >= settleTime) {
		st := b.forgetLocked(uid, in) // EC2 no longer knows it
		b.mu.Unlock()
		b.notify(st)
		return nil
	}
	// Not yet known to EC2 (eventual consistency): the next listing that shows it ends it.
	in.retryTerminate = err != nil
	in.terminating = true
	before := in.st
	in.st.State = vm.Terminated
	st := in.st
	b.mu.Unlock()
	if st != before {
		b.notify(st)
	}
	return nil
}

// forgetLocked drops a pod's instance from the cache (b.mu held); listings that still show it ignore it.
func (b *Backend) forgetLocked(uid string, in *instance) vm.Status {
	b.dropLocked(uid, in)
	in.st.State = vm.Terminated
	return in.st
}

// dropLocked removes a pod's instance from the cache and the channel's pin of its agent's key (b.mu held): every
// way an instance leaves the cache comes here, so neither grows with the instances the node has ended.
func (b *Backend) dropLocked(uid string, in *instance) {
	delete(b.insts, uid)
	b.dropped[in.st.ID] = true
	if f, ok := b.ch.(interface{ Forget(instanceID string) }); ok {
		f.Forget(in.st.ID)
	}
}

// DialAgent connects to the agent of a pod's running instance. After the first connection, the instance's
// metadata endpoint is turned off unless the pod opted in (AnnotationInstanceMetadata): the agent has read what
// it needs at boot, and the pod's containers have no business there.
func (b *Backend) DialAgent(ctx context.Context, uid string) (net.Conn, error) {
	in, st, err := b.awaitRunning(ctx, uid)
	if err != nil {
		return nil, fmt.Errorf("dialling the agent of pod %s, %w", uid, err)
	}
	conn, err := b.ch.Dial(ctx, st.ID, st.IP)
	if err != nil {
		return nil, fmt.Errorf("dialling the agent of pod %s on instance %s, %w", uid, st.ID, err)
	}
	b.closeMetadata(ctx, uid, in)
	return conn, nil
}

// awaitRunning waits, within ctx, for a pod's instance to run: a dial right after the launch (the agent boots)
// describes that one instance, with back-off, rather than wait for the next listing of all.
func (b *Backend) awaitRunning(ctx context.Context, uid string) (*instance, vm.Status, error) {
	for wait := 250 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		b.mu.Lock()
		in, ok := b.insts[uid]
		var st vm.Status
		if ok {
			st = in.st
		}
		b.mu.Unlock()
		switch {
		case !ok:
			return nil, st, vm.ErrNotFound
		case st.State == vm.Running:
			return in, st, nil
		case st.State != vm.Booting:
			return nil, st, fmt.Errorf("instance %s is %s, not running", st.ID, st.State)
		}
		var out *ec2.DescribeInstancesOutput
		err := b.call(ctx, "DescribeInstances", func(ctx context.Context) (err error) {
			out, err = b.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{st.ID}})
			return err
		})
		switch {
		case err == nil:
			for _, r := range out.Reservations {
				for i := range r.Instances {
					b.observe(uid, in, &r.Instances[i])
				}
			}
		case !isInstanceNotFound(err): // not listed yet: eventual consistency
			return nil, st, err
		}
		if err := b.sleep(ctx, wait); err != nil {
			return nil, st, fmt.Errorf("instance %s is still %s, %w", st.ID, st.State, err)
		}
	}
}

// observe applies what EC2 says of one instance to the pod's cache entry, if it is still the pod's, and notifies
// a change.
func (b *Backend) observe(uid string, in *instance, ei *ec2types.Instance) {
	b.mu.Lock()
	if b.insts[uid] != in || sdkaws.ToString(ei.InstanceId) != in.st.ID || in.terminating {
		b.mu.Unlock()
		return
	}
	before := in.st
	in.seen = true
	in.update(ei)
	st := in.st
	b.mu.Unlock()
	if st != before {
		b.notify(st)
	}
}

// closeMetadata turns the metadata endpoint of a pod's instance off, once; a failure is logged, and the next
// dial tries again.
func (b *Backend) closeMetadata(ctx context.Context, uid string, in *instance) {
	b.mu.Lock()
	if in.keepMetadata || in.metadataOff || in.metadataBusy {
		b.mu.Unlock()
		return
	}
	in.metadataBusy = true
	id := in.st.ID
	b.mu.Unlock()
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), metadataTimeout)
	defer cancel()
	err := b.call(mctx, "ModifyInstanceMetadataOptions", func(ctx context.Context) error {
		_, err := b.ec2.ModifyInstanceMetadataOptions(ctx, &ec2.ModifyInstanceMetadataOptionsInput{InstanceId: sdkaws.String(id),
			HttpEndpoint: ec2types.InstanceMetadataEndpointStateDisabled})
		return err
	})
	b.mu.Lock()
	in.metadataBusy = false
	in.metadataOff = err == nil
	b.mu.Unlock()
	if err != nil {
		log.G(ctx).WithError(err).WithField("uid", uid).WithField("instance", id).Warn("turning the instance metadata endpoint off; trying again at the next dial")
	}
}
