// Package crilog stores a container's logs in the CRI log format that kubelets
// write and `kubectl logs` reads, and reads them back as kubectl shows them.
//
// Each record is one line of a log file:
//
//	<RFC3339Nano UTC timestamp> <stream> <tag> <content>\n
//
// where stream is "stdout" or "stderr" and tag is "F" for a full line or "P"
// for a partial one. A line longer than MaxLine bytes is split into P records
// ending with an F record; a last line without a newline is written as a P
// record when its run is closed, as containerd writes it: read back, it ends
// without the newline the container never wrote (`echo -n DONE` reads "DONE").
//
// A Dir keeps one container's logs: one file per run of the container
// ("<run>.log"), rotated to "<run>.log.1" when it would exceed the Dir's
// maximum size. Only the current and the previous run are kept.
package crilog

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxLine is the most content bytes one record holds: longer lines are split
// into partial records of MaxLine bytes, as the kubelet does.
const MaxLine = 16 * 1024

// subscriberBuffer is how many records a subscriber may lag behind before
// records are dropped for it.
const subscriberBuffer = 256

var (
	// ErrNoPrevious is returned (wrapped) by Read with Options.Previous when
	// the current run has no previous run on disk.
	ErrNoPrevious = errors.New("no previous run")
	// ErrNoRun is returned by Read when no run has started yet.
	ErrNoRun = errors.New("no run")
)

// errLimit stops output once Options.LimitBytes bytes have been written.
var errLimit = errors.New("byte limit reached")

// Dir is one container's log directory: one file per run ("<run>.log"),
// rotated to "<run>.log.1" when it exceeds MaxSize; only the current and the
// previous run's files are kept (older runs are deleted when a new run
// starts). A Dir is safe for concurrent use.
type Dir struct {
	path    string
	maxSize int64
	now     func() time.Time // the clock records are stamped with; tests replace it
	started func()           // if not nil, called by Read once it knows what exists; for tests

	mu   sync.Mutex
	cur  *Run // the latest run, nil before the first
	prev *Run // run cur.n-1 if its files exist, else nil
}

// Open opens the log directory dir, creating it if needed. A file that would
// grow beyond maxSize bytes is rotated first (a single record larger than
// maxSize still goes into one file); maxSize <= 0 never rotates.
//
// If dir already holds runs, the largest run number becomes the current run
// and the one before it the previous run, both ended, so that Read works;
// the next NewRun must use a larger number.
func Open(dir string, maxSize int64) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the log directory, %w", err)
	}
	d := &Dir{path: dir, maxSize: maxSize, now: time.Now}
	runs, err := d.runsOnDisk()
	if err != nil {
		return nil, err
	}
	latest := -1
	for n := range runs {
		latest = max(latest, n)
	}
	if latest >= 0 {
		d.cur = d.endedRun(latest)
		if runs[latest-1] {
			d.prev = d.endedRun(latest - 1)
		}
	}
	return d, nil
}

// runsOnDisk returns the run numbers that have a file in the directory.
func (d *Dir) runsOnDisk() (map[int]bool, error) {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return nil, fmt.Errorf("listing the log directory, %w", err)
	}
	runs := map[int]bool{}
	for _, e := range entries {
		if n, ok := runNumber(e.Name()); ok {
			runs[n] = true
		}
	}
	return runs, nil
}

// runNumber parses "<n>.log" and "<n>.log.1".
func runNumber(name string) (int, bool) {
	base, ok := strings.CutSuffix(name, ".log")
	if !ok {
		base, ok = strings.CutSuffix(name, ".log.1")
	}
	if !ok || base == "" || strings.TrimLeft(base, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(base)
	return n, err == nil
}

// endedRun describes a run found on disk: it is ended and never written.
func (d *Dir) endedRun(n int) *Run {
	r := d.newRunStruct(n)
	r.closed = true
	if info, err := os.Stat(r.path); err == nil {
		r.size = info.Size()
	}
	return r
}

func (d *Dir) newRunStruct(n int) *Run {
	r := &Run{d: d, n: n, path: filepath.Join(d.path, strconv.Itoa(n)+".log"), wake: make(chan struct{})}
	r.streams[0].name = "stdout"
	r.streams[1].name = "stderr"
	return r
}

// NewRun starts run number n (0, 1, 2...) and returns its writer; it deletes
// runs older than n-1. n must be larger than every earlier run's number. The
// run that was current until now is not closed (its owner closes it), but
// its followers return once they have read what it holds.
func (d *Dir) NewRun(n int) (*Run, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n < 0 {
		return nil, fmt.Errorf("starting run %d, %w", n, errors.New("negative run number"))
	}
	if d.cur != nil && n <= d.cur.n {
		return nil, fmt.Errorf("starting run %d, %w", n, fmt.Errorf("run %d already started", d.cur.n))
	}

	// Forget and delete the runs older than n-1, then anything else on disk
	// that is that old.
	var errs []error
	for _, old := range []*Run{d.prev, d.cur} {
		if old != nil && old.n < n-1 {
			errs = append(errs, old.remove())
		}
	}
	runs, err := d.runsOnDisk()
	if err != nil {
		return nil, fmt.Errorf("starting run %d, %w", n, err)
	}
	for k := range runs {
		if k < n-1 || k == n {
			errs = append(errs, removeRunFiles(filepath.Join(d.path, strconv.Itoa(k)+".log")))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("deleting old runs, %w", err)
	}

	r := d.newRunStruct(n)
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating the log of run %d, %w", n, err)
	}
	r.f = f

	if old := d.cur; old != nil {
		old.mu.Lock()
		old.superseded = true
		old.notifyLocked()
		old.mu.Unlock()
	}
	d.prev = nil
	if d.cur != nil && d.cur.n == n-1 {
		d.prev = d.cur
	}
	d.cur = r
	return r, nil
}

func removeRunFiles(path string) error {
	var errs []error
	for _, p := range []string{path, path + ".1"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Size returns the bytes the directory's files use. Files that cannot be
// inspected count as empty.
func (d *Dir) Size() int64 {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
	}
	return n
}

// Run is one run's log. Stream returns an io.Writer for "stdout" or "stderr"
// that splits what is written into lines and appends them as CRI records
// (safe for concurrent use by both streams; a partial trailing line is held
// until a newline or Close). Close flushes and marks the run ended:
// followers return.
type Run struct {
	d    *Dir
	n    int
	path string // "<dir>/<n>.log"; the rotated file is path+".1"

	mu         sync.Mutex
	f          *os.File // the current file; nil once closed
	gen        int      // rotations so far: the current file's generation
	size       int64    // bytes in the current file, pending included
	pending    []byte   // records not written to f yet
	closed     bool
	superseded bool // a newer run has started
	removed    bool // the run's files are deleted
	err        error
	wake       chan struct{} // closed and replaced whenever the above change
	streams    [2]stream
	subs       map[chan Record]struct{}
}

type stream struct {
	name string
	held []byte // the start of a line not ended yet, at most MaxLine bytes
}

// Record is one CRI log record. Content excludes the newline; a line longer
// than MaxLine comes as Partial records followed by a full one.
type Record struct {
	Time    time.Time
	Stream  string
	Partial bool
	Content []byte
}

// Stream returns the writer for stream name, "stdout" or "stderr"; for any
// other name the writer's Write fails. Write appends each completed line as a
// record (lines longer than MaxLine as several) and holds an unterminated
// last line until the next newline or Close. Records of one Write share its
// time. Write fails after Close, or after an I/O error of the log file (the
// error sticks); it writes nothing once the run's files have been deleted by
// a later NewRun.
func (r *Run) Stream(name string) io.Writer {
	for i := range r.streams {
		if r.streams[i].name == name {
			return streamWriter{r, &r.streams[i]}
		}
	}
	return badStream(name)
}

type badStream string

func (s badStream) Write([]byte) (int, error) {
	return 0, fmt.Errorf("writing the %s log, %w", string(s), errors.New(`stream is neither "stdout" nor "stderr"`))
}

type streamWriter struct {
	r *Run
	s *stream
}

func (w streamWriter) Write(p []byte) (int, error) {
	r := w.r
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return 0, fmt.Errorf("writing the %s log, %w", w.s.name, os.ErrClosed)
	case r.err != nil:
		return 0, fmt.Errorf("writing the %s log, %w", w.s.name, r.err)
	case r.removed:
		return len(p), nil
	}
	ts := r.d.now()
	total := len(p)
	var err error
	for len(p) > 0 && err == nil {
		seg, rest, full := bytes.Cut(p, []byte{'\n'})
		p = rest
		data := seg
		if len(w.s.held) > 0 {
			w.s.held = append(w.s.held, seg...)
			data = w.s.held
		}
		for len(data) > MaxLine && err == nil {
			err = r.appendLocked(ts, w.s.name, true, data[:MaxLine])
			data = data[MaxLine:]
		}
		switch {
		case err != nil:
		case full:
			err = r.appendLocked(ts, w.s.name, false, data)
			w.s.held = w.s.held[:0]
		default:
			w.s.held = append(w.s.held[:0], data...) // copy handles the overlap
		}
	}
	if err == nil {
		err = r.flushLocked()
	}
	r.notifyLocked()
	if err != nil {
		r.err = err
		return 0, fmt.Errorf("writing the %s log, %w", w.s.name, err)
	}
	return total, nil
}

// appendLocked adds one record to the pending bytes, rotating first if the
// file would grow beyond the maximum size, and hands it to subscribers.
func (r *Run) appendLocked(t time.Time, name string, partial bool, content []byte) error {
	start := len(r.pending)
	r.pending = t.UTC().AppendFormat(r.pending, time.RFC3339Nano)
	tag := " F "
	if partial {
		tag = " P "
	}
	r.pending = append(r.pending, ' ')
	r.pending = append(r.pending, name...)
	r.pending = append(r.pending, tag...)
	r.pending = append(r.pending, content...)
	r.pending = append(r.pending, '\n')
	n := int64(len(r.pending) - start)

	if r.d.maxSize > 0 && r.size > 0 && r.size+n > r.d.maxSize {
		// The file (not counting this record) is non-empty: rotate it.
		rec := r.pending[start:]
		r.pending = r.pending[:start]
		if err := r.flushLocked(); err != nil {
			return err
		}
		if err := r.rotateLocked(); err != nil {
			return err
		}
		r.pending = append(r.pending[:0], rec...) // copy handles the overlap
	}
	r.size += n

	if len(r.subs) > 0 {
		rec := Record{Time: t, Stream: name, Partial: partial, Content: bytes.Clone(content)}
		for ch := range r.subs {
			select {
			case ch <- rec:
			default: // a slow subscriber loses the record
			}
		}
	}
	return nil
}

func (r *Run) flushLocked() error {
	if len(r.pending) == 0 {
		return nil
	}
	_, err := r.f.Write(r.pending)
	r.pending = r.pending[:0]
	return err
}

// rotateLocked renames the current file to path.1, replacing an older one,
// and starts an empty current file. Followers holding the old file keep
// reading it through their descriptor.
func (r *Run) rotateLocked() error {
	if err := r.f.Close(); err != nil {
		return fmt.Errorf("closing the log, %w", err)
	}
	r.f = nil
	if err := os.Rename(r.path, r.path+".1"); err != nil {
		return fmt.Errorf("rotating the log, %w", err)
	}
	r.gen++
	r.size = 0
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("creating the log, %w", err)
	}
	r.f = f
	return nil
}

// notifyLocked wakes the followers.
func (r *Run) notifyLocked() {
	close(r.wake)
	r.wake = make(chan struct{})
}

// Close writes the held unterminated lines of both streams as partial records,
// closes the file, ends subscriptions and marks the run ended so that
// followers return. Closing again does nothing.
func (r *Run) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	defer r.notifyLocked()

	err := r.err
	if err == nil && !r.removed {
		ts := r.d.now()
		for i := range r.streams {
			s := &r.streams[i]
			if len(s.held) > 0 && err == nil {
				err = r.appendLocked(ts, s.name, true, s.held)
			}
			s.held = nil
		}
		if err == nil {
			err = r.flushLocked()
		}
	}
	for ch := range r.subs {
		close(ch)
	}
	r.subs = nil
	if r.f != nil {
		err = errors.Join(err, r.f.Close())
		r.f = nil
	}
	if err != nil {
		return fmt.Errorf("closing run %d, %w", r.n, err)
	}
	return nil
}

// remove deletes the run's files; the run counts as ended.
func (r *Run) remove() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed = true
	r.pending = r.pending[:0]
	r.notifyLocked()
	return removeRunFiles(r.path)
}

// Subscribe returns a live copy of every record appended from now on (for
// `kubectl attach`) and a func that cancels the subscription. The channel is
// closed by cancel or when the run is closed; it is closed at once if the run
// is already closed. A subscriber that lags more than a few hundred records
// behind loses records rather than block the writers. Content must not be
// modified: subscribers share it.
func (r *Run) Subscribe() (<-chan Record, func()) {
	ch := make(chan Record, subscriberBuffer)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		close(ch)
		return ch, func() {}
	}
	if r.subs == nil {
		r.subs = map[chan Record]struct{}{}
	}
	r.subs[ch] = struct{}{}
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			if _, ok := r.subs[ch]; ok {
				delete(r.subs, ch)
				close(ch)
			}
		})
	}
}

// Options select what to read, as kubectl logs does.
type Options struct {
	Follow     bool      // after the existing records, wait for new ones
	Previous   bool      // read the run before the current one
	Timestamps bool      // prefix each line with its record's timestamp
	Tail       int       // keep only the last Tail lines; -1 (any negative) keeps all
	Since      time.Time // drop records older than this; zero keeps all
	LimitBytes int64     // stop after writing this many bytes; <= 0 is no limit
}

// Read writes the current run's log (or, with Previous, the run before it)
// to w as kubectl shows it: content only, or "<timestamp> <content>" with
// Timestamps (the timestamp in RFC3339Nano as the kubelet prints it, once per
// line: the chunks of a split line after the first have none). Since drops
// records older than it; Tail then keeps the last N lines (counting full
// lines: P chunks join their F; an unfinished last line counts as one);
// LimitBytes stops after that many bytes of output, cutting a line if
// needed, and Read then returns nil.
//
// With Follow it then waits for new records (woken by the writer, never by
// polling) and writes them as they come until the run ends (Close), a new run
// has started, or ctx is done, in which case it returns ctx.Err(). Without
// Follow ctx is not used. If w has a Flush() method (http.Flusher), it is
// called after each batch of followed output.
//
// Previous with no previous run is an error wrapping ErrNoPrevious. With no
// run yet, Read returns ErrNoRun. Errors writing to w are returned as is.
func (d *Dir) Read(ctx context.Context, w io.Writer, o Options) error {
	d.mu.Lock()
	r := d.cur
	if r != nil && o.Previous {
		r = d.prev
		if r == nil {
			d.mu.Unlock()
			return fmt.Errorf("reading the previous run, %w", ErrNoPrevious)
		}
	}
	d.mu.Unlock()
	if r == nil {
		return ErrNoRun
	}
	err := r.read(ctx, w, o)
	if errors.Is(err, errLimit) {
		return nil
	}
	return err
}

// state is what a reader needs of a run, taken under its lock.
type state struct {
	gen   int
	size  int64
	ended bool
	wake  <-chan struct{}
}

func (r *Run) stateLocked() state {
	return state{gen: r.gen, size: r.size - int64(len(r.pending)), ended: r.closed || r.superseded || r.removed, wake: r.wake}
}

// openLocked opens one of the run's files; a missing one is nil.
func openLocked(path string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening the log, %w", err)
	}
	return f, nil
}

func (r *Run) read(ctx context.Context, w io.Writer, o Options) error {
	// Open both files and note how much of the current one is written, all
	// under the lock so that no rotation comes in between. The rotated file
	// is complete; the current one is read only up to st.size.
	r.mu.Lock()
	st := r.stateLocked()
	var rot, cur *os.File
	var err error
	if !r.removed {
		rot, err = openLocked(r.path + ".1")
		if err == nil {
			cur, err = openLocked(r.path)
		}
	}
	r.mu.Unlock()
	if r.d.started != nil {
		r.d.started()
	}
	closeFile := func(f *os.File) {
		if f != nil {
			f.Close()
		}
	}
	defer func() { closeFile(cur) }()
	if err != nil {
		closeFile(rot)
		return err
	}

	out := &output{w: w, o: o}
	var tail *tailBuffer
	emit := out.write
	if o.Tail >= 0 {
		tail = &tailBuffer{n: o.Tail}
		emit = tail.push
	}
	if rot != nil {
		err = scan(rot, -1, o.Since, tail != nil, emit)
		rot.Close()
		if err != nil {
			return err
		}
	}
	if cur != nil {
		if err := scan(cur, st.size, o.Since, tail != nil, emit); err != nil {
			return err
		}
	}
	if tail != nil {
		for _, rec := range tail.lines() {
			if err := out.write(rec); err != nil {
				return err
			}
		}
	}
	if !o.Follow {
		return nil
	}

	// Follow. Invariant at the top of the loop: everything up to st is
	// written out, and cur, of generation gen == st.gen, is read up to off.
	gen, off := st.gen, st.size
	for {
		if st.ended {
			return nil
		}
		out.flush()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-st.wake:
		}
		for {
			r.mu.Lock()
			st = r.stateLocked()
			var next *os.File
			nextGen := st.gen
			if gen < st.gen && !r.removed {
				// cur has been rotated and is complete. The file after it
				// is path.1 if that was rotated too (any between are
				// lost), else path.
				path := r.path
				if gen+1 < st.gen {
					nextGen, path = st.gen-1, r.path+".1"
				}
				next, err = openLocked(path)
			}
			r.mu.Unlock()
			if err != nil {
				return err
			}
			if gen == st.gen {
				if cur != nil {
					err = scan(io.NewSectionReader(cur, off, st.size-off), -1, o.Since, false, out.write)
				}
				off = st.size
				if err != nil {
					return err
				}
				break
			}
			if cur != nil {
				// To EOF: nothing is written to a rotated file.
				err = scan(io.NewSectionReader(cur, off, 1<<62), -1, o.Since, false, out.write)
				cur.Close()
			}
			cur, gen, off = next, nextGen, 0
			if err != nil {
				return err
			}
		}
	}
}

// record is one parsed record.
type record struct {
	ts      []byte // as written
	partial bool
	content []byte
}

// scan parses the records of src, up to limit bytes if limit >= 0, and calls
// emit for each not older than since. Malformed lines are skipped. With keep,
// emitted records own their bytes; otherwise they are valid during emit only.
func scan(src io.Reader, limit int64, since time.Time, keep bool, emit func(record) error) error {
	if limit >= 0 {
		src = io.LimitReader(src, limit)
	}
	br := bufio.NewReaderSize(src, MaxLine+256)
	skipping := false // in the middle of an over-long line
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			skipping = true
			continue
		}
		if err == io.EOF {
			return nil // an incomplete last line is never a whole record
		}
		if err != nil {
			return fmt.Errorf("reading the log, %w", err)
		}
		if skipping {
			skipping = false
			continue
		}
		rec, t, ok := parse(line[:len(line)-1])
		if !ok || (!since.IsZero() && t.Before(since)) {
			continue
		}
		if keep {
			rec.ts = bytes.Clone(rec.ts)
			rec.content = bytes.Clone(rec.content)
		}
		if err := emit(rec); err != nil {
			return err
		}
	}
}

// parse splits "<timestamp> <stream> <tag> <content>".
func parse(line []byte) (record, time.Time, bool) {
	ts, rest, ok1 := bytes.Cut(line, []byte{' '})
	_, rest, ok2 := bytes.Cut(rest, []byte{' '})
	tag, content, ok3 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 || !ok3 {
		return record{}, time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return record{}, time.Time{}, false
	}
	var partial bool
	switch string(tag) {
	case "F":
	case "P":
		partial = true
	default:
		return record{}, time.Time{}, false
	}
	return record{ts: ts, partial: partial, content: content}, t, true
}

// tailBuffer keeps the records of the last n lines pushed, plus those of a
// line not ended yet.
type tailBuffer struct {
	n    int
	recs []record
	full int // complete lines in recs
}

func (b *tailBuffer) push(rec record) error {
	b.recs = append(b.recs, rec)
	if rec.partial {
		return nil
	}
	b.full++
	if b.full > b.n {
		// Drop the oldest line.
		i := 0
		for b.recs[i].partial {
			i++
		}
		b.recs = b.recs[i+1:]
		b.full--
	}
	return nil
}

// lines returns the records of the last n lines, an unfinished last line
// counting as one.
func (b *tailBuffer) lines() []record {
	lines := 0
	for i := len(b.recs) - 1; i >= 0; i-- {
		if !b.recs[i].partial || i == len(b.recs)-1 {
			if lines == b.n {
				return b.recs[i+1:]
			}
			lines++
		}
	}
	return b.recs
}

// output writes records as kubectl shows them.
type output struct {
	w       io.Writer
	o       Options
	written int64
	midLine bool // the last record written was partial
	buf     []byte
}

func (out *output) write(rec record) error {
	b := out.buf[:0]
	if out.o.Timestamps && !out.midLine {
		b = append(b, rec.ts...)
		b = append(b, ' ')
	}
	b = append(b, rec.content...)
	if !rec.partial {
		b = append(b, '\n')
	}
	out.buf = b
	out.midLine = rec.partial

	var limited bool
	if out.o.LimitBytes > 0 && out.written+int64(len(b)) >= out.o.LimitBytes {
		b = b[:out.o.LimitBytes-out.written]
		limited = true
	}
	n, err := out.w.Write(b)
	out.written += int64(n)
	if err != nil {
		return err
	}
	if limited {
		out.flush()
		return errLimit
	}
	return nil
}

func (out *output) flush() {
	if f, ok := out.w.(interface{ Flush() }); ok {
		f.Flush()
	}
}
