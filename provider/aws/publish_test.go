package aws

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"go.uber.org/goleak"

	"github.com/i2kit/i2kit/vmimage"
)

const publishCluster = "test-cluster"

// rawImage is a raw-efi image whose disk is a file of blocks blocks of bs bytes.
func rawImage(t *testing.T, blocks int64, bs int) (*vmimage.Image, []byte) {
	t.Helper()
	disk := diskWithZeros(blocks*int64(bs), bs, func(i int64) bool { return i%2 == 1 })
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(path, disk, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(disk)
	return &vmimage.Image{Key: hex.EncodeToString(sum[:]), Format: amiFormat, Raw: path}, disk
}

func fakePublisher(f *fakeCloud) *publisher {
	return newPublisher(f, f, publishCluster, map[string]string{"team": "infra", TagCluster: "not ours"}, fastUpload)
}

func imageTags(key string) map[string]string {
	return map[string]string{TagCluster: publishCluster, TagImageDigest: key}
}

// publishWaiters is how many Publish calls wait for the publication of key.
func publishWaiters(p *publisher, key string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.flights[key]; f != nil {
		return f.waiters
	}
	return 0
}

// publishWaitUntil waits for cond, which other goroutines make true.
func publishWaitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
	}
}

func TestPublishUploadsAndRegisters(t *testing.T) {
	f := newFakeCloud(4096)
	f.snapPending, f.imagePending = 2, 2
	p := fakePublisher(f)
	img, disk := rawImage(t, 6, 4096)
	ami, err := p.Publish(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	im := f.image(ami)
	if im == nil || im.name != amiName(img.Key, publishCluster) {
		t.Fatalf("image %s: %+v", ami, im)
	}
	if im.tags[TagCluster] != publishCluster || im.tags[TagImageDigest] != img.Key || im.tags["team"] != "infra" {
		t.Errorf("image tags %v", im.tags)
	}
	s := f.snapshot(im.snapshot)
	if s.tags[TagCluster] != publishCluster || s.tags[TagImageDigest] != img.Key || s.tags["team"] != "infra" {
		t.Errorf("snapshot tags %v", s.tags)
	}
	if !bytes.Equal(f.blockData(im.snapshot, int64(len(disk))), disk) {
		t.Error("the AMI's snapshot does not hold the image's disk")
	}
	if got := f.count("DescribeImages"); got < 3 {
		t.Errorf("%d DescribeImages: the AMI was not waited to available", got)
	}

	// A second Publish (another node, a restart) finds it.
	again, err := fakePublisher(f).Publish(context.Background(), img)
	if err != nil || again != ami {
		t.Errorf("publishing again: %s, %v; want %s", again, err, ami)
	}
	if f.count("StartSnapshot") != 1 || f.count("RegisterImage") != 1 {
		t.Errorf("%d uploads and %d registrations, want one of each", f.count("StartSnapshot"), f.count("RegisterImage"))
	}
}

func TestPublishFindsTheClusterImage(t *testing.T) {
	f := newFakeCloud(4096)
	img, _ := rawImage(t, 2, 4096)
	// Another cluster's image of the same digest, made before and after ours, is not ours.
	f.addImage("before", ec2types.ImageStateAvailable, map[string]string{TagCluster: "other", TagImageDigest: img.Key})
	ours := f.addImage(amiName(img.Key, publishCluster), ec2types.ImageStateAvailable, imageTags(img.Key))
	other := f.addImage("after", ec2types.ImageStateAvailable, map[string]string{TagCluster: "other", TagImageDigest: img.Key})
	ami, err := fakePublisher(f).Publish(context.Background(), img)
	if err != nil || ami != ours {
		t.Fatalf("Publish = %s, %v; want the cluster's image %s (not %s)", ami, err, ours, other)
	}
	for _, op := range []string{"StartSnapshot", "DescribeSnapshots", "RegisterImage"} {
		if f.count(op) != 0 {
			t.Errorf("%d %s calls for a published image", f.count(op), op)
		}
	}
}

func TestPublishWaitsForAPendingImage(t *testing.T) {
	f := newFakeCloud(4096)
	f.imagePending = 3
	img, _ := rawImage(t, 2, 4096)
	pending := f.addImage(amiName(img.Key, publishCluster), ec2types.ImageStatePending, imageTags(img.Key))
	ami, err := fakePublisher(f).Publish(context.Background(), img)
	if err != nil || ami != pending {
		t.Fatalf("Publish = %s, %v; want %s", ami, err, pending)
	}
	if f.count("DescribeImages") < 4 || f.count("RegisterImage") != 0 {
		t.Errorf("%d DescribeImages, %d RegisterImage", f.count("DescribeImages"), f.count("RegisterImage"))
	}
}

func TestPublishReplacesAFailedImage(t *testing.T) {
	f := newFakeCloud(4096)
	img, _ := rawImage(t, 2, 4096)
	failed := f.addImage(amiName(img.Key, publishCluster), ec2types.ImageStateFailed, imageTags(img.Key))
	ami, err := fakePublisher(f).Publish(context.Background(), img)
	if err != nil || ami == failed || f.image(failed) != nil {
		t.Fatalf("Publish = %s, %v; the failed image %s deregistered: %v", ami, err, failed, f.image(failed) == nil)
	}
}

func TestPublishReusesASnapshot(t *testing.T) {
	f := newFakeCloud(4096)
	img, _ := rawImage(t, 2, 4096)
	f.addSnapshot(ec2types.SnapshotStatePending, imageTags(img.Key)) // an upload under way or abandoned: not this one
	f.addSnapshot(ec2types.SnapshotStateCompleted, map[string]string{TagCluster: "other", TagImageDigest: img.Key})
	snap := f.addSnapshot(ec2types.SnapshotStateCompleted, imageTags(img.Key))
	f.addSnapshot(ec2types.SnapshotStateCompleted, map[string]string{TagCluster: "other", TagImageDigest: img.Key})
	ami, err := fakePublisher(f).Publish(context.Background(), img)
	if err != nil {
		t.Fatal(err)
	}
	if got := f.image(ami).snapshot; got != snap {
		t.Errorf("AMI registered from %s, want the completed snapshot %s", got, snap)
	}
	if f.count("StartSnapshot") != 0 {
		t.Error("the disk was uploaded again")
	}
}

// TestPublishRegistrationRace: another node registers the AMI between our look-up and our RegisterImage.
func TestPublishRegistrationRace(t *testing.T) {
	f := newFakeCloud(4096)
	img, _ := rawImage(t, 2, 4096)
	var theirs string
	f.hook("RegisterImage", func(context.Context) error {
		if theirs == "" {
			theirs = f.addImage(amiName(img.Key, publishCluster), ec2types.ImageStateAvailable, imageTags(img.Key))
		}
		return nil
	})
	ami, err := fakePublisher(f).Publish(context.Background(), img)
	if err != nil || ami != theirs {
		t.Fatalf("Publish = %s, %v; want the other node's %s", ami, err, theirs)
	}
}

func TestPublishRefusesOtherFormats(t *testing.T) {
	f := newFakeCloud(4096)
	for _, img := range []*vmimage.Image{
		{Key: "abc", Format: "direct", Raw: "/x"},
		{Key: "abc", Format: "raw-bios", Raw: "/x"},
		{Key: "abc", Format: amiFormat},
		{Key: "../abc", Format: amiFormat, Raw: "/x"},
		{Key: strings.Repeat("a", 65), Format: amiFormat, Raw: "/x"},
		nil,
	} {
		if _, err := fakePublisher(f).Publish(context.Background(), img); err == nil {
			t.Errorf("published %+v", img)
		}
	}
	_, err := fakePublisher(f).Publish(context.Background(), &vmimage.Image{Key: "abc", Format: "direct"})
	if err == nil || !strings.Contains(err.Error(), `"ec2"`) {
		t.Errorf("refusing a direct image: %v, want it to name the ec2 format", err)
	}
	if len(f.calls) != 0 {
		t.Errorf("AWS calls for images that cannot be published: %v", f.calls)
	}
}

func TestPublishNamesTheMissingPermission(t *testing.T) {
	f := newFakeCloud(4096)
	f.fail("RegisterImage", fakeEC2Error("UnauthorizedOperation", "You are not authorized to perform this operation."))
	img, _ := rawImage(t, 2, 4096)
	_, err := fakePublisher(f).Publish(context.Background(), img)
	if err == nil || !strings.Contains(err.Error(), "must allow ec2:RegisterImage") {
		t.Errorf("Publish: %v, want it to name ec2:RegisterImage", err)
	}
}

func TestAMIName(t *testing.T) {
	key := strings.Repeat("f", 64)
	n := amiName(key, publishCluster)
	if len(n) > 128 || n != amiName(key, publishCluster) || n == amiName(key, "other") || !strings.Contains(n, key) {
		t.Errorf("amiName = %q", n)
	}
}

// TestPublishSharesOneUpload: concurrent Publish calls for one image make one upload and one registration.
func TestPublishSharesOneUpload(t *testing.T) {
	f := newFakeCloud(4096)
	release := make(chan struct{})
	f.hook("StartSnapshot", func(context.Context) error { <-release; return nil })
	p := fakePublisher(f)
	img, _ := rawImage(t, 4, 4096)
	const n = 5
	amis := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { amis[i], errs[i] = p.Publish(context.Background(), img) })
	}
	publishWaitUntil(t, "every Publish waits", func() bool { return publishWaiters(p, img.Key) == n })
	close(release)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || amis[i] != amis[0] {
			t.Errorf("Publish %d = %s, %v; want %s", i, amis[i], errs[i], amis[0])
		}
	}
	if f.count("StartSnapshot") != 1 || f.count("RegisterImage") != 1 {
		t.Errorf("%d uploads and %d registrations, want one of each", f.count("StartSnapshot"), f.count("RegisterImage"))
	}
}

// TestPublishCancellation: a caller that gives up does not fail the others; when all have given up, the upload
// stops.
func TestPublishCancellation(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	f := newFakeCloud(4096)
	release := make(chan struct{})
	stopped := make(chan struct{})
	f.hook("StartSnapshot", func(ctx context.Context) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			close(stopped)
			return ctx.Err()
		}
	})
	p := fakePublisher(f)
	img, _ := rawImage(t, 4, 4096)

	ctx1, cancel1 := context.WithCancel(context.Background())
	first := make(chan error)
	go func() { _, err := p.Publish(ctx1, img); first <- err }()
	publishWaitUntil(t, "the first Publish waits", func() bool { return publishWaiters(p, img.Key) == 1 })
	second := make(chan error)
	var ami string
	go func() { var err error; ami, err = p.Publish(context.Background(), img); second <- err }()
	publishWaitUntil(t, "both wait", func() bool { return publishWaiters(p, img.Key) == 2 })
	cancel1() // the caller that started the publication gives up
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Publish: %v", err)
	}
	close(release)
	if err := <-second; err != nil || f.image(ami) == nil {
		t.Fatalf("the other Publish: %s, %v", ami, err)
	}

	// Alone, a caller that gives up stops the upload.
	img2, _ := rawImage(t, 3, 4096)
	release2 := make(chan struct{})
	f.hook("StartSnapshot", func(ctx context.Context) error {
		select {
		case <-release2:
			return nil
		case <-ctx.Done():
			close(stopped)
			return ctx.Err()
		}
	})
	ctx3, cancel3 := context.WithCancel(context.Background())
	third := make(chan error)
	go func() { _, err := p.Publish(ctx3, img2); third <- err }()
	publishWaitUntil(t, "the third Publish waits", func() bool { return publishWaiters(p, img2.Key) == 1 })
	cancel3()
	<-third
	<-stopped // the publication saw its context end
	publishWaitUntil(t, "the publication ends", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.flights) == 0
	})
}
