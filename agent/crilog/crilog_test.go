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
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// deadline bounds every wait so that a bug fails the test instead of hanging it.
const deadline = 10 * time.Second

var base = time.Date(2024, 1, 2, 3, 4, 5, 123456789, time.UTC)

// clock is a settable clock for Dir.now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func openDir(t *testing.T, maxSize int64) (*Dir, *clock) {
	t.Helper()
	d, err := Open(filepath.Join(t.TempDir(), "c"), maxSize)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: base}
	d.now = c.now
	return d, c
}

func newRun(t *testing.T, d *Dir, n int) *Run {
	t.Helper()
	r, err := d.NewRun(n)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func write(t *testing.T, r *Run, stream, s string) {
	t.Helper()
	n, err := r.Stream(stream).Write([]byte(s))
	if err != nil || n != len(s) {
		t.Fatalf("Write(%q) = %d, %v", s, n, err)
	}
}

func closeRun(t *testing.T, r *Run) {
	t.Helper()
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, d *Dir, o Options) string {
	t.Helper()
	var b bytes.Buffer
	if err := d.Read(context.Background(), &b, o); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// fileRecords returns a file's records as "<stream> <tag> <content>",
// checking each timestamp.
func fileRecords(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		ts, rest, _ := strings.Cut(sc.Text(), " ")
		if ts != base.Format(time.RFC3339Nano) {
			t.Errorf("timestamp %q, want %q", ts, base.Format(time.RFC3339Nano))
		}
		recs = append(recs, rest)
	}
	return recs
}

func TestLineSplitting(t *testing.T) {
	long := func(n int) string { return strings.Repeat("x", n) }
	type w struct{ stream, data string }
	tests := []struct {
		name        string
		writes      []w
		beforeClose []string // the records before Close
		want        []string // the records after Close
	}{
		{
			name:   "lines",
			writes: []w{{"stdout", "one\ntwo\n"}, {"stdout", "\n"}, {"stdout", "three with  spaces\n"}},
			want:   []string{"stdout F one", "stdout F two", "stdout F ", "stdout F three with  spaces"},
		},
		{
			name:        "line across writes",
			writes:      []w{{"stdout", "he"}, {"stdout", "llo\nwor"}, {"stdout", "ld\n"}},
			beforeClose: []string{"stdout F hello", "stdout F world"},
			want:        []string{"stdout F hello", "stdout F world"},
		},
		{
			name:        "no trailing newline",
			writes:      []w{{"stdout", "a\nb"}, {"stderr", "c"}},
			beforeClose: []string{"stdout F a"},
			want:        []string{"stdout F a", "stdout P b", "stderr P c"},
		},
		{
			name:   "streams",
			writes: []w{{"stdout", "o1"}, {"stderr", "e1\n"}, {"stdout", "\n"}},
			want:   []string{"stderr F e1", "stdout F o1"},
		},
		{
			name:   "exactly MaxLine",
			writes: []w{{"stdout", long(MaxLine) + "\n"}},
			want:   []string{"stdout F " + long(MaxLine)},
		},
		{
			name:   "MaxLine+1",
			writes: []w{{"stdout", long(MaxLine+1) + "\n"}},
			want:   []string{"stdout P " + long(MaxLine), "stdout F x"},
		},
		{
			name:   "long line in pieces",
			writes: []w{{"stdout", long(MaxLine - 1)}, {"stdout", long(MaxLine + 2)}, {"stdout", "yy\nz\n"}},
			want:   []string{"stdout P " + long(MaxLine), "stdout P " + long(MaxLine), "stdout F xyy", "stdout F z"},
		},
		{
			name:        "long line without newline",
			writes:      []w{{"stderr", long(2*MaxLine + 3)}},
			beforeClose: []string{"stderr P " + long(MaxLine), "stderr P " + long(MaxLine)},
			want:        []string{"stderr P " + long(MaxLine), "stderr P " + long(MaxLine), "stderr P xxx"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := openDir(t, 0)
			r := newRun(t, d, 0)
			for _, w := range tt.writes {
				write(t, r, w.stream, w.data)
			}
			if tt.beforeClose != nil {
				if got := fileRecords(t, r.path); !slices.Equal(got, tt.beforeClose) {
					t.Errorf("before Close: records %.80q, want %.80q", got, tt.beforeClose)
				}
			}
			closeRun(t, r)
			if got := fileRecords(t, r.path); !slices.Equal(got, tt.want) {
				t.Errorf("records %.80q, want %.80q", got, tt.want)
			}
			if _, err := r.Stream("stdout").Write([]byte("late\n")); !errors.Is(err, os.ErrClosed) {
				t.Errorf("Write after Close: %v, want os.ErrClosed", err)
			}
		})
	}
}

func TestBadStream(t *testing.T) {
	d, _ := openDir(t, 0)
	r := newRun(t, d, 0)
	if _, err := r.Stream("stdin").Write([]byte("x\n")); err == nil {
		t.Error("Write to stdin succeeded")
	}
}

func TestRead(t *testing.T) {
	d, c := openDir(t, 0)
	r := newRun(t, d, 0)
	long := strings.Repeat("L", MaxLine+5)
	at := func(i int) time.Time { return base.Add(time.Duration(i) * time.Second) }
	ts := func(i int) string { return at(i).Format(time.RFC3339Nano) + " " }
	c.set(at(0))
	write(t, r, "stdout", "one\n")
	c.set(at(1))
	write(t, r, "stdout", "two\n")
	c.set(at(2))
	write(t, r, "stdout", long+"\n")
	c.set(at(3))
	write(t, r, "stderr", "err\n")
	c.set(at(4))
	write(t, r, "stdout", "last") // unterminated: read back without a newline, as written
	closeRun(t, r)

	all := "one\ntwo\n" + long + "\nerr\nlast"
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"all", Options{Tail: -1}, all},
		{"timestamps", Options{Tail: -1, Timestamps: true},
			ts(0) + "one\n" + ts(1) + "two\n" + ts(2) + long + "\n" + ts(3) + "err\n" + ts(4) + "last"},
		{"tail 0", Options{Tail: 0}, ""},
		{"tail 1", Options{Tail: 1}, "last"},
		{"tail 2", Options{Tail: 2}, "err\nlast"},
		{"tail joins partial chunks", Options{Tail: 3}, long + "\nerr\nlast"},
		{"tail larger than lines", Options{Tail: 100}, all},
		{"tail with timestamps", Options{Tail: 3, Timestamps: true}, ts(2) + long + "\n" + ts(3) + "err\n" + ts(4) + "last"},
		{"since", Options{Tail: -1, Since: at(2)}, long + "\nerr\nlast"},
		{"since between records", Options{Tail: -1, Since: at(3).Add(-time.Nanosecond)}, "err\nlast"},
		{"since after all", Options{Tail: -1, Since: at(5)}, ""},
		{"since and tail", Options{Tail: 1, Since: at(2)}, "last"},
		{"tail and since", Options{Tail: 4, Since: at(3)}, "err\nlast"},
		{"limitBytes", Options{Tail: -1, LimitBytes: 6}, "one\ntw"},
		{"limitBytes at a line end", Options{Tail: -1, LimitBytes: 8}, "one\ntwo\n"},
		{"limitBytes in a long line", Options{Tail: -1, LimitBytes: 10}, "one\ntwo\nLL"},
		{"limitBytes with timestamps", Options{Tail: -1, Timestamps: true, LimitBytes: 5}, ts(0)[:5]},
		{"limitBytes larger than output", Options{Tail: -1, LimitBytes: 1 << 30}, all},
		{"limitBytes and tail", Options{Tail: 2, LimitBytes: 5}, "err\nl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readAll(t, d, tt.o); got != tt.want {
				t.Errorf("Read = %.100q, want %.100q", got, tt.want)
			}
		})
	}
}

func TestReadUnfinishedLine(t *testing.T) {
	d, _ := openDir(t, 0)
	r := newRun(t, d, 0)
	long := strings.Repeat("L", MaxLine)
	write(t, r, "stdout", "a\n"+long+"tail")
	ts := base.Format(time.RFC3339Nano) + " "
	tests := []struct {
		o    Options
		want string
	}{
		{Options{Tail: -1}, "a\n" + long},
		{Options{Tail: 1}, long},
		{Options{Tail: 2, Timestamps: true}, ts + "a\n" + ts + long},
	}
	for _, tt := range tests {
		if got := readAll(t, d, tt.o); got != tt.want {
			t.Errorf("Read(%+v) = %.60q, want %.60q", tt.o, got, tt.want)
		}
	}
}

func TestPreviousAndErrors(t *testing.T) {
	d, _ := openDir(t, 0)
	var b bytes.Buffer
	if err := d.Read(context.Background(), &b, Options{Tail: -1}); !errors.Is(err, ErrNoRun) {
		t.Errorf("Read with no run: %v, want ErrNoRun", err)
	}
	if err := d.Read(context.Background(), &b, Options{Tail: -1, Previous: true}); !errors.Is(err, ErrNoRun) {
		t.Errorf("Read previous with no run: %v, want ErrNoRun", err)
	}
	r0 := newRun(t, d, 0)
	write(t, r0, "stdout", "run 0\n")
	if err := d.Read(context.Background(), &b, Options{Tail: -1, Previous: true}); !errors.Is(err, ErrNoPrevious) {
		t.Errorf("Read previous of run 0: %v, want ErrNoPrevious", err)
	}
	closeRun(t, r0)
	r1 := newRun(t, d, 1)
	write(t, r1, "stdout", "run 1\n")

	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"current", Options{Tail: -1}, "run 1\n"},
		{"previous", Options{Tail: -1, Previous: true}, "run 0\n"},
		{"previous follow returns", Options{Tail: -1, Previous: true, Follow: true}, "run 0\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readAll(t, d, tt.o); got != tt.want {
				t.Errorf("Read = %q, want %q", got, tt.want)
			}
		})
	}

	// Run 3 after run 1: run 2 never started, so there is no previous.
	closeRun(t, r1)
	newRun(t, d, 3)
	if err := d.Read(context.Background(), &b, Options{Tail: -1, Previous: true}); !errors.Is(err, ErrNoPrevious) {
		t.Errorf("Read previous of run 3 after 1: %v, want ErrNoPrevious", err)
	}
	if _, err := d.NewRun(3); err == nil {
		t.Error("NewRun(3) twice succeeded")
	}
	if _, err := d.NewRun(2); err == nil {
		t.Error("NewRun(2) after 3 succeeded")
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestNewRunDeletesOldRuns(t *testing.T) {
	d, _ := openDir(t, 60)
	for n := range 4 {
		r := newRun(t, d, n)
		for i := range 3 { // rotates: each run has two files
			write(t, r, "stdout", fmt.Sprintf("run %d line %d\n", n, i))
		}
		closeRun(t, r)
		want := []string{strconv.Itoa(n) + ".log", strconv.Itoa(n) + ".log.1"}
		if n > 0 {
			want = append([]string{strconv.Itoa(n-1) + ".log", strconv.Itoa(n-1) + ".log.1"}, want...)
		}
		if got := listDir(t, d.path); !slices.Equal(got, want) {
			t.Errorf("after run %d: files %q, want %q", n, got, want)
		}
	}
	if got, want := d.Size(), sizeOfFiles(t, d.path); got != want || got == 0 {
		t.Errorf("Size = %d, want %d", got, want)
	}

	// A re-opened directory knows runs 2 and 3, and the next run deletes 2.
	d2, err := Open(d.path, 60)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := readAll(t, d2, Options{Tail: -1}), "run 3 line 1\nrun 3 line 2\n"; got != want {
		t.Errorf("re-opened Read = %q, want %q", got, want)
	}
	if got, want := readAll(t, d2, Options{Tail: -1, Previous: true, Follow: true}), "run 2 line 1\nrun 2 line 2\n"; got != want {
		t.Errorf("re-opened Read previous = %q, want %q", got, want)
	}
	if _, err := d2.NewRun(3); err == nil {
		t.Error("NewRun(3) on re-opened directory succeeded")
	}
	r := newRun(t, d2, 4)
	closeRun(t, r)
	if got, want := listDir(t, d.path), []string{"3.log", "3.log.1", "4.log"}; !slices.Equal(got, want) {
		t.Errorf("after run 4: files %q, want %q", got, want)
	}
}

func sizeOfFiles(t *testing.T, dir string) int64 {
	var n int64
	for _, name := range listDir(t, dir) {
		info, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		n += info.Size()
	}
	return n
}

func TestRotation(t *testing.T) {
	// Each record is 31 bytes of header and newline plus "line-NN": 38 bytes,
	// so a file of at most 100 bytes holds two.
	line := func(i int) string { return fmt.Sprintf("line-%02d\n", i) }
	lines := func(from, to int) string {
		var b strings.Builder
		for i := from; i < to; i++ {
			b.WriteString(line(i))
		}
		return b.String()
	}
	tests := []struct {
		name  string
		lines int
		want  string
	}{
		{"no rotation", 2, lines(0, 2)},
		{"one rotation", 3, lines(0, 3)},
		{"two full files", 4, lines(0, 4)},
		{"many rotations", 13, lines(10, 13)},
		{"many rotations, full files", 14, lines(10, 14)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := openDir(t, 100)
			r := newRun(t, d, 0)
			for i := range tt.lines {
				write(t, r, "stdout", line(i))
			}
			if got := readAll(t, d, Options{Tail: -1}); got != tt.want {
				t.Errorf("Read = %q, want %q", got, tt.want)
			}
			want := []string{"0.log", "0.log.1"}
			if tt.lines <= 2 {
				want = want[:1]
			}
			if got := listDir(t, d.path); !slices.Equal(got, want) {
				t.Errorf("files %q, want %q", got, want)
			}
			for _, name := range want {
				if info, err := os.Stat(filepath.Join(d.path, name)); err != nil || info.Size() > 100 {
					t.Errorf("%s: %v, %v", name, info.Size(), err)
				}
			}
			closeRun(t, r)
		})
	}
}

// chanWriter sends what is written to it on a channel.
type chanWriter chan string

func (w chanWriter) Write(p []byte) (int, error) {
	w <- string(p)
	return len(p), nil
}

// await reads ch until what it got adds up to want.
func await(t *testing.T, ch <-chan string, got *string, want string) {
	t.Helper()
	timeout := time.After(deadline)
	for *got != want {
		if !strings.HasPrefix(want, *got) {
			t.Fatalf("output %q, want %q", *got, want)
		}
		select {
		case s := <-ch:
			*got += s
		case <-timeout:
			t.Fatalf("output %q, want %q", *got, want)
		}
	}
}

func awaitErr(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(deadline):
		t.Fatal("Read did not return")
		return nil
	}
}

func TestFollow(t *testing.T) {
	tests := []struct {
		name    string
		o       Options
		written string // before Read starts
		first   string // the output of what was written before
		end     func(t *testing.T, d *Dir, r *Run, cancel func())
		wantErr error
	}{
		{
			name: "close", o: Options{Tail: -1}, written: "a\n", first: "a\n",
			end: func(t *testing.T, _ *Dir, r *Run, _ func()) { closeRun(t, r) },
		},
		{
			name: "cancel", o: Options{Tail: -1}, written: "a\n", first: "a\n",
			end:     func(_ *testing.T, _ *Dir, _ *Run, cancel func()) { cancel() },
			wantErr: context.Canceled,
		},
		{
			name: "new run", o: Options{Tail: -1}, written: "a\n", first: "a\n",
			end: func(t *testing.T, d *Dir, _ *Run, _ func()) { newRun(t, d, 1) },
		},
		{
			name: "tail 0 and timestamps", o: Options{Tail: 0, Timestamps: true}, written: "a\nb\n",
			end: func(t *testing.T, _ *Dir, r *Run, _ func()) { closeRun(t, r) },
		},
		{
			name: "empty run", o: Options{Tail: -1},
			end: func(t *testing.T, _ *Dir, r *Run, _ func()) { closeRun(t, r) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := openDir(t, 0)
			r := newRun(t, d, 0)
			write(t, r, "stdout", tt.written)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			out := make(chanWriter)
			errc := make(chan error, 1)
			o := tt.o
			o.Follow = true
			started := make(chan struct{})
			d.started = func() { close(started) }
			go func() { errc <- d.Read(ctx, out, o) }()
			<-started

			var got string
			await(t, out, &got, tt.first)
			prefix := ""
			if tt.o.Timestamps {
				prefix = base.Format(time.RFC3339Nano) + " "
			}
			write(t, r, "stdout", "c")
			write(t, r, "stderr", "d\n")
			write(t, r, "stdout", "e\n")
			await(t, out, &got, tt.first+prefix+"d\n"+prefix+"ce\n")
			write(t, r, "stdout", strings.Repeat("x", MaxLine)+"yz\n")
			await(t, out, &got, tt.first+prefix+"d\n"+prefix+"ce\n"+prefix+strings.Repeat("x", MaxLine)+"yz\n")

			tt.end(t, d, r, cancel)
			if err := awaitErr(t, errc); !errors.Is(err, tt.wantErr) {
				t.Errorf("Read = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestFollowLimitBytes(t *testing.T) {
	d, _ := openDir(t, 0)
	r := newRun(t, d, 0)
	write(t, r, "stdout", "abc\n")
	out := make(chanWriter, 10)
	errc := make(chan error, 1)
	go func() { errc <- d.Read(context.Background(), out, Options{Tail: -1, Follow: true, LimitBytes: 6}) }()
	var got string
	await(t, out, &got, "abc\n")
	write(t, r, "stdout", "defg\n")
	await(t, out, &got, "abc\nde")
	if err := awaitErr(t, errc); err != nil {
		t.Errorf("Read = %v", err)
	}
}

// gateWriter blocks the first Write until released.
type gateWriter struct {
	first   chan string
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	rest    bytes.Buffer
}

func (w *gateWriter) Write(p []byte) (int, error) {
	first := false
	w.once.Do(func() { first = true })
	if first {
		w.first <- string(p)
		<-w.release
		return len(p), nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rest.Write(p)
}

func TestFollowRotation(t *testing.T) {
	line := func(i int) string { return fmt.Sprintf("line-%02d\n", i) }
	// With 100 bytes a file, records of 38 bytes: two a file.
	tests := []struct {
		name      string
		o         Options
		lines     int // written while the follower is stopped in its first Write
		rotations int
	}{
		{"one rotation", Options{Tail: -1}, 3, 1},
		{"two rotations", Options{Tail: -1}, 5, 2},
		{"two rotations after tail", Options{Tail: 1}, 5, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := openDir(t, 100)
			r := newRun(t, d, 0)
			write(t, r, "stdout", line(0))
			w := &gateWriter{first: make(chan string), release: make(chan struct{})}
			errc := make(chan error, 1)
			o := tt.o
			o.Follow = true
			go func() { errc <- d.Read(context.Background(), w, o) }()
			select {
			case s := <-w.first:
				if s != line(0) {
					t.Fatalf("first Write %q", s)
				}
			case <-time.After(deadline):
				t.Fatal("no first Write")
			}
			want := ""
			for i := 1; i <= tt.lines; i++ {
				write(t, r, "stdout", line(i))
				want += line(i)
			}
			r.mu.Lock()
			gen := r.gen
			r.mu.Unlock()
			if gen != tt.rotations {
				t.Fatalf("%d rotations, want %d", gen, tt.rotations)
			}
			close(w.release)
			closeRun(t, r)
			if err := awaitErr(t, errc); err != nil {
				t.Fatal(err)
			}
			if got := w.rest.String(); got != want {
				t.Errorf("followed %q, want %q", got, want)
			}
		})
	}
}

// TestConcurrent writes both streams while a follower reads, rotating often.
func TestConcurrent(t *testing.T) {
	d, err := Open(t.TempDir(), 512)
	if err != nil {
		t.Fatal(err)
	}
	r := newRun(t, d, 0)
	var followed bytes.Buffer
	errc := make(chan error, 1)
	go func() { errc <- d.Read(context.Background(), &followed, Options{Tail: -1, Follow: true}) }()
	const lines = 2000
	var wg sync.WaitGroup
	for _, stream := range []string{"stdout", "stderr"} {
		wg.Go(func() {
			w := r.Stream(stream)
			for i := range lines {
				// Lines in pieces, to exercise held partial lines.
				s := fmt.Sprintf("%s %d\n", stream, i)
				if _, err := io.WriteString(w, s[:3]); err != nil {
					t.Error(err)
					return
				}
				if _, err := io.WriteString(w, s[3:]); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	closeRun(t, r)
	if err := awaitErr(t, errc); err != nil {
		t.Fatal(err)
	}
	last := map[string]int{"stdout": -1, "stderr": -1}
	for l := range strings.Lines(followed.String()) {
		var stream string
		var i int
		if _, err := fmt.Sscanf(l, "%s %d\n", &stream, &i); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if i <= last[stream] {
			t.Fatalf("%s %d after %d", stream, i, last[stream])
		}
		last[stream] = i
	}
	if final := readAll(t, d, Options{Tail: -1}); final == "" || !strings.HasSuffix(followed.String(), final) {
		t.Errorf("followed output does not end with the log %q", final)
	}
	if got := len(listDir(t, d.path)); got != 2 {
		t.Errorf("%d files, want 2", got)
	}
}

func TestSubscribe(t *testing.T) {
	d, c := openDir(t, 0)
	r := newRun(t, d, 0)
	write(t, r, "stdout", "before\n")
	ch, cancel := r.Subscribe()
	defer cancel()
	write(t, r, "stdout", "a\nb")
	c.set(base.Add(time.Second))
	write(t, r, "stderr", strings.Repeat("x", MaxLine+1)+"\n")
	closeRun(t, r)
	want := []Record{
		{base, "stdout", false, []byte("a")},
		{base.Add(time.Second), "stderr", true, []byte(strings.Repeat("x", MaxLine))},
		{base.Add(time.Second), "stderr", false, []byte("x")},
		{base.Add(time.Second), "stdout", true, []byte("b")}, // flushed by Close, unterminated
	}
	var got []Record
	for rec := range ch { // closed by Close
		got = append(got, rec)
	}
	if !slices.EqualFunc(got, want, func(a, b Record) bool {
		return a.Time.Equal(b.Time) && a.Stream == b.Stream && a.Partial == b.Partial && bytes.Equal(a.Content, b.Content)
	}) {
		t.Errorf("records %s, want %s", formatRecords(got), formatRecords(want))
	}

	ch, _ = r.Subscribe()
	if _, ok := <-ch; ok {
		t.Error("Subscribe after Close: channel open")
	}
}

func TestSubscribeSlowAndCancel(t *testing.T) {
	d, _ := openDir(t, 0)
	r := newRun(t, d, 0)
	slow, cancelSlow := r.Subscribe()
	other, cancelOther := r.Subscribe()
	cancelOther()
	cancelOther() // twice is fine
	if _, ok := <-other; ok {
		t.Error("cancelled subscription: channel open")
	}

	// The slow subscriber reads nothing: the writer must not block.
	done := make(chan struct{})
	const lines = 10 * subscriberBuffer
	go func() {
		defer close(done)
		for i := range lines {
			if _, err := fmt.Fprintf(r.Stream("stdout"), "%d\n", i); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(deadline):
		t.Fatal("a slow subscriber blocked the writer")
	}
	if got := len(fileRecords(t, r.path)); got != lines {
		t.Errorf("%d records in the file, want %d", got, lines)
	}
	cancelSlow()
	n := 0
	for rec := range slow {
		if want := strconv.Itoa(n); string(rec.Content) != want {
			t.Errorf("record %d: %q, want %q", n, rec.Content, want)
		}
		n++
	}
	if n != subscriberBuffer {
		t.Errorf("slow subscriber got %d records, want %d", n, subscriberBuffer)
	}
	closeRun(t, r)
}

func formatRecords(recs []Record) string {
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "{%s %s %v %.20q (%d bytes)} ", r.Time.Format(time.RFC3339Nano), r.Stream, r.Partial, r.Content, len(r.Content))
	}
	return b.String()
}
