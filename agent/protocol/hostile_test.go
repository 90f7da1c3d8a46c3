package protocol

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/goleak"
)

// These tests run the host's side against a hostile agent: one that answers too much, never ends a line, opens
// streams of its own, floods pings, stalls the handshake or never answers. Each checks what it costs the host
// (memory, goroutines) and that closing the client leaves nothing behind.

// noLeaks fails t if goroutines that were not running when it was called still run once t and its cleanups are
// over (goleak retries a while: yamux's goroutines end shortly after their session).
func noLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// cost is what a scenario cost the host: bytes allocated, bytes still held once it is over (with the session
// still open), goroutines left running, and the host call's error.
type cost struct {
	alloc      uint64
	held       int64
	goroutines int
	err        error
}

func (c cost) String() string {
	return fmt.Sprintf("%6.1f MiB allocated, %6.1f MiB held, %6d goroutines; %v",
		float64(c.alloc)/(1<<20), float64(c.held)/(1<<20), c.goroutines, c.err)
}

// measure runs f and returns what it cost; f returns the host call's error and a function that ends the scenario
// (closes the session), called after the figures are taken.
func measure(f func() (error, func())) cost {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	g := runtime.NumGoroutine()
	err, end := f()
	runtime.ReadMemStats(&after)
	c := cost{alloc: after.TotalAlloc - before.TotalAlloc, err: err}
	runtime.GC()
	runtime.ReadMemStats(&after)
	c.held, c.goroutines = int64(after.HeapAlloc)-int64(before.HeapAlloc), runtime.NumGoroutine()-g
	end()
	return c
}

// host is the host's side under test: the Client, or legacyHost, the code before the bounds.
type host interface {
	status(ctx context.Context) error
	watch(ctx context.Context) error
	stats(ctx context.Context) error
	close()
}

type boundedHost struct{ *Client }

func (h boundedHost) status(ctx context.Context) error { _, err := h.Status(ctx); return err }
func (h boundedHost) watch(ctx context.Context) error {
	return h.Watch(ctx, func(PodStatus) {})
}
func (h boundedHost) stats(ctx context.Context) error { _, err := h.Stats(ctx); return err }
func (h boundedHost) close()                          { h.Close() }

// legacyDial is the host's handshake and session as they were before the bounds: no go-away, no ping limit, the
// default backlog.
func legacyDial(conn net.Conn) (*yamux.Session, error) {
	conn.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	if _, err := fmt.Fprintf(conn, "%s%d legacy\n", helloMagic, Version); err != nil {
		return nil, err
	}
	if _, err := readLine(conn, okMagic, errMagic); err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{}) //nolint:errcheck
	return yamux.Client(conn, yamuxConfig())
}

// legacyHost decodes answers as the Client did before the bounds: whole, with no limit.
type legacyHost struct {
	sess *yamux.Session
	http *http.Client
}

func newLegacyHost(t *testing.T, conn net.Conn) legacyHost {
	s, err := legacyDial(conn)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{DisableKeepAlives: true,
		DialContext: func(context.Context, string, string) (net.Conn, error) { return s.Open() }}
	return legacyHost{s, &http.Client{Transport: tr}}
}

func (h legacyHost) get(ctx context.Context, pathQuery string) (*json.Decoder, func(), error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+pathQuery, nil)
	resp, err := h.http.Do(req)
	if err != nil {
		return nil, nil, err
	}
	return json.NewDecoder(resp.Body), func() { resp.Body.Close() }, nil
}

func (h legacyHost) status(ctx context.Context) error {
	dec, done, err := h.get(ctx, "/v1/status")
	if err != nil {
		return err
	}
	defer done()
	var st PodStatus
	return dec.Decode(&st)
}

func (h legacyHost) stats(ctx context.Context) error {
	dec, done, err := h.get(ctx, "/v1/stats")
	if err != nil {
		return err
	}
	defer done()
	var st Stats
	return dec.Decode(&st)
}

func (h legacyHost) watch(ctx context.Context) error {
	dec, done, err := h.get(ctx, "/v1/status?watch=1")
	if err != nil {
		return err
	}
	defer done()
	for {
		var st PodStatus
		if err := dec.Decode(&st); err != nil {
			return err
		}
	}
}

func (h legacyHost) close() { h.sess.Close() }

// agentAnswering serves h as an agent on a new pipe and returns the host's end; the agent stops when the test ends.
func agentAnswering(t *testing.T, h http.Handler) net.Conn {
	hostEnd, guest := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sess, err := Accept(guest)
		if err != nil {
			return
		}
		http.Serve(sess, h) //nolint:errcheck
	}()
	t.Cleanup(func() { guest.Close(); hostEnd.Close(); <-done })
	return hostEnd
}

func dialHost(t *testing.T, conn net.Conn, bounded bool) host {
	if !bounded {
		return newLegacyHost(t, conn)
	}
	c, err := NewClient(conn, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return boundedHost{c}
}

// writeRepeated writes n bytes of c to w, in chunks.
func writeRepeated(w io.Writer, c byte, n int) {
	chunk := []byte(strings.Repeat(string(c), 32<<10))
	for n > 0 {
		k := min(n, len(chunk))
		if _, err := w.Write(chunk[:k]); err != nil {
			return
		}
		n -= k
	}
}

const giant = 48 << 20 // what a flooding agent sends: far over MaxResponseBytes

// giantStatus answers a status whose one container's message is giant bytes long.
func giantStatus(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, `{"seq":1,"containers":[{"name":"`) //nolint:errcheck
	writeRepeated(w, 'x', giant)
	io.WriteString(w, `"}]}`+"\n") //nolint:errcheck
}

// tinyContainers answers a status of 1 MiB of empty containers: each costs the host a ContainerStatus.
func tinyContainers(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, `{"seq":1,"containers":[{}`) //nolint:errcheck
	chunk := []byte(strings.Repeat(",{}", 10<<10))
	for range (1 << 20) / len(chunk) {
		if _, err := w.Write(chunk); err != nil {
			return
		}
	}
	io.WriteString(w, "]}\n") //nolint:errcheck
}

// tinyInterfaces answers stats of 1 MiB of empty network interfaces: each costs the host an InterfaceStats.
func tinyInterfaces(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, `{"network":[{}`) //nolint:errcheck
	chunk := []byte(strings.Repeat(",{}", 10<<10))
	for range (1 << 20) / len(chunk) {
		if _, err := w.Write(chunk); err != nil {
			return
		}
	}
	io.WriteString(w, "]}\n") //nolint:errcheck
}

// endlessLine answers a watch with a first status, then a line that never ends.
func endlessLine(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, `{"seq":1}`+"\n") //nolint:errcheck
	w.(http.Flusher).Flush()
	io.WriteString(w, `{"seq":2,"containers":[{"name":"`) //nolint:errcheck
	writeRepeated(w, 'x', giant)
}

// overLimitScenarios are the answers over the bounds, each with the host call it is the answer to.
var overLimitScenarios = []struct {
	name    string
	handler http.HandlerFunc
	call    func(host, context.Context) error
}{
	{"giant status", giantStatus, host.status},
	{"a million tiny containers", tinyContainers, host.status},
	{"endless watch line", endlessLine, host.watch},
	// The status handlers' answers are stats too (their "seq" is ignored).
	{"giant stats", giantStatus, host.stats},
	{"a million tiny container stats", tinyContainers, host.stats},
	{"a million tiny interfaces", tinyInterfaces, host.stats},
}

func runOverLimit(t *testing.T, i int, bounded bool) cost {
	sc := overLimitScenarios[i]
	conn := agentAnswering(t, sc.handler)
	h := dialHost(t, conn, bounded)
	return measure(func() (error, func()) { return sc.call(h, context.Background()), h.close })
}

func TestAnswersOverTheLimitsFailAndCostLittle(t *testing.T) {
	noLeaks(t)
	for i, sc := range overLimitScenarios {
		t.Run(sc.name, func(t *testing.T) {
			c := runOverLimit(t, i, true)
			t.Logf("host cost: %s", c)
			if !errors.Is(c.err, ErrOverLimit) {
				t.Errorf("error = %v; want ErrOverLimit", c.err)
			}
			if c.alloc > 8*MaxResponseBytes {
				t.Errorf("the host allocated %d bytes; want at most %d", c.alloc, 8*MaxResponseBytes)
			}
		})
	}
}

func TestOverLimitEndsTheSession(t *testing.T) {
	noLeaks(t)
	c, err := NewClient(agentAnswering(t, http.HandlerFunc(giantStatus)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Status(context.Background()); !errors.Is(err, ErrOverLimit) {
		t.Fatalf("status = %v; want ErrOverLimit", err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the session outlived the violation")
	}
}

func TestAnswersWithinTheLimitsDecode(t *testing.T) {
	noLeaks(t)
	full := PodStatus{Seq: 3, Configured: true, Containers: make([]ContainerStatus, MaxContainers)}
	stats := Stats{Network: make([]InterfaceStats, maxInterfaces), Containers: make([]ContainerStats, MaxContainers)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		enc := json.NewEncoder(w)
		enc.Encode(full) //nolint:errcheck
		if r.URL.Query().Get("watch") == "1" {
			enc.Encode(PodStatus{Seq: 4}) //nolint:errcheck
		}
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(stats) //nolint:errcheck
	})
	c, err := NewClient(agentAnswering(t, mux), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st, err := c.Status(context.Background()); err != nil || st.Seq != 3 || len(st.Containers) != MaxContainers {
		t.Errorf("status = seq %d, %d containers, %v", st.Seq, len(st.Containers), err)
	}
	if st, err := c.Stats(context.Background()); err != nil || len(st.Network) != maxInterfaces || len(st.Containers) != MaxContainers {
		t.Errorf("stats = %d interfaces, %d containers, %v", len(st.Network), len(st.Containers), err)
	}
	var seqs []uint64
	err = c.Watch(context.Background(), func(st PodStatus) { seqs = append(seqs, st.Seq) })
	if !errors.Is(err, io.EOF) || len(seqs) != 2 || seqs[1] != 4 {
		t.Errorf("watch = %v, %v; want seqs 3 and 4, then EOF", seqs, err)
	}
}

// rawAgent handshakes on a new pipe and then speaks raw yamux frames: it can do what no yamux session would.
// frames receives every frame header the host sends.
type rawAgent struct {
	net.Conn
	hostEnd net.Conn
	frames  chan [yamuxHeaderSize]byte
}

func newRawAgent(t *testing.T, readHost bool) *rawAgent {
	hostEnd, guest := net.Pipe()
	a := &rawAgent{Conn: guest, hostEnd: hostEnd, frames: make(chan [yamuxHeaderSize]byte, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		line, err := readLine(guest, helloMagic)
		if err != nil {
			return
		}
		f := strings.Fields(strings.TrimPrefix(line, helloMagic))
		fmt.Fprintf(guest, "%s%d %s\n", okMagic, Version, f[1]) //nolint:errcheck
		for n := 0; readHost || n < 1; n++ {                    // without readHost, only the go-away
			var h [yamuxHeaderSize]byte
			if _, err := io.ReadFull(guest, h[:]); err != nil {
				return
			}
			if h[1] == yamuxTypeData {
				io.CopyN(io.Discard, guest, int64(binary.BigEndian.Uint32(h[8:]))) //nolint:errcheck
			}
			select {
			case a.frames <- h:
			default:
			}
		}
	}()
	t.Cleanup(func() { guest.Close(); hostEnd.Close(); <-done })
	return a
}

func frame(typ byte, flags uint16, id, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

const (
	guestStreams    = 300
	guestStreamData = 64 << 10
	flagRST         = 8
)

// openGuestStreams opens guestStreams streams from the agent's side, each with guestStreamData bytes, and
// returns how many of them the host reset.
func openGuestStreams(a *rawAgent) (resets int, err error) {
	data := make([]byte, guestStreamData)
	for i := range guestStreams {
		id := uint32(2 + 2*i) // the server's stream IDs are even
		if _, err := a.Write(frame(1, yamuxFlagSYN, id, 0)); err != nil {
			return 0, err
		}
		if _, err := a.Write(append(frame(yamuxTypeData, 0, id, guestStreamData), data...)); err != nil {
			return 0, err
		}
	}
	// The host answers in order: a ping's answer comes after every reset it sent.
	if _, err := a.Write(frame(yamuxTypePing, yamuxFlagSYN, 0, 77)); err != nil {
		return 0, err
	}
	for h := range a.frames {
		switch {
		case h[1] == yamuxTypePing && binary.BigEndian.Uint32(h[8:]) == 77:
			return resets, nil
		case binary.BigEndian.Uint16(h[2:])&flagRST != 0 && binary.BigEndian.Uint32(h[4:])%2 == 0:
			resets++
		}
	}
	return resets, errors.New("the host closed")
}

func dialRaw(t *testing.T, a *rawAgent, bounded bool) *yamux.Session {
	var s *yamux.Session
	var err error
	if bounded {
		s, err = Dial(a.hostEnd, 5*time.Second)
	} else {
		s, err = legacyDial(a.hostEnd)
	}
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func runGuestStreams(t *testing.T, bounded bool) (cost, int) {
	a := newRawAgent(t, true)
	s := dialRaw(t, a, bounded)
	var resets int
	c := measure(func() (error, func()) {
		var err error
		resets, err = openGuestStreams(a)
		return err, func() { s.Close() }
	})
	return c, resets
}

func TestGuestOpenedStreamsAreResetAndCostNothing(t *testing.T) {
	noLeaks(t)
	c, resets := runGuestStreams(t, true)
	t.Logf("host cost: %s; %d of %d streams reset", c, resets, guestStreams)
	if c.err != nil || resets != guestStreams {
		t.Errorf("the host reset %d of the agent's %d streams (%v); want all", resets, guestStreams, c.err)
	}
	if c.held > 2<<20 {
		t.Errorf("the host holds %d bytes for the agent's streams; want at most 2 MiB", c.held)
	}
}

const pingFlood = 20000

// runPingFlood sends pingFlood ping requests and reads nothing after the go-away: each answer the host tries to
// send waits.
func runPingFlood(t *testing.T, bounded bool) cost {
	a := newRawAgent(t, false)
	s := dialRaw(t, a, bounded)
	if bounded { // the go-away went out during the dial; the legacy host sends none
		<-a.frames
	}
	ping := frame(yamuxTypePing, yamuxFlagSYN, 0, 1)
	flood := make([]byte, 0, len(ping)*1000)
	for range 1000 {
		flood = append(flood, ping...)
	}
	return measure(func() (error, func()) {
		for range pingFlood / 1000 {
			if _, err := a.Write(flood); err != nil {
				return err, func() { s.Close() }
			}
		}
		// The host has read every ping; a ping the host handles is in its goroutine count.
		return nil, func() { s.Close() }
	})
}

func TestPingFloodCostsBoundedGoroutines(t *testing.T) {
	noLeaks(t)
	c := runPingFlood(t, true)
	t.Logf("host cost: %s", c)
	if c.err != nil || c.goroutines > 4*maxPingsPerSecond+16 {
		t.Errorf("a flood of %d pings left %d goroutines (%v); want at most %d", pingFlood, c.goroutines, c.err, 4*maxPingsPerSecond+16)
	}
}

func TestHandshakeThatNeverCompletesIsBounded(t *testing.T) {
	noLeaks(t)
	for _, tc := range []struct {
		name  string
		agent func(net.Conn)
	}{
		{"silent", func(c net.Conn) { io.Copy(io.Discard, c) }}, //nolint:errcheck
		{"garbage", func(c net.Conn) { writeRepeated(c, 'g', 1<<30) }},
		{"prefixes without a newline", func(c net.Conn) {
			for {
				if _, err := io.WriteString(c, strings.Repeat(okMagic, 100)); err != nil {
					return
				}
			}
		}},
		{"answers to other hellos", func(c net.Conn) {
			go io.Copy(io.Discard, c) //nolint:errcheck
			for {
				if _, err := fmt.Fprintf(c, "%s%d someone-else\n", okMagic, Version); err != nil {
					return
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostEnd, guest := net.Pipe()
			done := make(chan struct{})
			go func() {
				defer close(done)
				if tc.name != "silent" {
					br := bufio.NewReader(guest)
					br.ReadString('\n') //nolint:errcheck // the hello
				}
				tc.agent(guest)
			}()
			var c *Client
			start := time.Now()
			cost := measure(func() (error, func()) {
				var err error
				c, err = NewClient(hostEnd, 300*time.Millisecond)
				return err, func() {}
			})
			guest.Close()
			<-done
			t.Logf("host cost: %s after %s", cost, time.Since(start))
			if cost.err == nil {
				c.Close()
				t.Fatal("the handshake succeeded")
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("the handshake failed after %s; want about its timeout", time.Since(start))
			}
			if cost.alloc > 1<<20 {
				t.Errorf("the handshake allocated %d bytes; want at most 1 MiB", cost.alloc)
			}
		})
	}
}

func TestAgentThatNeverAnswersCostsNothingOnceClosed(t *testing.T) {
	noLeaks(t)
	release := make(chan struct{})
	reached := make(chan struct{}, 3)
	conn := agentAnswering(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer close(release)
	c, err := NewClient(conn, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := c.Status(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("status past its deadline = %v", err)
	}
	errc := make(chan error, 2)
	go func() { _, err := c.Status(context.Background()); errc <- err }()
	go func() { errc <- c.Watch(context.Background(), func(PodStatus) {}) }()
	for range 3 { // the timed-out status, then both calls, reached the agent
		select {
		case <-reached:
		case <-time.After(10 * time.Second):
			t.Fatal("the calls never reached the agent")
		}
	}
	c.Close()
	for range 2 {
		if err := <-errc; err == nil {
			t.Error("a call to an agent that never answers returned no error once the client closed")
		}
	}
}

// TestHostileAgentMemory prints what each hostile agent costs the host with the bounds and without them (the
// code before: whole answers decoded unbounded, a session that queues the agent's streams and answers every
// ping). Run it with -v to see the figures.
func TestHostileAgentMemory(t *testing.T) {
	if testing.Short() || !testing.Verbose() {
		t.Skip("prints figures (with -v) and sends hundreds of MiB")
	}
	for _, bounded := range []bool{true, false} {
		label := map[bool]string{true: "bounded", false: "unbounded"}[bounded]
		for i, sc := range overLimitScenarios {
			t.Logf("%-9s %-32s %s", label, sc.name+":", runOverLimit(t, i, bounded))
		}
		c, resets := runGuestStreams(t, bounded)
		t.Logf("%-9s %-32s %s (%d of %d reset)", label, fmt.Sprintf("%d guest streams:", guestStreams), c, resets, guestStreams)
		t.Logf("%-9s %-32s %s", label, fmt.Sprintf("%d pings:", pingFlood), runPingFlood(t, bounded))
	}
}

// TestHandshakeLineBuffersLittle: a peer that sends handshake prefixes and never a newline makes readLine hold at
// most a handshake line, whatever it sends before the deadline (the deadline alone would let the buffer grow for
// as long as it runs).
func TestHandshakeLineBuffersLittle(t *testing.T) {
	flood := strings.Repeat(okMagic, (1<<20)/len(okMagic)) // 1 MiB, no newline
	c := measure(func() (error, func()) {
		_, err := readLine(strings.NewReader(flood), okMagic)
		return err, func() {}
	})
	t.Logf("reading %d bytes of prefixes: %s", len(flood), c)
	if !errors.Is(c.err, io.EOF) {
		t.Errorf("readLine = %v, want EOF", c.err)
	}
	if c.alloc > 64<<10 {
		t.Errorf("readLine allocated %d bytes for a line it never finished; want at most 64 KiB", c.alloc)
	}
}
