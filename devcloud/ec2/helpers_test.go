package ec2

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// env is a Server behind a real HTTP listener with the real SDK clients pointed at it.
type env struct {
	srv *Server
	url string
	ec2 *awsec2.Client
	ebs *ebs.Client
}

// newEnv starts a Server; the SDK clients do not retry (tests that want the retryer build their own).
func newEnv(t *testing.T, opts Options) *env {
	t.Helper()
	srv := New(opts)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	cfg := sdkConfig(1)
	return &env{
		srv: srv, url: hs.URL,
		ec2: awsec2.NewFromConfig(cfg, func(o *awsec2.Options) { o.BaseEndpoint = aws.String(hs.URL) }),
		ebs: ebs.NewFromConfig(cfg, func(o *ebs.Options) { o.BaseEndpoint = aws.String(hs.URL) }),
	}
}

func sdkConfig(attempts int) aws.Config {
	return aws.Config{Region: "us-east-1", RetryMaxAttempts: attempts,
		HTTPClient:  &http.Client{Transport: BufferRequestBodies(http.DefaultTransport)},
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// code returns the AWS error code of err as the SDK decoded it.
func code(t *testing.T, err error) string {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v is not an API error", err)
	}
	return ae.ErrorCode()
}

func wantCode(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s", want)
	}
	if got := code(t, err); got != want {
		t.Fatalf("got code %s (%v), want %s", got, err, want)
	}
}

// disk returns n bytes of a recognisable, mostly non-zero pattern with a zero hole in block 1.
func disk(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/blockSize)
	}
	if n > 2*blockSize {
		clear(b[blockSize : 2*blockSize])
	}
	return b
}

// upload writes data into a new snapshot as a careful client does (zero blocks skipped, per-block and aggregate
// checksums) and completes it.
func (e *env) upload(t *testing.T, data []byte, gib int32, token string) string {
	t.Helper()
	ctx := ctxT(t)
	start, err := e.ebs.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(int64(gib)), ClientToken: aws.String(token),
		Tags: []ebstypes.Tag{{Key: aws.String("i2kit.io/image-digest"), Value: aws.String(token)}}})
	if err != nil {
		t.Fatalf("StartSnapshot: %v", err)
	}
	id := aws.ToString(start.SnapshotId)
	var sums []byte
	var n int32
	for i := 0; i*blockSize < len(data); i++ {
		block := make([]byte, blockSize)
		copy(block, data[i*blockSize:])
		if bytes.Count(block, []byte{0}) == blockSize {
			continue
		}
		sum := sha256.Sum256(block)
		sums = append(sums, sum[:]...)
		n++
		if _, err := e.ebs.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(int32(i)),
			BlockData: bytes.NewReader(block), DataLength: aws.Int32(blockSize), Checksum: aws.String(b64(sum[:])),
			ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256}); err != nil {
			t.Fatalf("PutSnapshotBlock %d: %v", i, err)
		}
	}
	agg := sha256.Sum256(sums)
	if _, err := e.ebs.CompleteSnapshot(ctx, &ebs.CompleteSnapshotInput{SnapshotId: aws.String(id), ChangedBlocksCount: aws.Int32(n),
		Checksum: aws.String(b64(agg[:])), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
		ChecksumAggregationMethod: ebstypes.ChecksumAggregationMethodChecksumAggregationLinear}); err != nil {
		t.Fatalf("CompleteSnapshot: %v", err)
	}
	return id
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// image uploads a small disk and registers it as our backend does (UEFI, ENA, IMDSv2, x86_64).
func (e *env) image(t *testing.T, name string) (amiID, snapID string) {
	t.Helper()
	snapID = e.upload(t, disk(3*blockSize), 1, "tok-"+name)
	out, err := e.ec2.RegisterImage(ctxT(t), registerInput(name, snapID))
	if err != nil {
		t.Fatalf("RegisterImage: %v", err)
	}
	return aws.ToString(out.ImageId), snapID
}

func registerInput(name, snapID string) *awsec2.RegisterImageInput {
	return &awsec2.RegisterImageInput{Name: aws.String(name), Architecture: types.ArchitectureValuesX8664,
		BootMode: types.BootModeValuesUefi, EnaSupport: aws.Bool(true), ImdsSupport: types.ImdsSupportValuesV20,
		RootDeviceName: aws.String("/dev/xvda"), VirtualizationType: aws.String("hvm"),
		BlockDeviceMappings: []types.BlockDeviceMapping{{DeviceName: aws.String("/dev/xvda"),
			Ebs: &types.EbsBlockDevice{SnapshotId: aws.String(snapID), VolumeType: types.VolumeTypeGp3, DeleteOnTermination: aws.Bool(true)}}},
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeImage,
			Tags: []types.Tag{{Key: aws.String("i2kit.io/image-digest"), Value: aws.String(name)}}}}}
}

// run launches count instances of ami with the backend's shape of request.
func (e *env) run(t *testing.T, ami, token string, count int32, tags ...string) (*awsec2.RunInstancesOutput, error) {
	t.Helper()
	in := runInput(ami, token, count, tags...)
	return e.ec2.RunInstances(ctxT(t), in)
}

func runInput(ami, token string, count int32, tags ...string) *awsec2.RunInstancesInput {
	var ts []types.Tag
	for i := 0; i+1 < len(tags); i += 2 {
		ts = append(ts, types.Tag{Key: aws.String(tags[i]), Value: aws.String(tags[i+1])})
	}
	return &awsec2.RunInstancesInput{ImageId: aws.String(ami), InstanceType: types.InstanceTypeT3Micro,
		MinCount: aws.Int32(count), MaxCount: aws.Int32(count), ClientToken: aws.String(token),
		SubnetId: aws.String(DefaultSubnets()[0].ID), SecurityGroupIds: []string{DefaultSecurityGroups()[0].ID},
		UserData: aws.String(b64([]byte(`{"version":1}`))),
		MetadataOptions: &types.InstanceMetadataOptionsRequest{HttpTokens: types.HttpTokensStateRequired,
			HttpPutResponseHopLimit: aws.Int32(1), HttpEndpoint: types.InstanceMetadataEndpointStateEnabled},
		InstanceInitiatedShutdownBehavior: types.ShutdownBehaviorTerminate,
		TagSpecifications:                 []types.TagSpecification{{ResourceType: types.ResourceTypeInstance, Tags: ts}}}
}

func ids(out *awsec2.RunInstancesOutput) []string {
	var r []string
	for _, in := range out.Instances {
		r = append(r, aws.ToString(in.InstanceId))
	}
	return r
}

func tagMap(tags []types.Tag) map[string]string {
	m := map[string]string{}
	for _, t := range tags {
		m[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return m
}
