package vmrunner

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/devcloud/ec2"
)

// imdsEnv is the metadata service behind a real listener on loopback; the caller (127.0.0.1) is the instance the
// test sets, and every IP TTL the service sets is recorded.
type imdsEnv struct {
	srv  *httptest.Server
	m    *imds
	mu   sync.Mutex
	view imdsView
	ok   bool
	now  time.Time
	ttls []int
}

func newIMDSEnv(t *testing.T, md ec2.MetadataOptions, connState ...func(net.Conn, http.ConnState)) *imdsEnv {
	t.Helper()
	e := &imdsEnv{ok: true, now: time.Unix(1_700_000_000, 0),
		view: imdsView{ID: "i-0123456789abcdef0", ImageID: "ami-1", InstanceType: "t3.micro", AvailabilityZone: "us-east-1a",
			PrivateIP: "10.0.1.7", MAC: "02:00:00:00:00:07", UserData: []byte(`{"version":1}`), Metadata: md,
			Tags: []ec2.Tag{{Key: "Name", Value: "web"}}}}
	e.m = &imds{key: []byte("test key"),
		now: func() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now },
		lookup: func(ip string) (imdsView, bool) {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.view, e.ok && ip == "127.0.0.1"
		},
		setTTL: func(r *http.Request, ttl int) error {
			e.mu.Lock()
			e.ttls = append(e.ttls, ttl)
			e.mu.Unlock()
			return setConnTTL(r, ttl)
		}}
	e.srv = httptest.NewUnstartedServer(e.m)
	e.srv.Config.ConnContext = withConn
	if len(connState) > 0 {
		e.srv.Config.ConnState = connState[0]
	}
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	return e
}

func (e *imdsEnv) do(t *testing.T, method, path string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (e *imdsEnv) token(t *testing.T, ttl string) string {
	t.Helper()
	code, tok := e.do(t, http.MethodPut, tokenPath, tokenTTLHeader, ttl)
	if code != http.StatusOK || tok == "" {
		t.Fatalf("PUT token: %d %q", code, tok)
	}
	return tok
}

var required = ec2.MetadataOptions{HttpEndpoint: "enabled", HttpTokens: "required", HttpPutResponseHopLimit: 1}

func TestIMDSv2Tokens(t *testing.T) {
	e := newIMDSEnv(t, required)
	tok := e.token(t, "300")
	for _, tc := range []struct {
		path, token string
		code        int
		body        string
	}{
		{"/latest/user-data", tok, 200, `{"version":1}`},
		{"/latest/meta-data/instance-id", tok, 200, "i-0123456789abcdef0"},
		{"/latest/meta-data/local-ipv4", tok, 200, "10.0.1.7"},
		{"/latest/meta-data/instance-type", tok, 200, "t3.micro"},
		{"/latest/meta-data/placement/availability-zone", tok, 200, "us-east-1a"},
		{"/latest/meta-data/placement/region", tok, 200, "us-east-1"},
		{"/latest/meta-data/tags/instance/Name", tok, 404, ""}, // tags in metadata are off
		{"/latest/meta-data/iam/security-credentials/", tok, 404, ""},
		{"/latest/meta-data/instance-id", "", 401, ""},       // IMDSv1 refused
		{"/latest/meta-data/instance-id", "forged", 401, ""}, // not a token
	} {
		var hdr []string
		if tc.token != "" {
			hdr = []string{tokenHeader, tc.token}
		}
		code, body := e.do(t, http.MethodGet, tc.path, hdr...)
		if code != tc.code || (tc.code == 200 && body != tc.body) {
			t.Errorf("GET %s (token %.8q): %d %q, want %d %q", tc.path, tc.token, code, body, tc.code, tc.body)
		}
	}

	// A token is the instance's: another instance (the same caller address, reused) cannot use it.
	e.mu.Lock()
	e.view.ID = "i-0000000000000beef"
	e.mu.Unlock()
	if code, _ := e.do(t, http.MethodGet, "/latest/user-data", tokenHeader, tok); code != 401 {
		t.Errorf("another instance's token: %d, want 401", code)
	}
	e.mu.Lock()
	e.view.ID = "i-0123456789abcdef0"
	e.now = e.now.Add(300 * time.Second) // the token's TTL has passed
	e.mu.Unlock()
	if code, _ := e.do(t, http.MethodGet, "/latest/user-data", tokenHeader, tok); code != 401 {
		t.Errorf("an expired token: %d, want 401", code)
	}
}

func TestIMDSTokenRequests(t *testing.T) {
	e := newIMDSEnv(t, required)
	for _, tc := range []struct {
		name   string
		method string
		hdr    []string
		code   int
	}{
		{"no TTL", http.MethodPut, nil, 400},
		{"TTL 0", http.MethodPut, []string{tokenTTLHeader, "0"}, 400},
		{"TTL past six hours", http.MethodPut, []string{tokenTTLHeader, "21601"}, 400},
		{"TTL not a number", http.MethodPut, []string{tokenTTLHeader, "1h"}, 400},
		{"six hours", http.MethodPut, []string{tokenTTLHeader, "21600"}, 200},
		{"through a proxy", http.MethodPut, []string{tokenTTLHeader, "60", "X-Forwarded-For", "10.0.1.9"}, 403},
		{"GET", http.MethodGet, []string{tokenTTLHeader, "60"}, 405},
	} {
		if code, _ := e.do(t, tc.method, tokenPath, tc.hdr...); code != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, code, tc.code)
		}
	}
}

func TestIMDSOptions(t *testing.T) {
	// Optional tokens: IMDSv1 works, a bad token is still refused; tags appear once enabled.
	e := newIMDSEnv(t, ec2.MetadataOptions{HttpEndpoint: "enabled", HttpTokens: "optional", HttpPutResponseHopLimit: 2,
		InstanceMetadataTags: "enabled"})
	if code, body := e.do(t, http.MethodGet, "/latest/meta-data/instance-id"); code != 200 || body != "i-0123456789abcdef0" {
		t.Errorf("IMDSv1 with optional tokens: %d %q", code, body)
	}
	if code, _ := e.do(t, http.MethodGet, "/latest/meta-data/instance-id", tokenHeader, "forged"); code != 401 {
		t.Errorf("a forged token with optional tokens: %d, want 401", code)
	}
	if code, body := e.do(t, http.MethodGet, "/latest/meta-data/tags/instance/Name"); code != 200 || body != "web" {
		t.Errorf("an instance tag: %d %q", code, body)
	}
	// The endpoint turned off (live, as ModifyInstanceMetadataOptions does): 403 to everything.
	e.mu.Lock()
	e.view.Metadata.HttpEndpoint = "disabled"
	e.mu.Unlock()
	for _, m := range []string{http.MethodGet, http.MethodPut} {
		p := "/latest/user-data"
		if m == http.MethodPut {
			p = tokenPath
		}
		if code, _ := e.do(t, m, p, tokenTTLHeader, "60"); code != 403 {
			t.Errorf("%s %s with the endpoint disabled: %d, want 403", m, p, code)
		}
	}
	// A caller that is no instance.
	e.mu.Lock()
	e.view.Metadata.HttpEndpoint, e.ok = "enabled", false
	e.mu.Unlock()
	if code, _ := e.do(t, http.MethodGet, "/latest/user-data"); code != 403 {
		t.Errorf("an unknown caller: %d, want 403", code)
	}
}

// The token's answer leaves with the instance's hop limit as its IP TTL, every other answer with the default:
// checked on the server's socket, where the kernel takes it from.
func TestIMDSHopLimit(t *testing.T) {
	var mu sync.Mutex
	var conns []net.Conn
	e := newIMDSEnv(t, ec2.MetadataOptions{HttpEndpoint: "enabled", HttpTokens: "required", HttpPutResponseHopLimit: 3},
		func(c net.Conn, s http.ConnState) {
			if s == http.StateNew {
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	connTTL := func() int {
		mu.Lock()
		defer mu.Unlock()
		if len(conns) != 1 {
			t.Fatalf("%d connections, want one kept alive", len(conns))
		}
		raw, err := conns[0].(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var ttl int
		var gerr error
		if err := raw.Control(func(fd uintptr) { ttl, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		return ttl
	}
	tok := e.token(t, "60")
	if ttl := connTTL(); ttl != 3 {
		t.Errorf("the token's answer has TTL %d, want the hop limit 3", ttl)
	}
	if code, _ := e.do(t, http.MethodGet, "/latest/user-data", tokenHeader, tok); code != 200 {
		t.Fatalf("GET with the token: %d", code)
	}
	if ttl := connTTL(); ttl != defaultTTL {
		t.Errorf("a GET's answer has TTL %d, want %d", ttl, defaultTTL)
	}
	e.mu.Lock()
	ttls := append([]int(nil), e.ttls...)
	e.mu.Unlock()
	if len(ttls) != 2 || ttls[0] != 3 || ttls[1] != defaultTTL {
		t.Errorf("TTLs set %v, want [3 %d]", ttls, defaultTTL)
	}
}
