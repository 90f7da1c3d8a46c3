package aws

// Image garbage collection: the cluster's AMIs (and their snapshots) that no pod has used for
// Config.ImageMaxUnused are deregistered and deleted.
//
// An AMI is used when an instance of the cluster runs from it or a launch recorded it. Each backend marks the AMIs
// it launches from, publishes, or sees its instances run from in memory, and writes the i2kit.io/last-used tag
// (RFC 3339) at most once an hour per AMI; an AMI without the tag counts from its creation. The nodes of a cluster
// share its AMIs, so across nodes only the tag is trusted, and an AMI that any instance of the cluster runs from
// is never collected, whatever its tag says. Snapshots of the cluster that no AMI references and that are older
// than the bound (an upload that failed half way, or the snapshot of an AMI just deregistered) are deleted too.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/virtual-kubelet/virtual-kubelet/log"
)

// imageGCKnobs pace the image garbage collector.
type imageGCKnobs struct {
	// first is when the first pass runs after the backend starts, every the period of the next ones.
	first, every time.Duration
	// maxDeletes bounds the DeregisterImage and DeleteSnapshot calls of one pass; the rest waits for the next.
	maxDeletes int
}

// defaultImageGC runs a pass a minute after start (a node restarted often still collects), then hourly: images
// go unused for days, and a pass costs a few listings.
var defaultImageGC = imageGCKnobs{first: time.Minute, every: time.Hour, maxDeletes: 100}

const (
	// lastUsedEvery is how often a backend writes one AMI's last-used tag at most: the tag is coarse, next to a
	// bound of days, and cheap.
	lastUsedEvery = time.Hour
	// lastUsedRetry is the wait before writing a tag again after a failure (a missing permission is not retried
	// at every sync).
	lastUsedRetry = 5 * time.Minute
	// maxTagWrites bounds the CreateTags calls of one sync; the rest waits for the next.
	maxTagWrites = 50
	// gcPageSize and gcMaxPages bound the listings of one pass: 10,000 images or snapshots of a cluster at most.
	gcPageSize = 500
	gcMaxPages = 20
	// gcImagesPerFilter bounds the image IDs of one DescribeInstances filter.
	gcImagesPerFilter = 100
	// imageGCTimeout bounds one pass.
	imageGCTimeout = 10 * time.Minute
)

// imageUses is what one backend knows of its AMIs' use: when it last used each, and when it last wrote the
// AMI's last-used tag. Safe for concurrent use; the zero value is empty.
type imageUses struct {
	mu sync.Mutex
	m  map[string]*imageUse // by AMI ID
}

type imageUse struct {
	// last is the last use this backend saw; wrote the last value it wrote to the tag.
	last, wrote time.Time
	// tried is the last write of the tag, failed whether it failed.
	tried  time.Time
	failed bool
}

// mark records a use of ami at t.
func (u *imageUses) mark(ami string, t time.Time) {
	if ami == "" {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[string]*imageUse{}
	}
	e := u.m[ami]
	if e == nil {
		e = &imageUse{}
		u.m[ami] = e
	}
	if t.After(e.last) {
		e.last = t
	}
}

// lastUse is the last use of ami this backend saw; zero if none.
func (u *imageUses) lastUse(ami string) time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.m[ami]; e != nil {
		return e.last
	}
	return time.Time{}
}

// forget drops ami: it is gone.
func (u *imageUses) forget(ami string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.m, ami)
}

// tagWrite is a last-used tag to write.
type tagWrite struct {
	ami  string
	last time.Time
}

// due returns at most n tags to write at now, and claims them: an AMI used since its tag was last written, whose
// last write was an hour ago or more (lastUsedRetry after a failure).
func (u *imageUses) due(now time.Time, n int) []tagWrite {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []tagWrite
	for ami, e := range u.m {
		wait := lastUsedEvery
		if e.failed {
			wait = lastUsedRetry
		}
		if len(out) == n || !e.last.After(e.wrote) || !e.tried.IsZero() && now.Sub(e.tried) < wait {
			continue
		}
		e.tried = now
		out = append(out, tagWrite{ami, e.last})
	}
	slices.SortFunc(out, func(x, y tagWrite) int { return x.last.Compare(y.last) })
	return out
}

// wrote records the outcome of writing w.
func (u *imageUses) wrote(w tagWrite, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.m[w.ami]; e != nil {
		e.failed = err != nil
		if err == nil && w.last.After(e.wrote) {
			e.wrote = w.last
		}
	}
}

// recordUses marks the AMIs the node's live instances run from used now (an AMI a long-lived pod runs from is
// not garbage the day after the pod ends), then writes the last-used tags that are due. It runs after every
// listing; most runs call nothing.
func (b *Backend) recordUses(ctx context.Context) error {
	now := b.now()
	b.mu.Lock()
	var running []string
	for _, in := range b.insts {
		if in.image != "" && !in.ended && !in.terminating && !in.st.State.Exited() {
			running = append(running, in.image)
		}
	}
	b.mu.Unlock()
	for _, ami := range running {
		b.uses.mark(ami, now)
	}
	var errs []error
	for _, w := range b.uses.due(now, maxTagWrites) {
		err := b.call(ctx, "CreateTags", func(ctx context.Context) error {
			_, err := b.ec2.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{w.ami},
				Tags: []ec2types.Tag{{Key: sdkaws.String(TagLastUsed), Value: sdkaws.String(w.last.UTC().Format(time.RFC3339))}}})
			return err
		})
		if errorCode(err) == "InvalidAMIID.NotFound" {
			b.uses.forget(w.ami) // deregistered: there is no use left to record
			continue
		}
		b.uses.wrote(w, err)
		if err != nil {
			errs = append(errs, fmt.Errorf("recording the use of image %s, %w", w.ami, err))
		}
	}
	return errors.Join(errs...)
}

// imageGCLoop runs the image garbage collector until ctx ends: first after gc.first, then every gc.every.
func (b *Backend) imageGCLoop(ctx context.Context) {
	t := time.NewTimer(b.gc.first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		gctx, cancel := context.WithTimeout(ctx, imageGCTimeout)
		res, err := b.collectImages(gctx)
		cancel()
		if err != nil {
			log.G(ctx).WithError(err).Warn("collecting the cluster's unused images")
		}
		if len(res.Deregistered)+len(res.Deleted) > 0 {
			log.G(ctx).WithField("images", res.Deregistered).WithField("snapshots", res.Deleted).
				Info("deregistered the cluster's unused images and deleted their snapshots")
		}
		t.Reset(b.gc.every)
	}
}

// imageGCResult is what one pass of the collector removed.
type imageGCResult struct {
	Deregistered, Deleted []string
}

// collectImages is one pass of the image garbage collector: it lists the cluster's AMIs and snapshots, asks which
// of the AMIs unused for ImageMaxUnused an instance of the cluster still runs from, deregisters the others, then
// deletes the cluster's snapshots that no AMI left references and that are older than the bound. It gives up,
// removing nothing, when a listing fails: what it cannot see may be in use.
func (b *Backend) collectImages(ctx context.Context) (imageGCResult, error) {
	var res imageGCResult
	images, err := b.listClusterImages(ctx)
	if err != nil {
		return res, err
	}
	snaps, err := b.listClusterSnapshots(ctx)
	if err != nil {
		return res, err
	}
	now, bound := b.now(), b.cfg.ImageMaxUnused.Duration
	var stale []ec2types.Image
	for _, im := range images {
		if last, ok := b.lastUse(im); ok && now.Sub(last) >= bound && b.ownImage(im.Tags) {
			stale = append(stale, im)
		}
	}
	ids := make([]string, len(stale))
	for i, im := range stale {
		ids[i] = sdkaws.ToString(im.ImageId)
	}
	inUse, err := b.imagesInUse(ctx, ids)
	if err != nil {
		return res, err
	}
	budget := b.gc.maxDeletes
	gone := map[string]bool{}
	var errs []error
	for _, id := range ids {
		if inUse[id] {
			b.uses.mark(id, now) // its tag moves on: the pod's node may never launch from it again
			continue
		}
		if budget == 0 {
			break
		}
		budget--
		err := b.call(ctx, "DeregisterImage", func(ctx context.Context) error {
			_, err := b.ec2.DeregisterImage(ctx, &ec2.DeregisterImageInput{ImageId: sdkaws.String(id)})
			return err
		})
		if err != nil && errorCode(err) != "InvalidAMIID.NotFound" {
			errs = append(errs, fmt.Errorf("deregistering unused image %s, %w", id, err))
			continue
		}
		gone[id] = true
		b.uses.forget(id)
		res.Deregistered = append(res.Deregistered, id)
	}
	referenced := map[string]bool{}
	for _, im := range images {
		if gone[sdkaws.ToString(im.ImageId)] {
			continue
		}
		for _, m := range im.BlockDeviceMappings {
			if m.Ebs != nil && m.Ebs.SnapshotId != nil {
				referenced[*m.Ebs.SnapshotId] = true
			}
		}
	}
	for _, s := range snaps {
		id := sdkaws.ToString(s.SnapshotId)
		if referenced[id] || s.StartTime == nil || now.Sub(*s.StartTime) < bound || !b.ownImage(s.Tags) {
			continue
		}
		if budget == 0 {
			break
		}
		budget--
		err := b.call(ctx, "DeleteSnapshot", func(ctx context.Context) error {
			_, err := b.ec2.DeleteSnapshot(ctx, &ec2.DeleteSnapshotInput{SnapshotId: sdkaws.String(id)})
			return err
		})
		switch code := errorCode(err); {
		case code == "InvalidSnapshot.InUse":
			// An AMI registered since the listing, or one of another cluster, uses it: it stays.
		case err == nil || code == "InvalidSnapshot.NotFound":
			res.Deleted = append(res.Deleted, id)
		default:
			errs = append(errs, fmt.Errorf("deleting unused snapshot %s, %w", id, err))
		}
	}
	return res, errors.Join(errs...)
}

// lastUse is an AMI's last use: the latest of its creation, its last-used tag and this backend's memory. An AMI
// whose creation date does not parse cannot be dated, and is never collected.
func (b *Backend) lastUse(im ec2types.Image) (time.Time, bool) {
	last, err := time.Parse(time.RFC3339, sdkaws.ToString(im.CreationDate))
	if err != nil {
		return time.Time{}, false
	}
	if t, err := time.Parse(time.RFC3339, tagValue(im.Tags, TagLastUsed)); err == nil && t.After(last) {
		last = t
	}
	if t := b.uses.lastUse(sdkaws.ToString(im.ImageId)); t.After(last) {
		last = t
	}
	return last, true
}

// ownImage reports whether tags are those of one of the cluster's images (an AMI or its snapshot). The listings'
// filters are the API's; this check is ours, for emulators that ignore filters.
func (b *Backend) ownImage(tags []ec2types.Tag) bool {
	return tagValue(tags, TagCluster) == b.cfg.Cluster && tagValue(tags, TagImageDigest) != ""
}

// imageResourceFilters select the cluster's images and snapshots: the publisher tags both with the cluster and
// the image digest.
func (b *Backend) imageResourceFilters() []ec2types.Filter {
	return []ec2types.Filter{
		{Name: sdkaws.String("tag:" + TagCluster), Values: []string{b.cfg.Cluster}},
		{Name: sdkaws.String("tag-key"), Values: []string{TagImageDigest}},
	}
}

// listClusterImages lists the cluster's AMIs, paged; more than gcMaxPages pages is an error.
func (b *Backend) listClusterImages(ctx context.Context) ([]ec2types.Image, error) {
	in := &ec2.DescribeImagesInput{Owners: []string{"self"}, Filters: b.imageResourceFilters(), MaxResults: sdkaws.Int32(gcPageSize)}
	var all []ec2types.Image
	for range gcMaxPages {
		var out *ec2.DescribeImagesOutput
		err := b.call(ctx, "DescribeImages", func(ctx context.Context) (err error) {
			out, err = b.ec2.DescribeImages(ctx, in)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("listing the cluster's images, %w", err)
		}
		all = append(all, out.Images...)
		if sdkaws.ToString(out.NextToken) == "" {
			return all, nil
		}
		next := *in
		next.NextToken = out.NextToken
		in = &next
	}
	return nil, fmt.Errorf("listing the cluster's images: more than %d pages of %d", gcMaxPages, gcPageSize)
}

// listClusterSnapshots lists the cluster's snapshots, paged; more than gcMaxPages pages is an error.
func (b *Backend) listClusterSnapshots(ctx context.Context) ([]ec2types.Snapshot, error) {
	in := &ec2.DescribeSnapshotsInput{OwnerIds: []string{"self"}, Filters: b.imageResourceFilters(), MaxResults: sdkaws.Int32(gcPageSize)}
	var all []ec2types.Snapshot
	for range gcMaxPages {
		var out *ec2.DescribeSnapshotsOutput
		err := b.call(ctx, "DescribeSnapshots", func(ctx context.Context) (err error) {
			out, err = b.ec2.DescribeSnapshots(ctx, in)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("listing the cluster's snapshots, %w", err)
		}
		all = append(all, out.Snapshots...)
		if sdkaws.ToString(out.NextToken) == "" {
			return all, nil
		}
		next := *in
		next.NextToken = out.NextToken
		in = &next
	}
	return nil, fmt.Errorf("listing the cluster's snapshots: more than %d pages of %d", gcMaxPages, gcPageSize)
}

// imagesInUse returns which of ids an instance of the cluster — of any node — runs from (or may again: stopped
// ones count), with one paged DescribeInstances per gcImagesPerFilter IDs.
func (b *Backend) imagesInUse(ctx context.Context, ids []string) (map[string]bool, error) {
	used := map[string]bool{}
	for chunk := range slices.Chunk(ids, gcImagesPerFilter) {
		in := &ec2.DescribeInstancesInput{MaxResults: sdkaws.Int32(defaultPageSize), Filters: []ec2types.Filter{
			{Name: sdkaws.String("tag:" + TagCluster), Values: []string{b.cfg.Cluster}},
			{Name: sdkaws.String("image-id"), Values: chunk},
			{Name: sdkaws.String("instance-state-name"), Values: []string{"pending", "running", "shutting-down", "stopping", "stopped"}},
		}}
		for page := 0; ; page++ {
			if page == gcMaxPages {
				return nil, fmt.Errorf("listing the instances of the cluster's images: more than %d pages", gcMaxPages)
			}
			var out *ec2.DescribeInstancesOutput
			err := b.call(ctx, "DescribeInstances", func(ctx context.Context) (err error) {
				out, err = b.ec2.DescribeInstances(ctx, in)
				return err
			})
			if err != nil {
				return nil, fmt.Errorf("listing the instances of the cluster's images, %w", err)
			}
			for _, r := range out.Reservations {
				for _, ei := range r.Instances {
					used[sdkaws.ToString(ei.ImageId)] = true
				}
			}
			if sdkaws.ToString(out.NextToken) == "" {
				break
			}
			next := *in
			next.NextToken = out.NextToken
			in = &next
		}
	}
	return used, nil
}
