package ec2

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// maxVolumeGiB is EBS's largest snapshot volume.
const maxVolumeGiB = 64 << 10

// ebsError is an EBS direct API error: restJson1, the type in __type and X-Amzn-ErrorType.
type ebsError struct {
	status int
	Type   string
	Reason string
	Msg    string
}

func (e *ebsError) Error() string { return e.Type + ": " + e.Msg }

func validation(reason, format string, a ...any) *ebsError {
	return &ebsError{status: http.StatusBadRequest, Type: "ValidationException", Reason: reason, Msg: fmt.Sprintf(format, a...)}
}

func snapshotNotFound(id string) *ebsError {
	return &ebsError{status: http.StatusNotFound, Type: "ResourceNotFoundException", Reason: "SNAPSHOT_NOT_FOUND",
		Msg: fmt.Sprintf("The snapshot '%s' does not exist.", id)}
}

// ebsFault maps an injected EC2-style fault to EBS's error types.
func ebsFault(err *apiError) *ebsError {
	switch err.Code {
	case "RequestLimitExceeded":
		return &ebsError{status: http.StatusTooManyRequests, Type: "RequestThrottledException", Reason: "ACCOUNT_THROTTLED", Msg: err.Message}
	case "UnauthorizedOperation":
		return &ebsError{status: http.StatusForbidden, Type: "AccessDeniedException", Reason: "UNAUTHORIZED_ACCOUNT", Msg: err.Message}
	}
	return &ebsError{status: err.status, Type: err.Code, Msg: err.Message}
}

func writeEBSError(w http.ResponseWriter, err error) {
	var e *ebsError
	if !errors.As(err, &e) {
		e = &ebsError{status: http.StatusInternalServerError, Type: "InternalServerException", Msg: err.Error()}
	}
	body := map[string]string{"__type": e.Type, "Message": e.Msg}
	if e.Reason != "" {
		body["Reason"] = e.Reason
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", e.Type)
	w.Header().Set("X-Amzn-RequestId", newRequestID())
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(body)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-RequestId", newRequestID())
	_ = json.NewEncoder(w).Encode(v)
}

// ebsMux routes the EBS direct APIs; each operation is counted and passes the fault injection.
func (s *Server) ebsMux() *http.ServeMux {
	mux := http.NewServeMux()
	op := func(name string, h func(http.ResponseWriter, *http.Request) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			s.count(name)
			if err := s.faults.before(name); err != nil {
				var ae *apiError
				if errors.As(err, &ae) {
					writeEBSError(w, ebsFault(ae))
					return
				}
			}
			if err := h(w, r); err != nil {
				writeEBSError(w, err)
			}
		}
	}
	mux.HandleFunc("POST /snapshots", op("StartSnapshot", s.startSnapshot))
	mux.HandleFunc("PUT /snapshots/{id}/blocks/{index}", op("PutSnapshotBlock", s.putSnapshotBlock))
	mux.HandleFunc("POST /snapshots/completion/{id}", op("CompleteSnapshot", s.completeSnapshot))
	mux.HandleFunc("GET /snapshots/{id}/blocks", op("ListSnapshotBlocks", s.listSnapshotBlocks))
	mux.HandleFunc("GET /snapshots/{id}/blocks/{index}", op("GetSnapshotBlock", s.getSnapshotBlock))
	return mux
}

type ebsTag struct {
	Key   string `json:"Key"`
	Value string `json:"Value"`
}

type startSnapshotRequest struct {
	VolumeSize       int64    `json:"VolumeSize"`
	ClientToken      string   `json:"ClientToken,omitempty"`
	Description      string   `json:"Description,omitempty"`
	ParentSnapshotID string   `json:"ParentSnapshotId,omitempty"`
	Encrypted        bool     `json:"Encrypted,omitempty"`
	KmsKeyArn        string   `json:"KmsKeyArn,omitempty"`
	Timeout          int      `json:"Timeout,omitempty"`
	Tags             []ebsTag `json:"Tags,omitempty"`
}

type startSnapshotResponse struct {
	BlockSize   int      `json:"BlockSize"`
	Description string   `json:"Description,omitempty"`
	OwnerID     string   `json:"OwnerId"`
	SnapshotID  string   `json:"SnapshotId"`
	StartTime   float64  `json:"StartTime"`
	Status      string   `json:"Status"`
	Tags        []ebsTag `json:"Tags,omitempty"`
	VolumeSize  int64    `json:"VolumeSize"`
}

// startSnapshot creates a pending snapshot. A ClientToken seen before returns that snapshot when the request is
// the same, and ConflictException when it differs.
func (s *Server) startSnapshot(w http.ResponseWriter, r *http.Request) error {
	raw, err := io.ReadAll(io.LimitReader(r.Body, 64<<10+1))
	if err != nil || len(raw) > 64<<10 {
		return validation("INVALID_PARAMETER_VALUE", "the request body is unreadable or too large")
	}
	var req startSnapshotRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return validation("INVALID_PARAMETER_VALUE", "decoding the request: %v", err)
	}
	if req.VolumeSize < 1 || req.VolumeSize > maxVolumeGiB {
		return validation("INVALID_VOLUME_SIZE", "VolumeSize must be between 1 and %d GiB", maxVolumeGiB)
	}
	if req.ParentSnapshotID != "" || req.Encrypted || req.KmsKeyArn != "" {
		return validation("INVALID_PARAMETER_VALUE", "parent snapshots and encryption are not supported here")
	}
	tags := make([]Tag, len(req.Tags))
	for i, t := range req.Tags {
		tags[i] = Tag(t)
	}
	if err := checkTags(tags); err != nil {
		return validation("INVALID_TAG", "%s", err.(*apiError).Message)
	}
	req.Timeout = 0 // not part of the idempotent identity
	fp, _ := json.Marshal(req)

	s.mu.Lock()
	defer s.mu.Unlock()
	if req.ClientToken != "" {
		if sn, ok := s.snapTok[req.ClientToken]; ok {
			if sn.fingerprint != string(fp) {
				return &ebsError{status: http.StatusConflict, Type: "ConflictException",
					Msg: "The request uses the same client token as a previous, but non-identical request."}
			}
			return s.writeStarted(w, sn)
		}
	}
	id := newID("snap")
	blocks, err := newBlockStore(s.opts.BlockDir, id, req.VolumeSize<<30)
	if err != nil {
		return err
	}
	s.seq++
	sn := &snapshot{seq: s.seq, id: id, description: req.Description, clientToken: req.ClientToken, fingerprint: string(fp),
		volumeSize: req.VolumeSize, status: "pending", tags: tags, started: s.opts.Now(), blocks: blocks}
	s.snapshots[id] = sn
	if req.ClientToken != "" {
		s.snapTok[req.ClientToken] = sn
	}
	return s.writeStarted(w, sn)
}

func (s *Server) writeStarted(w http.ResponseWriter, sn *snapshot) error {
	out := startSnapshotResponse{BlockSize: blockSize, Description: sn.description, OwnerID: s.opts.AccountID, SnapshotID: sn.id,
		StartTime: float64(sn.started.UnixMilli()) / 1000, Status: sn.ebsStatus(), VolumeSize: sn.volumeSize}
	for _, t := range sn.tags {
		out.Tags = append(out.Tags, ebsTag(t))
	}
	writeJSON(w, out)
	return nil
}

// lookupSnapshot finds a snapshot for an EBS call.
func (s *Server) lookupSnapshot(id string) (*snapshot, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sn, ok := s.snapshots[id]
	if !ok {
		return nil, "", snapshotNotFound(id)
	}
	return sn, sn.status, nil
}

// blockIndex parses a block index and checks it lies within the volume.
func blockIndex(raw string, sn *snapshot) (int64, error) {
	idx, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || idx < 0 || idx >= sn.volumeSize<<30/blockSize {
		return 0, validation("INVALID_BLOCK", "block index %s is outside the volume of %d GiB (%d blocks)", raw, sn.volumeSize, sn.volumeSize<<30/blockSize)
	}
	return idx, nil
}

// putSnapshotBlock stores one block of a pending snapshot after checking its length (the whole block size)
// and its SHA-256 against x-amz-Checksum; a refused block is not stored.
func (s *Server) putSnapshotBlock(w http.ResponseWriter, r *http.Request) error {
	sn, status, err := s.lookupSnapshot(r.PathValue("id"))
	if err != nil {
		return err
	}
	if status != "pending" {
		return validation("INVALID_SNAPSHOT_ID", "snapshot %s is %s: blocks are written only to a pending snapshot", sn.id, sn.ebsStatus())
	}
	idx, err := blockIndex(r.PathValue("index"), sn)
	if err != nil {
		return err
	}
	if n, err := strconv.ParseInt(r.Header.Get("X-Amz-Data-Length"), 10, 64); err != nil || n != blockSize {
		return validation("INVALID_PARAMETER_VALUE", "DataLength must be the block size %d, not %q", blockSize, r.Header.Get("X-Amz-Data-Length"))
	}
	if alg := r.Header.Get("X-Amz-Checksum-Algorithm"); alg != "SHA256" {
		return validation("INVALID_PARAMETER_VALUE", "ChecksumAlgorithm must be SHA256, not %q", alg)
	}
	want, err := base64.StdEncoding.DecodeString(r.Header.Get("X-Amz-Checksum"))
	if err != nil || len(want) != sha256.Size {
		return validation("INVALID_PARAMETER_VALUE", "Checksum must be a base64 SHA-256 digest")
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, blockSize+1))
	if err != nil {
		return validation("INVALID_PARAMETER_VALUE", "reading the block: %v", err)
	}
	if len(data) != blockSize {
		return validation("INVALID_PARAMETER_VALUE", "the block has %d bytes; DataLength says %d", len(data), blockSize)
	}
	sum := sha256.Sum256(data)
	if !slices.Equal(sum[:], want) {
		return validation("INVALID_PARAMETER_VALUE", "the checksum of block %d does not match its data", idx)
	}
	if err := sn.blocks.put(idx, data, sum); err != nil {
		return err
	}
	w.Header().Set("X-Amz-Checksum", base64.StdEncoding.EncodeToString(sum[:]))
	w.Header().Set("X-Amz-Checksum-Algorithm", "SHA256")
	w.Header().Set("X-Amzn-RequestId", newRequestID())
	w.WriteHeader(http.StatusCreated)
	return nil
}

// completeSnapshot seals a pending snapshot after checking ChangedBlocksCount against the blocks written and,
// when sent, the LINEAR aggregate checksum; it is then pending to DescribeSnapshots for
// Options.SnapshotPendingDescribes calls, and completed.
func (s *Server) completeSnapshot(w http.ResponseWriter, r *http.Request) error {
	sn, status, err := s.lookupSnapshot(r.PathValue("id"))
	if err != nil {
		return err
	}
	if status != "pending" {
		writeJSON(w, map[string]string{"Status": sn.ebsStatus()})
		return nil
	}
	count, err := strconv.Atoi(r.Header.Get("X-Amz-ChangedBlocksCount"))
	if err != nil || count < 0 {
		return validation("INVALID_PARAMETER_VALUE", "ChangedBlocksCount is required")
	}
	written := len(sn.blocks.indexes())
	if count != written {
		return validation("INVALID_PARAMETER_VALUE", "ChangedBlocksCount is %d but %d blocks were written", count, written)
	}
	if sum := r.Header.Get("X-Amz-Checksum"); sum != "" {
		if alg := r.Header.Get("X-Amz-Checksum-Algorithm"); alg != "SHA256" {
			return validation("INVALID_PARAMETER_VALUE", "ChecksumAlgorithm must be SHA256, not %q", alg)
		}
		if m := r.Header.Get("X-Amz-Checksum-Aggregation-Method"); m != "LINEAR" {
			return validation("INVALID_PARAMETER_VALUE", "ChecksumAggregationMethod must be LINEAR, not %q", m)
		}
		agg := sn.blocks.aggregate()
		if sum != base64.StdEncoding.EncodeToString(agg[:]) {
			return validation("INVALID_PARAMETER_VALUE", "the aggregate checksum does not match the blocks written")
		}
	}
	s.mu.Lock()
	if sn.status == "pending" {
		sn.status, sn.pendingDescribes = "completing", s.opts.SnapshotPendingDescribes
		if sn.pendingDescribes == 0 {
			sn.status, sn.completed = "completed", s.opts.Now()
		}
	}
	st := sn.ebsStatus()
	s.mu.Unlock()
	writeJSON(w, map[string]string{"Status": st})
	return nil
}

// blockToken names a block of a snapshot for GetSnapshotBlock.
func blockToken(id string, idx int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(id + "/" + strconv.FormatInt(idx, 10)))
}

type listedBlock struct {
	BlockIndex int64  `json:"BlockIndex"`
	BlockToken string `json:"BlockToken"`
}

// listSnapshotBlocks lists the written blocks of a snapshot CompleteSnapshot accepted, by ascending index.
func (s *Server) listSnapshotBlocks(w http.ResponseWriter, r *http.Request) error {
	sn, status, err := s.lookupSnapshot(r.PathValue("id"))
	if err != nil {
		return err
	}
	if status == "pending" {
		return validation("INVALID_SNAPSHOT_ID", "snapshot %s is not completed", sn.id)
	}
	q := r.URL.Query()
	limit := 10000
	if v := q.Get("maxResults"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 10000 {
			return validation("INVALID_PARAMETER_VALUE", "maxResults must be between 100 and 10000")
		}
		limit = n
	}
	start := int64(0)
	if v := q.Get("startingBlockIndex"); v != "" {
		if start, err = strconv.ParseInt(v, 10, 64); err != nil || start < 0 {
			return validation("INVALID_PARAMETER_VALUE", "startingBlockIndex is invalid")
		}
	}
	if v := q.Get("pageToken"); v != "" {
		raw, err := base64.RawURLEncoding.DecodeString(v)
		after, found := strings.CutPrefix(string(raw), sn.id+"/")
		n, err2 := strconv.ParseInt(after, 10, 64)
		if err != nil || !found || err2 != nil {
			return validation("INVALID_PAGE_TOKEN", "the page token is invalid")
		}
		start = max(start, n)
	}
	out := struct {
		BlockSize  int           `json:"BlockSize"`
		Blocks     []listedBlock `json:"Blocks"`
		NextToken  string        `json:"NextToken,omitempty"`
		VolumeSize int64         `json:"VolumeSize"`
		ExpiryTime float64       `json:"ExpiryTime"`
	}{BlockSize: blockSize, Blocks: []listedBlock{}, VolumeSize: sn.volumeSize, ExpiryTime: float64(s.opts.Now().Unix() + 3600)}
	for _, idx := range sn.blocks.indexes() {
		if idx < start {
			continue
		}
		if len(out.Blocks) == limit {
			out.NextToken = base64.RawURLEncoding.EncodeToString([]byte(sn.id + "/" + strconv.FormatInt(idx, 10)))
			break
		}
		out.Blocks = append(out.Blocks, listedBlock{idx, blockToken(sn.id, idx)})
	}
	writeJSON(w, out)
	return nil
}

// getSnapshotBlock returns one written block with its checksum.
func (s *Server) getSnapshotBlock(w http.ResponseWriter, r *http.Request) error {
	sn, _, err := s.lookupSnapshot(r.PathValue("id"))
	if err != nil {
		return err
	}
	idx, err := blockIndex(r.PathValue("index"), sn)
	if err != nil {
		return err
	}
	if r.URL.Query().Get("blockToken") != blockToken(sn.id, idx) {
		return validation("INVALID_BLOCK_TOKEN", "the block token does not name block %d of %s", idx, sn.id)
	}
	data, sum, ok, err := sn.blocks.get(idx)
	if err != nil {
		return err
	}
	if !ok {
		return validation("INVALID_BLOCK_TOKEN", "block %d of %s was never written", idx, sn.id)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Amz-Data-Length", strconv.Itoa(len(data)))
	w.Header().Set("X-Amz-Checksum", base64.StdEncoding.EncodeToString(sum[:]))
	w.Header().Set("X-Amz-Checksum-Algorithm", "SHA256")
	_, _ = w.Write(data)
	return nil
}
