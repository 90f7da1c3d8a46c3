package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/i2kit/i2kit/vmimage/kernel"
)

// BenchmarkAWSPodCreate measures pod create → Ready through the aws backend on the local EC2 whose instances are
// QEMU VMs (devcloud/ec2 with vmrunner), beside the qemu backend on the same machine and container image, one pod at
// a time: aws cold (the pod's ec2 image built but not published: the AMI and its snapshot deregistered and deleted
// before each pod, so the pod uploads the snapshot, registers the AMI and boots from it), aws warm (the AMI
// published), qemu warm (the image built); the medians of b.N each, the ratio aws-warm / qemu-warm, and the very
// first aws pod (its image built, then published). Cold, warm and qemu pods alternate, so that the machine's load
// weighs on each alike.
func BenchmarkAWSPodCreate(b *testing.B) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skipf("qemu-system-x86_64 is required (make deps installs it): %v", err)
	}
	if _, err := os.Stat("/usr/share/ovmf/OVMF.fd"); err != nil {
		b.Skipf("OVMF is required: %v", err)
	}
	if _, err := kernel.BzImage(); err != nil {
		b.Skip(err)
	}
	ctx := context.Background()
	reg := localRegistry(b)
	dir := b.TempDir()
	cloud := startCloudOn(b, dir, "i2kawsb")
	const awsNode, qemuNode = "i2kit-bench-aws", "i2kit-bench-qemu"
	cfg := cloud.nodeConfig(b, "bench", reg, dir, "")
	na := env.StartNode(b, awsNode, 10259, "--config", cfg)
	nq := env.StartNode(b, qemuNode, 10260, "--backend", "qemu", "--insecure-registry", reg,
		"--qemu-runtime-dir", filepath.Join(dir, "run"), "--qemu-bridge", "i2kitab", "--pod-cidr", "10.99.0.0/24",
		"--image-store", filepath.Join(dir, "qemu-images"))
	if _, err := env.WaitNodeReady(ctx, awsNode, 30*time.Second); err != nil {
		b.Fatalf("node %s not ready: %v\n%s", awsNode, err, na.Log())
	}
	if _, err := env.WaitNodeReady(ctx, qemuNode, 30*time.Second); err != nil {
		b.Fatalf("node %s not ready: %v\n%s", qemuNode, err, nq.Log())
	}

	// The first pod of each node builds its image; the aws one then publishes it.
	first := createAndWait(b, []string{"aws-first"}, awsNode, reg)[0]
	deletePods(b, []string{"aws-first"})
	createAndWait(b, []string{"qemu-first"}, qemuNode, reg)
	deletePods(b, []string{"qemu-first"})
	if n := cloud.srv.Calls("RegisterImage"); n != 1 {
		b.Fatalf("%d RegisterImage calls after the first pod, want 1", n)
	}

	var cold, warm, qemu []time.Duration
	for i := 0; i < b.N; i++ {
		unpublish(b, cloud)
		name := fmt.Sprintf("aws-cold-%d", i)
		cold = append(cold, createAndWait(b, []string{name}, awsNode, reg)[0])
		deletePods(b, []string{name})
		name = fmt.Sprintf("aws-warm-%d", i)
		warm = append(warm, createAndWait(b, []string{name}, awsNode, reg)[0])
		deletePods(b, []string{name})
		name = fmt.Sprintf("qemu-warm-%d", i)
		qemu = append(qemu, createAndWait(b, []string{name}, qemuNode, reg)[0])
		deletePods(b, []string{name})
	}
	if n := cloud.srv.Calls("RegisterImage"); n != 1+b.N {
		b.Errorf("%d RegisterImage calls, want %d: one per cold pod and the first", n, 1+b.N)
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(first), "ms-aws-first-pod(build+publish)")
	b.ReportMetric(ms(pct(cold, 50)), "ms-aws-cold(median)")
	b.ReportMetric(ms(pct(warm, 50)), "ms-aws-warm(median)")
	b.ReportMetric(ms(pct(qemu, 50)), "ms-qemu-warm(median)")
	b.ReportMetric(float64(pct(warm, 50))/float64(pct(qemu, 50)), "x-aws-warm/qemu-warm")
}

// unpublish deregisters the cloud's AMIs and deletes their snapshots, as if no pod of the image had run: the next
// pod publishes it again.
func unpublish(b *testing.B, cloud *awsCloud) {
	b.Helper()
	ctx := context.Background()
	imgs, err := cloud.c.DescribeImages(ctx, &awsec2.DescribeImagesInput{Owners: []string{"self"}})
	if err != nil {
		b.Fatal(err)
	}
	for _, im := range imgs.Images {
		if _, err := cloud.c.DeregisterImage(ctx, &awsec2.DeregisterImageInput{ImageId: im.ImageId}); err != nil {
			b.Fatal(err)
		}
	}
	snaps, err := cloud.c.DescribeSnapshots(ctx, &awsec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}})
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range snaps.Snapshots {
		if _, err := cloud.c.DeleteSnapshot(ctx, &awsec2.DeleteSnapshotInput{SnapshotId: s.SnapshotId}); err != nil {
			b.Fatalf("deleting snapshot %s: %v", sdkaws.ToString(s.SnapshotId), err)
		}
	}
}
