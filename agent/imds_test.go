package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/i2kit/i2kit/agent/boot"
)

// fakeIMDS is an IMDSv2 service: a PUT /latest/api/token with a TTL header issues a token, every GET must carry a
// token it issued (401 otherwise). Knobs make it fail.
type fakeIMDS struct {
	mu       sync.Mutex
	tokens   map[string]bool
	issued   int
	userData []byte
	chunked  bool // send user-data without a Content-Length
	// failFirst answers the first failFirst requests with failWith (a status, or 0: the connection is cut).
	failFirst, failWith int
	hangUserData        bool // user-data answers stop halfway (until the client gives up)
	expireTokens        int  // the first expireTokens GETs answer 401 although their token is valid
	requests            map[string]int
	noTokenGets         int // GETs that came without a valid token
}

func newFakeIMDS(userData string) *fakeIMDS {
	return &fakeIMDS{tokens: map[string]bool{}, userData: []byte(userData), requests: map[string]int{}}
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests[r.Method+" "+r.URL.Path]++
	if f.failFirst > 0 {
		f.failFirst--
		f.mu.Unlock()
		if f.failWith == 0 {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		w.WriteHeader(f.failWith)
		return
	}
	if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
		defer f.mu.Unlock()
		if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			http.Error(w, "missing TTL", http.StatusBadRequest)
			return
		}
		f.issued++
		tok := fmt.Sprintf("token-%d", f.issued)
		f.tokens[tok] = true
		io.WriteString(w, tok) //nolint:errcheck
		return
	}
	if r.Method != http.MethodGet {
		f.mu.Unlock()
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	if !f.tokens[r.Header.Get("X-aws-ec2-metadata-token")] {
		f.noTokenGets++
		f.mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if f.expireTokens > 0 {
		f.expireTokens--
		delete(f.tokens, r.Header.Get("X-aws-ec2-metadata-token"))
		f.mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	ud, chunked, hang := f.userData, f.chunked, f.hangUserData
	f.mu.Unlock()
	switch r.URL.Path {
	case "/latest/user-data":
		if hang {
			w.Header().Set("Content-Length", fmt.Sprint(len(ud)))
			w.Write(ud[:len(ud)/2]) //nolint:errcheck
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		if ud == nil {
			http.NotFound(w, r)
			return
		}
		if !chunked {
			w.Header().Set("Content-Length", fmt.Sprint(len(ud)))
		}
		for len(ud) > 0 { // in pieces, flushed: without a Content-Length the answer is chunked
			n := min(len(ud), 4096)
			if _, err := w.Write(ud[:n]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			ud = ud[n:]
		}
	case "/latest/meta-data/instance-id":
		io.WriteString(w, "i-0123456789abcdef0") //nolint:errcheck
	case "/latest/meta-data/local-ipv4":
		io.WriteString(w, "10.0.1.23") //nolint:errcheck
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeIMDS) count(req string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[req]
}

const testUserData = `{"version":1,"hostname":"web-1","agentPort":8443,"nodeCA":"-----BEGIN CERTIFICATE-----\n..."}`

// testIMDS is a client of srv with short waits.
func testIMDS(srv *httptest.Server) *imdsClient {
	m := newIMDS(srv.URL)
	m.backoff, m.maxBackoff = time.Millisecond, 2*time.Millisecond
	return m
}

func TestIMDSTokenFlow(t *testing.T) {
	f := newFakeIMDS(testUserData)
	srv := httptest.NewServer(f)
	defer srv.Close()
	md, err := testIMDS(srv).read(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := boot.UserData{Version: 1, Hostname: "web-1", AgentPort: 8443, NodeCA: "-----BEGIN CERTIFICATE-----\n..."}
	if md.UserData != want || md.InstanceID != "i-0123456789abcdef0" || !md.LocalIPv4.Equal(net.IPv4(10, 0, 1, 23)) {
		t.Errorf("read %+v", md)
	}
	if f.issued != 1 || f.noTokenGets != 0 {
		t.Errorf("%d tokens issued, %d GETs without a token; want 1 and 0", f.issued, f.noTokenGets)
	}
}

func TestIMDSRetries(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*fakeIMDS)
	}{
		{"503 answers", func(f *fakeIMDS) { f.failFirst, f.failWith = 3, http.StatusServiceUnavailable }},
		{"429 answers", func(f *fakeIMDS) { f.failFirst, f.failWith = 2, http.StatusTooManyRequests }},
		{"cut connections", func(f *fakeIMDS) { f.failFirst = 3 }},
		{"an expired token", func(f *fakeIMDS) { f.expireTokens = 2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeIMDS(testUserData)
			tc.set(f)
			srv := httptest.NewServer(f)
			defer srv.Close()
			md, err := testIMDS(srv).read(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if md.UserData.Hostname != "web-1" {
				t.Errorf("read %+v", md)
			}
		})
	}

	// A link that is not up yet: nothing listens at first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	m := newIMDS("http://" + addr)
	m.backoff, m.maxBackoff = time.Millisecond, time.Millisecond
	m.attempts = 3
	if _, err := m.read(context.Background()); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("read from a closed port: %v, want the last attempt's error", err)
	}
}

func TestIMDSPermanentFailures(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		set        func(*fakeIMDS)
	}{
		{"no user-data", "404", func(f *fakeIMDS) { f.userData = nil }},
		{"endpoint off", "403", func(f *fakeIMDS) { f.failFirst, f.failWith = 1, http.StatusForbidden }},
		{"bad user-data", "unknown field", func(f *fakeIMDS) { f.userData = []byte(`{"version":1,"secret":"x"}`) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeIMDS(testUserData)
			tc.set(f)
			srv := httptest.NewServer(f)
			defer srv.Close()
			_, err := testIMDS(srv).read(context.Background())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("read: %v, want an error with %q", err, tc.want)
			}
			if n := f.count("PUT /latest/api/token"); n != 1 {
				t.Errorf("%d attempts, want 1: the failure is not retried", n)
			}
		})
	}
}

// countingBody counts the bytes the client read of each answer.
type countingTransport struct {
	http.RoundTripper
	mu   sync.Mutex
	read int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.RoundTripper.RoundTrip(r)
	if err == nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, t: c}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	t *countingTransport
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.t.mu.Lock()
	b.t.read += int64(n)
	b.t.mu.Unlock()
	return n, err
}

// TestIMDSOversizedUserData: user-data over boot.MaxUserData is refused, at once, having read at most one byte
// more than the bound (with or without a Content-Length).
func TestIMDSOversizedUserData(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%t", chunked), func(t *testing.T) {
			f := newFakeIMDS(strings.Repeat(" ", 1<<20) + testUserData)
			f.chunked = chunked
			srv := httptest.NewServer(f)
			defer srv.Close()
			m := testIMDS(srv)
			ct := &countingTransport{RoundTripper: m.http.Transport}
			m.http.Transport = ct
			_, err := m.read(context.Background())
			if err == nil || !strings.Contains(err.Error(), "bytes") {
				t.Fatalf("read: %v, want user-data refused for its size", err)
			}
			if f.count("GET /latest/user-data") != 1 {
				t.Errorf("oversized user-data was asked for %d times, want once", f.count("GET /latest/user-data"))
			}
			// The token is a few bytes; the user-data at most the bound and one, nothing when its
			// Content-Length says it is too long.
			limit := int64(64)
			if chunked {
				limit += boot.MaxUserData + 1
			}
			if ct.read > limit {
				t.Errorf("the client read %d bytes, want at most %d", ct.read, limit)
			}
		})
	}
}

// TestIMDSTimeouts: an answer that stops midway costs one attempt's time-out, not the boot.
func TestIMDSTimeouts(t *testing.T) {
	f := newFakeIMDS(testUserData)
	f.hangUserData = true
	srv := httptest.NewServer(f)
	defer srv.Close()
	m := testIMDS(srv)
	m.attempts = 2
	m.attemptTimeout = 50 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := m.read(ctx)
	if err == nil {
		t.Fatal("read a service that never answers")
	}
	if ctx.Err() != nil {
		t.Fatalf("the read waited for the caller's deadline: %v", err)
	}
	if n := f.count("GET /latest/user-data"); n != 2 {
		t.Errorf("user-data asked for %d times, want 2 (each attempt timed out)", n)
	}
}

// TestIMDSRefusesRedirects: the answer must come from the metadata address itself.
func TestIMDSRefusesRedirects(t *testing.T) {
	var elsewhere int
	var mu sync.Mutex
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		elsewhere++
		mu.Unlock()
		io.WriteString(w, testUserData) //nolint:errcheck
	}))
	defer other.Close()
	f := newFakeIMDS(testUserData)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/latest/user-data" {
			http.Redirect(w, r, other.URL+"/user-data", http.StatusFound)
			return
		}
		f.ServeHTTP(w, r)
	}))
	defer srv.Close()
	_, err := testIMDS(srv).read(context.Background())
	if !errors.Is(err, errRedirect) {
		t.Errorf("read: %v, want the redirect refused", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if elsewhere != 0 {
		t.Errorf("the client followed the redirect %d times", elsewhere)
	}
}

// TestIMDSCancel: the caller's context ends the retries.
func TestIMDSCancel(t *testing.T) {
	f := newFakeIMDS(testUserData)
	f.failFirst, f.failWith = 1<<30, http.StatusServiceUnavailable
	srv := httptest.NewServer(f)
	defer srv.Close()
	m := testIMDS(srv)
	m.attempts = 1 << 30
	m.backoff, m.maxBackoff = time.Hour, time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := m.read(ctx); done <- err }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("read: %v, want context.Canceled", err)
	}
}
