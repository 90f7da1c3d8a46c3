package aws

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// fakeCloud is a stateful fake of the EBS direct APIs and of EC2's snapshot and image calls. It checks what EBS
// checks — and what kumo does not: every block's length, index and checksum, and at completion the number of blocks
// written and their LINEAR aggregate checksum — so that an upload it accepts is one AWS would accept. Knobs inject
// errors and keep snapshots and images pending for a few describes. Describe calls answer in ID order, the order
// resources were made in. The EC2 calls it does not fake panic (nil
// embedded interface).
type fakeCloud struct {
	EC2API

	mu        sync.Mutex
	blockSize int32
	seq       int
	snaps     map[string]*fakeSnap
	tokens    map[string]string // StartSnapshot ClientToken → snapshot ID
	images    map[string]*fakeImage
	calls     map[string]int
	faults    map[string][]error // per call name: the errors its next calls return, in order
	// snapPending and imagePending are how many describes a completed snapshot / registered image stays pending.
	snapPending, imagePending int
	// hooks run (without the lock) at the start of the named call, before faults; a hook's error is returned.
	hooks map[string]func(ctx context.Context) error
}

type fakeSnap struct {
	id, params  string
	volGiB      int64
	tags        map[string]string
	timeout     int32
	state       ec2types.SnapshotState
	message     string
	blocks      map[int32][]byte
	pendingLeft int
}

type fakeImage struct {
	id, name, snapshot string
	state              ec2types.ImageState
	tags               map[string]string
	in                 *ec2.RegisterImageInput
	pendingLeft        int
}

func newFakeCloud(blockSize int32) *fakeCloud {
	return &fakeCloud{blockSize: blockSize, snaps: map[string]*fakeSnap{}, tokens: map[string]string{},
		images: map[string]*fakeImage{}, calls: map[string]int{}, faults: map[string][]error{},
		hooks: map[string]func(context.Context) error{}}
}

// fail makes the next len(errs) calls of op return errs, in order.
func (f *fakeCloud) fail(op string, errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[op] = append(f.faults[op], errs...)
}

func (f *fakeCloud) hook(op string, h func(context.Context) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hooks[op] = h
}

func (f *fakeCloud) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// enter counts a call, runs its hook and returns its injected fault; on nil it returns with f.mu held.
func (f *fakeCloud) enter(ctx context.Context, op string) error {
	f.mu.Lock()
	f.calls[op]++
	h := f.hooks[op]
	f.mu.Unlock()
	if h != nil {
		if err := h(ctx); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	if q := f.faults[op]; len(q) > 0 {
		f.faults[op] = q[1:]
		f.mu.Unlock()
		return q[0]
	}
	return nil
}

func fakeEC2Error(code, format string, a ...any) error {
	return &smithy.GenericAPIError{Code: code, Message: fmt.Sprintf(format, a...), Fault: smithy.FaultClient}
}

func fakeEBSInvalid(format string, a ...any) error {
	return &ebstypes.ValidationException{Message: awssdk.String(fmt.Sprintf(format, a...))}
}

func (f *fakeCloud) StartSnapshot(ctx context.Context, in *ebs.StartSnapshotInput, _ ...func(*ebs.Options)) (*ebs.StartSnapshotOutput, error) {
	if err := f.enter(ctx, "StartSnapshot"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	vol := awssdk.ToInt64(in.VolumeSize)
	if vol < 1 || vol > maxVolumeGiB {
		return nil, fakeEBSInvalid("VolumeSize %d out of range", vol)
	}
	if t := awssdk.ToInt32(in.Timeout); in.Timeout != nil && (t < 10 || t > 4320) {
		return nil, fakeEBSInvalid("Timeout %d out of range", t)
	}
	if tok := awssdk.ToString(in.ClientToken); len(tok) > 64 {
		return nil, fakeEBSInvalid("ClientToken longer than 64 characters")
	}
	tags := map[string]string{}
	for _, t := range in.Tags {
		tags[awssdk.ToString(t.Key)] = awssdk.ToString(t.Value)
	}
	params := fmt.Sprint(vol, awssdk.ToString(in.Description), awssdk.ToInt32(in.Timeout), tagPairs(tags))
	out := func(s *fakeSnap) *ebs.StartSnapshotOutput {
		return &ebs.StartSnapshotOutput{SnapshotId: awssdk.String(s.id), BlockSize: awssdk.Int32(f.blockSize),
			VolumeSize: awssdk.Int64(s.volGiB), Status: ebstypes.StatusPending}
	}
	if tok := awssdk.ToString(in.ClientToken); tok != "" {
		if id, ok := f.tokens[tok]; ok {
			s := f.snaps[id]
			if s.params != params {
				return nil, &ebstypes.ConflictException{Message: awssdk.String("client token reused with other parameters")}
			}
			return out(s), nil // EBS replays the first answer
		}
	}
	f.seq++
	s := &fakeSnap{id: fmt.Sprintf("snap-%08d", f.seq), params: params, volGiB: vol, tags: tags,
		timeout: awssdk.ToInt32(in.Timeout), state: ec2types.SnapshotStatePending, blocks: map[int32][]byte{}}
	f.snaps[s.id] = s
	if tok := awssdk.ToString(in.ClientToken); tok != "" {
		f.tokens[tok] = s.id
	}
	return out(s), nil
}

func (f *fakeCloud) PutSnapshotBlock(ctx context.Context, in *ebs.PutSnapshotBlockInput, _ ...func(*ebs.Options)) (*ebs.PutSnapshotBlockOutput, error) {
	if err := f.enter(ctx, "PutSnapshotBlock"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	s := f.snaps[awssdk.ToString(in.SnapshotId)]
	switch {
	case s == nil:
		return nil, &ebstypes.ResourceNotFoundException{Message: awssdk.String("no such snapshot")}
	case s.state != ec2types.SnapshotStatePending || s.pendingLeft > 0:
		return nil, fakeEBSInvalid("snapshot %s is not pending", s.id)
	}
	i := awssdk.ToInt32(in.BlockIndex)
	if in.BlockIndex == nil || i < 0 || int64(i) >= s.volGiB*ebsGiB/int64(f.blockSize) {
		return nil, fakeEBSInvalid("block index %d outside the volume", i)
	}
	if in.ChecksumAlgorithm != ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256 {
		return nil, fakeEBSInvalid("checksum algorithm %q", in.ChecksumAlgorithm)
	}
	if awssdk.ToInt32(in.DataLength) != f.blockSize {
		return nil, fakeEBSInvalid("data length %d, the block size is %d", awssdk.ToInt32(in.DataLength), f.blockSize)
	}
	if p := in.Progress; p != nil && (*p < 0 || *p > 100) {
		return nil, fakeEBSInvalid("progress %d", *p)
	}
	data, err := io.ReadAll(io.LimitReader(in.BlockData, int64(f.blockSize)+1))
	if err != nil {
		return nil, err
	}
	if len(data) != int(f.blockSize) {
		return nil, fakeEBSInvalid("body of %d bytes, data length %d", len(data), f.blockSize)
	}
	sum := sha256.Sum256(data)
	if got := base64.StdEncoding.EncodeToString(sum[:]); got != awssdk.ToString(in.Checksum) {
		return nil, fakeEBSInvalid("checksum %s, the data's is %s", awssdk.ToString(in.Checksum), got)
	}
	s.blocks[i] = data
	return &ebs.PutSnapshotBlockOutput{Checksum: in.Checksum, ChecksumAlgorithm: in.ChecksumAlgorithm}, nil
}

// aggregate is the LINEAR aggregate checksum of a snapshot's blocks, computed here independently of the code under
// test.
func (s *fakeSnap) aggregate() string {
	idx := make([]int32, 0, len(s.blocks))
	for i := range s.blocks {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	var cat []byte
	for _, i := range idx {
		sum := sha256.Sum256(s.blocks[i])
		cat = append(cat, sum[:]...)
	}
	all := sha256.Sum256(cat)
	return base64.StdEncoding.EncodeToString(all[:])
}

func (f *fakeCloud) CompleteSnapshot(ctx context.Context, in *ebs.CompleteSnapshotInput, _ ...func(*ebs.Options)) (*ebs.CompleteSnapshotOutput, error) {
	if err := f.enter(ctx, "CompleteSnapshot"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	s := f.snaps[awssdk.ToString(in.SnapshotId)]
	switch {
	case s == nil:
		return nil, &ebstypes.ResourceNotFoundException{Message: awssdk.String("no such snapshot")}
	case s.state != ec2types.SnapshotStatePending || s.pendingLeft > 0:
		return nil, fakeEBSInvalid("snapshot %s is not pending", s.id)
	case in.ChecksumAlgorithm != ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
		in.ChecksumAggregationMethod != ebstypes.ChecksumAggregationMethodChecksumAggregationLinear:
		return nil, fakeEBSInvalid("checksum %q/%q", in.ChecksumAlgorithm, in.ChecksumAggregationMethod)
	}
	if n := awssdk.ToInt32(in.ChangedBlocksCount); in.ChangedBlocksCount == nil || int(n) != len(s.blocks) {
		s.state, s.message = ec2types.SnapshotStateError, "changed blocks count mismatch"
		return nil, fakeEBSInvalid("ChangedBlocksCount %d, %d blocks were written", n, len(s.blocks))
	}
	if want := s.aggregate(); awssdk.ToString(in.Checksum) != want {
		s.state, s.message = ec2types.SnapshotStateError, "checksum mismatch"
		return nil, fakeEBSInvalid("aggregate checksum %s, want %s", awssdk.ToString(in.Checksum), want)
	}
	s.state, s.pendingLeft = ec2types.SnapshotStateCompleted, f.snapPending
	return &ebs.CompleteSnapshotOutput{Status: ebstypes.StatusPending}, nil
}

// addSnapshot makes a snapshot as another node (or an earlier run) left it.
func (f *fakeCloud) addSnapshot(state ec2types.SnapshotState, tags map[string]string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	s := &fakeSnap{id: fmt.Sprintf("snap-%08d", f.seq), volGiB: 1, tags: tags, state: state, blocks: map[int32][]byte{}}
	f.snaps[s.id] = s
	return s.id
}

func (f *fakeCloud) snapshot(id string) *fakeSnap {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snaps[id]
}

// fakeFilterMatch reports whether tags pass EC2 filters (tag:<key> and the extra names given).
func fakeFilterMatch(filters []ec2types.Filter, tags map[string]string, extra map[string]string) bool {
	for _, fl := range filters {
		name := awssdk.ToString(fl.Name)
		var v string
		var ok bool
		if k, isTag := strings.CutPrefix(name, "tag:"); isTag {
			v, ok = tags[k]
		} else {
			v, ok = extra[name]
		}
		if !ok || !slices.Contains(fl.Values, v) {
			return false
		}
	}
	return true
}

func (f *fakeCloud) DescribeSnapshots(ctx context.Context, in *ec2.DescribeSnapshotsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSnapshotsOutput, error) {
	if err := f.enter(ctx, "DescribeSnapshots"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	if len(in.SnapshotIds) == 0 && !slices.Equal(in.OwnerIds, []string{"self"}) {
		return nil, fakeEC2Error("InvalidParameterCombination", "the fake lists only the account's own snapshots")
	}
	var out []ec2types.Snapshot
	for _, id := range in.SnapshotIds {
		if f.snaps[id] == nil {
			return nil, fakeEC2Error("InvalidSnapshot.NotFound", "snapshot %s does not exist", id)
		}
	}
	for _, s := range f.snaps {
		if len(in.SnapshotIds) > 0 && !slices.Contains(in.SnapshotIds, s.id) {
			continue
		}
		state := s.state
		if state == ec2types.SnapshotStateCompleted && s.pendingLeft > 0 {
			state = ec2types.SnapshotStatePending
		}
		if !fakeFilterMatch(in.Filters, s.tags, map[string]string{"status": string(state)}) {
			continue
		}
		if len(in.SnapshotIds) > 0 && s.pendingLeft > 0 {
			s.pendingLeft--
		}
		var tags []ec2types.Tag
		for k, v := range s.tags {
			tags = append(tags, ec2types.Tag{Key: awssdk.String(k), Value: awssdk.String(v)})
		}
		out = append(out, ec2types.Snapshot{SnapshotId: awssdk.String(s.id), State: state, Tags: tags,
			StateMessage: awssdk.String(s.message), VolumeSize: awssdk.Int32(int32(s.volGiB))})
	}
	slices.SortFunc(out, func(a, b ec2types.Snapshot) int { return strings.Compare(*a.SnapshotId, *b.SnapshotId) })
	return &ec2.DescribeSnapshotsOutput{Snapshots: out}, nil
}

func (f *fakeCloud) DeleteSnapshot(ctx context.Context, in *ec2.DeleteSnapshotInput, _ ...func(*ec2.Options)) (*ec2.DeleteSnapshotOutput, error) {
	if err := f.enter(ctx, "DeleteSnapshot"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	delete(f.snaps, awssdk.ToString(in.SnapshotId))
	return &ec2.DeleteSnapshotOutput{}, nil
}

// addImage makes an AMI as another node (or an earlier run) left it.
func (f *fakeCloud) addImage(name string, state ec2types.ImageState, tags map[string]string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addImageLocked(name, state, tags, nil)
}

func (f *fakeCloud) addImageLocked(name string, state ec2types.ImageState, tags map[string]string, in *ec2.RegisterImageInput) string {
	f.seq++
	im := &fakeImage{id: fmt.Sprintf("ami-%08d", f.seq), name: name, state: state, tags: tags, in: in}
	if state == ec2types.ImageStatePending {
		im.state, im.pendingLeft = ec2types.ImageStateAvailable, f.imagePending
	}
	f.images[im.id] = im
	return im.id
}

func (f *fakeCloud) image(id string) *fakeImage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.images[id]
}

func (f *fakeCloud) RegisterImage(ctx context.Context, in *ec2.RegisterImageInput, _ ...func(*ec2.Options)) (*ec2.RegisterImageOutput, error) {
	if err := f.enter(ctx, "RegisterImage"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	name := awssdk.ToString(in.Name)
	if len(name) < 3 || len(name) > 128 {
		return nil, fakeEC2Error("InvalidParameterValue", "name %q", name)
	}
	for _, im := range f.images {
		if im.name == name {
			return nil, fakeEC2Error("InvalidAMIName.Duplicate", "AMI name %s is already in use by AMI %s", name, im.id)
		}
	}
	switch {
	case in.BootMode != ec2types.BootModeValuesUefi, !awssdk.ToBool(in.EnaSupport),
		in.ImdsSupport != ec2types.ImdsSupportValuesV20, in.Architecture != ec2types.ArchitectureValuesX8664:
		return nil, fakeEC2Error("InvalidParameterValue", "boot %q ena %v imds %q arch %q", in.BootMode,
			awssdk.ToBool(in.EnaSupport), in.ImdsSupport, in.Architecture)
	case len(in.BlockDeviceMappings) != 1 || in.BlockDeviceMappings[0].Ebs == nil ||
		awssdk.ToString(in.BlockDeviceMappings[0].DeviceName) != awssdk.ToString(in.RootDeviceName):
		return nil, fakeEC2Error("InvalidBlockDeviceMapping", "want one EBS mapping on the root device")
	}
	e := in.BlockDeviceMappings[0].Ebs
	if s := f.snaps[awssdk.ToString(e.SnapshotId)]; s == nil || s.state != ec2types.SnapshotStateCompleted || s.pendingLeft > 0 {
		return nil, fakeEC2Error("InvalidSnapshot.NotFound", "snapshot %s is not a completed snapshot", awssdk.ToString(e.SnapshotId))
	}
	if !awssdk.ToBool(e.DeleteOnTermination) || e.VolumeType != ec2types.VolumeTypeGp3 {
		return nil, fakeEC2Error("InvalidParameterValue", "volume: delete on termination %v type %q", awssdk.ToBool(e.DeleteOnTermination), e.VolumeType)
	}
	tags := map[string]string{}
	for _, ts := range in.TagSpecifications {
		if ts.ResourceType != ec2types.ResourceTypeImage {
			return nil, fakeEC2Error("InvalidParameterValue", "tag specification for %q", ts.ResourceType)
		}
		for _, t := range ts.Tags {
			tags[awssdk.ToString(t.Key)] = awssdk.ToString(t.Value)
		}
	}
	id := f.addImageLocked(name, ec2types.ImageStatePending, tags, in)
	f.images[id].snapshot = awssdk.ToString(e.SnapshotId)
	return &ec2.RegisterImageOutput{ImageId: awssdk.String(id)}, nil
}

func (f *fakeCloud) DescribeImages(ctx context.Context, in *ec2.DescribeImagesInput, _ ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	if err := f.enter(ctx, "DescribeImages"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	if len(in.ImageIds) == 0 && !slices.Equal(in.Owners, []string{"self"}) {
		return nil, fakeEC2Error("InvalidParameterCombination", "the fake lists only the account's own images")
	}
	for _, id := range in.ImageIds {
		if f.images[id] == nil {
			return nil, fakeEC2Error("InvalidAMIID.NotFound", "image %s does not exist", id)
		}
	}
	var out []ec2types.Image
	for _, im := range f.images {
		if len(in.ImageIds) > 0 && !slices.Contains(in.ImageIds, im.id) {
			continue
		}
		state := im.state
		if im.pendingLeft > 0 {
			state = ec2types.ImageStatePending
		}
		if !fakeFilterMatch(in.Filters, im.tags, map[string]string{"name": im.name, "state": string(state)}) {
			continue
		}
		if len(in.ImageIds) > 0 && im.pendingLeft > 0 {
			im.pendingLeft--
		}
		out = append(out, ec2types.Image{ImageId: awssdk.String(im.id), Name: awssdk.String(im.name), State: state,
			StateReason: &ec2types.StateReason{Message: awssdk.String("fake")}})
	}
	slices.SortFunc(out, func(a, b ec2types.Image) int { return strings.Compare(*a.ImageId, *b.ImageId) })
	return &ec2.DescribeImagesOutput{Images: out}, nil
}

func (f *fakeCloud) DeregisterImage(ctx context.Context, in *ec2.DeregisterImageInput, _ ...func(*ec2.Options)) (*ec2.DeregisterImageOutput, error) {
	if err := f.enter(ctx, "DeregisterImage"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	id := awssdk.ToString(in.ImageId)
	if f.images[id] == nil {
		return nil, fakeEC2Error("InvalidAMIID.NotFound", "image %s does not exist", id)
	}
	delete(f.images, id)
	return &ec2.DeregisterImageOutput{}, nil
}

// blockData returns snapshot id's content for a disk of size bytes, in whole blocks (unwritten blocks read zeros).
func (f *fakeCloud) blockData(id string, size int64) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.snaps[id]
	disk := make([]byte, blockCount(size, int(f.blockSize))*int64(f.blockSize))
	for i, b := range s.blocks {
		copy(disk[int64(i)*int64(f.blockSize):], b)
	}
	return disk
}
