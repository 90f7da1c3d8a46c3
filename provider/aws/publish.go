package aws

// Publishing a pod image: one AMI per image, its raw-efi disk written into an EBS snapshot and registered, found
// again by the image-digest and cluster tags (a restart, or another node of the cluster, reuses it).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
)

// amiFormat is the vmimage format an AMI is made from: the backend's.
const amiFormat = Format

// amiRootDevice is where the image's disk is attached; the agent finds its disks by filesystem UUID, never by name
// (on Nitro they are NVMe devices whatever the mapping says).
const amiRootDevice = "/dev/xvda"

// publishMaxPages bounds the pages read from a Describe call filtered down to one image's resources.
const publishMaxPages = 10

// publisher makes pod images bootable on EC2 (vm.Publisher): Publish returns the ID of the image's AMI, registering
// it (and uploading its snapshot) only when the cluster has none. Safe for concurrent use.
type publisher struct {
	ec2     EC2API
	up      *uploader
	cluster string
	tags    map[string]string

	mu      sync.Mutex
	flights map[string]*publishFlight // by image key: the Publish under way
}

var _ vm.Publisher = (*publisher)(nil)

// newPublisher returns a publisher for the cluster's images; tags (the operator's own) go on every snapshot and AMI
// beside the cluster and image-digest tags, which take precedence.
func newPublisher(ec2c EC2API, ebsc EBSAPI, cluster string, tags map[string]string, opts UploadOptions) *publisher {
	return &publisher{ec2: ec2c, up: newUploader(ebsc, ec2c, opts), cluster: cluster, tags: tags,
		flights: map[string]*publishFlight{}}
}

// publishFlight is one image's publication, shared by the Publish calls that wait for it. It runs under a context of
// its own, cancelled when its last waiter gives up: one caller's cancellation does not fail the others', and nobody
// waiting means nothing runs.
type publishFlight struct {
	done    chan struct{}
	ami     string
	err     error
	waiters int
	cancel  context.CancelFunc
}

// Publish returns the AMI of img, an ec2 image: the cluster's AMI tagged with img.Key if there is one (waiting
// while it is pending, replacing it if it failed), else one registered from the image's snapshot, uploaded unless a
// completed one is tagged with img.Key. Concurrent calls for one image share one publication.
func (p *publisher) Publish(ctx context.Context, img *vmimage.Image) (string, error) {
	if err := publishable(img); err != nil {
		return "", err
	}
	f := p.join(ctx, img)
	select {
	case <-f.done:
		if f.err != nil {
			return "", fmt.Errorf("publishing image %s, %w", img.Key, f.err)
		}
		return f.ami, nil
	case <-ctx.Done():
		p.leave(img.Key, f)
		return "", fmt.Errorf("publishing image %s, %w", img.Key, ctx.Err())
	}
}

func (p *publisher) join(ctx context.Context, img *vmimage.Image) *publishFlight {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.flights[img.Key]
	if f == nil {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx)) // keeps ctx's values (the logger), not its end
		f = &publishFlight{done: make(chan struct{}), cancel: cancel}
		p.flights[img.Key] = f
		go func() {
			ami, err := p.publish(fctx, img)
			cancel()
			p.mu.Lock()
			f.ami, f.err = ami, err
			if p.flights[img.Key] == f {
				delete(p.flights, img.Key)
			}
			p.mu.Unlock()
			close(f.done)
		}()
	}
	f.waiters++
	return f
}

// leave drops a waiter of f; the last one cancels it, and a later Publish starts afresh rather than joining a
// publication that is ending in a cancellation.
func (p *publisher) leave(key string, f *publishFlight) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f.waiters--; f.waiters == 0 {
		f.cancel()
		if p.flights[key] == f {
			delete(p.flights, key)
		}
	}
}

// publishable refuses what cannot become an AMI, before any AWS call.
func publishable(img *vmimage.Image) error {
	switch {
	case img == nil:
		return errors.New("publishing image: no image")
	case img.Format != amiFormat:
		return fmt.Errorf("publishing image %s: its format is %q; the aws backend boots %q images (raw-efi for EC2)", img.Key, img.Format, amiFormat)
	case img.Raw == "":
		return fmt.Errorf("publishing image %s: it has no raw disk", img.Key)
	case !validImageKey(img.Key):
		return fmt.Errorf("publishing image %q: its key is not 1 to 64 letters and digits", img.Key)
	}
	return nil
}

// validImageKey reports whether key (a content digest in hex) can go into an AMI name and a tag as it is.
func validImageKey(key string) bool {
	if key == "" || len(key) > 64 {
		return false
	}
	for _, c := range key {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// amiName is the image's AMI name: deterministic from the digest and the cluster (AMI names are unique per account
// and region, and two clusters of one account each keep their own), at most 6+64+1+8 of the 128 characters allowed.
func amiName(key, cluster string) string {
	c := sha256.Sum256([]byte(cluster))
	return "i2kit-" + key + "-" + hex.EncodeToString(c[:4])
}

func (p *publisher) publish(ctx context.Context, img *vmimage.Image) (string, error) {
	if id, err := p.findImage(ctx, img.Key); err != nil || id != "" {
		return id, err
	}
	snap, err := p.findSnapshot(ctx, img.Key)
	if err != nil {
		return "", err
	}
	if snap == "" {
		if snap, err = p.uploadImage(ctx, img); err != nil {
			return "", err
		}
	}
	return p.register(ctx, img.Key, snap)
}

// resourceTags are the tags of an image's snapshot and AMI.
func (p *publisher) resourceTags(key string) map[string]string {
	t := map[string]string{TagName: "i2kit-" + key[:min(len(key), 12)]}
	for k, v := range p.tags {
		t[k] = v
	}
	t[TagCluster], t[TagImageDigest] = p.cluster, key
	return t
}

// imageFilters select the cluster's resources of one image.
func (p *publisher) imageFilters(key string) []ec2types.Filter {
	return []ec2types.Filter{
		{Name: awssdk.String("tag:" + TagImageDigest), Values: []string{key}},
		{Name: awssdk.String("tag:" + TagCluster), Values: []string{p.cluster}},
	}
}

// findImage returns the cluster's available AMI of the image, waiting for a pending one; it deregisters the image's
// failed AMIs and returns "" when none is left.
func (p *publisher) findImage(ctx context.Context, key string) (string, error) {
	images, err := p.describeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: p.imageFilters(key)})
	if err != nil {
		return "", err
	}
	var available, pending string
	for _, im := range images {
		id := awssdk.ToString(im.ImageId)
		switch im.State {
		case ec2types.ImageStateAvailable:
			available = id
		case ec2types.ImageStatePending:
			pending = id
		case ec2types.ImageStateFailed, ec2types.ImageStateError, ec2types.ImageStateInvalid:
			if _, err := p.ec2.DeregisterImage(ctx, &ec2.DeregisterImageInput{ImageId: awssdk.String(id)}); err != nil {
				return "", fmt.Errorf("deregistering failed image %s, %w", id, withAWSAction("ec2:DeregisterImage", err))
			}
		}
	}
	switch {
	case available != "":
		return available, nil
	case pending != "":
		return pending, p.waitImage(ctx, pending)
	}
	return "", nil
}

func (p *publisher) describeImages(ctx context.Context, in *ec2.DescribeImagesInput) ([]ec2types.Image, error) {
	var images []ec2types.Image
	for range publishMaxPages {
		out, err := p.ec2.DescribeImages(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("listing images, %w", withAWSAction("ec2:DescribeImages", err))
		}
		images = append(images, out.Images...)
		if awssdk.ToString(out.NextToken) == "" {
			break
		}
		next := *in
		next.NextToken = out.NextToken
		in = &next
	}
	return images, nil
}

// findSnapshot returns a completed snapshot of the image made for the cluster, or "".
func (p *publisher) findSnapshot(ctx context.Context, key string) (string, error) {
	in := &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"},
		Filters: append(p.imageFilters(key), ec2types.Filter{Name: awssdk.String("status"), Values: []string{"completed"}})}
	for range publishMaxPages {
		out, err := p.ec2.DescribeSnapshots(ctx, in)
		if err != nil {
			return "", fmt.Errorf("listing snapshots, %w", withAWSAction("ec2:DescribeSnapshots", err))
		}
		for _, s := range out.Snapshots {
			if s.State == ec2types.SnapshotStateCompleted {
				return awssdk.ToString(s.SnapshotId), nil
			}
		}
		if awssdk.ToString(out.NextToken) == "" {
			break
		}
		next := *in
		next.NextToken = out.NextToken
		in = &next
	}
	return "", nil
}

// uploadImage writes the image's raw disk into a new snapshot.
func (p *publisher) uploadImage(ctx context.Context, img *vmimage.Image) (string, error) {
	f, err := os.Open(img.Raw)
	if err != nil {
		return "", fmt.Errorf("opening the image's disk, %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("opening the image's disk, %w", err)
	}
	id, _, err := p.up.upload(ctx, snapshotRequest{Disk: f, Size: fi.Size(), Digest: img.Key,
		Description: "i2kit pod image " + img.Key, Tags: p.resourceTags(img.Key)})
	return id, err
}

// register makes the AMI of the image from its snapshot and waits until it is available. Names are unique, so an
// AMI that another node registered meanwhile (InvalidAMIName.Duplicate) is the one returned.
func (p *publisher) register(ctx context.Context, key, snap string) (string, error) {
	name := amiName(key, p.cluster)
	tags := tagPairs(p.resourceTags(key))
	ec2Tags := make([]ec2types.Tag, len(tags))
	for i, t := range tags {
		ec2Tags[i] = ec2types.Tag{Key: awssdk.String(t[0]), Value: awssdk.String(t[1])}
	}
	out, err := p.ec2.RegisterImage(ctx, &ec2.RegisterImageInput{
		Name:               awssdk.String(name),
		Description:        awssdk.String("i2kit pod image " + key),
		Architecture:       ec2types.ArchitectureValuesX8664,
		BootMode:           ec2types.BootModeValuesUefi,
		EnaSupport:         awssdk.Bool(true),
		ImdsSupport:        ec2types.ImdsSupportValuesV20,
		VirtualizationType: awssdk.String("hvm"),
		RootDeviceName:     awssdk.String(amiRootDevice),
		BlockDeviceMappings: []ec2types.BlockDeviceMapping{{
			DeviceName: awssdk.String(amiRootDevice),
			Ebs: &ec2types.EbsBlockDevice{SnapshotId: awssdk.String(snap), DeleteOnTermination: awssdk.Bool(true),
				VolumeType: ec2types.VolumeTypeGp3},
		}},
		TagSpecifications: []ec2types.TagSpecification{{ResourceType: ec2types.ResourceTypeImage, Tags: ec2Tags}},
	})
	switch {
	case errorCode(err) == "InvalidAMIName.Duplicate":
		return p.imageNamed(ctx, name)
	case err != nil:
		return "", fmt.Errorf("registering image %s from snapshot %s, %w", name, snap, withAWSAction("ec2:RegisterImage", err))
	}
	id := awssdk.ToString(out.ImageId)
	if id == "" {
		return "", fmt.Errorf("registering image %s: ec2:RegisterImage returned no image ID", name)
	}
	return id, p.waitImage(ctx, id)
}

// imageNamed returns our AMI called name once it is available.
func (p *publisher) imageNamed(ctx context.Context, name string) (string, error) {
	images, err := p.describeImages(ctx, &ec2.DescribeImagesInput{Owners: []string{"self"},
		Filters: []ec2types.Filter{{Name: awssdk.String("name"), Values: []string{name}}}})
	if err != nil {
		return "", err
	}
	for _, im := range images {
		if awssdk.ToString(im.Name) == name {
			id := awssdk.ToString(im.ImageId)
			return id, p.waitImage(ctx, id)
		}
	}
	return "", fmt.Errorf("registering image %s: the name is taken, yet no image of ours has it", name)
}

// waitImage polls DescribeImages until image id is available. An unknown image right after RegisterImage is eventual
// consistency; a failed one is an error (the next Publish deregisters it and registers again).
func (p *publisher) waitImage(ctx context.Context, id string) error {
	state := "unknown"
	err := pollCloud(ctx, p.up.opts, func() (bool, error) {
		out, err := p.ec2.DescribeImages(ctx, &ec2.DescribeImagesInput{ImageIds: []string{id}})
		switch {
		case errorCode(err) == "InvalidAMIID.NotFound":
			return false, nil
		case err != nil && transientAWSError(ctx, err):
			return false, nil
		case err != nil:
			return false, withAWSAction("ec2:DescribeImages", err)
		}
		for _, im := range out.Images {
			if awssdk.ToString(im.ImageId) != id {
				continue
			}
			state = string(im.State)
			switch im.State {
			case ec2types.ImageStateAvailable:
				return true, nil
			case ec2types.ImageStatePending, ec2types.ImageStateTransient:
			default:
				reason := ""
				if im.StateReason != nil {
					reason = awssdk.ToString(im.StateReason.Message)
				}
				return false, fmt.Errorf("image %s is %s: %s", id, im.State, reason)
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for image %s to be available (state %s), %w", id, state, err)
	}
	return nil
}
