package aws

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	devec2 "github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
)

// gcCloud is the local EC2 endpoint with the real SDK's clients, its clock and the backends' shared by hand.
type gcCloud struct {
	srv   *devec2.Server
	ec2   *ec2.Client
	ebs   *ebs.Client
	clock *clock
}

// day is what the tests move the clock by; the bound is the default, a week.
const day = 24 * time.Hour

func newGCCloud(t *testing.T) *gcCloud {
	t.Helper()
	clk := &clock{t: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	srv := devec2.New(devec2.Options{Now: clk.now})
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	cfg := sdkaws.Config{Region: "us-east-1", BaseEndpoint: sdkaws.String(hs.URL),
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		HTTPClient:  &http.Client{Transport: devec2.BufferRequestBodies(http.DefaultTransport)}}
	return &gcCloud{srv: srv, ec2: ec2.NewFromConfig(cfg), ebs: ebs.NewFromConfig(cfg), clock: clk}
}

// backend is a node of cluster over the endpoint (over api when given), on the cloud's clock; its loops never run
// by themselves: the tests call recordUses and collectImages.
func (c *gcCloud) backend(t *testing.T, cluster, node string, api ...EC2API) *Backend {
	t.Helper()
	var client EC2API = c.ec2
	if len(api) > 0 {
		client = api[0]
	}
	cfg := Config{Region: "us-east-1", Cluster: cluster, Node: node, Subnets: []string{devec2.DefaultSubnets()[0].ID},
		SecurityGroups: []string{devec2.DefaultSecurityGroups()[0].ID}, InstanceTypes: []string{"t3"},
		SyncPeriod: metav1.Duration{Duration: time.Hour}}
	b, err := newBackend(context.Background(), cfg, client, &fakeChannel{}, nil, func(b *Backend) {
		b.now = c.clock.now
		b.gc.first = 1000 * time.Hour
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	b.UsePublisher(c.ebs, UploadOptions{PollBase: time.Millisecond, PollMax: 10 * time.Millisecond})
	return b
}

// gcImage is a small ec2-format image whose content (hence key) is name's.
func gcImage(t *testing.T, name string) *vmimage.Image {
	t.Helper()
	disk := make([]byte, 1<<20)
	copy(disk, "i2kit image "+name)
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(path, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(disk)
	return &vmimage.Image{Key: hex.EncodeToString(sum[:]), Format: Format, Raw: path, Size: int64(len(disk))}
}

// publish publishes image name through b and returns its AMI and the AMI's snapshot.
func (c *gcCloud) publish(t *testing.T, b *Backend, name string) (ami, snap string) {
	t.Helper()
	ami, err := b.Publish(context.Background(), gcImage(t, name))
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.ec2.DescribeImages(context.Background(), &ec2.DescribeImagesInput{ImageIds: []string{ami}})
	if err != nil || len(out.Images) != 1 || len(out.Images[0].BlockDeviceMappings) != 1 {
		t.Fatalf("describing the new image %s: %+v, %v", ami, out, err)
	}
	return ami, sdkaws.ToString(out.Images[0].BlockDeviceMappings[0].Ebs.SnapshotId)
}

func (c *gcCloud) imageExists(t *testing.T, ami string) bool {
	t.Helper()
	_, err := c.ec2.DescribeImages(context.Background(), &ec2.DescribeImagesInput{ImageIds: []string{ami}})
	if errorCode(err) == "InvalidAMIID.NotFound" {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

func (c *gcCloud) snapshotExists(t *testing.T, snap string) bool {
	t.Helper()
	_, err := c.ec2.DescribeSnapshots(context.Background(), &ec2.DescribeSnapshotsInput{SnapshotIds: []string{snap}})
	if errorCode(err) == "InvalidSnapshot.NotFound" {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// lastUsedTag is the AMI's last-used tag, "" when it has none.
func (c *gcCloud) lastUsedTag(t *testing.T, ami string) string {
	t.Helper()
	out, err := c.ec2.DescribeImages(context.Background(), &ec2.DescribeImagesInput{ImageIds: []string{ami}})
	if err != nil || len(out.Images) != 1 {
		t.Fatalf("describing image %s: %v", ami, err)
	}
	return tagValue(out.Images[0].Tags, TagLastUsed)
}

func (c *gcCloud) tagImage(t *testing.T, ami, key, value string) {
	t.Helper()
	if _, err := c.ec2.CreateTags(context.Background(), &ec2.CreateTagsInput{Resources: []string{ami},
		Tags: []ec2types.Tag{{Key: sdkaws.String(key), Value: sdkaws.String(value)}}}); err != nil {
		t.Fatal(err)
	}
}

func collect(t *testing.T, b *Backend) imageGCResult {
	t.Helper()
	res, err := b.collectImages(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func gcPlan(uid, ami string) vm.Plan {
	return vm.Plan{UID: uid, Namespace: "default", Name: "pod-" + uid, Published: ami, MemoryMiB: 256, CPUs: 1}
}

// launchAndEnd launches a pod from ami on b and terminates it, waiting until its instance is terminated: the AMI
// is then used by no instance.
func (c *gcCloud) launchAndEnd(t *testing.T, b *Backend, uid, ami string) {
	t.Helper()
	ctx := context.Background()
	st, err := b.Launch(ctx, gcPlan(uid, ami))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Terminate(ctx, uid); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.srv.WaitState(wctx, st.ID, "terminated"); err != nil {
		t.Fatal(err)
	}
}

func TestImageGCCollectsAnUnusedImage(t *testing.T) {
	c := newGCCloud(t)
	b := c.backend(t, "c1", "n1")
	ami, snap := c.publish(t, b, "unused")

	c.clock.advance(7*day - time.Minute)
	if res := collect(t, b); len(res.Deregistered)+len(res.Deleted) > 0 {
		t.Fatalf("a pass within the bound removed %+v", res)
	}
	c.clock.advance(time.Minute)
	res := collect(t, b)
	if !slices.Equal(res.Deregistered, []string{ami}) || !slices.Equal(res.Deleted, []string{snap}) {
		t.Errorf("removed %+v, want image %s and snapshot %s", res, ami, snap)
	}
	if c.imageExists(t, ami) || c.snapshotExists(t, snap) {
		t.Errorf("image %s or snapshot %s is still there", ami, snap)
	}
	if res := collect(t, b); len(res.Deregistered)+len(res.Deleted) > 0 {
		t.Errorf("a second pass removed %+v", res)
	}
}

// TestImageGCKeepsARecentlyUsedImage: a launch's use, written to the tag, keeps the AMI for every node of the
// cluster; the bound counts from it.
func TestImageGCKeepsARecentlyUsedImage(t *testing.T) {
	c := newGCCloud(t)
	b1 := c.backend(t, "c1", "n1")
	ami, snap := c.publish(t, b1, "recent")
	c.clock.advance(6 * day)
	used := c.clock.now()
	c.launchAndEnd(t, b1, "pod-1", ami)
	if err := b1.recordUses(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := c.lastUsedTag(t, ami); got != used.Format(time.RFC3339) {
		t.Fatalf("last-used tag %q, want the launch's time %s", got, used.Format(time.RFC3339))
	}

	c.clock.advance(2 * day) // 8 days after its creation, 2 after its use
	b2 := c.backend(t, "c1", "n2")
	for _, b := range []*Backend{b2, b1} {
		if res := collect(t, b); len(res.Deregistered)+len(res.Deleted) > 0 {
			t.Fatalf("node %s removed %+v, used 2 days ago", b.cfg.Node, res)
		}
	}
	c.clock.advance(5 * day)
	res := collect(t, b2)
	if !slices.Equal(res.Deregistered, []string{ami}) || !slices.Equal(res.Deleted, []string{snap}) {
		t.Errorf("a week after its use: removed %+v, want %s and %s", res, ami, snap)
	}
}

// TestImageGCTrustsItsMemoryOnlyOnItsNode: a launch whose tag is not written yet keeps the AMI on its node; the
// other nodes only know the tag.
func TestImageGCTrustsItsMemoryOnlyOnItsNode(t *testing.T) {
	c := newGCCloud(t)
	b1 := c.backend(t, "c1", "n1")
	ami, _ := c.publish(t, b1, "memory")
	c.clock.advance(6 * day)
	c.launchAndEnd(t, b1, "pod-1", ami) // no recordUses: the tag is not written
	c.clock.advance(2 * day)
	if res := collect(t, b1); len(res.Deregistered) > 0 {
		t.Fatalf("the node that launched from it 2 days ago removed %+v", res)
	}
	b2 := c.backend(t, "c1", "n2")
	if res := collect(t, b2); !slices.Equal(res.Deregistered, []string{ami}) {
		t.Errorf("another node, which sees no tag, removed %+v; want %s", res, ami)
	}
}

// TestImageGCKeepsAnImageInUse: an instance of the cluster — another node's — keeps its AMI whatever the tag says.
func TestImageGCKeepsAnImageInUse(t *testing.T) {
	ctx := context.Background()
	c := newGCCloud(t)
	b1 := c.backend(t, "c1", "n1")
	ami, snap := c.publish(t, b1, "in use")
	c.tagImage(t, ami, TagLastUsed, c.clock.now().Format(time.RFC3339))
	out, err := c.ec2.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: sdkaws.String(ami), InstanceType: "t3.micro",
		MinCount: sdkaws.Int32(1), MaxCount: sdkaws.Int32(1), SubnetId: sdkaws.String(devec2.DefaultSubnets()[1].ID),
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeInstance, Tags: []ec2types.Tag{
			{Key: sdkaws.String(TagCluster), Value: sdkaws.String("c1")}, {Key: sdkaws.String(TagNode), Value: sdkaws.String("n2")}}}}})
	if err != nil {
		t.Fatal(err)
	}
	id := *out.Instances[0].InstanceId

	c.clock.advance(30 * day)
	if res := collect(t, b1); len(res.Deregistered)+len(res.Deleted) > 0 {
		t.Fatalf("removed %+v while instance %s runs from %s", res, id, ami)
	}
	if !c.imageExists(t, ami) || !c.snapshotExists(t, snap) {
		t.Fatal("the image in use or its snapshot is gone")
	}

	if _, err := c.ec2.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.srv.WaitState(wctx, id, "terminated"); err != nil {
		t.Fatal(err)
	}
	// b1 saw it in use just now; a node that did not goes by the tag.
	if res := collect(t, c.backend(t, "c1", "n3")); !slices.Equal(res.Deregistered, []string{ami}) {
		t.Errorf("once the instance ended: removed %+v, want %s", res, ami)
	}
}

// TestImageGCCountsAPublishAsUse: the AMI a Publish found for a pod about to launch is not collected before the
// launch.
func TestImageGCCountsAPublishAsUse(t *testing.T) {
	c := newGCCloud(t)
	ami, _ := c.publish(t, c.backend(t, "c1", "n1"), "republished")
	c.clock.advance(8 * day)
	b2 := c.backend(t, "c1", "n2")
	if again, _ := c.publish(t, b2, "republished"); again != ami {
		t.Fatalf("published again as %s, want the cluster's %s", again, ami)
	}
	if res := collect(t, b2); len(res.Deregistered) > 0 {
		t.Errorf("removed %+v, which it just published", res)
	}
}

// filterBlind is an EC2 endpoint that ignores the image and snapshot listings' filters, as emulators do.
type filterBlind struct{ EC2API }

func (f filterBlind) DescribeImages(ctx context.Context, in *ec2.DescribeImagesInput, o ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	c := *in
	c.Filters = nil
	return f.EC2API.DescribeImages(ctx, &c, o...)
}

func (f filterBlind) DescribeSnapshots(ctx context.Context, in *ec2.DescribeSnapshotsInput, o ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error) {
	c := *in
	c.Filters = nil
	return f.EC2API.DescribeSnapshots(ctx, &c, o...)
}

func TestImageGCKeepsOtherClustersImages(t *testing.T) {
	ctx := context.Background()
	c := newGCCloud(t)
	other := c.backend(t, "c2", "n1")
	ami, snap := c.publish(t, other, "theirs")
	orphan, err := other.pub.uploadImage(ctx, gcImage(t, "their orphan"))
	if err != nil {
		t.Fatal(err)
	}
	// A snapshot of the cluster without the digest tag: not the publisher's.
	foreign := c.startSnapshot(t, map[string]string{TagCluster: "c1"})
	c.clock.advance(30 * day)
	for _, api := range []EC2API{c.ec2, filterBlind{c.ec2}} {
		if res := collect(t, c.backend(t, "c1", "n1", api)); len(res.Deregistered)+len(res.Deleted) > 0 {
			t.Errorf("over %T: cluster c1 removed %+v, cluster c2's", api, res)
		}
	}
	for _, s := range []string{snap, orphan, foreign} {
		if !c.snapshotExists(t, s) {
			t.Errorf("snapshot %s is gone", s)
		}
	}
	if !c.imageExists(t, ami) {
		t.Errorf("image %s is gone", ami)
	}
}

// startSnapshot starts a snapshot with tags and leaves it pending: an upload that failed half way.
func (c *gcCloud) startSnapshot(t *testing.T, tags map[string]string) string {
	t.Helper()
	in := &ebs.StartSnapshotInput{VolumeSize: sdkaws.Int64(1)}
	for k, v := range tags {
		in.Tags = append(in.Tags, ebstypes.Tag{Key: sdkaws.String(k), Value: sdkaws.String(v)})
	}
	out, err := c.ebs.StartSnapshot(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	return *out.SnapshotId
}

func TestImageGCDeletesOrphanSnapshots(t *testing.T) {
	ctx := context.Background()
	c := newGCCloud(t)
	b := c.backend(t, "c1", "n1")
	ours := map[string]string{TagCluster: "c1", TagImageDigest: strings.Repeat("a", 64)}
	halfWay := c.startSnapshot(t, ours)
	unregistered, err := b.pub.uploadImage(ctx, gcImage(t, "never registered"))
	if err != nil {
		t.Fatal(err)
	}
	kept, keptSnap := c.publish(t, b, "kept")
	c.clock.advance(6 * day)
	c.launchAndEnd(t, b, "pod-1", kept)
	c.clock.advance(2 * day)
	young := c.startSnapshot(t, ours)

	c.srv.ResetCalls()
	res := collect(t, b)
	slices.Sort(res.Deleted)
	want := []string{halfWay, unregistered}
	slices.Sort(want)
	if len(res.Deregistered) > 0 || !slices.Equal(res.Deleted, want) {
		t.Errorf("removed %+v, want the snapshots %v", res, want)
	}
	if n := c.srv.Calls("DeleteSnapshot"); n != 2 {
		t.Errorf("%d DeleteSnapshot calls, want 2: the snapshot of a kept image is not asked for", n)
	}
	for _, s := range []string{keptSnap, young} {
		if !c.snapshotExists(t, s) {
			t.Errorf("snapshot %s is gone", s)
		}
	}
}

// TestImageGCGivesUpWhenUnsure: a failed listing of the instances removes nothing.
func TestImageGCGivesUpWhenUnsure(t *testing.T) {
	c := newGCCloud(t)
	b := c.backend(t, "c1", "n1")
	ami, _ := c.publish(t, b, "unsure")
	c.clock.advance(8 * day)
	c.srv.Deny("DescribeInstances")
	res, err := b.collectImages(context.Background())
	if err == nil || !strings.Contains(err.Error(), "ec2:DescribeInstances") || len(res.Deregistered) > 0 {
		t.Errorf("collect with DescribeInstances denied: %+v, %v", res, err)
	}
	if !c.imageExists(t, ami) {
		t.Error("the image is gone")
	}
	c.srv.Allow("DescribeInstances")
	if res := collect(t, b); !slices.Equal(res.Deregistered, []string{ami}) {
		t.Errorf("allowed again: removed %+v", res)
	}
}

// TestImageGCBoundsItsCalls: a pass lists once, asks about the stale images in one call, and removes at most
// maxDeletes things; the rest goes in the next pass.
func TestImageGCBoundsItsCalls(t *testing.T) {
	c := newGCCloud(t)
	b := c.backend(t, "c1", "n1")
	b.gc.maxDeletes = 3
	for _, name := range []string{"one", "two", "three"} {
		c.publish(t, b, name)
	}
	c.srv.ResetCalls()
	collect(t, b)
	if got := c.srv.CallCounts(); got["DescribeImages"] != 1 || got["DescribeSnapshots"] != 1 || len(got) != 2 {
		t.Errorf("a pass with nothing stale called %v; want one DescribeImages and one DescribeSnapshots", got)
	}
	c.clock.advance(8 * day)
	c.srv.ResetCalls()
	res := collect(t, b)
	if len(res.Deregistered) != 3 || len(res.Deleted) != 0 || c.srv.Calls("DescribeInstances") != 1 {
		t.Errorf("first pass removed %+v with %v calls; want the 3 images only, one DescribeInstances", res, c.srv.CallCounts())
	}
	if res := collect(t, b); len(res.Deleted) != 3 {
		t.Errorf("second pass removed %+v; want the 3 snapshots", res)
	}
}

// TestLastUsedTagAtMostHourly: launches mark the AMI used; the tag is written at most once an hour per AMI, and
// an AMI the node's instances run from keeps being marked.
func TestLastUsedTagAtMostHourly(t *testing.T) {
	ctx := context.Background()
	c := newGCCloud(t)
	b := c.backend(t, "c1", "n1")
	ami, _ := c.publish(t, b, "hourly")
	c.srv.ResetCalls()
	record := func(wantCalls int, wantTag time.Time) {
		t.Helper()
		if err := b.recordUses(ctx); err != nil {
			t.Fatal(err)
		}
		if n := c.srv.Calls("CreateTags"); n != wantCalls {
			t.Errorf("%d CreateTags calls, want %d", n, wantCalls)
		}
		if got := c.lastUsedTag(t, ami); got != wantTag.Format(time.RFC3339) {
			t.Errorf("last-used tag %q, want %s", got, wantTag.Format(time.RFC3339))
		}
	}
	c.clock.advance(time.Minute)
	first := c.clock.now()
	if _, err := b.Launch(ctx, gcPlan("pod-1", ami)); err != nil {
		t.Fatal(err)
	}
	record(1, first)
	c.clock.advance(10 * time.Minute)
	if _, err := b.Launch(ctx, gcPlan("pod-2", ami)); err != nil {
		t.Fatal(err)
	}
	record(1, first)
	c.clock.advance(49 * time.Minute)
	record(1, first)
	c.clock.advance(time.Minute) // an hour after the write; pod-1 and pod-2 still run from it
	record(2, c.clock.now())

	// A restarted node knows its instances' AMI from the listing.
	c.clock.advance(time.Hour)
	b.Close()
	b = c.backend(t, "c1", "n1")
	record(3, c.clock.now())
}

// TestLastUsedTagRetriesLater: a refused write is tried again after lastUsedRetry, not at every sync; an AMI that
// is gone is forgotten.
func TestLastUsedTagRetriesLater(t *testing.T) {
	ctx := context.Background()
	c := newGCCloud(t)
	b := c.backend(t, "c1", "n1")
	ami, _ := c.publish(t, b, "denied")
	c.srv.Deny("CreateTags")
	c.srv.ResetCalls()
	if err := b.recordUses(ctx); err == nil || !strings.Contains(err.Error(), "ec2:CreateTags") {
		t.Errorf("recordUses with CreateTags denied: %v; want the action named", err)
	}
	if err := b.recordUses(ctx); err != nil || c.srv.Calls("CreateTags") != 1 {
		t.Errorf("at once again: %v, %d calls; want no call", err, c.srv.Calls("CreateTags"))
	}
	c.srv.Allow("CreateTags")
	c.clock.advance(lastUsedRetry)
	if err := b.recordUses(ctx); err != nil || c.srv.Calls("CreateTags") != 2 || c.lastUsedTag(t, ami) == "" {
		t.Errorf("after %s: %v, %d calls, tag %q", lastUsedRetry, err, c.srv.Calls("CreateTags"), c.lastUsedTag(t, ami))
	}

	if _, err := c.ec2.DeregisterImage(ctx, &ec2.DeregisterImageInput{ImageId: sdkaws.String(ami)}); err != nil {
		t.Fatal(err)
	}
	b.uses.mark(ami, c.clock.now().Add(time.Hour))
	c.clock.advance(2 * time.Hour)
	for range 2 {
		if err := b.recordUses(ctx); err != nil {
			t.Errorf("recording the use of a deregistered image: %v", err)
		}
	}
	if n := c.srv.Calls("CreateTags"); n != 3 {
		t.Errorf("%d CreateTags calls, want 3: a gone image is not tagged again", n)
	}
}

func TestImageMaxUnusedConfig(t *testing.T) {
	c := testConfig()
	c.ImageMaxUnused = metav1.Duration{Duration: -time.Hour}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "aws.imageMaxUnused") {
		t.Errorf("a negative bound: %v", err)
	}
	c.ImageMaxUnused = metav1.Duration{}
	if d := c.withDefaults().ImageMaxUnused.Duration; d != 168*time.Hour {
		t.Errorf("default %s, want 168h", d)
	}
	if err := yaml.UnmarshalStrict([]byte("imageMaxUnused: 48h\n"), &c); err != nil || c.ImageMaxUnused.Duration != 48*time.Hour {
		t.Errorf("imageMaxUnused: 48h: %s, %v", c.ImageMaxUnused.Duration, err)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}

// TestImageGCRunsFromTheLoop: the backend's own loops collect images (first gc.first after start) and write the
// last-used tags (after each listing).
func TestImageGCRunsFromTheLoop(t *testing.T) {
	ctx := context.Background()
	c := newGCCloud(t)
	old, _ := c.publish(t, c.backend(t, "c1", "n1"), "old")
	c.clock.advance(8 * day)
	cfg := Config{Region: "us-east-1", Cluster: "c1", Node: "n2", Subnets: []string{devec2.DefaultSubnets()[0].ID},
		SecurityGroups: []string{devec2.DefaultSecurityGroups()[0].ID}, InstanceTypes: []string{"t3"},
		SyncPeriod: metav1.Duration{Duration: minSyncPeriod}}
	b, err := newBackend(ctx, cfg, c.ec2, &fakeChannel{}, nil, func(b *Backend) {
		b.now = c.clock.now
		b.gc.first = 0
	})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.UsePublisher(c.ebs, UploadOptions{PollBase: time.Millisecond, PollMax: 10 * time.Millisecond})
	fresh, _ := c.publish(t, b, "fresh")
	if _, err := b.Launch(ctx, gcPlan("pod-1", fresh)); err != nil {
		t.Fatal(err)
	}
	publishWaitUntil(t, "the loop collected the old image and recorded the new one's use", func() bool {
		return !c.imageExists(t, old) && c.lastUsedTag(t, fresh) != ""
	})
}
