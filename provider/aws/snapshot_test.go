package aws

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/sivchari/kumo"
	"go.uber.org/goleak"
)

// fastUpload make retries and polls quick: the tests wait on the fake's state, not on the clock.
var fastUpload = UploadOptions{Workers: 4, Attempts: 5, RetryBase: time.Microsecond, RetryMax: time.Millisecond,
	PollBase: time.Microsecond, PollMax: time.Millisecond, WaitTimeout: 10 * time.Second}

// diskWithZeros is size bytes in which the blocks of bs bytes whose index is in zeros are all zeros and the others
// random (never all zeros).
func diskWithZeros(size int64, bs int, zeros func(i int64) bool) []byte {
	disk := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(size), uint64(bs)))
	for off := int64(0); off < size; off += int64(bs) {
		if zeros(off / int64(bs)) {
			continue
		}
		b := disk[off:min(off+int64(bs), size)]
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		b[0] = 1
	}
	return disk
}

func paddedDisk(disk []byte, bs int) []byte {
	return append(slices.Clone(disk), make([]byte, blockCount(int64(len(disk)), bs)*int64(bs)-int64(len(disk)))...)
}

func TestVolumeGiB(t *testing.T) {
	for _, tc := range []struct {
		size int64
		want int64
		err  bool
	}{
		{1, 1, false}, {ebsGiB, 1, false}, {ebsGiB + 1, 2, false}, {100 << 20, 1, false},
		{maxVolumeGiB * ebsGiB, maxVolumeGiB, false}, {maxVolumeGiB*ebsGiB + 1, 0, true}, {0, 0, true}, {-1, 0, true},
	} {
		got, err := volumeGiB(tc.size)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("volumeGiB(%d) = %d, %v; want %d, error %v", tc.size, got, err, tc.want, tc.err)
		}
	}
}

func TestBlockCount(t *testing.T) {
	for _, tc := range []struct {
		size int64
		bs   int
		want int64
	}{
		{1, 512 << 10, 1}, {512 << 10, 512 << 10, 1}, {512<<10 + 1, 512 << 10, 2}, {100 << 20, 512 << 10, 200},
		{100 << 20, 64 << 10, 1600}, {ebsGiB, 4096, 262144},
	} {
		if got := blockCount(tc.size, tc.bs); got != tc.want {
			t.Errorf("blockCount(%d, %d) = %d, want %d", tc.size, tc.bs, got, tc.want)
		}
	}
}

// TestLinearChecksum holds the aggregate to a golden value computed apart (Python: base64 of the SHA-256 of the
// concatenated raw SHA-256 digests of blocks 0 and 2). Block 1 was skipped and takes no part; the digests are
// concatenated raw, not as their base64 text (the API reference's words allow both readings; coldsnap and EBS use
// raw).
func TestLinearChecksum(t *testing.T) {
	b0 := append([]byte("block zero"), make([]byte, 6)...)
	b2 := append([]byte("block two"), make([]byte, 7)...)
	sums := [][sha256.Size]byte{sha256.Sum256(b0), sha256.Sum256(make([]byte, 16)), sha256.Sum256(b2)}
	got := linearChecksum(sums, []bool{true, false, true})
	if want := "K0UaFtH7Kmo0HRtx6zpJ5Df+Zz+9e9eucDCHWlyrEKg="; got != want {
		t.Errorf("linearChecksum = %s, want %s", got, want)
	}
	if got, want := linearChecksum(nil, nil), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="; got != want {
		t.Errorf("linearChecksum of no blocks = %s, want the SHA-256 of nothing %s", got, want)
	}
	text := sha256.Sum256([]byte(base64.StdEncoding.EncodeToString(sums[0][:]) + base64.StdEncoding.EncodeToString(sums[2][:])))
	if got == base64.StdEncoding.EncodeToString(text[:]) {
		t.Error("the aggregate hashes the digests' base64 text")
	}
}

type shortReader struct{ data []byte }

func (r shortReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(r.data)) {
		return 0, io.EOF
	}
	n := copy(p, r.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func TestReadBlock(t *testing.T) {
	disk := bytes.Repeat([]byte{7}, 10)
	buf := bytes.Repeat([]byte{9}, 4)
	if err := readBlock(bytes.NewReader(disk), buf, 2, 10); err != nil || !bytes.Equal(buf, []byte{7, 7, 0, 0}) {
		t.Errorf("last block = %v, %v; want its 2 bytes padded with zeros", buf, err)
	}
	// A disk shorter than its declared size is an error, not zeros.
	if err := readBlock(shortReader{disk[:9]}, buf, 2, 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading past a short disk: %v, want io.ErrUnexpectedEOF", err)
	}
	// io.ReaderAt may report io.EOF along with the last bytes.
	if err := readBlock(shortReader{disk}, buf, 2, 10); err != nil {
		t.Errorf("reading the last block with io.EOF: %v", err)
	}
}

func TestRetryable(t *testing.T) {
	resp := func(code int) error {
		return &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: code}},
			Err: errors.New("status")}
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"throttled", context.Background(), &ebstypes.RequestThrottledException{}, true},
		{"throttling code", context.Background(), &smithy.GenericAPIError{Code: "ThrottlingException"}, true},
		{"ec2 throttling", context.Background(), &smithy.GenericAPIError{Code: "RequestLimitExceeded"}, true},
		{"server fault", context.Background(), &ebstypes.InternalServerException{}, true},
		{"unknown server fault", context.Background(), &smithy.GenericAPIError{Code: "Odd", Fault: smithy.FaultServer}, true},
		{"503", context.Background(), resp(503), true},
		{"connection reset", context.Background(), &smithyhttp.RequestSendError{Err: syscall.ECONNRESET}, true},
		{"body cut", context.Background(), io.ErrUnexpectedEOF, true},
		{"snapshot not visible yet", context.Background(), &ebstypes.ResourceNotFoundException{}, true},
		{"validation", context.Background(), &ebstypes.ValidationException{}, false},
		{"access denied", context.Background(), &ebstypes.AccessDeniedException{}, false},
		{"conflict", context.Background(), &ebstypes.ConflictException{}, false},
		{"unauthorized", context.Background(), &smithy.GenericAPIError{Code: "UnauthorizedOperation"}, false},
		{"400", context.Background(), fmt.Errorf("x: %w", &smithy.GenericAPIError{Code: "Bad", Fault: smithy.FaultClient}), false},
		{"our context ended", cancelled, &ebstypes.InternalServerException{}, false},
		{"cancelled", context.Background(), context.Canceled, false},
	} {
		if got := transientAWSError(tc.ctx, tc.err); got != tc.want {
			t.Errorf("%s: retryable = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSnapshotToken(t *testing.T) {
	at := time.Date(2026, 12, 6, 10, 5, 0, 0, time.UTC)
	tags := [][2]string{{TagCluster, "c"}, {TagImageDigest, "d"}}
	base := snapshotToken("d", 1, "desc", tags, 60, at)
	if len(base) > 64 || !regexp.MustCompile(`^[\x21-\x7e]+$`).MatchString(base) {
		t.Fatalf("token %q is not at most 64 printable ASCII characters", base)
	}
	if got := snapshotToken("d", 1, "desc", tags, 60, at.Add(50*time.Minute)); got != base {
		t.Error("the token changed within one timeout period: a retry would not resume the snapshot")
	}
	for name, other := range map[string]string{
		"digest":      snapshotToken("e", 1, "desc", tags, 60, at),
		"size":        snapshotToken("d", 2, "desc", tags, 60, at),
		"description": snapshotToken("d", 1, "other", tags, 60, at),
		"tags":        snapshotToken("d", 1, "desc", tags[:1], 60, at),
		"timeout":     snapshotToken("d", 1, "desc", tags, 30, at),
		"next period": snapshotToken("d", 1, "desc", tags, 60, at.Add(time.Hour)),
		// Length-prefixed fields: moving bytes from one field to the next makes another token.
		"shifted": snapshotToken("d", 1, "desc", [][2]string{{TagCluster + "c", ""}, {TagImageDigest, "d"}}, 60, at),
	} {
		if other == base {
			t.Errorf("another %s gives the same token", name)
		}
	}
}

// uploadFake uploads disk to f and checks that the snapshot holds exactly the disk.
func uploadFake(t *testing.T, f *fakeCloud, opts UploadOptions, disk []byte) (string, UploadStats, error) {
	t.Helper()
	u := newUploader(f, f, opts)
	id, st, err := u.upload(context.Background(), snapshotRequest{Disk: bytes.NewReader(disk), Size: int64(len(disk)),
		Digest: "abc", Description: "i2kit pod image abc", Tags: map[string]string{TagImageDigest: "abc", TagCluster: "c1"}})
	if err == nil {
		if got := f.blockData(id, int64(len(disk))); !bytes.Equal(got, paddedDisk(disk, int(f.blockSize))) {
			t.Errorf("snapshot %s does not hold the disk", id)
		}
	}
	return id, st, err
}

func TestUploadWritesNonZeroBlocks(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const bs = 64 << 10 // not 512 KiB: the block size is StartSnapshot's
	f := newFakeCloud(bs)
	f.snapPending = 3
	disk := diskWithZeros(10*bs+123, bs, func(i int64) bool { return i%3 == 1 }) // blocks 1, 4, 7, 10 all zeros... but 10 is partial
	clear(disk[10*bs:])                                                          // the partial last block is zero too
	id, st, err := uploadFake(t, f, fastUpload, disk)
	if err != nil {
		t.Fatal(err)
	}
	want := UploadStats{Bytes: int64(len(disk)), BlockSize: bs, Blocks: 11, Uploaded: 7, ZeroSkipped: 4}
	st.Duration = 0
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	s := f.snapshot(id)
	if s.volGiB != 1 || s.tags[TagImageDigest] != "abc" || s.tags[TagCluster] != "c1" || s.timeout != 60 {
		t.Errorf("snapshot started with %d GiB, tags %v, timeout %d", s.volGiB, s.tags, s.timeout)
	}
	if len(s.blocks) != 7 || s.blocks[1] != nil || s.blocks[10] != nil {
		t.Errorf("blocks written: %d, zero blocks 1 and 10 present: %v %v", len(s.blocks), s.blocks[1] != nil, s.blocks[10] != nil)
	}
	if got := f.count("DescribeSnapshots"); got < 4 {
		t.Errorf("%d DescribeSnapshots: the upload did not wait for the pending snapshot to complete", got)
	}
	if got := f.count("PutSnapshotBlock"); got != 7 {
		t.Errorf("%d PutSnapshotBlock calls, want 7", got)
	}
}

func TestUploadPartialLastBlockIsPadded(t *testing.T) {
	const bs = 4096
	f := newFakeCloud(bs)
	disk := diskWithZeros(3*bs+1, bs, func(int64) bool { return false })
	opts := fastUpload
	opts.Workers = 1 // one buffer for every block: the last block's padding must not be the previous block's tail
	if _, st, err := uploadFake(t, f, opts, disk); err != nil || st.Uploaded != 4 {
		t.Fatalf("upload: %+v, %v; want 4 blocks, the last padded", st, err)
	}
}

func TestUploadAllZeros(t *testing.T) {
	f := newFakeCloud(4096)
	_, st, err := uploadFake(t, f, fastUpload, make([]byte, 5*4096))
	if err != nil || st.Uploaded != 0 || st.ZeroSkipped != 5 {
		t.Fatalf("upload of zeros: %+v, %v", st, err)
	}
}

func TestUploadRetriesTransientErrors(t *testing.T) {
	for name, fault := range map[string]error{
		"throttling":  &ebstypes.RequestThrottledException{Message: awssdk.String("slow down")},
		"5xx":         &ebstypes.InternalServerException{Message: awssdk.String("oops")},
		"connection":  &smithyhttp.RequestSendError{Err: syscall.ECONNRESET},
		"not visible": &ebstypes.ResourceNotFoundException{Message: awssdk.String("no such snapshot yet")},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeCloud(4096)
			for _, op := range []string{"StartSnapshot", "PutSnapshotBlock", "CompleteSnapshot"} {
				f.fail(op, fault, fault, fault)
			}
			f.fail("DescribeSnapshots", fault)
			disk := diskWithZeros(8*4096, 4096, func(i int64) bool { return i == 0 })
			if _, _, err := uploadFake(t, f, fastUpload, disk); err != nil {
				t.Fatal(err)
			}
			if got := f.count("PutSnapshotBlock"); got != 7+3 {
				t.Errorf("%d PutSnapshotBlock calls, want 7 and 3 retries", got)
			}
		})
	}
}

func TestUploadFailsWithoutCompleting(t *testing.T) {
	for name, tc := range map[string]struct {
		op    string
		fault error
		calls int // at most, of op
	}{
		"validation is not retried": {"PutSnapshotBlock", &ebstypes.ValidationException{Message: awssdk.String("bad")}, fastUpload.Workers},
		"attempts are bounded":      {"PutSnapshotBlock", &ebstypes.InternalServerException{}, fastUpload.Workers * fastUpload.Attempts},
		"access denied":             {"StartSnapshot", &ebstypes.AccessDeniedException{Message: awssdk.String("no")}, 1},
		"completion refused":        {"CompleteSnapshot", &ebstypes.ValidationException{Message: awssdk.String("no")}, 1},
	} {
		t.Run(name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			f := newFakeCloud(4096)
			for range 100 {
				f.fail(tc.op, tc.fault)
			}
			disk := diskWithZeros(20*4096, 4096, func(int64) bool { return false })
			_, _, err := uploadFake(t, f, fastUpload, disk)
			if err == nil {
				t.Fatal("the upload succeeded")
			}
			if !strings.Contains(err.Error(), "ebs:"+tc.op) {
				t.Errorf("error %q does not name ebs:%s", err, tc.op)
			}
			if got := f.count(tc.op); got > tc.calls {
				t.Errorf("%d %s calls, want at most %d", got, tc.op, tc.calls)
			}
			if tc.op != "CompleteSnapshot" && f.count("CompleteSnapshot") != 0 {
				t.Error("a snapshot with missing blocks was completed")
			}
		})
	}
}

func TestUploadNamesTheMissingPermission(t *testing.T) {
	f := newFakeCloud(4096)
	f.fail("StartSnapshot", &ebstypes.AccessDeniedException{Message: awssdk.String("not authorized")})
	_, _, err := uploadFake(t, f, fastUpload, diskWithZeros(4096, 4096, func(int64) bool { return false }))
	if err == nil || !strings.Contains(err.Error(), "must allow ebs:StartSnapshot") {
		t.Errorf("error %v does not say which permission is missing", err)
	}
}

func TestUploadRefusesAnOddBlockSize(t *testing.T) {
	for _, bs := range []int32{0, -1, maxBlockSize + 1} {
		f := newFakeCloud(bs)
		if _, _, err := uploadFake(t, f, fastUpload, make([]byte, 10)); err == nil || !strings.Contains(err.Error(), "block size") {
			t.Errorf("block size %d: %v", bs, err)
		}
	}
}

func TestUploadSnapshotInErrorFails(t *testing.T) {
	f := newFakeCloud(4096)
	f.snapPending = 1000
	f.hook("DescribeSnapshots", func(context.Context) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, s := range f.snaps {
			s.state, s.pendingLeft, s.message = ec2types.SnapshotStateError, 0, "broken"
		}
		return nil
	})
	_, _, err := uploadFake(t, f, fastUpload, diskWithZeros(4096, 4096, func(int64) bool { return false }))
	if err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("upload of a snapshot that ended in error: %v", err)
	}
}

func TestUploadWaitIsBounded(t *testing.T) {
	f := newFakeCloud(4096)
	f.snapPending = 1 << 30
	opts := fastUpload
	opts.WaitTimeout = 20 * time.Millisecond
	_, _, err := uploadFake(t, f, opts, diskWithZeros(4096, 4096, func(int64) bool { return false }))
	if !errors.Is(err, errWaitTimeout) {
		t.Errorf("upload of a snapshot pending for ever: %v", err)
	}
}

func TestUploadStopsWhenCancelled(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	f := newFakeCloud(4096)
	ctx, cancel := context.WithCancel(context.Background())
	throttled := make(chan struct{}, 1)
	f.hook("PutSnapshotBlock", func(context.Context) error {
		select {
		case throttled <- struct{}{}:
		default:
		}
		return &ebstypes.RequestThrottledException{}
	})
	opts := fastUpload
	opts.RetryBase, opts.RetryMax = time.Hour, time.Hour // only the cancellation can end the back-off
	u := newUploader(f, f, opts)
	disk := diskWithZeros(64*4096, 4096, func(int64) bool { return false })
	done := make(chan error)
	go func() {
		_, _, err := u.upload(ctx, snapshotRequest{Disk: bytes.NewReader(disk), Size: int64(len(disk)), Digest: "abc"})
		done <- err
	}()
	<-throttled // the workers are backing off for an hour
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled upload: %v", err)
	}
	if f.count("CompleteSnapshot") != 0 {
		t.Error("a cancelled upload completed its snapshot")
	}
}

// TestUploadSharesASnapshot: a second node writing the same disk in the same period gets the same snapshot from
// StartSnapshot's ClientToken; when the first has completed it, the blocks are refused and the snapshot is the
// answer.
func TestUploadSharesASnapshot(t *testing.T) {
	f := newFakeCloud(4096)
	disk := diskWithZeros(8*4096, 4096, func(int64) bool { return false })
	first, _, err := uploadFake(t, f, fastUpload, disk)
	if err != nil {
		t.Fatal(err)
	}
	second, _, err := uploadFake(t, f, fastUpload, disk)
	if err != nil || second != first {
		t.Fatalf("second upload of the same disk: %s, %v; want %s", second, err, first)
	}
	if f.count("StartSnapshot") != 2 || f.count("CompleteSnapshot") != 1 {
		t.Errorf("%d StartSnapshot and %d CompleteSnapshot calls", f.count("StartSnapshot"), f.count("CompleteSnapshot"))
	}
}

// TestFakeRejectsWhatEBSRejects: the fake's checks are what make a passing upload test mean something. Each bad
// call below is one a broken uploader would make.
func TestFakeRejectsWhatEBSRejects(t *testing.T) {
	const bs = 4096
	ctx := context.Background()
	block := diskWithZeros(bs, bs, func(int64) bool { return false })
	sum := sha256.Sum256(block)
	good := base64.StdEncoding.EncodeToString(sum[:])
	for name, tc := range map[string]struct {
		put      *ebs.PutSnapshotBlockInput
		complete func(id string) *ebs.CompleteSnapshotInput
	}{
		"wrong block checksum": {put: &ebs.PutSnapshotBlockInput{BlockIndex: awssdk.Int32(0), DataLength: awssdk.Int32(bs),
			Checksum: awssdk.String(base64.StdEncoding.EncodeToString(make([]byte, 32))), BlockData: bytes.NewReader(block)}},
		"short block": {put: &ebs.PutSnapshotBlockInput{BlockIndex: awssdk.Int32(0), DataLength: awssdk.Int32(bs - 1),
			Checksum: awssdk.String(good), BlockData: bytes.NewReader(block[1:])}},
		"length and body disagree": {put: &ebs.PutSnapshotBlockInput{BlockIndex: awssdk.Int32(0), DataLength: awssdk.Int32(bs),
			Checksum: awssdk.String(good), BlockData: bytes.NewReader(block[1:])}},
		"index beyond the volume": {put: &ebs.PutSnapshotBlockInput{BlockIndex: awssdk.Int32(int32(ebsGiB / bs)),
			DataLength: awssdk.Int32(bs), Checksum: awssdk.String(good), BlockData: bytes.NewReader(block)}},
		"wrong aggregate": {complete: func(id string) *ebs.CompleteSnapshotInput {
			return &ebs.CompleteSnapshotInput{SnapshotId: &id, ChangedBlocksCount: awssdk.Int32(1),
				Checksum: awssdk.String(good), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
				ChecksumAggregationMethod: ebstypes.ChecksumAggregationMethodChecksumAggregationLinear}
		}},
		"wrong changed-block count": {complete: func(id string) *ebs.CompleteSnapshotInput {
			one := sha256.Sum256(sum[:])
			return &ebs.CompleteSnapshotInput{SnapshotId: &id, ChangedBlocksCount: awssdk.Int32(2),
				Checksum:          awssdk.String(base64.StdEncoding.EncodeToString(one[:])),
				ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256, ChecksumAggregationMethod: ebstypes.ChecksumAggregationMethodChecksumAggregationLinear}
		}},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeCloud(bs)
			st, err := f.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: awssdk.Int64(1)})
			if err != nil {
				t.Fatal(err)
			}
			id := awssdk.ToString(st.SnapshotId)
			var invalid *ebstypes.ValidationException
			if tc.put != nil {
				tc.put.SnapshotId, tc.put.ChecksumAlgorithm = &id, ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256
				if _, err := f.PutSnapshotBlock(ctx, tc.put); !errors.As(err, &invalid) {
					t.Errorf("PutSnapshotBlock: %v, want a ValidationException", err)
				}
				return
			}
			if _, err := f.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{SnapshotId: &id, BlockIndex: awssdk.Int32(3),
				DataLength: awssdk.Int32(bs), Checksum: awssdk.String(good), BlockData: bytes.NewReader(block),
				ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256}); err != nil {
				t.Fatal(err)
			}
			if _, err := f.CompleteSnapshot(ctx, tc.complete(id)); !errors.As(err, &invalid) {
				t.Errorf("CompleteSnapshot: %v, want a ValidationException", err)
			}
			if s := f.snapshot(id); s.state != ec2types.SnapshotStateError {
				t.Errorf("snapshot state %s after a bad completion, want error", s.state)
			}
		})
	}
}

// ebsChecker fronts kumo with the checks EBS makes and kumo does not: each PutSnapshotBlock's x-amz-Checksum and
// x-amz-Data-Length against its body, and CompleteSnapshot's changed-block count and LINEAR aggregate against the
// blocks it saw. A failed check answers a ValidationException, as EBS does, and is recorded.
type ebsChecker struct {
	next http.Handler

	mu       sync.Mutex
	blocks   map[string]map[int][sha256.Size]byte
	failures []string
	puts     int
}

var (
	putBlockPath = regexp.MustCompile(`^/snapshots/([^/]+)/blocks/(\d+)$`)
	completePath = regexp.MustCompile(`^/snapshots/completion/([^/]+)$`)
)

func newEBSChecker(target string) *ebsChecker {
	u, _ := url.Parse(target)
	proxy := httputil.NewSingleHostReverseProxy(u)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256 // the default 2 would make the proxy, not the uploader, the bottleneck
	proxy.Transport = tr
	return &ebsChecker{next: proxy, blocks: map[string]map[int][sha256.Size]byte{}}
}

func (c *ebsChecker) refuse(w http.ResponseWriter, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	c.mu.Lock()
	c.failures = append(c.failures, msg)
	c.mu.Unlock()
	w.Header().Set("X-Amzn-Errortype", "ValidationException")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"message": msg})
}

func (c *ebsChecker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m := putBlockPath.FindStringSubmatch(r.URL.Path); m != nil && r.Method == http.MethodPut {
		if r.ContentLength < 0 || r.ContentLength > maxBlockSize {
			c.refuse(w, "block of %d bytes", r.ContentLength)
			return
		}
		body := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			c.refuse(w, "reading block: %v", err)
			return
		}
		sum := sha256.Sum256(body)
		idx, _ := strconv.Atoi(m[2])
		switch {
		case r.Header.Get("x-amz-Checksum-Algorithm") != "SHA256":
			c.refuse(w, "block %d: checksum algorithm %q", idx, r.Header.Get("x-amz-Checksum-Algorithm"))
			return
		case r.Header.Get("x-amz-Data-Length") != strconv.Itoa(len(body)):
			c.refuse(w, "block %d: data length %s, body %d bytes", idx, r.Header.Get("x-amz-Data-Length"), len(body))
			return
		case r.Header.Get("x-amz-Checksum") != base64.StdEncoding.EncodeToString(sum[:]):
			c.refuse(w, "block %d: checksum %s does not match its body", idx, r.Header.Get("x-amz-Checksum"))
			return
		}
		c.mu.Lock()
		if c.blocks[m[1]] == nil {
			c.blocks[m[1]] = map[int][sha256.Size]byte{}
		}
		c.blocks[m[1]][idx] = sum
		c.puts++
		c.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	if m := completePath.FindStringSubmatch(r.URL.Path); m != nil && r.Method == http.MethodPost {
		c.mu.Lock()
		blocks := c.blocks[m[1]]
		idx := make([]int, 0, len(blocks))
		for i := range blocks {
			idx = append(idx, i)
		}
		slices.Sort(idx)
		h := sha256.New()
		for _, i := range idx {
			sum := blocks[i]
			h.Write(sum[:])
		}
		c.mu.Unlock()
		want := base64.StdEncoding.EncodeToString(h.Sum(nil))
		switch {
		case r.Header.Get("x-amz-ChangedBlocksCount") != strconv.Itoa(len(blocks)):
			c.refuse(w, "changed blocks %s, %d were written", r.Header.Get("x-amz-ChangedBlocksCount"), len(blocks))
			return
		case r.Header.Get("x-amz-Checksum") != want:
			c.refuse(w, "aggregate checksum %s, want %s", r.Header.Get("x-amz-Checksum"), want)
			return
		case r.Header.Get("x-amz-Checksum-Algorithm") != "SHA256" || r.Header.Get("x-amz-Checksum-Aggregation-Method") != "LINEAR":
			c.refuse(w, "aggregate %q/%q", r.Header.Get("x-amz-Checksum-Algorithm"), r.Header.Get("x-amz-Checksum-Aggregation-Method"))
			return
		}
	}
	c.next.ServeHTTP(w, r)
}

// completedSnapshots answers DescribeSnapshots with `completed` for any ID: kumo's snapshots are invisible to EC2.
type completedSnapshots struct{ EC2API }

func (completedSnapshots) DescribeSnapshots(_ context.Context, in *ec2.DescribeSnapshotsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error) {
	out := &ec2.DescribeSnapshotsOutput{}
	for _, id := range in.SnapshotIds {
		out.Snapshots = append(out.Snapshots, ec2types.Snapshot{SnapshotId: awssdk.String(id), State: ec2types.SnapshotStateCompleted})
	}
	return out, nil
}

// kumoEBS is the real EBS client of the SDK, talking to kumo through an ebsChecker.
func kumoEBS(tb testing.TB) (*ebs.Client, *ebsChecker) {
	srv := kumo.NewServer()
	tb.Cleanup(srv.Close)
	checker := newEBSChecker(srv.URL)
	front := httptest.NewServer(checker)
	tb.Cleanup(front.Close)
	client := ebs.New(ebs.Options{Region: "us-east-1", BaseEndpoint: awssdk.String(front.URL), HTTPClient: ebsHTTPClient(0),
		Credentials: awssdk.CredentialsProviderFunc(func(context.Context) (awssdk.Credentials, error) {
			return awssdk.Credentials{AccessKeyID: "AKID", SecretAccessKey: "SECRET", Source: "test"}, nil
		})})
	return client, checker
}

// TestUploadOverTheWire writes a disk with the SDK's EBS client into kumo, checks every request on the way, and
// reads the snapshot back.
func TestUploadOverTheWire(t *testing.T) {
	client, checker := kumoEBS(t)
	ctx := context.Background()

	// The checker refuses a block whose checksum lies, so the upload below passing it means something.
	st, err := client.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: awssdk.Int64(1)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.PutSnapshotBlock(ctx, &ebs.PutSnapshotBlockInput{SnapshotId: st.SnapshotId, BlockIndex: awssdk.Int32(0),
		BlockData: bytes.NewReader(make([]byte, 16)), DataLength: awssdk.Int32(16),
		Checksum: awssdk.String(base64.StdEncoding.EncodeToString(make([]byte, 32))), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256})
	var invalid *ebstypes.ValidationException
	if !errors.As(err, &invalid) {
		t.Fatalf("a block with a wrong checksum: %v, want a ValidationException", err)
	}
	checker.mu.Lock()
	checker.failures = nil
	checker.mu.Unlock()

	bs := int(awssdk.ToInt32(st.BlockSize))
	disk := diskWithZeros(int64(9*bs+1000), bs, func(i int64) bool { return i%2 == 1 })
	u := newUploader(client, completedSnapshots{}, UploadOptions{Workers: 8})
	id, stats, err := u.upload(ctx, snapshotRequest{Disk: bytes.NewReader(disk), Size: int64(len(disk)), Digest: t.Name(),
		Description: "wire", Tags: map[string]string{TagImageDigest: t.Name()}})
	if err != nil {
		t.Fatal(err)
	}
	if checker.failures != nil {
		t.Fatalf("EBS would have refused: %v", checker.failures)
	}
	if stats.Uploaded != 5 || stats.ZeroSkipped != 5 {
		t.Errorf("stats %+v, want 5 blocks written and 5 skipped", stats)
	}

	got := make([]byte, 10*bs)
	var listed []int32
	for p := ebs.NewListSnapshotBlocksPaginator(client, &ebs.ListSnapshotBlocksInput{SnapshotId: &id}); p.HasMorePages(); {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range page.Blocks {
			i := awssdk.ToInt32(b.BlockIndex)
			listed = append(listed, i)
			out, err := client.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: &id, BlockIndex: b.BlockIndex, BlockToken: b.BlockToken})
			if err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(out.BlockData)
			out.BlockData.Close()
			if err != nil || len(data) != bs {
				t.Fatalf("block %d: %d bytes, %v", i, len(data), err)
			}
			copy(got[int(i)*bs:], data)
		}
	}
	if !slices.Equal(listed, []int32{0, 2, 4, 6, 8}) {
		t.Errorf("blocks in the snapshot %v, want the non-zero ones 0 2 4 6 8", listed)
	}
	if !bytes.Equal(got, paddedDisk(disk, bs)) {
		t.Error("the snapshot does not read back as the disk")
	}
}

// BenchmarkSnapshotUpload writes a 100 MB disk, about half of its blocks zeros, over HTTP with the SDK's EBS client
// into kumo behind the checking middleware, and reports the throughput and the share of blocks skipped.
func BenchmarkSnapshotUpload(b *testing.B) {
	client, checker := kumoEBS(b)
	const size = 100 << 20
	const bs = 512 << 10 // to lay out the zeros; the uploader learns the block size from StartSnapshot
	r := rand.New(rand.NewPCG(1, 2))
	zeros := map[int64]bool{}
	for i := range int64(size / bs) {
		zeros[i] = r.IntN(2) == 0
	}
	disk := diskWithZeros(size, bs, func(i int64) bool { return zeros[i] })
	u := newUploader(client, completedSnapshots{}, UploadOptions{})
	var last UploadStats
	b.SetBytes(size)
	b.ResetTimer()
	for i := range b.N {
		_, st, err := u.upload(context.Background(), snapshotRequest{Disk: bytes.NewReader(disk), Size: size,
			Digest: fmt.Sprint(b.Name(), i, time.Now().UnixNano())})
		if err != nil {
			b.Fatal(err)
		}
		last = st
	}
	b.StopTimer()
	if checker.failures != nil {
		b.Fatalf("EBS would have refused: %v", checker.failures)
	}
	b.ReportMetric(float64(size)*float64(b.N)/1e6/b.Elapsed().Seconds(), "MB/s")
	b.ReportMetric(100*float64(last.ZeroSkipped)/float64(last.Blocks), "%zero-skipped")
}

func TestEBSHTTPClientKeepsAConnectionPerWorker(t *testing.T) {
	for _, workers := range []int{0, 64, 200} {
		tr := ebsHTTPClient(workers).GetTransport()
		if want := max(workers, 64); tr.MaxIdleConnsPerHost < want || tr.MaxIdleConns < want {
			t.Errorf("%d workers: %d idle connections per host, %d in all; want %d", workers, tr.MaxIdleConnsPerHost, tr.MaxIdleConns, want)
		}
	}
}
