package ec2

import (
	"bytes"
	"crypto/sha256"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	ebstypes "github.com/aws/aws-sdk-go-v2/service/ebs/types"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func put(e *env, t *testing.T, id string, idx int32, block []byte, sum []byte) error {
	_, err := e.ebs.PutSnapshotBlock(ctxT(t), &ebs.PutSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(idx),
		BlockData: bytes.NewReader(block), DataLength: aws.Int32(int32(len(block))), Checksum: aws.String(b64(sum)),
		ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256})
	return err
}

func complete(e *env, t *testing.T, id string, n int32, agg []byte) error {
	_, err := e.ebs.CompleteSnapshot(ctxT(t), &ebs.CompleteSnapshotInput{SnapshotId: aws.String(id), ChangedBlocksCount: aws.Int32(n),
		Checksum: aws.String(b64(agg)), ChecksumAlgorithm: ebstypes.ChecksumAlgorithmChecksumAlgorithmSha256,
		ChecksumAggregationMethod: ebstypes.ChecksumAggregationMethodChecksumAggregationLinear})
	return err
}

func TestEBSDirectChecks(t *testing.T) {
	for _, dir := range []string{"", "file"} {
		t.Run("store="+dir, func(t *testing.T) {
			opts := Options{}
			if dir != "" {
				opts.BlockDir = t.TempDir()
			}
			e := newEnv(t, opts)
			ctx := ctxT(t)
			start, err := e.ebs.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1), ClientToken: aws.String("digest-1"),
				Tags: []ebstypes.Tag{{Key: aws.String("k"), Value: aws.String("v")}}})
			if err != nil {
				t.Fatal(err)
			}
			if aws.ToInt32(start.BlockSize) != 524288 || start.Status != ebstypes.StatusPending {
				t.Fatalf("StartSnapshot answered block size %d, status %s", aws.ToInt32(start.BlockSize), start.Status)
			}
			id := aws.ToString(start.SnapshotId)
			again, err := e.ebs.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1), ClientToken: aws.String("digest-1"),
				Tags: []ebstypes.Tag{{Key: aws.String("k"), Value: aws.String("v")}}})
			if err != nil || aws.ToString(again.SnapshotId) != id {
				t.Fatalf("repeated StartSnapshot = %v, %v; want %s", again, err, id)
			}
			_, err = e.ebs.StartSnapshot(ctx, &ebs.StartSnapshotInput{VolumeSize: aws.Int64(2), ClientToken: aws.String("digest-1")})
			wantCode(t, err, "ConflictException")

			block := disk(blockSize)
			sum := sha256.Sum256(block)
			wrong := sha256.Sum256([]byte("other"))
			wantCode(t, put(e, t, id, 0, block, wrong[:]), "ValidationException")
			short := block[:1000]
			shortSum := sha256.Sum256(short)
			wantCode(t, put(e, t, id, 0, short, shortSum[:]), "ValidationException")
			wantCode(t, put(e, t, id, 2048, block, sum[:]), "ValidationException") // 1 GiB holds blocks 0..2047
			for _, idx := range []int32{0, 5} {
				if err := put(e, t, id, idx, block, sum[:]); err != nil {
					t.Fatalf("PutSnapshotBlock %d: %v", idx, err)
				}
			}
			agg := sha256.Sum256(append(append([]byte(nil), sum[:]...), sum[:]...))
			wantCode(t, complete(e, t, id, 1, agg[:]), "ValidationException")
			badAgg := sha256.Sum256(sum[:])
			wantCode(t, complete(e, t, id, 2, badAgg[:]), "ValidationException")
			if err := complete(e, t, id, 2, agg[:]); err != nil {
				t.Fatalf("CompleteSnapshot: %v", err)
			}
			wantCode(t, put(e, t, id, 1, block, sum[:]), "ValidationException") // sealed

			list, err := e.ebs.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String(id)})
			if err != nil || len(list.Blocks) != 2 || aws.ToInt32(list.Blocks[1].BlockIndex) != 5 {
				t.Fatalf("ListSnapshotBlocks = %+v, %v", list, err)
			}
			got, err := e.ebs.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(5),
				BlockToken: list.Blocks[1].BlockToken})
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(got.BlockData)
			if !bytes.Equal(data, block) || aws.ToString(got.Checksum) != b64(sum[:]) {
				t.Error("GetSnapshotBlock does not return the block written")
			}
			_, err = e.ebs.GetSnapshotBlock(ctx, &ebs.GetSnapshotBlockInput{SnapshotId: aws.String(id), BlockIndex: aws.Int32(0),
				BlockToken: list.Blocks[1].BlockToken})
			wantCode(t, err, "ValidationException")
			_, err = e.ebs.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: aws.String("snap-0000000000000dead")})
			wantCode(t, err, "ResourceNotFoundException")

			// The volume reads back: written blocks where they were put, zeros elsewhere.
			r, err := e.srv.SnapshotReader(id)
			if err != nil || r.Size() != 1<<30 {
				t.Fatalf("SnapshotReader = %v, %v", r, err)
			}
			buf := make([]byte, 6*blockSize)
			if _, err := r.ReadAt(buf, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:blockSize], block) || !bytes.Equal(buf[5*blockSize:], block) || bytes.Count(buf[blockSize:5*blockSize], []byte{0}) != 4*blockSize {
				t.Error("the snapshot's volume does not read back as written")
			}
			path := filepath.Join(t.TempDir(), "disk.img")
			if err := e.srv.WriteSnapshotFile(id, path); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			at5 := make([]byte, blockSize)
			if _, err := f.ReadAt(at5, 5*blockSize); err != nil || st.Size() != 1<<30 || !bytes.Equal(at5, block) {
				t.Errorf("WriteSnapshotFile wrote the wrong disk (%v)", err)
			}
			if _, err := e.ec2.DeleteSnapshot(ctx, &awsec2.DeleteSnapshotInput{SnapshotId: aws.String(id)}); err != nil {
				t.Fatal(err)
			}
			if dir != "" {
				if left, _ := os.ReadDir(opts.BlockDir); len(left) != 0 {
					t.Errorf("deleting the snapshot left %d files", len(left))
				}
			}
		})
	}
}

func TestSnapshotsAndImages(t *testing.T) {
	e := newEnv(t, Options{SnapshotPendingDescribes: 2, ImagePendingDescribes: 1})
	ctx := ctxT(t)
	snap := e.upload(t, disk(3*blockSize), 1, "img-digest")
	_, err := e.ec2.RegisterImage(ctx, registerInput("too-early", snap))
	wantCode(t, err, "IncorrectState")
	for i, want := range []types.SnapshotState{"pending", "pending", "completed"} {
		out, err := e.ec2.DescribeSnapshots(ctx, &awsec2.DescribeSnapshotsInput{OwnerIds: []string{"self"},
			Filters: []types.Filter{{Name: aws.String("tag:i2kit.io/image-digest"), Values: []string{"img-digest"}}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Snapshots) != 1 || out.Snapshots[0].State != want {
			t.Fatalf("describe %d: %+v, want one %s snapshot", i, out.Snapshots, want)
		}
		if i == 2 && (aws.ToInt32(out.Snapshots[0].VolumeSize) != 1 || aws.ToString(out.Snapshots[0].Progress) != "100%") {
			t.Errorf("completed snapshot = %+v", out.Snapshots[0])
		}
	}
	_, err = e.ec2.DescribeSnapshots(ctx, &awsec2.DescribeSnapshotsInput{SnapshotIds: []string{"snap-0000000000000dead"}})
	wantCode(t, err, "InvalidSnapshot.NotFound")
	if out, err := e.ec2.DescribeSnapshots(ctx, &awsec2.DescribeSnapshotsInput{OwnerIds: []string{"amazon"}}); err != nil || len(out.Snapshots) != 0 {
		t.Errorf("amazon's snapshots = %v, %v; want none", out, err)
	}

	reg, err := e.ec2.RegisterImage(ctx, registerInput("pod-image", snap))
	if err != nil {
		t.Fatal(err)
	}
	ami := aws.ToString(reg.ImageId)
	_, err = e.ec2.RegisterImage(ctx, registerInput("pod-image", snap))
	wantCode(t, err, "InvalidAMIName.Duplicate")
	_, err = e.ec2.RegisterImage(ctx, registerInput("ghost", "snap-0000000000000dead"))
	wantCode(t, err, "InvalidSnapshot.NotFound")
	noRoot := registerInput("no-root", snap)
	noRoot.RootDeviceName = aws.String("/dev/sdb")
	_, err = e.ec2.RegisterImage(ctx, noRoot)
	wantCode(t, err, "InvalidBlockDeviceMapping")

	find := &awsec2.DescribeImagesInput{Owners: []string{"self"}, Filters: []types.Filter{
		{Name: aws.String("tag:i2kit.io/image-digest"), Values: []string{"pod-image"}}, {Name: aws.String("name"), Values: []string{"pod-*"}}}}
	for i, want := range []types.ImageState{"pending", "available"} {
		out, err := e.ec2.DescribeImages(ctx, find)
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Images) != 1 || out.Images[0].State != want {
			t.Fatalf("describe %d: %+v, want one %s image", i, out.Images, want)
		}
		im := out.Images[0]
		if im.BootMode != types.BootModeValuesUefi || !aws.ToBool(im.EnaSupport) || im.ImdsSupport != types.ImdsSupportValuesV20 ||
			im.Architecture != types.ArchitectureValuesX8664 || aws.ToString(im.RootDeviceName) != "/dev/xvda" ||
			aws.ToString(im.BlockDeviceMappings[0].Ebs.SnapshotId) != snap || aws.ToString(im.OwnerId) != "123456789012" {
			t.Errorf("image = %+v", im)
		}
	}
	filtered, err := e.ec2.DescribeImages(ctx, &awsec2.DescribeImagesInput{Owners: []string{"self"},
		Filters: []types.Filter{{Name: aws.String("state"), Values: []string{"pending"}}}})
	if err != nil || len(filtered.Images) != 0 {
		t.Errorf("pending images = %v, %v; want none", filtered, err)
	}

	_, err = e.ec2.DeleteSnapshot(ctx, &awsec2.DeleteSnapshotInput{SnapshotId: aws.String(snap)})
	wantCode(t, err, "InvalidSnapshot.InUse")
	if _, err := e.ec2.DeregisterImage(ctx, &awsec2.DeregisterImageInput{ImageId: aws.String(ami)}); err != nil {
		t.Fatal(err)
	}
	_, err = e.ec2.DescribeImages(ctx, &awsec2.DescribeImagesInput{ImageIds: []string{ami}})
	wantCode(t, err, "InvalidAMIID.NotFound")
	_, err = e.ec2.DeregisterImage(ctx, &awsec2.DeregisterImageInput{ImageId: aws.String(ami)})
	wantCode(t, err, "InvalidAMIID.NotFound")
	// The name is free again, and deregistering with DeleteAssociatedSnapshots takes the snapshot along.
	reg, err = e.ec2.RegisterImage(ctx, registerInput("pod-image", snap))
	if err != nil {
		t.Fatal(err)
	}
	dr, err := e.ec2.DeregisterImage(ctx, &awsec2.DeregisterImageInput{ImageId: reg.ImageId, DeleteAssociatedSnapshots: aws.Bool(true)})
	if err != nil || len(dr.DeleteSnapshotResults) != 1 || dr.DeleteSnapshotResults[0].ReturnCode != "success" {
		t.Fatalf("DeregisterImage = %+v, %v", dr, err)
	}
	_, err = e.ec2.DeleteSnapshot(ctx, &awsec2.DeleteSnapshotInput{SnapshotId: aws.String(snap)})
	wantCode(t, err, "InvalidSnapshot.NotFound")
}

// TestPutSnapshotBlockBodyLength sends what the SDK never would: a DataLength of a whole block over a shorter
// body whose checksum matches it.
func TestPutSnapshotBlockBodyLength(t *testing.T) {
	e := newEnv(t, Options{})
	start, err := e.ebs.StartSnapshot(ctxT(t), &ebs.StartSnapshotInput{VolumeSize: aws.Int64(1)})
	if err != nil {
		t.Fatal(err)
	}
	body := disk(1000)
	sum := sha256.Sum256(body)
	req, _ := http.NewRequest(http.MethodPut, e.url+"/snapshots/"+aws.ToString(start.SnapshotId)+"/blocks/0", bytes.NewReader(body))
	req.Header.Set("X-Amz-Data-Length", "524288")
	req.Header.Set("X-Amz-Checksum", b64(sum[:]))
	req.Header.Set("X-Amz-Checksum-Algorithm", "SHA256")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("X-Amzn-ErrorType") != "ValidationException" {
		t.Errorf("a short block answered %d %s", resp.StatusCode, resp.Header.Get("X-Amzn-ErrorType"))
	}
}
