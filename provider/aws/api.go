// Package aws is the EC2 backend: every pod its own EC2 instance, booted from an AMI that holds only a kernel, the
// agent and the pod's container filesystems.
//
// Layout: one AMI per pod image (the vmimage raw-efi disk written straight into an EBS snapshot with the EBS
// direct APIs, then registered), shared by every pod of that image and found again by its content-digest tag. One
// instance per pod, launched with a ClientToken derived from the pod UID and tagged at creation; the cloud view of
// all the node's instances comes from one paginated, tag-filtered DescribeInstances per sync. The agent channel is
// TLS on the instance's private IP, the agent's key pinned from its serial console.
package aws

import (
	"context"
	"net"

	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/i2kit/i2kit/provider/vm"
)

// EC2API is the part of the EC2 API the backend calls; *ec2.Client implements it, tests give fakes. Every method
// here is an IAM action the node needs: iam-policy.json lists them, and a test keeps the two in step.
type EC2API interface {
	RunInstances(context.Context, *ec2.RunInstancesInput, ...func(*ec2.Options)) (*ec2.RunInstancesOutput, error)
	DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
	TerminateInstances(context.Context, *ec2.TerminateInstancesInput, ...func(*ec2.Options)) (*ec2.TerminateInstancesOutput, error)
	CreateTags(context.Context, *ec2.CreateTagsInput, ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error)
	DescribeInstanceTypes(context.Context, *ec2.DescribeInstanceTypesInput, ...func(*ec2.Options)) (*ec2.DescribeInstanceTypesOutput, error)
	DescribeSubnets(context.Context, *ec2.DescribeSubnetsInput, ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error)
	DescribeSecurityGroups(context.Context, *ec2.DescribeSecurityGroupsInput, ...func(*ec2.Options)) (*ec2.DescribeSecurityGroupsOutput, error)
	GetConsoleOutput(context.Context, *ec2.GetConsoleOutputInput, ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error)
	ModifyInstanceMetadataOptions(context.Context, *ec2.ModifyInstanceMetadataOptionsInput, ...func(*ec2.Options)) (*ec2.ModifyInstanceMetadataOptionsOutput, error)
	RegisterImage(context.Context, *ec2.RegisterImageInput, ...func(*ec2.Options)) (*ec2.RegisterImageOutput, error)
	DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error)
	DeregisterImage(context.Context, *ec2.DeregisterImageInput, ...func(*ec2.Options)) (*ec2.DeregisterImageOutput, error)
	DescribeSnapshots(context.Context, *ec2.DescribeSnapshotsInput, ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error)
	DeleteSnapshot(context.Context, *ec2.DeleteSnapshotInput, ...func(*ec2.Options)) (*ec2.DeleteSnapshotOutput, error)
}

// EBSAPI is the part of the EBS direct APIs the backend calls to write a disk into a snapshot; *ebs.Client
// implements it.
type EBSAPI interface {
	StartSnapshot(context.Context, *ebs.StartSnapshotInput, ...func(*ebs.Options)) (*ebs.StartSnapshotOutput, error)
	PutSnapshotBlock(context.Context, *ebs.PutSnapshotBlockInput, ...func(*ebs.Options)) (*ebs.PutSnapshotBlockOutput, error)
	CompleteSnapshot(context.Context, *ebs.CompleteSnapshotInput, ...func(*ebs.Options)) (*ebs.CompleteSnapshotOutput, error)
}

var (
	_ EC2API = (*ec2.Client)(nil)
	_ EBSAPI = (*ebs.Client)(nil)
)

// agentChannel is how the backend reaches its instances' agents (channel.go): what an instance's user-data says
// (public material only), and a mutually authenticated TLS connection to the agent of a running instance, whose
// key is pinned from the instance's console.
type agentChannel interface {
	UserData(p vm.Plan) ([]byte, error)
	Dial(ctx context.Context, instanceID, privateIP string) (net.Conn, error)
}
