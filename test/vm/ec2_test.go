package vm

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/devcloud/ec2"
)

// TestEC2InstanceBootsFromSnapshot is the local EC2 with real instances: an ec2-format image uploaded with the EBS
// direct APIs and registered as a UEFI AMI, launched with user-data and IMDSv2 required, boots under OVMF from its
// NVMe volume, takes its private address by DHCP, reads its user-data from the metadata service, prints its key on
// the console that GetConsoleOutput serves, and serves TLS on its address; terminating it ends the VM.
func TestEC2InstanceBootsFromSnapshot(t *testing.T) {
	dir := t.TempDir()
	img := ec2Image(t, dir)
	srv, url := localCloud(t, dir, "")
	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		HTTPClient: &http.Client{Transport: ec2.BufferRequestBodies(http.DefaultTransport)}}
	ec2c := awsec2.NewFromConfig(cfg, func(o *awsec2.Options) { o.BaseEndpoint = aws.String(url) })
	ebsc := ebs.NewFromConfig(cfg, func(o *ebs.Options) { o.BaseEndpoint = aws.String(url) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	snap := uploadSnapshot(ctx, t, ebsc, img.Raw)
	reg, err := ec2c.RegisterImage(ctx, &awsec2.RegisterImageInput{Name: aws.String("vmrunner-boot"),
		Architecture: types.ArchitectureValuesX8664, BootMode: types.BootModeValuesUefi, EnaSupport: aws.Bool(true),
		ImdsSupport: types.ImdsSupportValuesV20, RootDeviceName: aws.String("/dev/xvda"), VirtualizationType: aws.String("hvm"),
		BlockDeviceMappings: []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/xvda"),
			Ebs: &types.EbsBlockDevice{SnapshotId: aws.String(snap), VolumeType: types.VolumeTypeGp3, DeleteOnTermination: aws.Bool(true)}}}})
	if err != nil {
		t.Fatal(err)
	}
	const agentPort = 10250
	ud, err := json.Marshal(boot.UserData{Version: boot.UserDataVersion, Hostname: "boot-test", AgentPort: agentPort, NodeCA: testCA(t)})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	run, err := ec2c.RunInstances(ctx, &awsec2.RunInstancesInput{ImageId: reg.ImageId, InstanceType: types.InstanceTypeT3Micro,
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1), SubnetId: aws.String(ec2.DefaultSubnets()[0].ID),
		UserData: aws.String(base64.StdEncoding.EncodeToString(ud)), InstanceInitiatedShutdownBehavior: types.ShutdownBehaviorTerminate,
		MetadataOptions: &types.InstanceMetadataOptionsRequest{HttpTokens: types.HttpTokensStateRequired,
			HttpPutResponseHopLimit: aws.Int32(1), HttpEndpoint: types.InstanceMetadataEndpointStateEnabled}})
	if err != nil {
		t.Fatal(err)
	}
	id, privateIP := aws.ToString(run.Instances[0].InstanceId), aws.ToString(run.Instances[0].PrivateIpAddress)
	if err := srv.WaitState(ctx, id, "running"); err != nil {
		t.Fatal(err)
	}
	running := time.Since(start)

	// The key line comes first (before the network); the ready marker after the agent read its user-data over
	// IMDSv2 and listens with TLS on the address DHCP gave it.
	var console, key string
	err = wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		out, err := ec2c.GetConsoleOutput(ctx, &awsec2.GetConsoleOutputInput{InstanceId: aws.String(id)})
		if err != nil {
			return false, err
		}
		b, err := base64.StdEncoding.DecodeString(aws.ToString(out.Output))
		if err != nil {
			return false, err
		}
		console = string(b)
		if in, ok := srv.Instance(id); ok && in.State != "running" {
			return false, errors.New("the instance is " + in.State)
		}
		key, _ = boot.FirstKeyLine(strings.NewReader(console), 1<<20)
		return key != "" && strings.Contains(console, boot.ReadyMarker), nil
	})
	if err != nil {
		t.Fatalf("waiting for the agent's key and ready lines: %v\nconsole:\n%s", err, console)
	}
	booted := time.Since(start)
	want := "instance " + id + ", serving the protocol with TLS on " + privateIP + " port " + strconv.Itoa(agentPort)
	if !strings.Contains(console, want) {
		t.Fatalf("the console does not say %q:\n%s", want, console)
	}
	conn, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", net.JoinHostPort(privateIP, strconv.Itoa(agentPort)))
	if err != nil {
		t.Fatalf("dialling the agent on the instance's address: %v", err)
	}
	conn.Close()
	t.Logf("RunInstances → running %s, → agent key and ready on the console %s (key %s)", running.Round(time.Millisecond),
		booted.Round(time.Millisecond), key)

	if _, err := ec2c.TerminateInstances(ctx, &awsec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitState(ctx, id, "terminated"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "instances", id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the instance's directory outlived it: %v", err)
	}
}

// uploadSnapshot writes a raw disk into a new snapshot as the aws backend does: non-zero 512 KiB blocks with their
// SHA-256, then the linear aggregate.
func uploadSnapshot(ctx context.Context, t *testing.T, c *ebs.Client, path string) string {
	t.Helper()
	const block = 512 << 10
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	gib := (fi.Size() + 1<<30 - 1) >> 30
	start, err := c.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(gib)})
	if err != nil {
		t.Fatal(err)
	}
	id := aws.ToString(start.SnapshotId)
	var sums []byte
	var n int32
	buf, zero := make([]byte, block), make([]byte, block)
	for i := int32(0); ; i++ {
		clear(buf)
		m, err := io.ReadFull(f, buf)
		if m == 0 {
			break
		}
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatal(err)
		}
		if bytes.Equal(buf, zero) {
			continue
		}
		sum := sha256.Sum256(buf)
		sums = append(sums, sum[:]...)
		n++
		if _, err := c.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(i),
			BlockData: bytes.NewReader(bytes.Clone(buf)), DataLength: aws.Int32(block),
			Checksum: aws.String(base64.StdEncoding.EncodeToString(sum[:])), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256}); err != nil {
			t.Fatalf("PutSnapshotBlock %d: %v", i, err)
		}
	}
	agg := sha256.Sum256(sums)
	if _, err := c.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: aws.String(id), ChangedBlocksCount: aws.Int32(n),
		Checksum: aws.String(base64.StdEncoding.EncodeToString(agg[:])), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
		ChecksumAggregationMethod: ebstypes.ChecksumAggregationMethodChecksumAggregationLinear}); err != nil {
		t.Fatal(err)
	}
	return id
}

// testCA is a self-signed CA certificate in PEM: the node's CA in user-data (nothing here connects with it).
func testCA(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "vmrunner test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}
