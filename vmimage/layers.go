package vmimage

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// Bounds of what a registry sends besides layers (which Source.MaxImageBytes and MaxLayerBytes bound). Docker's
// registry refuses manifests over 4 MiB; image configurations are a few KiB, their history included.
const (
	maxManifestBytes = 4 << 20
	maxConfigBytes   = 8 << 20
)

// ErrNotImage is matched (errors.Is) by the error for an artifact that is not a container image (a Helm chart,
// a signature, ...) or not one this builder reads.
var ErrNotImage = errors.New("not a container image")

// layerTypes are the layer media types a container image's layers may have (go-containerregistry's layer types,
// less the foreign and non-distributable ones, which name URLs outside the registry).
var layerTypes = []types.MediaType{types.DockerLayer, types.DockerUncompressedLayer, types.OCILayer,
	types.OCILayerZStd, types.OCIUncompressedLayer}

// checkManifest refuses an image whose manifest is not a container image's (by media type and configuration
// type).
func checkManifest(img v1.Image) error {
	m, err := img.Manifest()
	if err != nil {
		return fmt.Errorf("reading the manifest, %w", err)
	}
	if mt, _ := img.MediaType(); mt != "" && !mt.IsImage() {
		return fmt.Errorf("%w: manifest media type %q", ErrNotImage, mt)
	}
	if m.MediaType != "" && !m.MediaType.IsImage() {
		return fmt.Errorf("%w: manifest media type %q", ErrNotImage, m.MediaType)
	}
	if !m.Config.MediaType.IsConfig() {
		return fmt.Errorf("%w: configuration media type %q (an OCI artifact such as a Helm chart?)", ErrNotImage, m.Config.MediaType)
	}
	if m.Config.Size < 0 || m.Config.Size > maxConfigBytes {
		return fmt.Errorf("%w: configuration of %d bytes, more than %d", ErrNotImage, m.Config.Size, maxConfigBytes)
	}
	for _, l := range m.Layers {
		if !slices.Contains(layerTypes, l.MediaType) {
			return fmt.Errorf("%w: layer %s has media type %q", ErrNotImage, l.Digest, l.MediaType)
		}
	}
	return nil
}

// inspect checks an image (see checkManifest) and returns its manifest, raw configuration (bounded, and verified
// against the manifest by go-containerregistry) and parsed configuration, whose diff_ids match the layers one to
// one.
func inspect(img v1.Image) (*v1.Manifest, []byte, *v1.ConfigFile, error) {
	if err := checkManifest(img); err != nil {
		return nil, nil, nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, nil, nil, err
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("reading the image configuration, %w", err)
	}
	if int64(len(raw)) > maxConfigBytes {
		return nil, nil, nil, fmt.Errorf("%w: configuration of more than %d bytes", ErrNotImage, maxConfigBytes)
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("parsing the image configuration, %w", err)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, nil, nil, fmt.Errorf("%w: %d layers but %d diff_ids in the configuration", ErrNotImage, len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	for i, d := range cf.RootFS.DiffIDs {
		if !isSHA256(d) || !isSHA256(m.Layers[i].Digest) {
			return nil, nil, nil, fmt.Errorf("%w: layer %d is not named by a sha256 digest", ErrNotImage, i)
		}
	}
	return m, raw, cf, nil
}

func isSHA256(h v1.Hash) bool {
	if h.Algorithm != "sha256" || len(h.Hex) != 64 {
		return false
	}
	_, err := hex.DecodeString(h.Hex)
	return err == nil
}

// fetchLayers puts every layer of img into the store's layer cache and returns their paths, bottom layer first.
// Each layer is downloaded once (four at a time), its compressed bytes checked against the manifest's size and
// digest and its uncompressed bytes against the configuration's diff_id, while it streams into a temporary file
// renamed into the cache only when both match; nothing is left behind otherwise. A cached layer is used without
// downloading only by credentials it was given to (see Store.mayUseLayer); others download it again from their
// own registry, which proves they may have it. The caller holds the layers (holdBlobs(layerHolds(cf))) for as
// long as it reads them.
func (b *Builder) fetchLayers(ctx context.Context, img v1.Image, m *v1.Manifest, cf *v1.ConfigFile, c credential, p Progress) ([]string, error) {
	imageMax, layerMax := b.Source.limits()
	budget := &byteBudget{left: imageMax}
	paths := make([]string, len(m.Layers))
	var fetchedMu sync.Mutex
	var fetched []string // diff_ids downloaded and verified by this call
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i, desc := range m.Layers {
		diff := cf.RootFS.DiffIDs[i]
		paths[i] = b.Store.layerPath(diff.Hex)
		g.Go(func() error {
			if fi, err := os.Stat(paths[i]); err == nil && b.Store.mayUseLayer(diff.String(), c) {
				if fi.Size() > layerMax {
					return fmt.Errorf("layer %s: %d uncompressed bytes, more than %d", desc.Digest, fi.Size(), layerMax)
				}
				return budget.take(fi.Size())
			}
			if desc.Size < 0 || desc.Size > layerMax {
				return fmt.Errorf("layer %s: %d compressed bytes, more than %d", desc.Digest, desc.Size, layerMax)
			}
			task := "layer " + desc.Digest.Hex[:12]
			p.Start(task, desc.Size)
			err := b.downloadLayer(ctx, img, desc, diff, paths[i], layerMax, budget, progressWriter{p, task})
			p.Done(task, err)
			if err != nil {
				return fmt.Errorf("fetching layer %s, %w", desc.Digest, err)
			}
			fetchedMu.Lock()
			fetched = append(fetched, diff.String())
			fetchedMu.Unlock()
			return nil
		})
	}
	err := g.Wait()
	// Recorded in one write of the pull table, also when another layer failed: what was verified stays usable.
	b.Store.recordLayers(fetched, c) //nolint:errcheck // a lost record costs a download later
	if err != nil {
		return nil, err
	}
	return paths, nil
}

// layerHolds names an image's layers for holdBlobs.
func layerHolds(cf *v1.ConfigFile) []string {
	out := make([]string, len(cf.RootFS.DiffIDs))
	for i, d := range cf.RootFS.DiffIDs {
		out[i] = layerHold(d.Hex)
	}
	return out
}

// downloadLayer streams one layer into the cache at path (see fetchLayers).
func (b *Builder) downloadLayer(ctx context.Context, img v1.Image, desc v1.Descriptor, diff v1.Hash, path string,
	max int64, budget *byteBudget, progress io.Writer) (err error) {
	l, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Join(b.Store.Dir(), "tmp"), "layer-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	// One more byte than the manifest gives is read, so that a longer blob is seen.
	zsum := sha256.New()
	zr := io.TeeReader(io.LimitReader(readerCtx{ctx, rc}, desc.Size+1), io.MultiWriter(zsum, progress))
	zn := &countingReader{r: zr}
	u, closeU, err := decompress(zn)
	if err != nil {
		return err
	}
	usum := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, usum), &budgetReader{r: io.LimitReader(u, max+1), budget: budget})
	closeU()
	if err != nil {
		return fmt.Errorf("decompressing, %w", err)
	}
	if n > max {
		return fmt.Errorf("the layer expands past the limit of %d uncompressed bytes", max)
	}
	if _, err := io.Copy(io.Discard, zn); err != nil { // what follows the compressed stream counts towards its digest
		return err
	}
	switch {
	case zn.n != desc.Size:
		return fmt.Errorf("%d bytes or more, the manifest says %d", zn.n, desc.Size)
	case hex.EncodeToString(zsum.Sum(nil)) != desc.Digest.Hex:
		return fmt.Errorf("content does not match its digest %s", desc.Digest)
	case hex.EncodeToString(usum.Sum(nil)) != diff.Hex:
		return fmt.Errorf("uncompressed content does not match the diff_id %s the configuration gives", diff)
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// decompress returns the uncompressed stream of a layer: gzip and zstd are recognised by their magic numbers,
// as go-containerregistry does, anything else is read as a tar. zstd windows are bounded (128 MiB) so that a
// frame cannot make the decoder allocate what it asks.
func decompress(r io.Reader) (io.Reader, func(), error) {
	br := bufio.NewReader(r)
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("reading gzip, %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case len(magic) == 4 && bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(128<<20))
		if err != nil {
			return nil, nil, fmt.Errorf("reading zstd, %w", err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// byteBudget is what is left of an image's uncompressed bytes, shared by its layers' parallel downloads.
type byteBudget struct{ left int64 }

func (b *byteBudget) take(n int64) error {
	if atomic.AddInt64(&b.left, -n) < 0 {
		return errImageTooLarge
	}
	return nil
}

var errImageTooLarge = errors.New("the image's layers are larger than the limit on uncompressed bytes per image")

type budgetReader struct {
	r      io.Reader
	budget *byteBudget
}

func (b *budgetReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if berr := b.budget.take(int64(n)); berr != nil {
		return n, berr
	}
	return n, err
}

// boundedManifests caps the manifests (and indexes) a registry sends, which go-containerregistry reads whole.
type boundedManifests struct{ next http.RoundTripper }

func (t boundedManifests) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil || !strings.Contains(req.URL.Path, "/manifests/") {
		return resp, err
	}
	if resp.ContentLength > maxManifestBytes {
		resp.Body.Close()
		return nil, fmt.Errorf("manifest of %d bytes from %s: more than %d", resp.ContentLength, req.URL.Host, maxManifestBytes)
	}
	resp.Body = &limitedBody{ReadCloser: resp.Body, left: maxManifestBytes}
	return resp, nil
}

// limitedBody fails a read past its bound rather than ending early: a cut manifest would fail to parse with a
// less useful error.
type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		var one [1]byte
		n, err := b.ReadCloser.Read(one[:])
		if n > 0 {
			return 0, fmt.Errorf("manifest larger than %d bytes", maxManifestBytes)
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}
