package aws

// Writing a raw disk into an EBS snapshot with the EBS direct APIs, the way awslabs' coldsnap does it: the block size
// comes from StartSnapshot, all-zero blocks are skipped (a new snapshot reads zeros), the other blocks go up from a
// bounded pool of workers with per-block SHA-256 checksums and retries, CompleteSnapshot carries the number of blocks
// written and their LINEAR aggregate checksum, and the snapshot is waited to `completed`.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
	"golang.org/x/sync/errgroup"
)

const (
	ebsGiB = int64(1) << 30
	// maxVolumeGiB is the largest snapshot StartSnapshot accepts (64 TiB).
	maxVolumeGiB = 65536
	// maxBlockSize bounds the block size we accept from StartSnapshot (512 KiB today): an upload holds one block
	// per worker in memory, so a size we did not bound would be a memory size we did not choose.
	maxBlockSize = 16 << 20
)

// UploadOptions tune how a disk is written into a snapshot; zero fields take the defaults.
type UploadOptions struct {
	// Workers is how many PutSnapshotBlock calls run at once (default 64, as coldsnap). An upload holds
	// Workers+1 blocks in memory. The EBS client should keep as many connections (ebsHTTPClient).
	Workers int
	// Attempts bounds the tries of one call (default 12); the back-off starts at RetryBase (default 500 ms) and
	// doubles up to RetryMax (default 15 s), jittered. Only throttling, server faults and connection errors are
	// retried, on top of the SDK's own retryer (which gives up sooner: these calls must outlast a throttled minute
	// and a snapshot that EBS does not know yet right after StartSnapshot).
	Attempts            int
	RetryBase, RetryMax time.Duration
	// SnapshotTimeout is how long a started snapshot may stay pending before EBS abandons it in state `error`
	// (StartSnapshot's Timeout, whole minutes, 10 at least; default 60 min).
	SnapshotTimeout time.Duration
	// PollBase and PollMax space the DescribeSnapshots calls that wait for `completed` (defaults 2 s and 15 s);
	// WaitTimeout bounds that wait (default 30 min).
	PollBase, PollMax, WaitTimeout time.Duration
}

func (o UploadOptions) withDefaults() UploadOptions {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if o.Workers <= 0 {
		o.Workers = 64
	}
	if o.Attempts <= 0 {
		o.Attempts = 12
	}
	def(&o.RetryBase, 500*time.Millisecond)
	def(&o.RetryMax, 15*time.Second)
	def(&o.SnapshotTimeout, time.Hour)
	o.SnapshotTimeout = max(o.SnapshotTimeout, 10*time.Minute)
	def(&o.PollBase, 2*time.Second)
	def(&o.PollMax, 15*time.Second)
	def(&o.WaitTimeout, 30*time.Minute)
	return o
}

// ebsHTTPClient is the HTTP client the EBS client needs for an upload with workers workers: the SDK's default
// keeps 10 idle connections per host, so 64 workers would open and close connections all the time.
func ebsHTTPClient(workers int) *awshttp.BuildableClient {
	workers = max(workers, UploadOptions{}.withDefaults().Workers)
	return awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConns = max(tr.MaxIdleConns, workers)
		tr.MaxIdleConnsPerHost = max(tr.MaxIdleConnsPerHost, workers)
	})
}

// UploadStats say what an upload did.
type UploadStats struct {
	// Bytes is the size of the disk; Blocks how many blocks of BlockSize it spans, of which Uploaded were written
	// and ZeroSkipped were all zeros.
	Bytes                         int64
	BlockSize                     int
	Blocks, Uploaded, ZeroSkipped int64
	Duration                      time.Duration
}

// snapshotRequest is one disk to write into a snapshot and what the snapshot is labelled with.
type snapshotRequest struct {
	// Disk is read at offsets [0, Size), from several goroutines at once (io.ReaderAt allows it).
	Disk io.ReaderAt
	Size int64
	// Digest is the disk's content digest: StartSnapshot's ClientToken derives from it, so nodes that upload the
	// same disk at the same time share one snapshot.
	Digest      string
	Description string
	Tags        map[string]string
}

// uploader writes disks into EBS snapshots. It is safe for concurrent use.
type uploader struct {
	ebs  EBSAPI
	ec2  EC2API
	opts UploadOptions
	now  func() time.Time
}

func newUploader(ebsc EBSAPI, ec2c EC2API, opts UploadOptions) *uploader {
	return &uploader{ebs: ebsc, ec2: ec2c, opts: opts.withDefaults(), now: time.Now}
}

// upload writes req.Disk into a new snapshot and returns its ID once the snapshot is `completed`. An error leaves no
// snapshot reported as done: a started snapshot that was not completed stays pending until EBS abandons it after
// SnapshotTimeout (it is not deleted, because another node may share it through the ClientToken), and a later call
// writes the disk again. No goroutine outlives the call.
func (u *uploader) upload(ctx context.Context, req snapshotRequest) (string, UploadStats, error) {
	start := u.now()
	stats := UploadStats{Bytes: req.Size}
	volGiB, err := volumeGiB(req.Size)
	if err != nil {
		return "", stats, err
	}
	tags := tagPairs(req.Tags)
	ebsTags := make([]ebstypes.Tag, len(tags))
	for i, t := range tags {
		ebsTags[i] = ebstypes.Tag{Key: awssdk.String(t[0]), Value: awssdk.String(t[1])}
	}
	timeout := int32(u.opts.SnapshotTimeout / time.Minute)
	in := &ebs.StartSnapshotInput{
		VolumeSize:  awssdk.Int64(volGiB),
		Description: awssdk.String(req.Description),
		Tags:        ebsTags,
		Timeout:     awssdk.Int32(timeout),
		ClientToken: awssdk.String(snapshotToken(req.Digest, volGiB, req.Description, tags, timeout, u.now())),
	}
	var out *ebs.StartSnapshotOutput
	err = u.retry(ctx, func() error {
		var err error
		out, err = u.ebs.StartSnapshot(ctx, in)
		return err
	})
	if err != nil {
		return "", stats, fmt.Errorf("starting snapshot, %w", withAWSAction("ebs:StartSnapshot", err))
	}
	id := awssdk.ToString(out.SnapshotId)
	bs := int(awssdk.ToInt32(out.BlockSize))
	switch {
	case id == "":
		return "", stats, errors.New("starting snapshot: ebs:StartSnapshot returned no snapshot ID")
	case bs <= 0 || bs > maxBlockSize:
		return "", stats, fmt.Errorf("starting snapshot %s: ebs:StartSnapshot returned block size %d, want 1 to %d bytes", id, bs, maxBlockSize)
	case out.Status == ebstypes.StatusError:
		return "", stats, fmt.Errorf("starting snapshot %s: it is in state error (abandoned after its timeout?)", id)
	case out.Status == ebstypes.StatusCompleted: // another node wrote this disk with the same ClientToken
		return id, stats, u.waitSnapshot(ctx, id)
	}
	stats.BlockSize = bs
	stats.Blocks = blockCount(req.Size, bs)
	if stats.Blocks > volGiB*ebsGiB/int64(bs) {
		return "", stats, fmt.Errorf("starting snapshot %s: %d blocks of %d bytes do not fit %d GiB", id, stats.Blocks, bs, volGiB)
	}

	sums, written, err := u.putBlocks(ctx, id, req.Disk, req.Size, bs, &stats)
	if err != nil {
		// A snapshot shared through the ClientToken refuses blocks once another node has completed it.
		if ctx.Err() == nil && u.completedElsewhere(ctx, id) {
			stats.Duration = u.now().Sub(start)
			return id, stats, nil
		}
		return "", stats, fmt.Errorf("writing snapshot %s, %w", id, err)
	}
	complete := &ebs.CompleteSnapshotInput{
		SnapshotId:                awssdk.String(id),
		ChangedBlocksCount:        awssdk.Int32(int32(stats.Uploaded)),
		Checksum:                  awssdk.String(linearChecksum(sums, written)),
		ChecksumAlgorithm:         ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
		ChecksumAggregationMethod: ebstypes.ChecksumAggregationMethodChecksumAggregationLinear,
	}
	err = u.retry(ctx, func() error {
		_, err := u.ebs.CompleteSnapshot(ctx, complete)
		return err
	})
	if err != nil && !u.completedElsewhere(ctx, id) {
		return "", stats, fmt.Errorf("completing snapshot %s, %w", id, withAWSAction("ebs:CompleteSnapshot", err))
	}
	if err := u.waitSnapshot(ctx, id); err != nil {
		return "", stats, err
	}
	stats.Duration = u.now().Sub(start)
	return id, stats, nil
}

// putBlocks writes the non-zero blocks of disk with opts.Workers workers, each holding one block buffer; it
// returns the SHA-256 of every block and which blocks were written. The first error stops the others and is
// returned once all have ended.
func (u *uploader) putBlocks(ctx context.Context, id string, disk io.ReaderAt, size int64, bs int, stats *UploadStats) ([][sha256.Size]byte, []bool, error) {
	n := stats.Blocks
	sums := make([][sha256.Size]byte, n)
	written := make([]bool, n) // each index is written by one worker only; Wait orders those writes before our reads
	zero := make([]byte, bs)
	var next, done, uploaded, skipped atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range min(int64(u.opts.Workers), n) {
		g.Go(func() error {
			buf := make([]byte, bs)
			for {
				i := next.Add(1) - 1
				if i >= n {
					return nil
				}
				if err := gctx.Err(); err != nil {
					return err
				}
				if err := readBlock(disk, buf, i, size); err != nil {
					return err
				}
				if bytes.Equal(buf, zero) {
					skipped.Add(1)
					done.Add(1)
					continue
				}
				sum := sha256.Sum256(buf)
				in := &ebs.PutSnapshotBlockInput{
					SnapshotId:        awssdk.String(id),
					BlockIndex:        awssdk.Int32(int32(i)),
					DataLength:        awssdk.Int32(int32(bs)),
					Checksum:          awssdk.String(base64.StdEncoding.EncodeToString(sum[:])),
					ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
					Progress:          awssdk.Int32(int32(done.Load() * 100 / n)),
				}
				err := u.retry(gctx, func() error {
					in.BlockData = bytes.NewReader(buf) // a fresh reader per attempt: a failed attempt may have read some
					_, err := u.ebs.PutSnapshotBlock(gctx, in)
					return err
				})
				if err != nil {
					return fmt.Errorf("writing block %d, %w", i, withAWSAction("ebs:PutSnapshotBlock", err))
				}
				sums[i], written[i] = sum, true
				uploaded.Add(1)
				done.Add(1)
			}
		})
	}
	err := g.Wait()
	stats.Uploaded, stats.ZeroSkipped = uploaded.Load(), skipped.Load()
	if err != nil {
		return nil, nil, err
	}
	return sums, written, nil
}

// completedElsewhere reports whether snapshot id is already `completed`: nodes that uploaded the same disk at the
// same time share the snapshot through the ClientToken, and the second CompleteSnapshot is refused.
func (u *uploader) completedElsewhere(ctx context.Context, id string) bool {
	out, err := u.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}})
	if err != nil {
		return false
	}
	for _, s := range out.Snapshots {
		if awssdk.ToString(s.SnapshotId) == id && s.State == ec2types.SnapshotStateCompleted {
			return true
		}
	}
	return false
}

// readBlock fills buf with block i of a disk of size bytes, padding the last block with zeros (EBS takes whole
// blocks only).
func readBlock(disk io.ReaderAt, buf []byte, i, size int64) error {
	off := i * int64(len(buf))
	k := min(int64(len(buf)), size-off)
	got, err := disk.ReadAt(buf[:k], off)
	if int64(got) == k {
		err = nil // ReadAt may say io.EOF along with the disk's last bytes
	} else if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("reading block %d of the disk, %w", i, err)
	}
	clear(buf[k:])
	return nil
}

// volumeGiB is the snapshot's volume size for a disk of size bytes: whole GiB, rounded up.
func volumeGiB(size int64) (int64, error) {
	if size <= 0 {
		return 0, fmt.Errorf("disk of %d bytes: nothing to write into a snapshot", size)
	}
	v := (size + ebsGiB - 1) / ebsGiB
	if v > maxVolumeGiB {
		return 0, fmt.Errorf("disk of %d bytes: larger than the %d GiB an EBS snapshot holds", size, maxVolumeGiB)
	}
	return v, nil
}

// blockCount is how many blocks of bs bytes a disk of size bytes spans.
func blockCount(size int64, bs int) int64 { return (size + int64(bs) - 1) / int64(bs) }

// linearChecksum is CompleteSnapshot's LINEAR aggregate checksum: the base64 SHA-256 of the concatenated raw (not
// base64) SHA-256 digests of the written blocks, in ascending block index order — what the EBS API reference
// describes and coldsnap sends. Skipped blocks take no part.
func linearChecksum(sums [][sha256.Size]byte, written []bool) string {
	h := sha256.New()
	for i := range sums {
		if written[i] {
			h.Write(sums[i][:])
		}
	}
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// snapshotToken is StartSnapshot's ClientToken (64 ASCII characters at most). It derives from the content digest
// and every parameter sent with it — so nodes that send the same disk share one snapshot, and a node with other
// tags gets its own instead of a ConflictException — and from the period of the snapshot timeout the call falls in:
// a retry within that period resumes the same pending snapshot, while one after it (when that snapshot may have been
// abandoned in state error) starts a new one.
func snapshotToken(digest string, volGiB int64, desc string, tags [][2]string, timeoutMin int32, now time.Time) string {
	h := sha256.New()
	field := func(s string) {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(s))))
		h.Write([]byte(s))
	}
	field("i2kit ebs snapshot v1")
	field(digest)
	field(fmt.Sprint(volGiB, " ", timeoutMin, " ", now.Unix()/(int64(timeoutMin)*60)))
	field(desc)
	for _, t := range tags {
		field(t[0])
		field(t[1])
	}
	return "i2kit-" + hex.EncodeToString(h.Sum(nil))[:58]
}

// tagPairs are a tag map as key/value pairs in key order.
func tagPairs(m map[string]string) [][2]string {
	out := make([][2]string, 0, len(m))
	for k, v := range m {
		out = append(out, [2]string{k, v})
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

// retry runs call until it succeeds, fails in a way retrying cannot mend, ctx ends, or opts.Attempts tries are
// spent, backing off exponentially with jitter between tries.
func (u *uploader) retry(ctx context.Context, call func() error) error {
	var err error
	for attempt := range u.opts.Attempts {
		if attempt > 0 {
			if werr := sleepCtx(ctx, jitteredBackoff(u.opts.RetryBase, u.opts.RetryMax, attempt-1)); werr != nil {
				return errors.Join(err, werr)
			}
		}
		if err = call(); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w, after %w", ctx.Err(), err)
		}
		if !transientAWSError(ctx, err) {
			return err
		}
	}
	return fmt.Errorf("giving up after %d attempts, %w", u.opts.Attempts, err)
}

// jitteredBackoff is the pause before retry number attempt (from 0): base doubled per attempt up to most, of which the
// upper half is random so that workers throttled together do not come back together.
func jitteredBackoff(base, most time.Duration, attempt int) time.Duration {
	d := most
	if attempt < 30 && base<<attempt < most {
		d = base << attempt
	}
	return d/2 + rand.N(d/2+1)
}

// transientCodes are the AWS error codes worth another try besides throttling (throttleCodes): server faults, and a
// snapshot EBS does not know yet just after StartSnapshot (coldsnap retries for two minutes for that one).
var transientCodes = codes("InternalServerException", "InternalServerError", "InternalError", "InternalFailure",
	"ServiceUnavailable", "ServiceUnavailableException", "ResourceNotFoundException", "RequestTimeout", "RequestTimeoutException")

// transientAWSError reports whether err, from a call made with ctx, may succeed if made again: throttling, a server fault
// (5xx), a connection that failed. A refusal (validation, access denied, a conflict) or the end of ctx is final.
func transientAWSError(ctx context.Context, err error) bool {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return false
	}
	var status interface{ HTTPStatusCode() int }
	if errors.As(err, &status) && (status.HTTPStatusCode() >= 500 || status.HTTPStatusCode() == 429) {
		return true
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		return IsThrottled(err) || transientCodes[api.ErrorCode()] || api.ErrorFault() == smithy.FaultServer
	}
	// Not an answer from AWS: the request did not get through (connection refused or reset, a timeout, a body
	// cut short).
	return true
}

// withAWSAction names the AWS action (the IAM permission) a refused call needs, so that an event about it tells the
// operator what to grant.
func withAWSAction(action string, err error) error {
	if IsUnauthorized(err) { // authCodes: one list of what a refusal is
		return fmt.Errorf("%s refused (%s): the node's IAM role must allow %s, %w", action, errorCode(err), action, err)
	}
	return fmt.Errorf("%s, %w", action, err)
}

// waitSnapshot polls DescribeSnapshots until snapshot id is `completed`, spacing the calls from opts.PollBase up to
// opts.PollMax, for opts.WaitTimeout at most. State `error` fails; an unknown snapshot is eventual consistency (a
// snapshot the EBS direct APIs made takes a moment to appear in EC2) and is waited for.
func (u *uploader) waitSnapshot(ctx context.Context, id string) error {
	state := "unknown"
	err := pollCloud(ctx, u.opts, func() (bool, error) {
		out, err := u.ec2.DescribeSnapshots(ctx, &ec2.DescribeSnapshotsInput{SnapshotIds: []string{id}})
		switch {
		case errorCode(err) == "InvalidSnapshot.NotFound":
			return false, nil
		case err != nil && transientAWSError(ctx, err):
			return false, nil
		case err != nil:
			return false, withAWSAction("ec2:DescribeSnapshots", err)
		}
		for _, s := range out.Snapshots {
			if awssdk.ToString(s.SnapshotId) != id {
				continue
			}
			state = string(s.State)
			switch s.State {
			case ec2types.SnapshotStateCompleted:
				return true, nil
			case ec2types.SnapshotStateError:
				return false, fmt.Errorf("snapshot %s failed: %s", id, awssdk.ToString(s.StateMessage))
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for snapshot %s to complete (state %s), %w", id, state, err)
	}
	return nil
}

// errWaitTimeout ends a pollCloud that ran out of time. It is no context error: the caller's context is alive.
var errWaitTimeout = errors.New("timed out")

// pollCloud calls check until it reports done or fails, spacing the calls from opts.PollBase doubling up to
// opts.PollMax, for opts.WaitTimeout at most and while ctx lives.
func pollCloud(ctx context.Context, opts UploadOptions, check func() (bool, error)) error {
	deadline := time.Now().Add(opts.WaitTimeout)
	for attempt := 0; ; attempt++ {
		done, err := check()
		if done || err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s", errWaitTimeout, opts.WaitTimeout)
		}
		if err := sleepCtx(ctx, jitteredBackoff(opts.PollBase, opts.PollMax, attempt)); err != nil {
			return err
		}
	}
}
