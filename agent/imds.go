package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/i2kit/i2kit/agent/boot"
)

// imdsBase is the instance metadata service's address on EC2. Its IPv6 twin, imdsIPv6, answers only when the
// instance was launched with it enabled; the agent reads IPv4.
const (
	imdsBase = "http://169.254.169.254"
	imdsIPv4 = "169.254.169.254"
	imdsIPv6 = "fd00:ec2::254"
)

// imdsTokenTTL is how long the session token the agent asks for lives: it reads everything at boot, in seconds.
const imdsTokenTTL = "300"

// maxMetadataValue bounds a metadata value other than user-data (an instance ID, an address).
const maxMetadataValue = 256

// instanceMetadata is what the agent reads from the instance metadata service at boot.
type instanceMetadata struct {
	InstanceID string
	LocalIPv4  net.IP
	UserData   boot.UserData
}

// imdsClient reads the instance metadata service with IMDSv2 (a session token from PUT /latest/api/token, sent
// with every GET). It follows no redirect and uses no proxy: the answer must come from the address it asked.
// Transport errors, time-outs, 5xx and 429 answers are retried with back-off (the link may come up late); a 401
// gets a new token; any other refusal, a missing or oversized user-data, or a value that does not parse fails
// at once. Everything it reads is bounded.
type imdsClient struct {
	base     string
	http     *http.Client
	attempts int
	// attemptTimeout bounds one attempt (the token and the three reads), a body that stops midway included.
	attemptTimeout time.Duration
	backoff        time.Duration // before the second attempt, doubling up to maxBackoff
	// maxBackoff bounds the wait between attempts.
	maxBackoff time.Duration
}

func newIMDS(base string) *imdsClient {
	tr := &http.Transport{
		Proxy:                  nil, // never through a proxy, whatever the environment says
		DialContext:            (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		ResponseHeaderTimeout:  2 * time.Second,
		MaxResponseHeaderBytes: 16 << 10,
		DisableKeepAlives:      true,
	}
	return &imdsClient{
		base: strings.TrimSuffix(base, "/"),
		http: &http.Client{Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return errRedirect }},
		attempts: 12, attemptTimeout: 5 * time.Second, backoff: 250 * time.Millisecond, maxBackoff: 5 * time.Second,
	}
}

var errRedirect = errors.New("the metadata service redirected: refused")

// permanentError is a failure that another attempt would repeat.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// errTokenRejected is a 401: the token expired or was never valid; the next attempt asks for another.
var errTokenRejected = errors.New("the metadata service rejected the session token")

var instanceIDRE = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// read returns the instance's metadata and parsed user-data, retrying as the type's comment says until ctx ends
// or the attempts are spent.
func (m *imdsClient) read(ctx context.Context) (instanceMetadata, error) {
	wait := m.backoff
	var err error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, m.attemptTimeout)
		var md instanceMetadata
		md, err = m.readOnce(actx)
		cancel()
		if err == nil {
			return md, nil
		}
		var perm permanentError
		if errors.As(err, &perm) || attempt >= m.attempts {
			break
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return instanceMetadata{}, fmt.Errorf("reading instance metadata, %w (last: %w)", ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, m.maxBackoff)
	}
	return instanceMetadata{}, fmt.Errorf("reading instance metadata, %w", err)
}

func (m *imdsClient) readOnce(ctx context.Context) (instanceMetadata, error) {
	var md instanceMetadata
	token, err := m.token(ctx)
	if err != nil {
		return md, err
	}
	raw, err := m.get(ctx, token, "/latest/user-data", boot.MaxUserData)
	if err != nil {
		return md, err
	}
	if md.UserData, err = boot.ParseUserData(raw); err != nil {
		return md, permanentError{err}
	}
	id, err := m.get(ctx, token, "/latest/meta-data/instance-id", maxMetadataValue)
	if err != nil {
		return md, err
	}
	if md.InstanceID = string(id); !instanceIDRE.MatchString(md.InstanceID) {
		return md, permanentError{fmt.Errorf("instance-id %q: not an instance ID", id)}
	}
	ip, err := m.get(ctx, token, "/latest/meta-data/local-ipv4", maxMetadataValue)
	if err != nil {
		return md, err
	}
	if md.LocalIPv4 = net.ParseIP(string(ip)).To4(); md.LocalIPv4 == nil {
		return md, permanentError{fmt.Errorf("local-ipv4 %q: not an IPv4 address", ip)}
	}
	return md, nil
}

// token asks for an IMDSv2 session token.
func (m *imdsClient) token(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, m.base+"/latest/api/token", nil)
	if err != nil {
		return "", permanentError{err}
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", imdsTokenTTL)
	b, err := m.do(req, maxMetadataValue)
	if err != nil {
		return "", fmt.Errorf("getting a metadata session token, %w", err)
	}
	if len(b) == 0 || strings.ContainsAny(string(b), "\r\n") {
		return "", permanentError{errors.New("the metadata service answered a malformed session token")}
	}
	return string(b), nil
}

// get reads one metadata path with the session token, at most limit bytes.
func (m *imdsClient) get(ctx context.Context, token, path string, limit int) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.base+path, nil)
	if err != nil {
		return nil, permanentError{err}
	}
	req.Header.Set("X-aws-ec2-metadata-token", token)
	b, err := m.do(req, limit)
	if err != nil {
		return nil, fmt.Errorf("reading %s, %w", path, err)
	}
	return b, nil
}

// do sends req and reads an OK answer's body, at most limit bytes; a longer body is a permanent error.
func (m *imdsClient) do(req *http.Request, limit int) ([]byte, error) {
	resp, err := m.http.Do(req)
	if err != nil {
		if errors.Is(err, errRedirect) {
			return nil, permanentError{err}
		}
		return nil, err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusUnauthorized:
		return nil, errTokenRejected
	case resp.StatusCode >= 500, resp.StatusCode == http.StatusTooManyRequests:
		return nil, fmt.Errorf("the metadata service answered %s", resp.Status)
	default: // 404: no user-data; 403: the endpoint is off
		return nil, permanentError{fmt.Errorf("the metadata service answered %s", resp.Status)}
	}
	if resp.ContentLength > int64(limit) {
		return nil, permanentError{fmt.Errorf("an answer of %d bytes, at most %d", resp.ContentLength, limit)}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > limit {
		return nil, permanentError{fmt.Errorf("an answer of more than %d bytes", limit)}
	}
	return b, nil
}
