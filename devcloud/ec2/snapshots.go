package ec2

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// blockSize is the EBS direct APIs' block size.
const blockSize = 512 << 10

// snapshot is an EBS snapshot written with the EBS direct APIs; guarded by Server.mu (its blocks have their
// own lock).
type snapshot struct {
	seq                      int64
	id, description          string
	clientToken, fingerprint string
	volumeSize               int64  // GiB
	status                   string // pending (taking blocks), completing (counting down describes), completed
	pendingDescribes         int
	tags                     []Tag
	started, completed       time.Time
	blocks                   *blockStore
}

// settle completes a completing snapshot once its pending describes are used up.
func (sn *snapshot) settle(now time.Time) {
	if sn.status == "completing" && sn.pendingDescribes == 0 {
		sn.status, sn.completed = "completed", now
	}
}

// ebsStatus is the status the EBS and EC2 APIs report: completing is still pending to them.
func (sn *snapshot) ebsStatus() string {
	if sn.status == "completing" {
		return "pending"
	}
	return sn.status
}

// blockStore holds a snapshot's written blocks and their SHA-256 digests, in memory or in a sparse file the size
// of the volume. It reads as the volume: zeros where no block was written.
type blockStore struct {
	size int64 // the volume's size in bytes

	mu      sync.RWMutex
	file    *os.File // nil: in memory
	mem     map[int64][]byte
	sums    map[int64][sha256.Size]byte
	removed bool
}

func newBlockStore(dir, id string, size int64) (*blockStore, error) {
	b := &blockStore{size: size, mem: map[int64][]byte{}, sums: map[int64][sha256.Size]byte{}}
	if dir == "" {
		return b, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the snapshot directory, %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, id+".img"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating snapshot file, %w", err)
	}
	if err := f.Truncate(size); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("sizing snapshot file, %w", err)
	}
	b.file = f
	return b, nil
}

var errRemoved = errors.New("the snapshot was deleted")

// put stores a verified block.
func (b *blockStore) put(idx int64, data []byte, sum [sha256.Size]byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removed {
		return errRemoved
	}
	if b.file != nil {
		if _, err := b.file.WriteAt(data, idx*blockSize); err != nil {
			return fmt.Errorf("writing block %d, %w", idx, err)
		}
	} else {
		b.mem[idx] = slices.Clone(data)
	}
	b.sums[idx] = sum
	return nil
}

// get returns a written block and its digest.
func (b *blockStore) get(idx int64) ([]byte, [sha256.Size]byte, bool, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	sum, ok := b.sums[idx]
	if !ok || b.removed {
		return nil, sum, false, nil
	}
	if b.file == nil {
		return slices.Clone(b.mem[idx]), sum, true, nil
	}
	data := make([]byte, blockSize)
	if _, err := b.file.ReadAt(data, idx*blockSize); err != nil {
		return nil, sum, false, fmt.Errorf("reading block %d, %w", idx, err)
	}
	return data, sum, true, nil
}

// indexes returns the written block indexes in ascending order.
func (b *blockStore) indexes() []int64 {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]int64, 0, len(b.sums))
	for i := range b.sums {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

// aggregate is the LINEAR aggregate checksum: SHA-256 over the raw per-block digests in ascending index order.
func (b *blockStore) aggregate() [sha256.Size]byte {
	h := sha256.New()
	b.mu.RLock()
	defer b.mu.RUnlock()
	idx := make([]int64, 0, len(b.sums))
	for i := range b.sums {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	for _, i := range idx {
		sum := b.sums[i]
		h.Write(sum[:])
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// ReadAt reads the volume: written blocks, zeros elsewhere, io.EOF at its end.
func (b *blockStore) ReadAt(p []byte, off int64) (int, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.removed {
		return 0, errRemoved
	}
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= b.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > b.size-off {
		p = p[:b.size-off]
	}
	if b.file != nil {
		n, err := b.file.ReadAt(p, off)
		if err == nil && n < want {
			err = io.EOF
		}
		return n, err
	}
	for n := 0; n < len(p); {
		pos := off + int64(n)
		idx, in := pos/blockSize, pos%blockSize
		chunk := p[n:min(len(p), n+int(blockSize-in))]
		if data, ok := b.mem[idx]; ok {
			copy(chunk, data[in:])
		} else {
			clear(chunk)
		}
		n += len(chunk)
	}
	if len(p) < want {
		return len(p), io.EOF
	}
	return len(p), nil
}

// remove drops the blocks (and the file).
func (b *blockStore) remove() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.removed {
		return nil
	}
	b.removed, b.mem = true, nil
	if b.file == nil {
		return nil
	}
	name := b.file.Name()
	_ = b.file.Close()
	return os.Remove(name)
}

// SnapshotReader returns a snapshot's volume as written so far: its size is VolumeSize GiB, unwritten blocks
// read as zeros. It stays readable until the snapshot is deleted.
func (s *Server) SnapshotReader(id string) (*io.SectionReader, error) {
	s.mu.Lock()
	sn, ok := s.snapshots[id]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("reading snapshot %s, %w", id, notFound(id))
	}
	return io.NewSectionReader(sn.blocks, 0, sn.blocks.size), nil
}

// WriteSnapshotFile writes a snapshot's volume to path as a sparse file (only written blocks take space): how
// a devcloud turns a snapshot into a VM's disk.
func (s *Server) WriteSnapshotFile(id, path string) error {
	s.mu.Lock()
	sn, ok := s.snapshots[id]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("writing snapshot %s, %w", id, notFound(id))
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("writing snapshot %s, %w", id, err)
	}
	defer f.Close()
	if err := f.Truncate(sn.blocks.size); err != nil {
		return fmt.Errorf("writing snapshot %s, %w", id, err)
	}
	for _, idx := range sn.blocks.indexes() {
		data, _, ok, err := sn.blocks.get(idx)
		if err != nil {
			return fmt.Errorf("writing snapshot %s, %w", id, err)
		}
		if !ok {
			continue
		}
		if _, err := f.WriteAt(data, idx*blockSize); err != nil {
			return fmt.Errorf("writing snapshot %s, %w", id, err)
		}
	}
	return f.Close()
}

type snapshotXML struct {
	SnapshotID   string `xml:"snapshotId"`
	VolumeID     string `xml:"volumeId"`
	Status       string `xml:"status"`
	StartTime    string `xml:"startTime"`
	Progress     string `xml:"progress"`
	OwnerID      string `xml:"ownerId"`
	VolumeSize   int64  `xml:"volumeSize"`
	Description  string `xml:"description,omitempty"`
	Encrypted    bool   `xml:"encrypted"`
	StorageTier  string `xml:"storageTier"`
	Tags         []Tag  `xml:"tagSet>item"`
	CompletionAt string `xml:"completionTime,omitempty"`
}

type describeSnapshotsResponse struct {
	reply
	Snapshots []snapshotXML `xml:"snapshotSet>item"`
	NextToken string        `xml:"nextToken,omitempty"`
}

// describeSnapshots lists this account's snapshots; every call counts down completing snapshots'
// Options.SnapshotPendingDescribes.
func (s *Server) describeSnapshots(q params) (any, error) {
	fs, err := q.filters("status", "snapshot-id", "owner-id", "description", "volume-size", "progress")
	if err != nil {
		return nil, err
	}
	ids := q.list("SnapshotId")
	if len(ids) > 0 && q.has("MaxResults") {
		return nil, errCode("InvalidParameterCombination", "The parameter SnapshotIds cannot be used with the parameter maxResults")
	}
	owners := q.list("Owner")
	mine := len(owners) == 0 || slices.ContainsFunc(owners, func(o string) bool { return o == "self" || o == s.opts.AccountID })
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if _, ok := s.snapshots[id]; !ok {
			return nil, notFound(id)
		}
	}
	now := s.opts.Now()
	var match []*snapshot
	shown := map[string]snapshotXML{}
	for _, sn := range s.snapshots {
		if !mine || (len(ids) > 0 && !slices.Contains(ids, sn.id)) {
			continue
		}
		sn.settle(now)
		if sn.pendingDescribes > 0 {
			sn.pendingDescribes--
		}
		x := snapshotXML{SnapshotID: sn.id, VolumeID: "vol-ffffffff", Status: sn.ebsStatus(), StartTime: awsTime(sn.started),
			Progress: "0%", OwnerID: s.opts.AccountID, VolumeSize: sn.volumeSize, Description: sn.description,
			StorageTier: "standard", Tags: slices.Clone(sn.tags)}
		if sn.status == "completed" {
			x.Progress, x.CompletionAt = "100%", awsTime(sn.completed)
		}
		if matchAll(fs, sn.tags, func(name string) []string {
			return map[string][]string{"status": {x.Status}, "snapshot-id": {sn.id}, "owner-id": {s.opts.AccountID},
				"description": {sn.description}, "volume-size": {itoa(int(sn.volumeSize))}, "progress": {x.Progress}}[name]
		}) {
			match = append(match, sn)
			shown[sn.id] = x
		}
	}
	slices.SortFunc(match, func(a, b *snapshot) int { return int(a.seq - b.seq) })
	got, next, err := page(q, match, func(sn *snapshot) int64 { return sn.seq }, 5, 1000)
	if err != nil {
		return nil, err
	}
	out := &describeSnapshotsResponse{NextToken: next}
	for _, sn := range got {
		out.Snapshots = append(out.Snapshots, shown[sn.id])
	}
	return out, nil
}

func (s *Server) deleteSnapshot(q params) (any, error) {
	if err := s.removeSnapshot(q.str("SnapshotId")); err != nil {
		return nil, err
	}
	return &emptyResponse{Return: true}, nil
}

// removeSnapshot deletes a snapshot no registered image uses.
func (s *Server) removeSnapshot(id string) error {
	s.mu.Lock()
	sn, ok := s.snapshots[id]
	if !ok {
		s.mu.Unlock()
		return notFound(id)
	}
	for _, im := range s.images {
		if im.state == "deregistered" {
			continue
		}
		for _, b := range im.bdms {
			if b.SnapshotID == id {
				s.mu.Unlock()
				return errCode("InvalidSnapshot.InUse", "The snapshot %s is currently in use by %s", id, im.id)
			}
		}
	}
	delete(s.snapshots, id)
	if sn.clientToken != "" {
		delete(s.snapTok, sn.clientToken)
	}
	s.mu.Unlock()
	if err := sn.blocks.remove(); err != nil {
		return fmt.Errorf("deleting snapshot %s, %w", id, err)
	}
	return nil
}
