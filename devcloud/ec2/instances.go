package ec2

import (
	"context"
	"encoding/base64"
	"net/url"
	"slices"
	"strings"
	"time"
)

// maxUserData is EC2's limit on decoded user data.
const maxUserData = 16 << 10

// instance is one instance's state; guarded by Server.mu.
type instance struct {
	seq                                int64
	id, reservationID, clientToken     string
	imageID, instanceType              string
	subnet                             Subnet
	privateIP                          string
	groups                             []SecurityGroup
	userData                           []byte
	metadata                           MetadataOptions
	disks                              []imageBDM
	tags                               []Tag
	launchIndex                        int
	launchTime, endTime                time.Time
	state, transitionReason            string
	reasonCode, reasonMessage          string
	shutdownBehavior                   string
	architecture, bootMode, rootDevice string
	hiddenFor                          int           // DescribeInstances calls that will not see it yet
	console                            *console      // what the runner wrote
	cancelStart                        func()        // cancels a pending Start
	started                            chan struct{} // closed when Start has returned
	startErr                           error
	runnerStopped                      bool
}

// runRecord remembers a RunInstances call by ClientToken: EC2 answers a repeat with the same reservation, and a
// different request with the same token with IdempotentParameterMismatch.
type runRecord struct {
	fingerprint   string
	reservationID string
	ids           []string
}

// stateCodes are EC2's instance state codes.
var stateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

func (s *Server) runInstances(q params) (any, error) {
	minCount, err := q.integer("MinCount", 0)
	if err != nil {
		return nil, err
	}
	maxCount, err := q.integer("MaxCount", 0)
	if err != nil {
		return nil, err
	}
	if !q.has("MinCount") || !q.has("MaxCount") {
		return nil, errCode("MissingParameter", "The request must contain the parameters MinCount and MaxCount")
	}
	if minCount < 1 || maxCount < minCount {
		return nil, errInvalid("Invalid value for MinCount (%d) / MaxCount (%d)", minCount, maxCount)
	}
	token := q.str("ClientToken")
	if len(token) > 64 {
		return nil, errInvalid("ClientToken must be at most 64 characters")
	}
	fp := fingerprint(q, "ClientToken")
	if token != "" {
		s.mu.Lock()
		rec, ok := s.runTokens[token]
		s.mu.Unlock()
		if ok {
			if rec.fingerprint != fp {
				return nil, errCode("IdempotentParameterMismatch",
					"Arguments on this idempotent request are inconsistent with arguments used in previous request(s).")
			}
			return s.reservation(rec.reservationID, rec.ids), nil
		}
	}
	im, err := s.launchableImage(q.str("ImageId"))
	if err != nil {
		return nil, err
	}
	typeName := q.str("InstanceType")
	if typeName == "" {
		typeName = "m1.small" // EC2's default, which the fixture does not offer
	}
	it, ok := s.types[typeName]
	if !ok {
		return nil, errInvalid("Invalid value '%s' for InstanceType.", typeName)
	}
	if !slices.Contains(it.Architectures, im.architecture) {
		return nil, errInvalid("The architecture '%s' of the specified instance type does not match the architecture '%s' of the specified AMI.",
			strings.Join(it.Architectures, ","), im.architecture)
	}
	if im.bootMode != "" && im.bootMode != "uefi-preferred" && !slices.Contains(it.BootModes, im.bootMode) {
		return nil, errCode("UnsupportedOperation", "The instance type '%s' does not support the boot mode '%s' of the AMI.", typeName, im.bootMode)
	}
	subnet, groups, err := s.network(q)
	if err != nil {
		return nil, err
	}
	userData, err := decodeUserData(q.str("UserData"))
	if err != nil {
		return nil, err
	}
	md, err := metadataOptions(q, "MetadataOptions.", im)
	if err != nil {
		return nil, err
	}
	disks, err := s.launchDisks(q, im)
	if err != nil {
		return nil, err
	}
	tags, err := q.tagSpecs("instance", "volume", "network-interface")
	if err != nil {
		return nil, err
	}
	behavior := q.str("InstanceInitiatedShutdownBehavior")
	if behavior == "" {
		behavior = "stop"
	}
	if behavior != "stop" && behavior != "terminate" {
		return nil, errInvalid("Value (%s) for parameter InstanceInitiatedShutdownBehavior is invalid.", behavior)
	}
	if err := s.faults.capacityErr(typeName); err != nil {
		return nil, err
	}

	s.mu.Lock()
	if rec, ok := s.runTokens[token]; token != "" && ok { // a concurrent call with the same token won
		s.mu.Unlock()
		if rec.fingerprint != fp {
			return nil, errCode("IdempotentParameterMismatch", "Arguments on this idempotent request are inconsistent with arguments used in previous request(s).")
		}
		return s.reservation(rec.reservationID, rec.ids), nil
	}
	rid := newID("r")
	var created []*instance
	var ctxs []context.Context
	for i := range maxCount {
		ip, err := s.allocateIPLocked(subnet)
		if err != nil {
			if i >= minCount {
				break
			}
			for _, in := range created {
				delete(s.usedIPs[subnet.ID], in.privateIP)
			}
			s.mu.Unlock()
			return nil, err
		}
		s.seq++
		in := &instance{seq: s.seq, id: newID("i"), reservationID: rid, clientToken: token, imageID: im.id,
			instanceType: typeName, subnet: subnet, privateIP: ip, groups: groups, userData: userData, metadata: md,
			disks: disks, tags: instanceTags(tags), launchIndex: i, launchTime: s.opts.Now(), state: "pending",
			shutdownBehavior: behavior, architecture: im.architecture, bootMode: im.bootMode, rootDevice: im.rootDeviceName,
			hiddenFor: s.faults.hideNew(), console: &console{}, started: make(chan struct{})}
		ctx, cancel := context.WithCancel(context.Background())
		in.cancelStart = cancel
		ctxs = append(ctxs, ctx)
		s.instances[in.id] = in
		created = append(created, in)
	}
	ids := make([]string, len(created))
	for i, in := range created {
		ids[i] = in.id
	}
	if token != "" {
		s.runTokens[token] = &runRecord{fingerprint: fp, reservationID: rid, ids: ids}
	}
	views := make([]Instance, len(created))
	for i, in := range created {
		views[i] = s.runnerViewLocked(in, it)
	}
	s.notifyLocked()
	s.mu.Unlock()
	for i, in := range created {
		s.start(ctxs[i], in, views[i])
	}
	return s.reservation(rid, ids), nil
}

// instanceTags keeps the tags of the "instance" TagSpecification (volumes and interfaces are not modelled).
func instanceTags(specs map[string][]Tag) []Tag { return specs["instance"] }

// fingerprint is a canonical encoding of a request without the named keys.
func fingerprint(q params, without ...string) string {
	c := url.Values{}
	for k, v := range q {
		if !slices.Contains(without, k) {
			c[k] = v
		}
	}
	return c.Encode()
}

// network resolves the launch's subnet (default: the first fixture) and security groups (default: the VPC's
// "default" group), checking they exist and share a VPC.
func (s *Server) network(q params) (Subnet, []SecurityGroup, error) {
	var subnet Subnet
	if id := q.str("SubnetId"); id != "" {
		ns, err := s.lookupSubnets([]string{id})
		if err != nil {
			return Subnet{}, nil, err
		}
		subnet = ns[0]
	} else if len(s.opts.Subnets) > 0 {
		subnet = s.opts.Subnets[0]
	} else {
		return Subnet{}, nil, errCode("VPCIdNotSpecified", "No default VPC for this user")
	}
	ids := q.list("SecurityGroupId")
	if len(ids) == 0 {
		for _, g := range s.opts.SecurityGroups {
			if g.VpcID == subnet.VpcID && g.Name == "default" {
				return subnet, []SecurityGroup{g}, nil
			}
		}
		return subnet, nil, nil
	}
	groups, err := s.lookupGroups(ids)
	if err != nil {
		return Subnet{}, nil, err
	}
	for _, g := range groups {
		if g.VpcID != subnet.VpcID {
			return Subnet{}, nil, errCode("InvalidParameter", "Security group %s and subnet %s belong to different networks.", g.ID, subnet.ID)
		}
	}
	return subnet, groups, nil
}

func decodeUserData(v string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, errInvalid("Invalid BASE64 encoding of user data.")
	}
	if len(b) > maxUserData {
		return nil, errInvalid("User data is limited to %d bytes", maxUserData)
	}
	return b, nil
}

// metadataOptions reads IMDS options under prefix; defaults follow the image: ImdsSupport v2.0 means tokens
// required and a hop limit of 2, as EC2 launches such AMIs.
func metadataOptions(q params, prefix string, im *image) (MetadataOptions, error) {
	md := MetadataOptions{HttpEndpoint: "enabled", HttpTokens: "optional", HttpPutResponseHopLimit: 1, InstanceMetadataTags: "disabled"}
	if im != nil && im.imdsSupport == "v2.0" {
		md.HttpTokens, md.HttpPutResponseHopLimit = "required", 2
	}
	return applyMetadata(q, prefix, md)
}

// applyMetadata overrides md with the options present under prefix.
func applyMetadata(q params, prefix string, md MetadataOptions) (MetadataOptions, error) {
	oneOf := func(key string, dst *string, allowed ...string) error {
		if v := q.str(prefix + key); v != "" {
			if !slices.Contains(allowed, v) {
				return errInvalid("Value (%s) for parameter %s is invalid.", v, key)
			}
			*dst = v
		}
		return nil
	}
	if err := oneOf("HttpEndpoint", &md.HttpEndpoint, "enabled", "disabled"); err != nil {
		return md, err
	}
	if err := oneOf("HttpTokens", &md.HttpTokens, "optional", "required"); err != nil {
		return md, err
	}
	if err := oneOf("InstanceMetadataTags", &md.InstanceMetadataTags, "enabled", "disabled"); err != nil {
		return md, err
	}
	if q.has(prefix + "HttpPutResponseHopLimit") {
		n, err := q.integer(prefix+"HttpPutResponseHopLimit", 0)
		if err != nil {
			return md, err
		}
		if n < 1 || n > 64 {
			return md, errInvalid("Value (%d) for parameter HttpPutResponseHopLimit is invalid. Expecting a value between 1 and 64.", n)
		}
		md.HttpPutResponseHopLimit = n
	}
	return md, nil
}

type stateXML struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type stateReasonXML struct {
	Code    string `xml:"code"`
	Message string `xml:"message"`
}

type metadataXML struct {
	State                string `xml:"state"`
	HttpTokens           string `xml:"httpTokens"`
	HopLimit             int    `xml:"httpPutResponseHopLimit"`
	HttpEndpoint         string `xml:"httpEndpoint"`
	HttpProtocolIpv6     string `xml:"httpProtocolIpv6"`
	InstanceMetadataTags string `xml:"instanceMetadataTags"`
}

func (m MetadataOptions) xml(state string) metadataXML {
	return metadataXML{State: state, HttpTokens: m.HttpTokens, HopLimit: m.HttpPutResponseHopLimit, HttpEndpoint: m.HttpEndpoint,
		HttpProtocolIpv6: "disabled", InstanceMetadataTags: m.InstanceMetadataTags}
}

type groupIdentXML struct {
	GroupID   string `xml:"groupId"`
	GroupName string `xml:"groupName"`
}

type instanceBDMXML struct {
	DeviceName string `xml:"deviceName"`
	Ebs        struct {
		VolumeID            string `xml:"volumeId"`
		Status              string `xml:"status"`
		AttachTime          string `xml:"attachTime"`
		DeleteOnTermination bool   `xml:"deleteOnTermination"`
	} `xml:"ebs"`
}

type instanceXML struct {
	InstanceID       string           `xml:"instanceId"`
	ImageID          string           `xml:"imageId"`
	State            stateXML         `xml:"instanceState"`
	PrivateDNSName   string           `xml:"privateDnsName"`
	DNSName          string           `xml:"dnsName"`
	Reason           string           `xml:"reason"`
	AmiLaunchIndex   int              `xml:"amiLaunchIndex"`
	InstanceType     string           `xml:"instanceType"`
	LaunchTime       string           `xml:"launchTime"`
	Placement        string           `xml:"placement>availabilityZone"`
	Tenancy          string           `xml:"placement>tenancy"`
	Monitoring       string           `xml:"monitoring>state"`
	SubnetID         string           `xml:"subnetId,omitempty"`
	VpcID            string           `xml:"vpcId,omitempty"`
	PrivateIP        string           `xml:"privateIpAddress,omitempty"`
	Groups           []groupIdentXML  `xml:"groupSet>item"`
	StateReason      *stateReasonXML  `xml:"stateReason,omitempty"`
	Architecture     string           `xml:"architecture"`
	RootDeviceType   string           `xml:"rootDeviceType"`
	RootDeviceName   string           `xml:"rootDeviceName"`
	BlockDevices     []instanceBDMXML `xml:"blockDeviceMapping>item"`
	Virtualization   string           `xml:"virtualizationType"`
	ClientToken      string           `xml:"clientToken,omitempty"`
	Tags             []Tag            `xml:"tagSet>item"`
	Hypervisor       string           `xml:"hypervisor"`
	EnaSupport       bool             `xml:"enaSupport"`
	BootMode         string           `xml:"bootMode,omitempty"`
	CurrentBootMode  string           `xml:"currentInstanceBootMode,omitempty"`
	Metadata         metadataXML      `xml:"metadataOptions"`
	PlatformDetails  string           `xml:"platformDetails"`
	UsageOperation   string           `xml:"usageOperation"`
	SourceDestCheck  bool             `xml:"sourceDestCheck"`
	EbsOptimized     bool             `xml:"ebsOptimized"`
	MaintenanceState string           `xml:"maintenanceOptions>autoRecovery"`
}

func (s *Server) instanceXMLLocked(in *instance) instanceXML {
	x := instanceXML{InstanceID: in.id, ImageID: in.imageID, State: stateXML{stateCodes[in.state], in.state},
		Reason: in.transitionReason, AmiLaunchIndex: in.launchIndex, InstanceType: in.instanceType,
		LaunchTime: awsTime(in.launchTime), Placement: in.subnet.AvailabilityZone, Tenancy: "default", Monitoring: "disabled",
		Architecture: in.architecture, RootDeviceType: "ebs", RootDeviceName: in.rootDevice, Virtualization: "hvm",
		ClientToken: in.clientToken, Tags: slices.Clone(in.tags), Hypervisor: "xen", EnaSupport: true,
		BootMode: in.bootMode, Metadata: in.metadata.xml("applied"), PlatformDetails: "Linux/UNIX",
		UsageOperation: "RunInstances", SourceDestCheck: true, MaintenanceState: "default"}
	if in.state != "terminated" {
		x.SubnetID, x.VpcID, x.PrivateIP = in.subnet.ID, in.subnet.VpcID, in.privateIP
		x.PrivateDNSName = "ip-" + strings.ReplaceAll(in.privateIP, ".", "-") + ".ec2.internal"
		for _, g := range in.groups {
			x.Groups = append(x.Groups, groupIdentXML{g.ID, g.Name})
		}
		for i, d := range in.disks {
			b := instanceBDMXML{DeviceName: d.DeviceName}
			b.Ebs.VolumeID = "vol-" + in.id[2:] + itoa(i)
			b.Ebs.Status, b.Ebs.AttachTime, b.Ebs.DeleteOnTermination = "attached", awsTime(in.launchTime), d.DeleteOnTermination
			x.BlockDevices = append(x.BlockDevices, b)
		}
	}
	if in.bootMode == "uefi" || in.bootMode == "legacy-bios" {
		x.CurrentBootMode = in.bootMode
	} else if in.bootMode == "uefi-preferred" {
		x.CurrentBootMode = "uefi"
	}
	if in.reasonCode != "" {
		x.StateReason = &stateReasonXML{in.reasonCode, in.reasonMessage}
	}
	return x
}

type reservationXML struct {
	ReservationID string          `xml:"reservationId"`
	OwnerID       string          `xml:"ownerId"`
	Groups        []groupIdentXML `xml:"groupSet>item"`
	Instances     []instanceXML   `xml:"instancesSet>item"`
}

type runInstancesResponse struct {
	reply
	reservationXML
}

// reservation renders a RunInstances answer for the given instances in their current state.
func (s *Server) reservation(rid string, ids []string) *runInstancesResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := &runInstancesResponse{reservationXML: reservationXML{ReservationID: rid, OwnerID: s.opts.AccountID}}
	for _, id := range ids {
		out.Instances = append(out.Instances, s.instanceXMLLocked(s.instances[id]))
	}
	return out
}

type describeInstancesResponse struct {
	reply
	Reservations []reservationXML `xml:"reservationSet>item"`
	NextToken    string           `xml:"nextToken,omitempty"`
}

// describeInstances lists instances in launch order, grouped by reservation within each page. An instance still
// hidden by eventual consistency is absent, and InvalidInstanceID.NotFound when asked for by ID; terminated
// instances stay listed for Options.TerminatedRetention.
func (s *Server) describeInstances(q params) (any, error) {
	fs, err := q.filters("instance-id", "instance-state-name", "instance-state-code", "subnet-id", "vpc-id",
		"private-ip-address", "image-id", "instance-type", "client-token", "reservation-id", "availability-zone")
	if err != nil {
		return nil, err
	}
	ids := q.list("InstanceId")
	if len(ids) > 0 && q.has("MaxResults") {
		return nil, errCode("InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	visible := func(in *instance) bool {
		return in.hiddenFor == 0 && !(in.state == "terminated" && now.Sub(in.endTime) > s.opts.TerminatedRetention)
	}
	var cands []*instance
	if len(ids) > 0 {
		for _, id := range ids {
			in, ok := s.instances[id]
			if !ok || !visible(in) {
				s.decayHiddenLocked()
				return nil, notFound(id)
			}
			cands = append(cands, in)
		}
	} else {
		for _, in := range s.instances {
			if visible(in) {
				cands = append(cands, in)
			}
		}
	}
	s.decayHiddenLocked()
	slices.SortFunc(cands, func(a, b *instance) int { return int(a.seq - b.seq) })
	var match []*instance
	for _, in := range cands {
		if matchAll(fs, in.tags, func(name string) []string {
			switch name {
			case "instance-id":
				return []string{in.id}
			case "instance-state-name":
				return []string{in.state}
			case "instance-state-code":
				return []string{itoa(stateCodes[in.state])}
			case "subnet-id":
				return []string{in.subnet.ID}
			case "vpc-id":
				return []string{in.subnet.VpcID}
			case "private-ip-address":
				return []string{in.privateIP}
			case "image-id":
				return []string{in.imageID}
			case "instance-type":
				return []string{in.instanceType}
			case "client-token":
				return []string{in.clientToken}
			case "reservation-id":
				return []string{in.reservationID}
			case "availability-zone":
				return []string{in.subnet.AvailabilityZone}
			}
			return nil
		}) {
			match = append(match, in)
		}
	}
	got, next, err := page(q, match, func(in *instance) int64 { return in.seq }, 5, 1000)
	if err != nil {
		return nil, err
	}
	out := &describeInstancesResponse{NextToken: next}
	for _, in := range got {
		n := len(out.Reservations)
		if n == 0 || out.Reservations[n-1].ReservationID != in.reservationID {
			out.Reservations = append(out.Reservations, reservationXML{ReservationID: in.reservationID, OwnerID: s.opts.AccountID})
			n++
		}
		out.Reservations[n-1].Instances = append(out.Reservations[n-1].Instances, s.instanceXMLLocked(in))
	}
	return out, nil
}

// decayHiddenLocked counts one DescribeInstances against every hidden instance.
func (s *Server) decayHiddenLocked() {
	for _, in := range s.instances {
		if in.hiddenFor > 0 {
			in.hiddenFor--
		}
	}
}

type stateChangeXML struct {
	InstanceID string   `xml:"instanceId"`
	Current    stateXML `xml:"currentState"`
	Previous   stateXML `xml:"previousState"`
}

type terminateResponse struct {
	reply
	Changes []stateChangeXML `xml:"instancesSet>item"`
}

// terminateInstances moves each instance to shutting-down (a no-op for one already ending); every ID must exist.
func (s *Server) terminateInstances(q params) (any, error) {
	ids := q.list("InstanceId")
	if len(ids) == 0 {
		return nil, errCode("MissingParameter", "The request must contain the parameter InstanceId")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if _, ok := s.instances[id]; !ok {
			return nil, notFound(id)
		}
	}
	out := &terminateResponse{}
	for _, id := range ids {
		in := s.instances[id]
		prev := in.state
		s.endLocked(in, "terminated", "User initiated ("+s.opts.Now().UTC().Format("2006-01-02 15:04:05 MST")+")",
			"Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown")
		out.Changes = append(out.Changes, stateChangeXML{id, stateXML{stateCodes[in.state], in.state}, stateXML{stateCodes[prev], prev}})
	}
	return out, nil
}

// start runs the instance's Runner.Start after the transition gate and moves it to running (or terminated).
// ctx is cancelled when the instance is terminated while pending.
func (s *Server) start(ctx context.Context, in *instance, view Instance) {
	go func() {
		err := s.faults.gate(ctx, s.opts.TransitionDelay)
		if err == nil {
			err = s.runner.Start(ctx, view)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		in.startErr = err
		close(in.started)
		if in.state != "pending" {
			return // ending while starting: endLocked's goroutine finishes it
		}
		if err != nil {
			in.state, in.endTime = "terminated", s.opts.Now()
			in.reasonCode, in.reasonMessage = "Server.InternalError", "Server.InternalError: Internal error on launch"
			delete(s.usedIPs[in.subnet.ID], in.privateIP)
		} else {
			in.state = "running"
		}
		s.notifyLocked()
	}()
}
