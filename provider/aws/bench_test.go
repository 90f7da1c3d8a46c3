package aws_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	devec2 "github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/provider/aws"
	"github.com/i2kit/i2kit/vmimage"
)

// benchDiskSize is the disk of a published image in BenchmarkPublish: half of its blocks hold data, half are
// zeros (skipped), as in a pod image with free space.
const benchDiskSize = 64 << 20

// BenchmarkPublish publishes images through the aws backend with the real SDK over the local EC2 endpoint (EC2
// and EBS direct APIs over HTTP on loopback; snapshots and images complete at once, so this is the node's own
// cost, not EC2's): ms-publish-new is a fresh image (StartSnapshot, the blocks, CompleteSnapshot, RegisterImage,
// the waits), ms-publish-cached the same image again (the AMI found by its digest and cluster tags). Both are
// medians over b.N.
func BenchmarkPublish(b *testing.B) {
	ctx := context.Background()
	srv := devec2.New(devec2.Options{})
	hs := httptest.NewServer(srv)
	b.Cleanup(hs.Close)
	cfg := sdkaws.Config{Region: "us-east-1", BaseEndpoint: sdkaws.String(hs.URL),
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		HTTPClient:  &http.Client{Transport: devec2.BufferRequestBodies(http.DefaultTransport)}}
	ec2c := ec2.NewFromConfig(cfg)
	ebsc := ebs.NewFromConfig(cfg, func(o *ebs.Options) {
		// A connection per upload worker, as NewClients gives the node.
		o.HTTPClient = &http.Client{Transport: devec2.BufferRequestBodies(&http.Transport{MaxIdleConnsPerHost: 64, MaxIdleConns: 64})}
	})
	ca, err := aws.LoadCA("", "", b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	bcfg := aws.Config{Region: "us-east-1", Cluster: "bench", Node: "i2kit-bench", Subnets: []string{devec2.DefaultSubnets()[0].ID},
		SecurityGroups: []string{devec2.DefaultSecurityGroups()[0].ID}}
	be, err := aws.New(ctx, bcfg, ec2c, aws.NewChannel(ec2c, ca, 17443), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	be.UsePublisher(ebsc, aws.UploadOptions{})

	dir := b.TempDir()
	var fresh, cached []time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		img := benchImage(b, dir, i)
		b.StartTimer()
		start := time.Now()
		ami, err := be.Publish(ctx, img)
		if err != nil {
			b.Fatal(err)
		}
		fresh = append(fresh, time.Since(start))
		start = time.Now()
		again, err := be.Publish(ctx, img)
		if err != nil || again != ami {
			b.Fatalf("publishing again: %s, %v; want %s", again, err, ami)
		}
		cached = append(cached, time.Since(start))
	}
	b.StopTimer()
	if n := srv.Calls("RegisterImage"); n != b.N {
		b.Fatalf("%d RegisterImage calls for %d images", n, b.N)
	}
	b.ReportMetric(medianMS(fresh), "ms-publish-new")
	b.ReportMetric(medianMS(cached), "ms-publish-cached")
}

// benchImage is an ec2-format image of benchDiskSize bytes, every other 512 KiB block data, unique to i and the
// moment (the endpoint outlives no run, yet each image must be new to it).
func benchImage(b *testing.B, dir string, i int) *vmimage.Image {
	b.Helper()
	const block = 512 << 10
	disk := make([]byte, benchDiskSize)
	for off := 0; off < len(disk); off += 2 * block {
		for j := off; j < off+block; j += 8 {
			binary.LittleEndian.PutUint64(disk[j:], uint64(j)*0x9e3779b97f4a7c15)
		}
	}
	binary.LittleEndian.PutUint64(disk, uint64(i))
	binary.LittleEndian.PutUint64(disk[8:], uint64(time.Now().UnixNano()))
	path := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(path, disk, 0o600); err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(disk)
	return &vmimage.Image{Key: hex.EncodeToString(sum[:]), Format: aws.Format, Raw: path, Size: int64(len(disk))}
}

func medianMS(ds []time.Duration) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	n := len(s)
	m := s[n/2]
	if n%2 == 0 {
		m = (s[n/2-1] + s[n/2]) / 2
	}
	return float64(m) / float64(time.Millisecond)
}
