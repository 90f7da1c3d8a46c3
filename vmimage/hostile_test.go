package vmimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/i2kit/i2kit/internal/devregistry"
)

// These tests play a hostile registry (tamperBlobs and serveManifests, options of devregistry.Serve) or push hostile images to
// an honest one, and check that a build fails, or that what other pods get is untouched.

// serveRegistry serves a devregistry with opts and returns its host.
func serveRegistry(t *testing.T, opts ...devregistry.Option) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := devregistry.Serve(l, opts...)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// pushImage pushes img to host/repoTag (opts: remote.WithAuth for a private registry) and returns its digest.
func pushImage(t *testing.T, host, repoTag string, img v1.Image, opts ...remote.Option) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, opts...); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func imageOf(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// claiming returns img with its configuration's diff_ids replaced by diffs: a configuration that lies.
func claiming(t *testing.T, img v1.Image, diffs ...v1.Hash) v1.Image {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs = diffs
	out, err := mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffID(t *testing.T, l v1.Layer) v1.Hash {
	t.Helper()
	d, err := l.DiffID()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// gzipLayer is a layer whose compressed blob is gzip(raw), whatever raw is.
func gzipLayer(t testing.TB, raw []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// tarOf makes a tar of hdrs; a regular file's body is its Linkname field's value (cleared), for brevity.
func tarOf(t testing.TB, hdrs ...*tar.Header) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range hdrs {
		var body string
		if h.Typeflag == tar.TypeReg {
			body, h.Linkname = h.Linkname, ""
			h.Size = int64(len(body))
		}
		if h.Mode == 0 {
			h.Mode = 0o755
		}
		h.ModTime = time.Unix(1700000000, 0)
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, body) //nolint:errcheck
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func reg(name, body string) *tar.Header {
	return &tar.Header{Name: name, Typeflag: tar.TypeReg, Linkname: body}
}

// noDisks fails the test if the store holds any disk blob.
func noDisks(t *testing.T, b *Builder) {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(b.Store.Dir(), "blobs"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "disk-") {
			t.Errorf("a failed build left disk %s", e.Name())
		}
	}
}

// TestConfigClaimingAnotherLayerPoisonsNothing: an image whose configuration claims the diff_id of another
// image's layer, with its own bytes, fails to build, and the other image, built after it, has its own content.
func TestConfigClaimingAnotherLayerPoisonsNothing(t *testing.T) {
	host := serveRegistry(t)
	victim := layer(t, file{"who", "victim"})
	pushImage(t, host, "victim:1", imageOf(t, victim))
	pushImage(t, host, "evil:1", claiming(t, imageOf(t, layer(t, file{"who", "attacker"})), diffID(t, victim)))
	b := newBuilder(t, &Source{Insecure: []string{host}}, 10, 1<<30)
	ctx := context.Background()
	if _, err := b.Ensure(ctx, spec(host+"/evil:1"), "direct"); err == nil || !strings.Contains(err.Error(), "diff_id") {
		t.Errorf("the lying image built: %v", err)
	}
	img, err := b.Ensure(ctx, spec(host+"/victim:1"), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if got := listDisk(t, img.Disks[0].Path)["who"]; got != "victim" {
		t.Errorf("the victim's disk has who=%q", got)
	}
}

// TestConfigClaimingAPrivateLayerGetsNothing: after a pod pulled a private image with its pull secret, another
// pod's image (at another registry, without credentials) whose configuration claims that layer's diff_id does
// not get the layer from the cache.
func TestConfigClaimingAPrivateLayerGetsNothing(t *testing.T) {
	private := serveRegistry(t, devregistry.BasicAuth("alice", "s3cret"))
	secret := layer(t, file{"secret", "s3cret-data"})
	pushImage(t, private, "app:1", imageOf(t, secret), remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"}))
	evil := serveRegistry(t)
	pushImage(t, evil, "evil:1", claiming(t, imageOf(t, layer(t, file{"who", "attacker"})), diffID(t, secret)))
	b := newBuilder(t, &Source{Keychain: authn.NewMultiKeychain(), Insecure: []string{private, evil}}, 10, 1<<30)
	ctx := context.Background()
	if _, err := b.EnsureWith(ctx, spec(private+"/app:1"), "direct", Pull{Keychains: []authn.Keychain{keychain(t, private, "alice", "s3cret")}}); err != nil {
		t.Fatal(err)
	}
	img, err := b.Ensure(ctx, spec(evil+"/evil:1"), "direct")
	if err == nil {
		t.Fatalf("the image claiming the private layer built; its disk holds %v", listDisk(t, img.Disks[0].Path))
	}
}

// TestManifestCopyWithoutBlobsGetsNoDisk: a registry that serves a copy of a private image's manifest (a digest
// is no secret) does not get the disk the node built from the private registry.
func TestManifestCopyWithoutBlobsGetsNoDisk(t *testing.T) {
	private := serveRegistry(t, devregistry.BasicAuth("alice", "s3cret"))
	img := imageOf(t, layer(t, file{"secret", "s3cret-data"}))
	digest := pushImage(t, private, "app:1", img, remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"}))
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, _ := img.MediaType()
	evil := serveRegistry(t, serveManifests("app", raw, string(mt)))
	b := newBuilder(t, &Source{Keychain: authn.NewMultiKeychain(), Insecure: []string{private, evil}}, 10, 1<<30)
	ctx := context.Background()
	if _, err := b.EnsureWith(ctx, spec(private+"/app@"+digest.String()), "direct", Pull{Keychains: []authn.Keychain{keychain(t, private, "alice", "s3cret")}}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Ensure(ctx, spec(evil+"/app@"+digest.String()), "direct"); err == nil {
		t.Fatalf("the manifest's copy got a disk: %v", listDisk(t, got.Disks[0].Path))
	}
}

// TestTamperedDownloads: a registry whose later downloads of a blob differ from the first, fail with 404 or drop
// mid-stream never gives a pod a disk of bytes other than the image's, and never leaves a later pod of the same
// digest, pulled from an honest registry, with such a disk.
func TestTamperedDownloads(t *testing.T) {
	good := layer(t, file{"who", "good"})
	goodDigest, _ := good.Digest()
	bad, err := layer(t, file{"who", "attacker"}).Compressed()
	if err != nil {
		t.Fatal(err)
	}
	badBlob, _ := io.ReadAll(bad)
	for _, tc := range []struct {
		name   string
		tamper func(n int, body []byte) ([]byte, bool)
	}{
		{"later downloads differ", func(n int, body []byte) ([]byte, bool) {
			if n > 0 {
				return badBlob, false
			}
			return body, false
		}},
		{"later downloads are 404", func(n int, body []byte) ([]byte, bool) {
			if n > 0 {
				return nil, false
			}
			return body, false
		}},
		{"later downloads drop mid-stream", func(n int, body []byte) ([]byte, bool) {
			if n > 0 {
				return body[:len(body)/2], true
			}
			return body, false
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			honest := serveRegistry(t)
			var downloads atomic.Int32
			evil := serveRegistry(t, tamperBlobs(func(d string, n int, body []byte) ([]byte, bool) {
				if d != goodDigest.String() {
					return body, false
				}
				downloads.Add(1)
				return tc.tamper(n, body)
			}))
			img := imageOf(t, good)
			digest := pushImage(t, honest, "app:1", img)
			pushImage(t, evil, "app:1", img)
			b := newBuilder(t, &Source{Insecure: []string{honest, evil}}, 10, 1<<30)
			ctx := context.Background()
			if got, err := b.Ensure(ctx, spec(evil+"/app@"+digest.String()), "direct"); err == nil {
				if who := listDisk(t, got.Disks[0].Path)["who"]; who != "good" {
					t.Errorf("the tampering registry's pod has who=%q", who)
				}
			}
			got, err := b.Ensure(ctx, spec(honest+"/app@"+digest.String()), "direct")
			if err != nil {
				t.Fatal(err)
			}
			if who := listDisk(t, got.Disks[0].Path)["who"]; who != "good" {
				t.Errorf("the honest registry's pod has who=%q", who)
			}
			// The defence is that a layer is downloaded once and its bytes are the ones verified: a second
			// download (the old code's unverified copy) would be the tampered one.
			if n := downloads.Load(); n != 1 {
				t.Errorf("the layer was downloaded %d times from the tampering registry, want once", n)
			}
		})
	}
}

// TestDroppedDownloadLeavesNoCacheFile: a download dropped mid-stream fails the build and leaves nothing in the
// layer cache or the work directory; the retry downloads again and succeeds.
func TestDroppedDownloadLeavesNoCacheFile(t *testing.T) {
	l := layer(t, file{"big", strings.Repeat("x", 64<<10)}, file{"who", "good"})
	ld, _ := l.Digest()
	host := serveRegistry(t, tamperBlobs(func(d string, n int, body []byte) ([]byte, bool) {
		if d == ld.String() && n == 0 {
			return body[:len(body)/2], true
		}
		return body, false
	}))
	pushImage(t, host, "app:1", imageOf(t, l))
	b := newBuilder(t, &Source{Insecure: []string{host}}, 10, 1<<30)
	ctx := context.Background()
	if _, err := b.Ensure(ctx, spec(host+"/app:1"), "direct"); err == nil {
		t.Fatal("a dropped download built")
	}
	for _, d := range []string{"layers", "tmp"} {
		ents, _ := os.ReadDir(filepath.Join(b.Store.Dir(), d))
		for _, e := range ents {
			t.Errorf("the dropped download left %s/%s", d, e.Name())
		}
	}
	img, err := b.Ensure(ctx, spec(host+"/app:1"), "direct")
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if who := listDisk(t, img.Disks[0].Path)["who"]; who != "good" {
		t.Errorf("who=%q after the retry", who)
	}
}

// TestHostileLayersFailTheBuild: a layer that is not a tar, one with an entry outside the root, one with a hard
// link outside it, and one that expands past the image's limit (a small gzip of many zeros) each fail the build,
// which commits no disk.
func TestHostileLayersFailTheBuild(t *testing.T) {
	random := make([]byte, 4096)
	rand.Read(random) //nolint:errcheck
	var bomb bytes.Buffer
	tw := tar.NewWriter(&bomb)
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 32 << 20}) //nolint:errcheck
	io.Copy(tw, io.LimitReader(zeroReader{}, 32<<20))                                              //nolint:errcheck
	tw.Close()
	for _, tc := range []struct {
		name    string
		layer   []byte
		wantErr string
	}{
		{"not a tar", random, "tar"},
		{"an entry outside the root", tarOf(t, reg("ok", "1"), reg("../../evil", "x"), reg("after", "2")), "escapes"},
		{"a hard link outside the root", tarOf(t, reg("ok", "1"), &tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}), "escapes"},
		{"a decompression bomb", bomb.Bytes(), "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := serveRegistry(t)
			pushImage(t, host, "app:1", imageOf(t, gzipLayer(t, tc.layer)))
			b := newBuilder(t, &Source{Insecure: []string{host}, MaxImageBytes: 4 << 20}, 10, 1<<30)
			img, err := b.Ensure(context.Background(), spec(host+"/app:1"), "direct")
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				var files []string
				if err == nil {
					files = keys(listDisk(t, img.Disks[0].Path))
				}
				t.Fatalf("error %v (disk %v), want one saying %q", err, files, tc.wantErr)
			}
			noDisks(t, b)
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestNotAnImageIsRefused: artifacts that are not container images are refused with a clear error before
// anything is extracted.
func TestNotAnImageIsRefused(t *testing.T) {
	chart := gzipLayer(t, tarOf(t, reg("mychart/Chart.yaml", "name: mychart\n")))
	for _, tc := range []struct {
		name string
		img  func() v1.Image
	}{
		{"a Helm chart", func() v1.Image {
			img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
			img = mutate.ConfigMediaType(img, "application/vnd.cncf.helm.config.v1+json")
			img, err := mutate.Append(img, mutate.Addendum{Layer: chart, MediaType: "application/vnd.cncf.helm.chart.content.v1.tar+gzip"})
			if err != nil {
				t.Fatal(err)
			}
			return img
		}},
		{"an image with a layer of another type", func() v1.Image {
			img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{Layer: chart, MediaType: "application/vnd.example.data"})
			if err != nil {
				t.Fatal(err)
			}
			return img
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := serveRegistry(t)
			pushImage(t, host, "app:1", tc.img())
			b := newBuilder(t, &Source{Insecure: []string{host}}, 10, 1<<30)
			_, err := b.Ensure(context.Background(), spec(host+"/app:1"), "direct")
			if !errors.Is(err, ErrNotImage) || !strings.Contains(err.Error(), "media type") {
				t.Fatalf("error %v, want ErrNotImage naming the media type", err)
			}
			noDisks(t, b)
		})
	}
}

// TestAbsoluteSymlinkInThePath: a layer's var/run -> /run, followed by a later layer's var/run/x, writes run/x
// inside the image, as containerd resolves it.
func TestAbsoluteSymlinkInThePath(t *testing.T) {
	host := serveRegistry(t)
	pushImage(t, host, "app:1", imageOf(t,
		gzipLayer(t, tarOf(t, &tar.Header{Name: "run/", Typeflag: tar.TypeDir}, &tar.Header{Name: "var/", Typeflag: tar.TypeDir},
			&tar.Header{Name: "var/run", Typeflag: tar.TypeSymlink, Linkname: "/run"},
			&tar.Header{Name: "var/up", Typeflag: tar.TypeSymlink, Linkname: "../../../.."})),
		gzipLayer(t, tarOf(t, reg("var/run/x", "through the link"), reg("var/up/y", "at the root")))))
	b := newBuilder(t, &Source{Insecure: []string{host}}, 10, 1<<30)
	img, err := b.Ensure(context.Background(), spec(host+"/app:1"), "direct")
	if err != nil {
		t.Fatal(err)
	}
	got := listDisk(t, img.Disks[0].Path)
	if got["run/x"] != "through the link" || got["y"] != "at the root" {
		t.Errorf("files %v: want run/x and y", keys(got))
	}
}

// TestLayerCacheIsBoundedWithTheImages: the layer cache counts towards the store's bytes and its layers go with
// the last image that uses them.
func TestLayerCacheIsBoundedWithTheImages(t *testing.T) {
	host := serveRegistry(t)
	random := make([]byte, 1<<20)
	rand.Read(random) //nolint:errcheck
	pushImage(t, host, "a:1", imageOf(t, gzipLayer(t, tarOf(t, reg("r", string(random))))))
	pushImage(t, host, "b:1", imageOf(t, layer(t, file{"b", "b"})))
	b := newBuilder(t, &Source{Insecure: []string{host}}, 1, 1<<30)
	ctx := context.Background()
	a, err := b.Ensure(ctx, spec(host+"/a:1"), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if _, n := b.Store.Stats(); n < a.Disks[0].Size+1<<20 {
		t.Errorf("store counts %d bytes, less than the disk and its layer", n)
	}
	if _, err := b.Ensure(ctx, spec(host+"/b:1"), "direct"); err != nil { // one entry at most: a goes
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Join(b.Store.Dir(), "layers"))
	if len(ents) != 1 {
		t.Errorf("%d layers cached, want b's only", len(ents))
	}
}

// TestLocalLayoutsAreForTheCLI: a Source refuses "oci:" references unless AllowLocalLayouts is set, with one
// error whether the path exists or not.
func TestLocalLayoutsAreForTheCLI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(imageOf(t, layer(t, file{"from", "layout"}))); err != nil {
		t.Fatal(err)
	}
	b := newBuilder(t, &Source{}, 10, 1<<30)
	ctx := context.Background()
	var msgs []string
	for _, ref := range []string{"oci:" + dir, "oci:/nonexistent/layout"} {
		_, err := b.Ensure(ctx, spec(ref), "direct")
		if !errors.Is(err, ErrLocalLayout) {
			t.Fatalf("%s: %v, want ErrLocalLayout", ref, err)
		}
		msgs = append(msgs, strings.ReplaceAll(err.Error(), ref, "REF"))
	}
	if msgs[0] != msgs[1] {
		t.Errorf("errors differ by whether the path exists: %q, %q", msgs[0], msgs[1])
	}
	b.Source.AllowLocalLayouts = true
	img, err := b.Ensure(ctx, spec("oci:"+dir), "direct")
	if err != nil {
		t.Fatal(err)
	}
	if listDisk(t, img.Disks[0].Path)["from"] != "layout" {
		t.Error("the layout's content is missing")
	}
}

// gz compresses b (for fuzz seeds).
func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b) //nolint:errcheck
	zw.Close()
	return buf.Bytes()
}

// TestLargeManifestIsRefused: a manifest over 4 MiB (go-containerregistry alone reads 100 MiB) is refused.
func TestLargeManifestIsRefused(t *testing.T) {
	img := imageOf(t, layer(t, file{"x", "y"}))
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	raw = append(raw, bytes.Repeat([]byte(" "), 5<<20)...) // still valid JSON
	mt, _ := img.MediaType()
	host := serveRegistry(t, serveManifests("app", raw, string(mt)))
	pushImage(t, host, "app:1", img)
	b := newBuilder(t, &Source{Insecure: []string{host}}, 10, 1<<30)
	if _, err := b.Ensure(context.Background(), spec(host+"/app:1"), "direct"); err == nil || !strings.Contains(err.Error(), "more than 4194304") {
		t.Fatalf("error %v, want the manifest refused for its size", err)
	}
}

// TestUncompressedLimits: Source.MaxLayerBytes bounds each layer below the image's bound, and the image's bound
// holds for its layers together, as they download: the layer cache never holds more of a refused image than the
// bound, each layer being under it.
func TestUncompressedLimits(t *testing.T) {
	zeros := func(name string) []byte { return tarOf(t, reg(name, strings.Repeat("\x00", 3<<20))) }
	for _, tc := range []struct {
		name    string
		src     Source
		layers  [][]byte
		wantErr string
	}{
		{"a layer over the layer bound", Source{MaxImageBytes: 64 << 20, MaxLayerBytes: 1 << 20}, [][]byte{zeros("a")},
			"past the limit of 1048576 uncompressed bytes"},
		{"layers over the image bound together", Source{MaxImageBytes: 4 << 20}, [][]byte{zeros("a"), zeros("b")},
			errImageTooLarge.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := serveRegistry(t)
			var layers []v1.Layer
			for _, l := range tc.layers {
				layers = append(layers, gzipLayer(t, l))
			}
			pushImage(t, host, "app:1", imageOf(t, layers...))
			src := tc.src
			src.Insecure = []string{host}
			b := newBuilder(t, &src, 10, 1<<30)
			if _, err := b.Ensure(context.Background(), spec(host+"/app:1"), "direct"); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
			}
			noDisks(t, b)
			image, _ := src.limits()
			var cached int64
			ents, _ := os.ReadDir(filepath.Join(b.Store.Dir(), "layers"))
			for _, e := range ents {
				if fi, err := e.Info(); err == nil {
					cached += fi.Size()
				}
			}
			if cached > image {
				t.Errorf("the layer cache holds %d bytes of the refused image, more than its bound %d", cached, image)
			}
		})
	}
}
