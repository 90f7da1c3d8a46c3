package vmimage

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/i2kit/i2kit/agent/boot"
)

// pullsFile is the store's table of the references this node resolved (pulls.json).
const pullsFile = "pulls.json"

// pullTable records what references this node resolved to, per platform, and who may use each image (a
// repository's manifest digest) without asking the registry again. It is a cache: losing it costs registry
// lookups, and what the store no longer holds is dropped.
type pullTable struct {
	Version int `json:"version"`
	// Salt keys the digests of credentials, so that the file does not hold a plain hash of a password.
	Salt string `json:"salt"`
	// Refs maps "<platform> <reference>" to the manifest digest a registry last resolved it to.
	Refs map[string]string `json:"refs"`
	// Images maps "<platform> <repository>@<digest>" to who may use that image.
	Images map[string]*imageAccess `json:"images"`
	// Layers maps a cached layer's diff_id to who may use it without downloading it again: a layer is content
	// that some registry gave to some credentials, and only those (or everyone, if given without pod
	// credentials) may have it from the cache.
	Layers map[string]*imageAccess `json:"layers,omitempty"`
}

// imageAccess says who may use an image the store holds.
type imageAccess struct {
	// Public is true when a registry gave the image without credentials or with the node's own: every pod on
	// the node could get it.
	Public bool `json:"public,omitempty"`
	// Credentials are keyed digests of pod credentials a registry accepted for it.
	Credentials []string `json:"credentials,omitempty"`
}

// pullRecord is what the node knows of a reference: the digest it resolved to and who may use that image.
type pullRecord struct {
	Digest string
	imageAccess
}

func refKey(platform string, r name.Reference) string { return platform + " " + r.Name() }

func imageKey(platform string, r name.Reference, digest string) string {
	return platform + " " + r.Context().Name() + "@" + digest
}

// openPulls reads the table, starting afresh when there is none or it cannot be read (it is a cache), and drops
// the records of images the store no longer holds. Records are pruned only here, with no build in flight: a
// record is written when its reference resolves, before the build makes its disk.
func (s *Store) openPulls() error {
	t, err := loadPulls(s.dir)
	if err != nil {
		return err
	}
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	s.pulls = t
	n := len(t.Refs) + len(t.Images) + len(t.Layers)
	for k, d := range t.Refs {
		_, ref, _ := strings.Cut(k, " ")
		r, err := name.ParseReference(ref, name.WeakValidation)
		if err != nil || !s.hasContent(r.Context().Name(), d) {
			delete(t.Refs, k)
		}
	}
	for k := range t.Images {
		_, ri, _ := strings.Cut(k, " ")
		if repo, d, _ := strings.Cut(ri, "@"); !s.hasContent(repo, d) {
			delete(t.Images, k)
		}
	}
	for d := range t.Layers {
		if !s.hasLayer(d) {
			delete(t.Layers, d)
		}
	}
	if n != len(t.Refs)+len(t.Images)+len(t.Layers) {
		return s.savePullsLocked()
	}
	return nil
}

func loadPulls(dir string) (*pullTable, error) {
	t := &pullTable{}
	if b, err := os.ReadFile(filepath.Join(dir, pullsFile)); err == nil {
		if json.Unmarshal(b, t) != nil || t.Version != 1 || t.Salt == "" {
			t = &pullTable{}
		}
	}
	if t.Salt == "" {
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return nil, fmt.Errorf("making the pull table's salt, %w", err)
		}
		t.Version, t.Salt = 1, hex.EncodeToString(salt)
	}
	if t.Refs == nil {
		t.Refs = map[string]string{}
	}
	if t.Images == nil {
		t.Images = map[string]*imageAccess{}
	}
	if t.Layers == nil {
		t.Layers = map[string]*imageAccess{}
	}
	return t, nil
}

// pulled returns the record of r on platform when the store holds its image (disk and configuration) and knows
// who may use it. A reference pinned by a digest needs no record of its own: its image is the digest's.
func (s *Store) pulled(platform string, r name.Reference) (pullRecord, bool) {
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	digest, ok := s.pulls.Refs[refKey(platform, r)]
	if d, pinned := r.(name.Digest); !ok && pinned {
		digest, ok = d.DigestStr(), true
	}
	if !ok {
		return pullRecord{}, false
	}
	a, ok := s.pulls.Images[imageKey(platform, r, digest)]
	if !ok || !s.hasContent(r.Context().Name(), digest) {
		return pullRecord{}, false
	}
	return pullRecord{Digest: digest, imageAccess: imageAccess{Public: a.Public, Credentials: slices.Clone(a.Credentials)}}, true
}

// recordPull notes that r on platform resolved to digest (or, for an image already present, that it could have)
// with credentials c, and saves the table when it changed.
func (s *Store) recordPull(platform string, r name.Reference, digest string, c credential) error {
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	changed := false
	if k := refKey(platform, r); s.pulls.Refs[k] != digest {
		s.pulls.Refs[k], changed = digest, true
	}
	if s.grantLocked(s.pulls.Images, imageKey(platform, r, digest), c) {
		changed = true
	}
	if !changed {
		return nil
	}
	return s.savePullsLocked()
}

// grantLocked records in table that c may use key's content, and reports whether that changed the table.
func (s *Store) grantLocked(table map[string]*imageAccess, key string, c credential) bool {
	a := table[key]
	changed := false
	if a == nil {
		a, changed = &imageAccess{}, true
		table[key] = a
	}
	if !c.pod {
		changed = changed || !a.Public
		a.Public = true
	} else if h := s.credentialHashLocked(c.id); !slices.Contains(a.Credentials, h) {
		a.Credentials, changed = append(a.Credentials, h), true
	}
	return changed
}

// recordLayers notes that a registry gave the layers diffIDs to credentials c (they were verified on the way in),
// in one write of the pull table.
func (s *Store) recordLayers(diffIDs []string, c credential) error {
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	changed := false
	for _, d := range diffIDs {
		if s.grantLocked(s.pulls.Layers, d, c) {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return s.savePullsLocked()
}

// mayUseLayer reports whether credentials c may take the layer diffID from the cache: it was given without pod
// credentials (every pod could fetch it), or to these same credentials.
func (s *Store) mayUseLayer(diffID string, c credential) bool {
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	a := s.pulls.Layers[diffID]
	if a == nil {
		return false
	}
	return a.Public || c.pod && slices.Contains(a.Credentials, s.credentialHashLocked(c.id))
}

func (s *Store) savePullsLocked() error {
	b, err := json.MarshalIndent(s.pulls, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "tmp"), "pulls-")
	if err != nil {
		return fmt.Errorf("saving the pull table, %w", err)
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(s.dir, pullsFile))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("saving the pull table, %w", err)
	}
	return nil
}

// credentialHash is the keyed digest under which credentials (their canonical form) are recorded.
func (s *Store) credentialHash(id string) string {
	s.pullMu.Lock()
	defer s.pullMu.Unlock()
	return s.credentialHashLocked(id)
}

func (s *Store) credentialHashLocked(id string) string {
	m := hmac.New(sha256.New, []byte(s.pulls.Salt))
	m.Write([]byte(id))
	return hex.EncodeToString(m.Sum(nil))
}

// hasContent reports whether the store holds what a build needs of a container image of repository repo: its
// disk and its configuration.
func (s *Store) hasContent(repo, digest string) bool {
	disk, _ := diskBlob(repo, digest)
	return s.hasBlob(disk) && s.hasBlob(configBlob(digest))
}

func (s *Store) hasBlob(name string) bool {
	_, err := os.Stat(s.blobPath(name))
	return err == nil
}

// diskBlob names the disk blob of a container image (by the repository the user named and its manifest digest)
// and gives its filesystem's UUID. The repository is part of the name: a disk is used only by pulls that its
// repository's registry answered, so that a registry that serves another's manifest (a digest is no secret)
// does not get that registry's disk without serving its layers, which the build verifies.
func diskBlob(repo, digest string) (blob, uuid string) {
	sum := sha256.Sum256([]byte(repo + "\x00" + digest + "\x00" + RootfsFormat))
	return "disk-" + hex.EncodeToString(sum[:]) + ".erofs", boot.FormatUUID(sum[:16])
}

// configBlob names the blob of a container image's configuration file (by manifest digest).
func configBlob(digest string) string {
	return "config-" + strings.TrimPrefix(digest, "sha256:") + ".json"
}

func (s *Store) readBlob(name string) ([]byte, error) { return os.ReadFile(s.blobPath(name)) }

// writeBlob stores data as blob name (atomically; an existing blob wins).
func (s *Store) writeBlob(name string, data []byte) error {
	dir, err := s.tmpDir("blob-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, name)
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return s.commitBlob(tmp, name)
}
