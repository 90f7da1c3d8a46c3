package vm

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/provider/aws"
	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/provider/vm/vmtest"
)

// TestAWSBackendConformance runs the backend conformance kit against the aws backend as the node opens it
// (aws.Open: the SDK's clients, the node's CA in a state directory) over the local EC2 whose instances are QEMU VMs
// (devcloud/ec2 with vmrunner), in this test's network namespace: real boots of an ec2-format image under OVMF,
// the real agent reading its user-data over IMDSv2 and serving TLS on the instance's private address. The image
// is published once, before the kit; every VM of the kit boots from that AMI.
func TestAWSBackendConformance(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	img := ec2Image(t, dir)
	srv, url := localCloud(t, dir, "i2kconf")

	// The namespace's 169.254.169.254 is the instances' metadata service, not the node's: the SDK must not ask it.
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	creds := credentials.NewStaticCredentialsProvider("AKIDCONF", "conformance-secret", "")
	httpc := &http.Client{Transport: ec2.BufferRequestBodies(http.DefaultTransport)}
	ec2c := awsec2.NewFromConfig(sdkaws.Config{Region: "us-east-1", Credentials: creds, HTTPClient: httpc},
		func(o *awsec2.Options) { o.BaseEndpoint = sdkaws.String(url) })
	cfg := aws.Config{Region: "us-east-1", Cluster: "conformance", Node: "i2kit-conformance", Endpoint: url,
		Subnets: []string{ec2.DefaultSubnets()[0].ID}, SecurityGroups: []string{ec2.DefaultSecurityGroups()[0].ID},
		InstanceTypes: []string{"t3"}, StateDir: filepath.Join(dir, "aws")}
	cfg.SyncPeriod.Duration = time.Second // an instance ended from outside shows within a second
	outer := t                            // a backend lives as long as the whole kit, not the subtest that made it
	open := func(t *testing.T, notify func(vm.Status)) *aws.Backend {
		// The SDK's own HTTP client, as the node's: only the credentials are the test's.
		b, err := aws.Open(ctx, cfg, notify, config.WithCredentialsProvider(creds))
		if err != nil {
			t.Fatal(err)
		}
		outer.Cleanup(func() { b.Close() })
		return b
	}
	t0 := time.Now()
	ami, err := open(t, nil).Publish(ctx, img)
	if err != nil {
		t.Fatalf("publishing the image: %v", err)
	}
	t.Logf("image of %d MiB published as %s in %s", img.Size>>20, ami, time.Since(t0).Round(time.Millisecond))

	// instancesOf lists the instances of pod uid in the given states, by the tag the backend sets.
	instancesOf := func(t *testing.T, uid string, states ...string) []ec2types.Instance {
		out, err := ec2c.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{Filters: []ec2types.Filter{
			{Name: sdkaws.String("tag:" + aws.TagPodUID), Values: []string{uid}},
			{Name: sdkaws.String("instance-state-name"), Values: states}}})
		if err != nil {
			t.Fatal(err)
		}
		var all []ec2types.Instance
		for _, r := range out.Reservations {
			all = append(all, r.Instances...)
		}
		return all
	}
	vmtest.Run(t, vmtest.Harness{
		New: func(t *testing.T, notify func(vm.Status)) vm.Backend { return open(t, notify) },
		Plan: func(uid string) vm.Plan {
			return vm.Plan{UID: uid, Namespace: "default", Name: "pod-" + uid, Published: ami, MemoryMiB: 128, CPUs: 1}
		},
		KillOutside: func(t *testing.T, st vm.Status) {
			if err := srv.TerminateOutside(st.ID); err != nil {
				t.Fatal(err)
			}
		},
		// Terminate returns once EC2 took the call (the instance shutting down, as on EC2); the instance then ends
		// within a bound, and nothing of its VM (QEMU, volumes, TAP) is left in the runner.
		Leftovers: func(t *testing.T, uid string) []string {
			var left []string
			for _, in := range instancesOf(t, uid, "pending", "running", "stopping", "stopped") {
				left = append(left, sdkaws.ToString(in.InstanceId)+" "+string(in.State.Name))
			}
			for _, in := range instancesOf(t, uid, "shutting-down", "terminated") {
				id := sdkaws.ToString(in.InstanceId)
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := srv.WaitState(wctx, id, "terminated")
				cancel()
				if err != nil {
					left = append(left, id+" not terminated: "+err.Error())
				}
				if _, err := os.Stat(filepath.Join(dir, "instances", id)); err == nil {
					left = append(left, "the runner's directory of "+id)
				}
			}
			return left
		},
		BootTimeout: 3 * time.Minute,
	})
	t.Logf("the kit ran in %s after the image was published", time.Since(t0).Round(time.Second))
}
