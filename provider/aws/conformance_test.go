package aws_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	devec2 "github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/provider/aws"
	"github.com/i2kit/i2kit/provider/aws/awstest"
	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/provider/vm/vmtest"
	"github.com/i2kit/i2kit/vmimage"
)

// fakeAgents is what an instance of the local EC2 endpoint is in these tests: an agent without a VM
// (awstest.FakeAgent) serving on the instance's private IP, announcing its key on the instance's console, and
// powering the instance off when asked.
type fakeAgents struct {
	mu     sync.Mutex
	agents map[string]*awstest.FakeAgent
}

func (f *fakeAgents) Start(_ context.Context, inst devec2.Instance) error {
	a, err := awstest.NewFakeAgent(inst.UserData, inst.PrivateIP, func() { inst.Exited("the agent powered off") })
	if err != nil {
		return err
	}
	if _, err := inst.Console.Write([]byte("[    0.42] booting\n" + a.ConsoleLine())); err != nil {
		a.Close()
		return err
	}
	f.mu.Lock()
	f.agents[inst.ID] = a
	f.mu.Unlock()
	return nil
}

func (f *fakeAgents) Stop(_ context.Context, id string) error {
	f.mu.Lock()
	a := f.agents[id]
	delete(f.agents, id)
	f.mu.Unlock()
	if a != nil {
		return a.Close()
	}
	return nil
}

// cloud is the local EC2 endpoint and the real SDK's clients pointed at it.
type cloud struct {
	srv *devec2.Server
	ec2 *ec2.Client
	ebs *ebs.Client
}

// subnet is on loopback (127/8), so that the fake agents listen on their instances' private IPs.
var subnet = devec2.Subnet{ID: "subnet-0a0a0a0a0a0a0a0a1", VpcID: devec2.DefaultVpcID, CIDR: "127.77.1.0/24", AvailabilityZone: "us-east-1a"}

func newCloud(t *testing.T, runner devec2.Runner) *cloud {
	t.Helper()
	srv := devec2.New(devec2.Options{Subnets: []devec2.Subnet{subnet}, Runner: runner})
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	cfg := sdkaws.Config{Region: "us-east-1", BaseEndpoint: sdkaws.String(hs.URL),
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		HTTPClient:  &http.Client{Transport: devec2.BufferRequestBodies(http.DefaultTransport)}}
	return &cloud{srv: srv, ec2: ec2.NewFromConfig(cfg), ebs: ebs.NewFromConfig(cfg)}
}

func testConfig(cluster string) aws.Config {
	return aws.Config{Region: "us-east-1", Cluster: cluster, Node: "i2kit-test", Subnets: []string{subnet.ID},
		SecurityGroups: []string{devec2.DefaultSecurityGroups()[0].ID}, AgentPort: 17443}
}

// ec2Image is a small image in the ec2 format: its disk's bytes matter to the snapshot, not to the fake agents.
func ec2Image(t *testing.T) *vmimage.Image {
	t.Helper()
	disk := make([]byte, 3<<20)
	copy(disk, "i2kit test disk")
	copy(disk[2<<20:], "second MiB")
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(path, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(disk)
	return &vmimage.Image{Key: hex.EncodeToString(sum[:]), Format: aws.Format, Raw: path, Size: int64(len(disk))}
}

// TestAWSBackendConformance runs the backend conformance kit against the aws backend over the local EC2 endpoint,
// with the real SDK: launches, listings, terminations and the image's publication are real calls; the instances'
// agents are fake (real boots are the devcloud's).
func TestAWSBackendConformance(t *testing.T) {
	ctx := context.Background()
	c := newCloud(t, &fakeAgents{agents: map[string]*awstest.FakeAgent{}})
	cfg := testConfig("conformance")
	stateDir := t.TempDir()
	var ami string
	outer := t // a backend lives as long as the whole kit, not the subtest that made it
	newBackend := func(t *testing.T, notify func(vm.Status)) *aws.Backend {
		ca, err := aws.LoadCA("", "", stateDir) // a restarted node finds its CA again
		if err != nil {
			t.Fatal(err)
		}
		b, err := aws.New(ctx, cfg, c.ec2, aws.NewChannel(c.ec2, ca, cfg.AgentPort), notify)
		if err != nil {
			t.Fatal(err)
		}
		outer.Cleanup(func() { b.Close() })
		b.UsePublisher(c.ebs, aws.UploadOptions{})
		return b
	}
	b := newBackend(t, nil)
	var err error
	if ami, err = b.Publish(ctx, ec2Image(t)); err != nil {
		t.Fatalf("publishing the test image: %v", err)
	}
	cfg.SyncPeriod.Duration = time.Second // an instance ended from outside shows within a second
	vmtest.Run(t, vmtest.Harness{
		New: func(t *testing.T, notify func(vm.Status)) vm.Backend { return newBackend(t, notify) },
		Plan: func(uid string) vm.Plan {
			return vm.Plan{UID: uid, Namespace: "default", Name: "pod-" + uid, Published: ami, MemoryMiB: 256, CPUs: 1}
		},
		KillOutside: func(t *testing.T, st vm.Status) {
			if err := c.srv.TerminateOutside(st.ID); err != nil {
				t.Fatal(err)
			}
		},
		Leftovers: func(t *testing.T, uid string) []string {
			out, err := c.ec2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []ec2types.Filter{
				{Name: sdkaws.String("tag:" + aws.TagPodUID), Values: []string{uid}},
				{Name: sdkaws.String("instance-state-name"), Values: []string{"pending", "running", "stopping", "stopped"}},
			}})
			if err != nil {
				t.Fatal(err)
			}
			var left []string
			for _, r := range out.Reservations {
				for _, i := range r.Instances {
					left = append(left, *i.InstanceId+" "+string(i.State.Name))
				}
			}
			return left
		},
		BootTimeout: 30 * time.Second,
	})
}
