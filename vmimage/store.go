package vmimage

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Image is a built pod VM image in the store.
type Image struct {
	Key     string    `json:"key"`
	Format  string    `json:"format"`
	Spec    Spec      `json:"spec"`
	Created time.Time `json:"created"`
	// Kernel and Initramfs are paths of the image's files; Disks those of its container image filesystems, in the
	// order of the agent's configuration. Blobs (kernels, disks) are shared between images.
	Kernel    string     `json:"kernel"`
	Initramfs string     `json:"initramfs"`
	Disks     []DiskFile `json:"disks"`
	// Raw is the single bootable disk of the raw-bios and raw-efi formats.
	Raw string `json:"raw,omitempty"`
	// Size is the bytes of the image's own files plus its blobs.
	Size int64 `json:"size"`
}

// DiskFile is a read-only container image filesystem.
type DiskFile struct {
	Path   string `json:"path"`
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
	UUID   string `json:"uuid"`
	Size   int64  `json:"size"`
	// Layers are the diff_ids of the layers the disk was made of: the store keeps them in its layer cache while
	// an image that uses the disk is cached.
	Layers []string `json:"layers,omitempty"`
}

// ErrNotFound is returned for keys the store does not hold.
var ErrNotFound = errors.New("image not found")

// ErrInUse is returned when removing an image a VM uses.
var ErrInUse = errors.New("image is in use")

// Store keeps built images on disk under one directory, fronted by an LRU bounded by entries and bytes (images,
// their blobs and the layers they were made of). It is
// the only writer of that directory (an exclusive lock keeps other processes out until Close): builds work in tmp/ and are committed by an atomic rename, so a killed
// build leaves no entry; at open the LRU is rebuilt from disk and tmp/ is emptied. Eviction never removes an
// image that is acquired (a running VM uses it), and re-checks under the lock before deleting.
type Store struct {
	dir        string
	maxBytes   int64
	maxEntries int

	lock *os.File

	mu       sync.Mutex
	lru      *simplelru.LRU[string, *Image]
	bytes    int64
	pins     map[string]int
	building map[string]int // blobs referenced by builds in flight

	pullMu sync.Mutex
	pulls  *pullTable // the references this node resolved (pulls.go)
}

// OpenStore opens (or creates) the store in dir.
func OpenStore(dir string, maxEntries int, maxBytes int64) (*Store, error) {
	if maxEntries <= 0 || maxBytes <= 0 {
		return nil, fmt.Errorf("image store: maxEntries and maxBytes must be positive")
	}
	for _, d := range []string{"images", "blobs", "layers", "kernels"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("creating image store, %w", err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening image store lock, %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("image store %s is in use by another process, %w", dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
	if err := os.RemoveAll(filepath.Join(dir, "tmp")); err != nil {
		return nil, fmt.Errorf("cleaning image store, %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	s := &Store{dir: dir, lock: lock, maxBytes: maxBytes, maxEntries: maxEntries, pins: map[string]int{}, building: map[string]int{}}
	lru, err := simplelru.NewLRU[string, *Image](1<<30, nil)
	if err != nil {
		return nil, err
	}
	s.lru = lru
	ents, err := os.ReadDir(filepath.Join(dir, "images"))
	if err != nil {
		return nil, err
	}
	var imgs []*Image
	for _, e := range ents {
		img, err := readManifest(filepath.Join(dir, "images", e.Name()))
		if err != nil { // a foreign or damaged entry is not ours to trust
			os.RemoveAll(filepath.Join(dir, "images", e.Name()))
			continue
		}
		imgs = append(imgs, img)
	}
	sort.Slice(imgs, func(i, j int) bool { return imgs[i].Created.Before(imgs[j].Created) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, img := range imgs {
		s.lru.Add(img.Key, img)
	}
	s.gcBlobsLocked()
	s.recountLocked()
	s.evictLocked()
	if err := s.openPulls(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// Close releases the store for other processes.
func (s *Store) Close() error { return s.lock.Close() }

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Get returns the image for key and marks it recently used.
func (s *Store) Get(key string) (*Image, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Get(key)
}

// List returns every image, least recently used first.
func (s *Store) List() []*Image {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Values()
}

// Find returns the image whose key starts with prefix (at least 4 characters), as `i2kit image rm` takes.
func (s *Store) Find(prefix string) (*Image, error) {
	if len(prefix) < 4 {
		return nil, fmt.Errorf("image key prefix %q: give at least 4 characters", prefix)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var found []*Image
	for _, k := range s.lru.Keys() {
		if strings.HasPrefix(k, prefix) {
			img, _ := s.lru.Peek(k)
			found = append(found, img)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: %s", ErrNotFound, prefix)
	case 1:
		return found[0], nil
	default:
		return nil, fmt.Errorf("image key prefix %q is ambiguous (%d images)", prefix, len(found))
	}
}

// Acquire pins an image against eviction until release is called (a VM runs from it).
func (s *Store) Acquire(key string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.lru.Contains(key) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	s.pins[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.pins[key]--; s.pins[key] <= 0 {
				delete(s.pins, key)
			}
			s.evictLocked()
		})
	}, nil
}

// Remove deletes an image unless a VM uses it.
func (s *Store) Remove(key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.lru.Contains(key) {
		return fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	if s.pins[key] > 0 {
		return fmt.Errorf("%w: %s", ErrInUse, key)
	}
	s.removeLocked(key)
	return nil
}

// Stats reports the store's size.
func (s *Store) Stats() (entries int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lru.Len(), s.bytes
}

// tmpDir makes a work directory for a build; it never becomes an entry unless committed.
func (s *Store) tmpDir(prefix string) (string, error) {
	return os.MkdirTemp(filepath.Join(s.dir, "tmp"), prefix)
}

func (s *Store) blobPath(name string) string { return filepath.Join(s.dir, "blobs", name) }

// layerPath is where the layer cache keeps the uncompressed tar of diff_id hex.
func (s *Store) layerPath(hex string) string { return filepath.Join(s.dir, "layers", hex) }

// hasLayer reports whether the layer cache holds diffID ("sha256:<hex>").
func (s *Store) hasLayer(diffID string) bool {
	_, hex, ok := strings.Cut(diffID, ":")
	if !ok || strings.ContainsAny(hex, "/.") {
		return false
	}
	_, err := os.Stat(s.layerPath(hex))
	return err == nil
}

// layerHold is the name under which holdBlobs keeps a layer of the cache from garbage collection.
func layerHold(hex string) string { return "layer/" + hex }

// holdBlobs keeps blobs from garbage collection while a build that will reference them runs.
func (s *Store) holdBlobs(names []string) (release func()) {
	s.mu.Lock()
	for _, n := range names {
		s.building[n]++
	}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		for _, n := range names {
			if s.building[n]--; s.building[n] <= 0 {
				delete(s.building, n)
			}
		}
		s.mu.Unlock()
	}
}

// commitBlob moves a finished file into blobs/ under name (atomically; an existing blob wins).
func (s *Store) commitBlob(tmp, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := os.Stat(s.blobPath(name)); err == nil {
		os.Remove(tmp)
		return nil
	}
	return os.Rename(tmp, s.blobPath(name))
}

// commit moves a finished image directory into images/<key> and records it; then evicts what exceeds bounds.
func (s *Store) commit(tmp string, img *Image) (*Image, error) {
	b, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tmp, "image.json"), b, 0o644); err != nil {
		return nil, fmt.Errorf("writing image manifest, %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.lru.Get(img.Key); ok { // defensive: the builder's singleflight makes this unreachable
		os.RemoveAll(tmp)
		return old, nil
	}
	final := filepath.Join(s.dir, "images", img.Key)
	os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("committing image, %w", err)
	}
	s.lru.Add(img.Key, img)
	s.gcBlobsLocked() // layers no image uses count towards the bound until they go
	s.recountLocked()
	s.pins[img.Key]++ // the caller's build is not evicted before it is returned
	s.evictLocked()
	if s.pins[img.Key]--; s.pins[img.Key] <= 0 {
		delete(s.pins, img.Key)
	}
	return img, nil
}

// evictLocked removes least recently used, unpinned images while the store exceeds its bounds. The LRU itself is
// unbounded: its own eviction would not respect pins.
func (s *Store) evictLocked() {
	for s.bytes > s.maxBytes || s.lru.Len() > s.maxEntries {
		victim := ""
		for _, k := range s.lru.Keys() { // oldest first
			if s.pins[k] == 0 {
				victim = k
				break
			}
		}
		if victim == "" {
			return // everything left is in use
		}
		s.removeLocked(victim)
	}
}

func (s *Store) removeLocked(key string) {
	s.lru.Remove(key)
	os.RemoveAll(filepath.Join(s.dir, "images", key))
	s.gcBlobsLocked()
	s.recountLocked()
}

// gcBlobsLocked deletes blobs and cached layers no image references and no build holds.
func (s *Store) gcBlobsLocked() {
	used := map[string]bool{}
	for _, img := range s.lru.Values() {
		used[filepath.Base(img.Kernel)] = true
		for _, d := range img.Disks {
			used[filepath.Base(d.Path)] = true
			used[configBlob(d.Digest)] = true
			for _, l := range d.Layers {
				_, hex, _ := strings.Cut(l, ":")
				used[layerHold(hex)] = true
			}
		}
	}
	ents, _ := os.ReadDir(filepath.Join(s.dir, "blobs"))
	for _, e := range ents {
		if !used[e.Name()] && s.building[e.Name()] == 0 {
			os.Remove(s.blobPath(e.Name()))
		}
	}
	ents, _ = os.ReadDir(filepath.Join(s.dir, "layers"))
	for _, e := range ents {
		if h := layerHold(e.Name()); !used[h] && s.building[h] == 0 {
			os.RemoveAll(s.layerPath(e.Name()))
		}
	}
}

// recountLocked sums the bytes of images, blobs and cached layers on disk.
func (s *Store) recountLocked() {
	var n int64
	for _, d := range []string{"images", "blobs", "layers"} {
		filepath.WalkDir(filepath.Join(s.dir, d), func(_ string, e os.DirEntry, err error) error { //nolint:errcheck
			if err == nil && e.Type().IsRegular() {
				if fi, err := e.Info(); err == nil {
					n += fi.Size()
				}
			}
			return nil
		})
	}
	s.bytes = n
}

func readManifest(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil {
		return nil, err
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, err
	}
	if img.Key != filepath.Base(dir) {
		return nil, fmt.Errorf("manifest key %q does not match directory", img.Key)
	}
	paths := append([]string{img.Kernel, img.Initramfs}, img.DiskPaths()...)
	if img.Raw != "" {
		paths = append(paths, img.Raw)
	}
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	return &img, nil
}

// DiskPaths lists the paths of the image's container image filesystems, in the agent's order: the disks a
// backend attaches.
func (img *Image) DiskPaths() []string {
	out := make([]string, len(img.Disks))
	for i, d := range img.Disks {
		out[i] = d.Path
	}
	return out
}

// diskLayers returns the diff_ids of the layers a cached image records for the disk blob name; nil when no
// cached image uses it.
func (s *Store) diskLayers(name string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, img := range s.lru.Values() {
		for _, d := range img.Disks {
			if filepath.Base(d.Path) == name && d.Layers != nil {
				return d.Layers
			}
		}
	}
	return nil
}
