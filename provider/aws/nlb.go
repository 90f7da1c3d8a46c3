package aws

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/netsync"
)

// ErrTargetsNotHealthy says Ensure registered a Service's new targets but they did not turn healthy within its
// wait: the targets they replace stay registered (the load balancer keeps serving through them) until a later
// Ensure finds the new ones healthy. Retry soon.
var ErrTargetsNotHealthy = errors.New("new targets are not healthy yet")

// Limits of the ELBv2 API and defaults of the balancer's waits.
const (
	// targetChunk bounds the targets of one RegisterTargets or DeregisterTargets call.
	targetChunk = 200
	// tagBatch is DescribeTags' limit of resources per call.
	tagBatch = 20
	// tgNamePrefix is how much of the model's target group name an AWS name keeps, before "-" and 8 hex digits.
	tgNamePrefix = 32 - 1 - 8

	defaultHealthPoll = 5 * time.Second
	defaultHealthWait = 60 * time.Second
	defaultInUseWait  = 2 * time.Minute
)

// NLBBalancer realises netsync load balancers as AWS Network Load Balancers with ip targets: one NLB per Service
// (named by the model), one listener per Service port, one target group per listener whose targets are the pod
// addresses. Everything it creates carries the cluster, node and Service tags.
//
// A steady-state Ensure costs DescribeLoadBalancers, DescribeListeners, DescribeTargetGroups and one
// DescribeTargetHealth per target group, however many endpoints there are.
type NLBBalancer struct {
	api           ELBv2API
	vpcID         string
	subnets       []string
	cluster, node string

	// healthPoll is how often Ensure describes target health while new targets come up; healthWait bounds that
	// wait (then ErrTargetsNotHealthy); inUseWait bounds Delete's retries of a target group still in use while
	// its load balancer is deleted.
	healthPoll, healthWait, inUseWait time.Duration
}

var _ netsync.Balancer = (*NLBBalancer)(nil)

// NewNLBBalancer returns a balancer that makes NLBs in subnets (which must be in vpcID: target groups are made
// there), tagged as cluster's and node's.
func NewNLBBalancer(api ELBv2API, vpcID string, subnets []string, cluster, node string) *NLBBalancer {
	return &NLBBalancer{api: api, vpcID: vpcID, subnets: slices.Clone(subnets), cluster: cluster, node: node,
		healthPoll: defaultHealthPoll, healthWait: defaultHealthWait, inUseWait: defaultInUseWait}
}

// Balancer is the backend's load balancer (netsync.Balancer): NLBs in aws.loadBalancerSubnets or else the first
// of aws.subnets in each availability zone, with their target groups in the subnets' VPC, everything tagged with cluster (the
// backend's aws.cluster when empty) and the backend's node. Open gives the backend its ELBv2 client; a backend made
// by New has none and no balancer.
func (b *Backend) Balancer(cluster string) (*NLBBalancer, error) {
	switch {
	case b.elb == nil:
		return nil, errors.New("the aws backend has no ELBv2 client (it was not made by Open)")
	case b.vpcID == "":
		return nil, fmt.Errorf("aws.subnets: EC2 names no VPC of %s, where target groups would go", strings.Join(b.subnets, ", "))
	}
	return NewNLBBalancer(b.elb, b.vpcID, b.lbSubnets, cmp.Or(cluster, b.cfg.Cluster), b.cfg.Node), nil
}

// MergeTCPUDP says that an NLB takes one listener per port: a Service's TCP and UDP ports of one number must come
// as one TCP_UDP listener (netsync.ModelOptions.MergeTCPUDP), Ensure refusing two listeners on a port.
func (*NLBBalancer) MergeTCPUDP() bool { return true }

// elbErr is apiErr for the ELBv2 API.
func elbErr(action string, err error) error { return serviceErr("elasticloadbalancing", action, err) }

func isELBCode(err error, codes ...string) bool { return slices.Contains(codes, errorCode(err)) }

// target is one ip target as ELBv2 keys it: address and port (the same address may serve on several ports).
type target struct {
	ip   string
	port int32
}

// tgState is one target group Ensure keeps: the model's, its AWS ARN, and its targets as ELBv2 last reported.
type tgState struct {
	model netsync.TargetGroup
	arn   string
	// health is every registered target's state but draining ones (they are on their way out).
	health map[target]elbtypes.TargetHealthStateEnum
	gone   []target
	// stale says health no longer reflects ELBv2 (targets were registered since): describe again before using it.
	stale bool
}

// Ensure makes the Service's NLB match lb: the load balancer, its target groups and their targets, then its
// listeners. New targets are registered first; the targets they replace are deregistered only once every wanted
// target has a health verdict and one is healthy, so that a rolling update keeps serving. When they are not,
// Ensure finishes everything else and returns the ingress with an ErrTargetsNotHealthy.
func (b *NLBBalancer) Ensure(ctx context.Context, lb netsync.LoadBalancer) ([]corev1.LoadBalancerIngress, error) {
	if err := b.check(lb); err != nil {
		return nil, err
	}
	tags := b.tags(lb.Service, lb.Tags)
	cur, err := b.findLoadBalancer(ctx, lb.Name)
	if err != nil {
		return nil, err
	}
	if cur != nil && cur.Scheme != scheme(lb.Internal) {
		// An NLB's scheme is fixed at creation: make it again (it gets a new DNS name).
		if err := b.deleteLoadBalancer(ctx, sdkaws.ToString(cur.LoadBalancerArn)); err != nil {
			return nil, err
		}
		cur = nil
	}
	if cur == nil {
		if cur, err = b.createLoadBalancer(ctx, lb, tags); err != nil {
			return nil, err
		}
	}
	lbARN := sdkaws.ToString(cur.LoadBalancerArn)
	listeners, err := b.listeners(ctx, lbARN)
	if err != nil {
		return nil, err
	}
	attached, err := b.targetGroups(ctx, listeners)
	if err != nil {
		return nil, err
	}

	// Target groups, by their AWS names; a new one is filled before any listener points at it.
	groups := map[string]*tgState{}
	var order []string
	for _, l := range lb.Listeners {
		name := b.targetGroupName(l.Target)
		if groups[name] != nil {
			continue
		}
		st, err := b.ensureTargetGroup(ctx, l, name, attached[name], tags)
		if err != nil {
			return nil, err
		}
		groups[name] = st
		order = append(order, name)
	}
	if err := b.registerNew(ctx, groups, order); err != nil {
		return nil, err
	}
	if err := b.ensureListeners(ctx, lbARN, lb.Listeners, listeners, groups, tags); err != nil {
		return nil, err
	}
	waitErr := b.deregisterGone(ctx, groups, order)
	if waitErr != nil && !errors.Is(waitErr, ErrTargetsNotHealthy) {
		return nil, waitErr
	}

	// What no wanted listener or target group is any more, last.
	for _, l := range listeners {
		if !slices.ContainsFunc(lb.Listeners, func(w netsync.Listener) bool { return w.Port == sdkaws.ToInt32(l.Port) }) {
			if err := b.deleteListener(ctx, sdkaws.ToString(l.ListenerArn)); err != nil {
				return nil, err
			}
		}
	}
	for name, tg := range attached {
		if groups[name] == nil {
			if err := b.deleteTargetGroup(ctx, sdkaws.ToString(tg.TargetGroupArn), 0); err != nil {
				return nil, err
			}
		}
	}
	return []corev1.LoadBalancerIngress{{Hostname: sdkaws.ToString(cur.DNSName)}}, waitErr
}

func (b *NLBBalancer) check(lb netsync.LoadBalancer) error {
	switch {
	case b.cluster == "":
		return errors.New("the NLB balancer has no cluster name to tag with")
	case len(b.subnets) == 0:
		return errors.New("the NLB balancer has no subnets")
	case lb.Name == "" || len(lb.Name) > 32:
		return fmt.Errorf("load balancer name %q: want 1 to 32 characters", lb.Name)
	}
	ports := map[int32]bool{}
	for _, l := range lb.Listeners {
		if ports[l.Port] {
			return fmt.Errorf("load balancer %s: two listeners on port %d (an NLB takes TCP_UDP for both)", lb.Name, l.Port)
		}
		ports[l.Port] = true
		if l.Target.Name == "" {
			return fmt.Errorf("load balancer %s: listener %d has no target group name", lb.Name, l.Port)
		}
	}
	return nil
}

// tags are what everything made for svc carries: the model's tags, then the balancer's own, which win.
func (b *NLBBalancer) tags(svc netsync.ServiceKey, extra map[string]string) []elbtypes.Tag {
	m := maps.Clone(extra)
	if m == nil {
		m = map[string]string{}
	}
	m[TagCluster] = b.cluster
	if b.node != "" {
		m[TagNode] = b.node
	}
	m[netsync.TagServiceNamespace] = svc.Namespace
	m[netsync.TagServiceName] = svc.Name
	m[netsync.TagServiceUID] = svc.UID
	tags := make([]elbtypes.Tag, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		tags = append(tags, elbtypes.Tag{Key: sdkaws.String(k), Value: sdkaws.String(m[k])})
	}
	return tags
}

func scheme(internal bool) elbtypes.LoadBalancerSchemeEnum {
	if internal {
		return elbtypes.LoadBalancerSchemeEnumInternal
	}
	return elbtypes.LoadBalancerSchemeEnumInternetFacing
}

// findLoadBalancer is the load balancer named name, nil when there is none: AWS answers LoadBalancerNotFound,
// emulators an empty list.
func (b *NLBBalancer) findLoadBalancer(ctx context.Context, name string) (*elbtypes.LoadBalancer, error) {
	out, err := b.api.DescribeLoadBalancers(ctx, &elbv2.DescribeLoadBalancersInput{Names: []string{name}})
	if isELBCode(err, "LoadBalancerNotFound") {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("finding load balancer %s, %w", name, elbErr("DescribeLoadBalancers", err))
	}
	for _, lb := range out.LoadBalancers {
		if sdkaws.ToString(lb.LoadBalancerName) != name {
			continue
		}
		if lb.Type != elbtypes.LoadBalancerTypeEnumNetwork {
			return nil, fmt.Errorf("load balancer %s is of type %s, not network: its name is taken", name, lb.Type)
		}
		return &lb, nil
	}
	return nil, nil
}

func (b *NLBBalancer) createLoadBalancer(ctx context.Context, lb netsync.LoadBalancer, tags []elbtypes.Tag) (*elbtypes.LoadBalancer, error) {
	out, err := b.api.CreateLoadBalancer(ctx, &elbv2.CreateLoadBalancerInput{
		Name:          sdkaws.String(lb.Name),
		Type:          elbtypes.LoadBalancerTypeEnumNetwork,
		Scheme:        scheme(lb.Internal),
		Subnets:       b.subnets,
		IpAddressType: elbtypes.IpAddressTypeIpv4,
		Tags:          tags,
	})
	if isELBCode(err, "DuplicateLoadBalancerName") {
		// Made meanwhile (AWS itself answers a repeated identical create with the load balancer it made).
		if cur, ferr := b.findLoadBalancer(ctx, lb.Name); ferr != nil || cur != nil {
			return cur, ferr
		}
	}
	if err != nil {
		return nil, fmt.Errorf("creating load balancer %s, %w", lb.Name, elbErr("CreateLoadBalancer", err))
	}
	if len(out.LoadBalancers) != 1 {
		return nil, fmt.Errorf("creating load balancer %s: AWS answered %d load balancers", lb.Name, len(out.LoadBalancers))
	}
	return &out.LoadBalancers[0], nil
}

func (b *NLBBalancer) listeners(ctx context.Context, lbARN string) ([]elbtypes.Listener, error) {
	var all []elbtypes.Listener
	p := elbv2.NewDescribeListenersPaginator(b.api, &elbv2.DescribeListenersInput{LoadBalancerArn: sdkaws.String(lbARN)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing listeners of %s, %w", lbARN, elbErr("DescribeListeners", err))
		}
		all = append(all, page.Listeners...)
	}
	return all, nil
}

// forwardsTo is the target group a listener forwards to, "" when it does not forward to one.
func forwardsTo(l elbtypes.Listener) string {
	for _, a := range l.DefaultActions {
		if a.Type != elbtypes.ActionTypeEnumForward {
			continue
		}
		if a.TargetGroupArn != nil {
			return *a.TargetGroupArn
		}
		if a.ForwardConfig != nil && len(a.ForwardConfig.TargetGroups) == 1 {
			return sdkaws.ToString(a.ForwardConfig.TargetGroups[0].TargetGroupArn)
		}
	}
	return ""
}

// targetGroups are the target groups the listeners forward to, by name, in one call.
func (b *NLBBalancer) targetGroups(ctx context.Context, listeners []elbtypes.Listener) (map[string]elbtypes.TargetGroup, error) {
	var arns []string
	for _, l := range listeners {
		if arn := forwardsTo(l); arn != "" && !slices.Contains(arns, arn) {
			arns = append(arns, arn)
		}
	}
	byName := map[string]elbtypes.TargetGroup{}
	if len(arns) == 0 {
		return byName, nil
	}
	out, err := b.api.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{TargetGroupArns: arns})
	if err != nil {
		return nil, fmt.Errorf("describing target groups, %w", elbErr("DescribeTargetGroups", err))
	}
	for _, tg := range out.TargetGroups {
		byName[sdkaws.ToString(tg.TargetGroupName)] = tg
	}
	return byName, nil
}

// targetGroupName is the AWS name of the model's target group: its name (cut to fit) and a hash of what
// identifies it and cannot change in place (protocol, VPC), so that a replacement can exist beside the group it
// replaces.
func (b *NLBBalancer) targetGroupName(tg netsync.TargetGroup) string {
	sum := sha256.Sum256([]byte(strings.Join([]string{tg.Name, string(tg.Protocol), b.vpcID, string(elbtypes.TargetTypeEnumIp)}, "\x00")))
	prefix := tg.Name[:min(len(tg.Name), tgNamePrefix)]
	return strings.Trim(prefix, "-") + "-" + hex.EncodeToString(sum[:4])
}

// healthCheck is a target group's health check as ELBv2 has it; zero fields are AWS's defaults.
type healthCheck struct {
	protocol                     elbtypes.ProtocolEnum
	port, path                   string
	interval, healthy, unhealthy int32
}

func wantHealthCheck(hc netsync.HealthCheck) healthCheck {
	h := healthCheck{protocol: elbtypes.ProtocolEnum(hc.Protocol), port: hc.Port, interval: hc.IntervalSeconds,
		healthy: hc.HealthyThreshold, unhealthy: hc.UnhealthyThreshold}
	if h.protocol == "" {
		h.protocol = elbtypes.ProtocolEnumTcp
	}
	if h.port == "" {
		h.port = "traffic-port"
	}
	if h.protocol == elbtypes.ProtocolEnumHttp || h.protocol == elbtypes.ProtocolEnumHttps {
		h.path = cmp.Or(hc.Path, "/")
	}
	return h
}

// differs reports whether a target group's health check is not what h wants (fields h leaves to AWS aside).
func (h healthCheck) differs(tg elbtypes.TargetGroup) bool {
	diff := func(want, have int32) bool { return want != 0 && want != have }
	return h.protocol != tg.HealthCheckProtocol || h.port != sdkaws.ToString(tg.HealthCheckPort) ||
		(h.path != "" && h.path != sdkaws.ToString(tg.HealthCheckPath)) ||
		diff(h.interval, sdkaws.ToInt32(tg.HealthCheckIntervalSeconds)) ||
		diff(h.healthy, sdkaws.ToInt32(tg.HealthyThresholdCount)) ||
		diff(h.unhealthy, sdkaws.ToInt32(tg.UnhealthyThresholdCount))
}

func optional[T comparable](v T) *T {
	var zero T
	if v == zero {
		return nil
	}
	return &v
}

// ensureTargetGroup returns the target group name for listener l: have (found behind a listener) with its
// targets described and its health check corrected, or a new one.
func (b *NLBBalancer) ensureTargetGroup(ctx context.Context, l netsync.Listener, name string, have elbtypes.TargetGroup, tags []elbtypes.Tag) (*tgState, error) {
	st := &tgState{model: l.Target, health: map[target]elbtypes.TargetHealthStateEnum{}}
	if st.model.Protocol == "" {
		st.model.Protocol = l.Protocol
	}
	hc := wantHealthCheck(st.model.HealthCheck)
	if have.TargetGroupArn == nil {
		arn, err := b.createTargetGroup(ctx, l, st.model, name, hc, tags)
		if err != nil {
			return nil, err
		}
		// It may be one an Ensure made before it stopped short of a listener using it, with targets: AWS answers
		// an identical create with the group it has.
		st.arn = arn
		return st, b.describeHealth(ctx, st)
	}
	st.arn = *have.TargetGroupArn
	if hc.differs(have) {
		_, err := b.api.ModifyTargetGroup(ctx, &elbv2.ModifyTargetGroupInput{
			TargetGroupArn:             have.TargetGroupArn,
			HealthCheckEnabled:         sdkaws.Bool(true),
			HealthCheckProtocol:        hc.protocol,
			HealthCheckPort:            sdkaws.String(hc.port),
			HealthCheckPath:            optional(hc.path),
			HealthCheckIntervalSeconds: optional(hc.interval),
			HealthyThresholdCount:      optional(hc.healthy),
			UnhealthyThresholdCount:    optional(hc.unhealthy),
		})
		if err != nil {
			return nil, fmt.Errorf("changing the health check of target group %s, %w", name, elbErr("ModifyTargetGroup", err))
		}
	}
	if err := b.describeHealth(ctx, st); err != nil {
		return nil, err
	}
	return st, nil
}

// createTargetGroup makes the target group name, or finds the one of that name made earlier.
func (b *NLBBalancer) createTargetGroup(ctx context.Context, l netsync.Listener, tg netsync.TargetGroup, name string, hc healthCheck, tags []elbtypes.Tag) (string, error) {
	// The port is only the default of targets registered without one; every target here carries its own.
	port := l.Port
	if len(tg.Targets) > 0 {
		port = tg.Targets[0].Port
	}
	in := &elbv2.CreateTargetGroupInput{
		Name:                       sdkaws.String(name),
		TargetType:                 elbtypes.TargetTypeEnumIp,
		Protocol:                   elbtypes.ProtocolEnum(tg.Protocol),
		Port:                       sdkaws.Int32(port),
		VpcId:                      sdkaws.String(b.vpcID),
		IpAddressType:              elbtypes.TargetGroupIpAddressTypeEnumIpv4,
		HealthCheckEnabled:         sdkaws.Bool(true),
		HealthCheckProtocol:        hc.protocol,
		HealthCheckPort:            sdkaws.String(hc.port),
		HealthCheckPath:            optional(hc.path),
		HealthCheckIntervalSeconds: optional(hc.interval),
		HealthyThresholdCount:      optional(hc.healthy),
		UnhealthyThresholdCount:    optional(hc.unhealthy),
		Tags:                       tags,
	}
	out, err := b.api.CreateTargetGroup(ctx, in)
	if isELBCode(err, "DuplicateTargetGroupName") {
		// The name says it has these settings. (AWS answers an identical create with the group it made; emulators
		// refuse it.)
		d, derr := b.api.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{Names: []string{name}})
		if derr != nil {
			return "", fmt.Errorf("finding target group %s, %w", name, elbErr("DescribeTargetGroups", derr))
		}
		if len(d.TargetGroups) == 1 {
			return sdkaws.ToString(d.TargetGroups[0].TargetGroupArn), nil
		}
	}
	if err != nil {
		return "", fmt.Errorf("creating target group %s, %w", name, elbErr("CreateTargetGroup", err))
	}
	if len(out.TargetGroups) != 1 {
		return "", fmt.Errorf("creating target group %s: AWS answered %d target groups", name, len(out.TargetGroups))
	}
	return sdkaws.ToString(out.TargetGroups[0].TargetGroupArn), nil
}

// describeHealth reads every target of st's group and its state, in one call.
func (b *NLBBalancer) describeHealth(ctx context.Context, st *tgState) error {
	out, err := b.api.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: sdkaws.String(st.arn)})
	if err != nil {
		return fmt.Errorf("describing the targets of %s, %w", st.arn, elbErr("DescribeTargetHealth", err))
	}
	clear(st.health)
	for _, d := range out.TargetHealthDescriptions {
		if d.Target == nil {
			continue
		}
		var state elbtypes.TargetHealthStateEnum
		if d.TargetHealth != nil {
			state = d.TargetHealth.State
		}
		if state == elbtypes.TargetHealthStateEnumDraining {
			continue
		}
		st.health[target{ip: sdkaws.ToString(d.Target.Id), port: sdkaws.ToInt32(d.Target.Port)}] = state
	}
	return nil
}

func wanted(tg netsync.TargetGroup) map[target]bool {
	m := make(map[target]bool, len(tg.Targets))
	for _, t := range tg.Targets {
		m[target{ip: t.IP.String(), port: t.Port}] = true
	}
	return m
}

// registerNew registers every wanted target not registered yet, and notes those registered but no longer wanted.
func (b *NLBBalancer) registerNew(ctx context.Context, groups map[string]*tgState, order []string) error {
	for _, name := range order {
		st := groups[name]
		want := wanted(st.model)
		var add []target
		for _, t := range st.model.Targets {
			if k := (target{ip: t.IP.String(), port: t.Port}); st.health[k] == "" {
				add = append(add, k)
			}
		}
		for _, k := range slices.SortedFunc(maps.Keys(st.health), compareTargets) {
			if !want[k] {
				st.gone = append(st.gone, k)
			}
		}
		if len(add) == 0 {
			continue
		}
		for c := range slices.Chunk(add, targetChunk) {
			if _, err := b.api.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: sdkaws.String(st.arn), Targets: descriptions(c)}); err != nil {
				return fmt.Errorf("registering %d targets in %s, %w", len(c), name, elbErr("RegisterTargets", err))
			}
		}
		st.stale = true
	}
	return nil
}

func compareTargets(a, b target) int {
	return cmp.Or(cmp.Compare(a.ip, b.ip), cmp.Compare(a.port, b.port))
}

func descriptions(ts []target) []elbtypes.TargetDescription {
	ds := make([]elbtypes.TargetDescription, len(ts))
	for i, t := range ts {
		ds[i] = elbtypes.TargetDescription{Id: sdkaws.String(t.ip), Port: sdkaws.Int32(t.port)}
	}
	return ds
}

// settled reports whether st's wanted targets allow deregistering the gone ones: none is still coming up (or not
// yet described), and one is healthy, unless none is wanted at all. Its error says why not when every wanted target
// has a verdict but none is healthy.
func settled(st *tgState) (bool, error) {
	want := st.model.Targets
	if len(want) == 0 {
		return true, nil
	}
	healthy := false
	for _, t := range want {
		switch st.health[target{ip: t.IP.String(), port: t.Port}] {
		case "", elbtypes.TargetHealthStateEnumInitial:
			return false, nil
		case elbtypes.TargetHealthStateEnumHealthy:
			healthy = true
		}
	}
	if !healthy {
		return false, fmt.Errorf("%w: none of the %d targets of %s is healthy; keeping the %d it would replace",
			ErrTargetsNotHealthy, len(want), st.model.Name, len(st.gone))
	}
	return true, nil
}

// deregisterGone deregisters the targets no longer wanted, once the wanted ones are settled (described again,
// every healthPoll, for at most healthWait).
func (b *NLBBalancer) deregisterGone(ctx context.Context, groups map[string]*tgState, order []string) error {
	var pending []*tgState
	for _, name := range order {
		if st := groups[name]; len(st.gone) > 0 {
			pending = append(pending, st)
		}
	}
	deadline := time.Now().Add(b.healthWait)
	for len(pending) > 0 {
		var still []*tgState
		for _, st := range pending {
			if st.stale {
				if err := b.describeHealth(ctx, st); err != nil {
					return err
				}
			}
			st.stale = true // the next look is after a wait
			ok, err := settled(st)
			if err != nil {
				return err // a verdict: waiting longer will not change it soon
			}
			if !ok {
				still = append(still, st)
				continue
			}
			for c := range slices.Chunk(st.gone, targetChunk) {
				if _, err := b.api.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: sdkaws.String(st.arn), Targets: descriptions(c)}); err != nil {
					return fmt.Errorf("deregistering %d targets from %s, %w", len(c), st.model.Name, elbErr("DeregisterTargets", err))
				}
			}
		}
		pending = still
		if len(pending) == 0 {
			break
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%w: %s still has targets coming up after %s", ErrTargetsNotHealthy, pending[0].model.Name, b.healthWait)
		}
		if err := sleepCtx(ctx, b.healthPoll); err != nil {
			return fmt.Errorf("waiting for the new targets of %s, %w", pending[0].model.Name, err)
		}
	}
	return nil
}

// ensureListeners makes one listener per wanted port, forwarding to its target group: created when missing,
// modified when its protocol or target group changed.
func (b *NLBBalancer) ensureListeners(ctx context.Context, lbARN string, want []netsync.Listener, have []elbtypes.Listener, groups map[string]*tgState, tags []elbtypes.Tag) error {
	for _, l := range want {
		tgARN := groups[b.targetGroupName(l.Target)].arn
		actions := []elbtypes.Action{{Type: elbtypes.ActionTypeEnumForward, TargetGroupArn: sdkaws.String(tgARN)}}
		i := slices.IndexFunc(have, func(h elbtypes.Listener) bool { return sdkaws.ToInt32(h.Port) == l.Port })
		if i < 0 {
			_, err := b.api.CreateListener(ctx, &elbv2.CreateListenerInput{LoadBalancerArn: sdkaws.String(lbARN),
				Port: sdkaws.Int32(l.Port), Protocol: elbtypes.ProtocolEnum(l.Protocol), DefaultActions: actions, Tags: tags})
			if err != nil {
				return fmt.Errorf("creating listener %s/%d, %w", l.Protocol, l.Port, elbErr("CreateListener", err))
			}
			continue
		}
		h := have[i]
		if h.Protocol == elbtypes.ProtocolEnum(l.Protocol) && forwardsTo(h) == tgARN {
			continue
		}
		_, err := b.api.ModifyListener(ctx, &elbv2.ModifyListenerInput{ListenerArn: h.ListenerArn,
			Protocol: elbtypes.ProtocolEnum(l.Protocol), DefaultActions: actions})
		if err != nil {
			return fmt.Errorf("changing listener %s/%d, %w", l.Protocol, l.Port, elbErr("ModifyListener", err))
		}
	}
	return nil
}

func (b *NLBBalancer) deleteListener(ctx context.Context, arn string) error {
	_, err := b.api.DeleteListener(ctx, &elbv2.DeleteListenerInput{ListenerArn: sdkaws.String(arn)})
	if err != nil && !isELBCode(err, "ListenerNotFound") {
		return fmt.Errorf("deleting listener %s, %w", arn, elbErr("DeleteListener", err))
	}
	return nil
}

func (b *NLBBalancer) deleteLoadBalancer(ctx context.Context, arn string) error {
	_, err := b.api.DeleteLoadBalancer(ctx, &elbv2.DeleteLoadBalancerInput{LoadBalancerArn: sdkaws.String(arn)})
	if err != nil && !isELBCode(err, "LoadBalancerNotFound") {
		return fmt.Errorf("deleting load balancer %s, %w", arn, elbErr("DeleteLoadBalancer", err))
	}
	return nil
}

// deleteTargetGroup deletes a target group, retrying for at most wait while AWS still finds it in use (its load
// balancer being deleted).
func (b *NLBBalancer) deleteTargetGroup(ctx context.Context, arn string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		_, err := b.api.DeleteTargetGroup(ctx, &elbv2.DeleteTargetGroupInput{TargetGroupArn: sdkaws.String(arn)})
		switch {
		case err == nil || isELBCode(err, "TargetGroupNotFound"):
			return nil
		case !isELBCode(err, "ResourceInUse") || !time.Now().Before(deadline):
			return fmt.Errorf("deleting target group %s, %w", arn, elbErr("DeleteTargetGroup", err))
		}
		if err := sleepCtx(ctx, b.healthPoll); err != nil {
			return fmt.Errorf("deleting target group %s, %w", arn, err)
		}
	}
}

// Delete removes the Service's load balancers (listeners first) and then its target groups, all found by their
// tags; nil once none is left.
func (b *NLBBalancer) Delete(ctx context.Context, svc netsync.ServiceKey) error {
	lbs, err := b.owned(ctx, b.loadBalancerARNs)
	if err != nil {
		return err
	}
	for arn, tags := range lbs {
		if !serves(tags, svc) {
			continue
		}
		listeners, err := b.listeners(ctx, arn)
		if err != nil && !isELBCode(err, "LoadBalancerNotFound") {
			return err
		}
		for _, l := range listeners {
			if err := b.deleteListener(ctx, sdkaws.ToString(l.ListenerArn)); err != nil {
				return err
			}
		}
		if err := b.deleteLoadBalancer(ctx, arn); err != nil {
			return err
		}
	}
	tgs, err := b.owned(ctx, b.targetGroupARNs)
	if err != nil {
		return err
	}
	for arn, tags := range tgs {
		if serves(tags, svc) {
			if err := b.deleteTargetGroup(ctx, arn, b.inUseWait); err != nil {
				return err
			}
		}
	}
	return nil
}

// List returns the Services whose NLBs this cluster's balancers made.
func (b *NLBBalancer) List(ctx context.Context) ([]netsync.ServiceKey, error) {
	lbs, err := b.owned(ctx, b.loadBalancerARNs)
	if err != nil {
		return nil, err
	}
	var keys []netsync.ServiceKey
	for _, tags := range lbs {
		if tags[netsync.TagServiceUID] == "" {
			continue
		}
		keys = append(keys, netsync.ServiceKey{Namespace: tags[netsync.TagServiceNamespace], Name: tags[netsync.TagServiceName], UID: tags[netsync.TagServiceUID]})
	}
	slices.SortFunc(keys, func(a, b netsync.ServiceKey) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.UID, b.UID))
	})
	return keys, nil
}

func serves(tags map[string]string, svc netsync.ServiceKey) bool {
	if svc.UID != "" {
		return tags[netsync.TagServiceUID] == svc.UID
	}
	return tags[netsync.TagServiceNamespace] == svc.Namespace && tags[netsync.TagServiceName] == svc.Name
}

// loadBalancerARNs lists every network load balancer of the account in the region, page by page.
func (b *NLBBalancer) loadBalancerARNs(ctx context.Context) ([]string, error) {
	var arns []string
	p := elbv2.NewDescribeLoadBalancersPaginator(b.api, &elbv2.DescribeLoadBalancersInput{})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing load balancers, %w", elbErr("DescribeLoadBalancers", err))
		}
		for _, lb := range page.LoadBalancers {
			if lb.Type == elbtypes.LoadBalancerTypeEnumNetwork {
				arns = append(arns, sdkaws.ToString(lb.LoadBalancerArn))
			}
		}
	}
	return arns, nil
}

// targetGroupARNs lists every ip target group of the account in the region, page by page.
func (b *NLBBalancer) targetGroupARNs(ctx context.Context) ([]string, error) {
	var arns []string
	p := elbv2.NewDescribeTargetGroupsPaginator(b.api, &elbv2.DescribeTargetGroupsInput{})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing target groups, %w", elbErr("DescribeTargetGroups", err))
		}
		for _, tg := range page.TargetGroups {
			if tg.TargetType == elbtypes.TargetTypeEnumIp {
				arns = append(arns, sdkaws.ToString(tg.TargetGroupArn))
			}
		}
	}
	return arns, nil
}

// owned are the resources list finds that carry this cluster's tag, with their tags (DescribeTags, tagBatch ARNs
// a call). A resource deleted between the listing and its tags is skipped.
func (b *NLBBalancer) owned(ctx context.Context, list func(context.Context) ([]string, error)) (map[string]map[string]string, error) {
	arns, err := list(ctx)
	if err != nil {
		return nil, err
	}
	owned := map[string]map[string]string{}
	for batch := range slices.Chunk(arns, tagBatch) {
		out, err := b.api.DescribeTags(ctx, &elbv2.DescribeTagsInput{ResourceArns: batch})
		if isELBCode(err, "LoadBalancerNotFound", "TargetGroupNotFound") && len(batch) > 1 {
			// One of them went meanwhile: ask one at a time.
			for _, arn := range batch {
				one, err := b.api.DescribeTags(ctx, &elbv2.DescribeTagsInput{ResourceArns: []string{arn}})
				if isELBCode(err, "LoadBalancerNotFound", "TargetGroupNotFound") {
					continue
				}
				if err != nil {
					return nil, fmt.Errorf("reading tags, %w", elbErr("DescribeTags", err))
				}
				addOwned(owned, one.TagDescriptions, b.cluster)
			}
			continue
		}
		if isELBCode(err, "LoadBalancerNotFound", "TargetGroupNotFound") {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading tags, %w", elbErr("DescribeTags", err))
		}
		addOwned(owned, out.TagDescriptions, b.cluster)
	}
	return owned, nil
}

func addOwned(owned map[string]map[string]string, descs []elbtypes.TagDescription, cluster string) {
	for _, d := range descs {
		tags := make(map[string]string, len(d.Tags))
		for _, t := range d.Tags {
			tags[sdkaws.ToString(t.Key)] = sdkaws.ToString(t.Value)
		}
		if tags[TagCluster] == cluster {
			owned[sdkaws.ToString(d.ResourceArn)] = tags
		}
	}
}
