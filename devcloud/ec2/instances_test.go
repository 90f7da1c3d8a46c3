package ec2

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func TestRunDescribeTerminate(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := ctxT(t)
	ami, snap := e.image(t, "pod-image-1")
	out, err := e.run(t, ami, "pod-uid-1", 1, "i2kit.io/cluster", "c1", "i2kit.io/pod-uid", "uid-1")
	if err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	if len(out.Instances) != 1 || out.Instances[0].State.Name != types.InstanceStateNamePending {
		t.Fatalf("RunInstances answered %+v, want one pending instance", out.Instances)
	}
	id := aws.ToString(out.Instances[0].InstanceId)
	if err := e.srv.WaitState(ctx, id, "running"); err != nil {
		t.Fatal(err)
	}
	d, err := e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("tag:i2kit.io/cluster"), Values: []string{"c1"}},
		{Name: aws.String("instance-state-name"), Values: []string{"pending", "running"}}}})
	if err != nil {
		t.Fatalf("DescribeInstances: %v", err)
	}
	if len(d.Reservations) != 1 || len(d.Reservations[0].Instances) != 1 {
		t.Fatalf("DescribeInstances = %+v, want one instance", d.Reservations)
	}
	in := d.Reservations[0].Instances[0]
	subnet := DefaultSubnets()[0]
	ip := netip.MustParseAddr(aws.ToString(in.PrivateIpAddress))
	checks := []struct {
		name      string
		got, want any
	}{
		{"id", aws.ToString(in.InstanceId), id},
		{"state", in.State.Name, types.InstanceStateNameRunning},
		{"state code", aws.ToInt32(in.State.Code), int32(16)},
		{"image", aws.ToString(in.ImageId), ami},
		{"type", in.InstanceType, types.InstanceTypeT3Micro},
		{"subnet", aws.ToString(in.SubnetId), subnet.ID},
		{"vpc", aws.ToString(in.VpcId), subnet.VpcID},
		{"ip in subnet", netip.MustParsePrefix(subnet.CIDR).Contains(ip), true},
		{"client token", aws.ToString(in.ClientToken), "pod-uid-1"},
		{"tags", tagMap(in.Tags)["i2kit.io/pod-uid"], "uid-1"},
		{"http tokens", in.MetadataOptions.HttpTokens, types.HttpTokensStateRequired},
		{"hop limit", aws.ToInt32(in.MetadataOptions.HttpPutResponseHopLimit), int32(1)},
		{"launch time set", in.LaunchTime != nil && !in.LaunchTime.IsZero(), true},
		{"group", aws.ToString(in.SecurityGroups[0].GroupId), DefaultSecurityGroups()[0].ID},
		{"az", aws.ToString(in.Placement.AvailabilityZone), subnet.AvailabilityZone},
		{"boot mode", in.BootMode, types.BootModeValuesUefi},
		{"root device", aws.ToString(in.RootDeviceName), "/dev/xvda"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	info, _ := e.srv.Instance(id)
	if string(info.UserData) != `{"version":1}` {
		t.Errorf("user data = %q", info.UserData)
	}

	term, err := e.ec2.TerminateInstances(ctx, &awsec2.TerminateInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		t.Fatalf("TerminateInstances: %v", err)
	}
	if c := term.TerminatingInstances[0]; c.PreviousState.Name != types.InstanceStateNameRunning || c.CurrentState.Name != types.InstanceStateNameShuttingDown {
		t.Errorf("TerminateInstances state change = %v → %v", c.PreviousState.Name, c.CurrentState.Name)
	}
	if err := e.srv.WaitState(ctx, id, "terminated"); err != nil {
		t.Fatal(err)
	}
	d, err = e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		t.Fatalf("DescribeInstances: %v", err)
	}
	if got := d.Reservations[0].Instances[0]; got.State.Name != types.InstanceStateNameTerminated || got.StateReason == nil {
		t.Errorf("after termination: state %v, reason %v", got.State.Name, got.StateReason)
	}
	// A repeated terminate is a no-op: terminated → terminated.
	term, err = e.ec2.TerminateInstances(ctx, &awsec2.TerminateInstancesInput{InstanceIds: []string{id}})
	if err != nil || term.TerminatingInstances[0].CurrentState.Name != types.InstanceStateNameTerminated {
		t.Errorf("second TerminateInstances = %+v, %v", term, err)
	}
	// The snapshot is the image's: it cannot go while the image is registered.
	_, err = e.ec2.DeleteSnapshot(ctx, &awsec2.DeleteSnapshotInput{SnapshotId: aws.String(snap)})
	wantCode(t, err, "InvalidSnapshot.InUse")
}

func TestRunInstancesIdempotent(t *testing.T) {
	e := newEnv(t, Options{})
	ami, _ := e.image(t, "idem")
	first, err := e.run(t, ami, "token-a", 2, "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.run(t, ami, "token-a", 2, "k", "v")
	if err != nil {
		t.Fatalf("repeat RunInstances: %v", err)
	}
	if !slices.Equal(ids(first), ids(again)) || aws.ToString(first.ReservationId) != aws.ToString(again.ReservationId) {
		t.Errorf("same token gave %v then %v", ids(first), ids(again))
	}
	_, err = e.run(t, ami, "token-a", 2, "k", "other")
	wantCode(t, err, "IdempotentParameterMismatch")
	if n := len(e.srv.instances); n != 2 {
		t.Errorf("%d instances exist, want 2", n)
	}
}

func TestRunInstancesRefusals(t *testing.T) {
	e := newEnv(t, Options{ImagePendingDescribes: 1})
	ami, _ := e.image(t, "refusals")
	for _, c := range []struct {
		name string
		edit func(*awsec2.RunInstancesInput)
		code string
	}{
		{"pending image", func(*awsec2.RunInstancesInput) {}, "InvalidAMIID.Unavailable"},
		{"unknown image", func(in *awsec2.RunInstancesInput) { in.ImageId = aws.String("ami-0000000000000dead") }, "InvalidAMIID.NotFound"},
		{"unknown type", func(in *awsec2.RunInstancesInput) { in.InstanceType = types.InstanceTypeP4d24xlarge }, "InvalidParameterValue"},
		{"unknown subnet", func(in *awsec2.RunInstancesInput) { in.SubnetId = aws.String("subnet-0000000000000dead") }, "InvalidSubnetID.NotFound"},
		{"unknown group", func(in *awsec2.RunInstancesInput) { in.SecurityGroupIds = []string{"sg-0000000000000dead"} }, "InvalidGroup.NotFound"},
		{"bad user data", func(in *awsec2.RunInstancesInput) { in.UserData = aws.String("not base64!") }, "InvalidParameterValue"},
		{"hop limit", func(in *awsec2.RunInstancesInput) { in.MetadataOptions.HttpPutResponseHopLimit = aws.Int32(65) }, "InvalidParameterValue"},
		{"min above max", func(in *awsec2.RunInstancesInput) { in.MinCount = aws.Int32(3) }, "InvalidParameterValue"},
		{"volume tag type", func(in *awsec2.RunInstancesInput) { in.TagSpecifications[0].ResourceType = types.ResourceTypeVpc }, "InvalidParameterValue"},
		{"root volume override", func(in *awsec2.RunInstancesInput) {
			in.BlockDeviceMappings = []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/xvda"), Ebs: &types.EbsBlockDevice{VolumeSize: aws.Int32(0)}}}
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := runInput(ami, "", 1)
			in.ClientToken = nil
			c.edit(in)
			_, err := e.ec2.RunInstances(ctxT(t), in)
			if c.code == "" {
				if err != nil {
					t.Fatalf("RunInstances: %v", err)
				}
				return
			}
			wantCode(t, err, c.code)
		})
		if c.name == "pending image" { // the one DescribeImages makes it available for the rest
			if _, err := e.ec2.DescribeImages(ctxT(t), &awsec2.DescribeImagesInput{ImageIds: []string{ami}}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestDescribeInstancesPagingAndFilters(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := ctxT(t)
	ami, _ := e.image(t, "paging")
	mine, err := e.run(t, ami, "many", 12, "node", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.run(t, ami, "other", 3, "node", "n2"); err != nil {
		t.Fatal(err)
	}
	var got []string
	var pages int
	p := awsec2.NewDescribeInstancesPaginator(e.ec2, &awsec2.DescribeInstancesInput{MaxResults: aws.Int32(5),
		Filters: []types.Filter{{Name: aws.String("tag:node"), Values: []string{"n1"}}}})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		pages++
		for _, r := range out.Reservations {
			for _, in := range r.Instances {
				got = append(got, aws.ToString(in.InstanceId))
			}
		}
	}
	if !slices.Equal(got, ids(mine)) || pages != 3 {
		t.Errorf("paged %d pages: %v, want 3 pages of %v", pages, got, ids(mine))
	}
	ip := aws.ToString(mine.Instances[4].PrivateIpAddress)
	for _, c := range []struct {
		filter types.Filter
		want   int
	}{
		{types.Filter{Name: aws.String("private-ip-address"), Values: []string{ip}}, 1},
		{types.Filter{Name: aws.String("tag-key"), Values: []string{"node"}}, 15},
		{types.Filter{Name: aws.String("tag:node"), Values: []string{"n*"}}, 15},
		{types.Filter{Name: aws.String("instance-id"), Values: ids(mine)[:2]}, 2},
		{types.Filter{Name: aws.String("subnet-id"), Values: []string{DefaultSubnets()[1].ID}}, 0},
		{types.Filter{Name: aws.String("instance-state-name"), Values: []string{"terminated"}}, 0},
	} {
		out, err := e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{Filters: []types.Filter{c.filter}})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range out.Reservations {
			n += len(r.Instances)
		}
		if n != c.want {
			t.Errorf("filter %s=%v matched %d, want %d", aws.ToString(c.filter.Name), c.filter.Values, n, c.want)
		}
	}
	_, err = e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{InstanceIds: []string{"i-0000000000000dead"}})
	wantCode(t, err, "InvalidInstanceID.NotFound")
	_, err = e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{Filters: []types.Filter{{Name: aws.String("bogus"), Values: []string{"x"}}}})
	wantCode(t, err, "InvalidParameterValue")
	_, err = e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{NextToken: aws.String("garbage")})
	wantCode(t, err, "InvalidParameterValue")
}

func TestPrivateIPsAreUniqueAndBounded(t *testing.T) {
	small := Subnet{ID: "subnet-0000000000000small", VpcID: DefaultVpcID, CIDR: "10.9.0.0/28", AvailabilityZone: "us-east-1a"}
	e := newEnv(t, Options{Subnets: []Subnet{small}})
	ctx := ctxT(t)
	ami, _ := e.image(t, "ips")
	in := runInput(ami, "", 1)
	in.ClientToken, in.SubnetId, in.MinCount, in.MaxCount = nil, aws.String(small.ID), aws.Int32(1), aws.Int32(20)
	out, err := e.ec2.RunInstances(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	// A /28 has 16 addresses; EC2 keeps the first four and the last.
	if len(out.Instances) != 11 {
		t.Fatalf("launched %d into a /28, want 11", len(out.Instances))
	}
	seen := map[string]bool{}
	for _, i := range out.Instances {
		ip := aws.ToString(i.PrivateIpAddress)
		if seen[ip] || ip == "10.9.0.0" || ip == "10.9.0.1" || ip == "10.9.0.15" {
			t.Errorf("address %s is reused or reserved", ip)
		}
		seen[ip] = true
	}
	in.MaxCount, in.ClientToken = aws.Int32(1), nil // the SDK wrote its generated token into in
	_, err = e.ec2.RunInstances(ctx, in)
	wantCode(t, err, "InsufficientFreeAddressesInSubnet")
	// Terminating frees the address for the next launch.
	first := aws.ToString(out.Instances[0].InstanceId)
	if _, err := e.ec2.TerminateInstances(ctx, &awsec2.TerminateInstancesInput{InstanceIds: []string{first}}); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.WaitState(ctx, first, "terminated"); err != nil {
		t.Fatal(err)
	}
	in.ClientToken = nil
	again, err := e.ec2.RunInstances(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if got := aws.ToString(again.Instances[0].PrivateIpAddress); got != aws.ToString(out.Instances[0].PrivateIpAddress) {
		t.Errorf("relaunch took %s, want the freed %s", got, aws.ToString(out.Instances[0].PrivateIpAddress))
	}
}

func TestConsoleAndMetadataOptions(t *testing.T) {
	r := newFakeRunner()
	e := newEnv(t, Options{Runner: r})
	ctx := ctxT(t)
	ami, _ := e.image(t, "console")
	out, err := e.run(t, ami, "c", 1)
	if err != nil {
		t.Fatal(err)
	}
	id := ids(out)[0]
	c, err := e.ec2.GetConsoleOutput(ctx, &awsec2.GetConsoleOutputInput{InstanceId: aws.String(id), Latest: aws.Bool(true)})
	if err != nil || c.Output != nil {
		t.Fatalf("console before boot = %v, %v; want empty", c, err)
	}
	r.release(id)
	if err := e.srv.WaitState(ctx, id, "running"); err != nil {
		t.Fatal(err)
	}
	c, err = e.ec2.GetConsoleOutput(ctx, &awsec2.GetConsoleOutputInput{InstanceId: aws.String(id), Latest: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	if want := b64([]byte("booted " + id + "\n")); aws.ToString(c.Output) != want {
		t.Errorf("console = %q, want %q", aws.ToString(c.Output), want)
	}
	_, err = e.ec2.GetConsoleOutput(ctx, &awsec2.GetConsoleOutputInput{InstanceId: aws.String("i-0000000000000dead")})
	wantCode(t, err, "InvalidInstanceID.NotFound")

	m, err := e.ec2.ModifyInstanceMetadataOptions(ctx, &awsec2.ModifyInstanceMetadataOptionsInput{InstanceId: aws.String(id),
		HttpEndpoint: types.InstanceMetadataEndpointStateDisabled})
	if err != nil {
		t.Fatal(err)
	}
	if m.InstanceMetadataOptions.HttpEndpoint != types.InstanceMetadataEndpointStateDisabled ||
		m.InstanceMetadataOptions.HttpTokens != types.HttpTokensStateRequired {
		t.Errorf("ModifyInstanceMetadataOptions answered %+v", m.InstanceMetadataOptions)
	}
	info, _ := e.srv.Instance(id)
	if info.Metadata.HttpEndpoint != "disabled" || info.Metadata.HttpTokens != "required" || info.Metadata.HttpPutResponseHopLimit != 1 {
		t.Errorf("metadata options now %+v", info.Metadata)
	}
	_, err = e.ec2.ModifyInstanceMetadataOptions(ctx, &awsec2.ModifyInstanceMetadataOptionsInput{InstanceId: aws.String(id),
		HttpPutResponseHopLimit: aws.Int32(0)})
	if err == nil {
		t.Error("a hop limit of 0 was accepted")
	}
}
