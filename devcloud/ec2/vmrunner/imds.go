package vmrunner

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/i2kit/i2kit/devcloud/ec2"
)

// The instance metadata service, IMDSv2 as EC2 serves it at 169.254.169.254: a caller is the instance whose
// private address it comes from (no other identity exists on the link); PUT /latest/api/token returns a session
// token bound to that instance, which every GET must carry when the instance's HttpTokens is "required" (and may
// carry otherwise: a bad one is refused either way); the token answer leaves with an IP TTL equal to the
// instance's HttpPutResponseHopLimit, so that it dies one forward past the allowed hops (a container behind the
// guest's NAT does not get one with the default of 1); HttpEndpoint "disabled" answers 403 to everything. The
// options are read live, per request: ModifyInstanceMetadataOptions applies at once.

const (
	tokenPath      = "/latest/api/token"
	tokenTTLHeader = "X-aws-ec2-metadata-token-ttl-seconds"
	tokenHeader    = "X-aws-ec2-metadata-token"
	maxTokenTTL    = 21600
	// defaultTTL is the IP TTL of every answer but a token's.
	defaultTTL = 64
)

// imdsView is what the service says about one instance.
type imdsView struct {
	ID               string
	ImageID          string
	InstanceType     string
	AvailabilityZone string
	PrivateIP        string
	MAC              string
	UserData         []byte
	Metadata         ec2.MetadataOptions
	Tags             []ec2.Tag
}

// imds is the metadata service's HTTP handler. Tokens are stateless — an expiry and an HMAC over the instance ID
// and that expiry under a key of the runner's — so a guest asking for tokens in a loop costs no memory, and a token
// is worth nothing on another instance.
type imds struct {
	key []byte
	now func() time.Time
	// lookup returns the instance at a private address, with its live metadata options.
	lookup func(ip string) (imdsView, bool)
	// setTTL sets the IP TTL of the answer to r (the connection's); tests record it.
	setTTL func(r *http.Request, ttl int) error
}

func (m *imds) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		http.Error(w, "Forbidden", http.StatusForbidden)
		return
	}
	v, ok := m.lookup(host)
	if !ok || v.Metadata.HttpEndpoint == "disabled" {
		http.Error(w, "Forbidden", http.StatusForbidden)
		return
	}
	if r.URL.Path == tokenPath {
		m.token(w, r, v)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	}
	if err := m.setTTL(r, defaultTTL); err != nil {
		http.Error(w, "Internal Server Error", http.StatusInternalServerError)
		return
	}
	tok, sent := r.Header[http.CanonicalHeaderKey(tokenHeader)]
	switch {
	case sent && !m.valid(strings.Join(tok, ""), v.ID):
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	case !sent && v.Metadata.HttpTokens != "optional":
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	body, ok := metadataPath(r.URL.Path, v)
	if !ok {
		http.Error(w, "Not Found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// token answers PUT /latest/api/token.
func (m *imds) token(w http.ResponseWriter, r *http.Request, v imdsView) {
	if r.Method != http.MethodPut {
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	}
	// EC2 refuses a token request that went through a proxy, the other guard beside the hop limit.
	if r.Header.Get("X-Forwarded-For") != "" {
		http.Error(w, "Forbidden", http.StatusForbidden)
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get(tokenTTLHeader))
	if err != nil || ttl < 1 || ttl > maxTokenTTL {
		http.Error(w, "Bad Request", http.StatusBadRequest)
		return
	}
	hops := v.Metadata.HttpPutResponseHopLimit
	if hops < 1 {
		hops = 1
	}
	if err := m.setTTL(r, hops); err != nil {
		http.Error(w, "Internal Server Error", http.StatusInternalServerError)
		return
	}
	tok := m.mint(v.ID, m.now().Add(time.Duration(ttl)*time.Second))
	w.Header().Set(tokenTTLHeader, strconv.Itoa(ttl))
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte(tok))
}

// mint makes a token for instance id valid until exp.
func (m *imds) mint(id string, exp time.Time) string {
	b := binary.BigEndian.AppendUint64(nil, uint64(exp.Unix()))
	return base64.RawURLEncoding.EncodeToString(append(b, m.mac(id, b)...))
}

func (m *imds) mac(id string, exp []byte) []byte {
	h := hmac.New(sha256.New, m.key)
	h.Write(exp)
	h.Write([]byte(id))
	return h.Sum(nil)
}

// valid reports whether tok was minted for instance id and has not expired.
func (m *imds) valid(tok, id string) bool {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != 8+sha256.Size {
		return false
	}
	if !hmac.Equal(b[8:], m.mac(id, b[:8])) {
		return false
	}
	return m.now().Unix() < int64(binary.BigEndian.Uint64(b[:8]))
}

// metadataPath returns the body of a GET of path, the few categories a pod VM (and an SDK in it) reads.
func metadataPath(path string, v imdsView) ([]byte, bool) {
	md := map[string]string{
		"ami-id":                      v.ImageID,
		"instance-id":                 v.ID,
		"instance-type":               v.InstanceType,
		"local-ipv4":                  v.PrivateIP,
		"mac":                         v.MAC,
		"placement/availability-zone": v.AvailabilityZone,
		"placement/region":            strings.TrimRightFunc(v.AvailabilityZone, func(r rune) bool { return r >= 'a' && r <= 'z' }),
	}
	switch {
	case path == "/latest/user-data":
		if len(v.UserData) == 0 {
			return nil, false
		}
		return v.UserData, true
	case path == "/latest/meta-data" || path == "/latest/meta-data/":
		return []byte("ami-id\ninstance-id\ninstance-type\nlocal-ipv4\nmac\nplacement/\n" + tagsListing(v)), true
	case path == "/latest/meta-data/placement/":
		return []byte("availability-zone\nregion"), true
	case strings.HasPrefix(path, "/latest/meta-data/tags/instance"):
		return tagPath(strings.TrimPrefix(path, "/latest/meta-data/tags/instance"), v)
	}
	val, ok := md[strings.TrimPrefix(path, "/latest/meta-data/")]
	if !ok || !strings.HasPrefix(path, "/latest/meta-data/") {
		return nil, false
	}
	return []byte(val), true
}

func tagsListing(v imdsView) string {
	if v.Metadata.InstanceMetadataTags == "enabled" {
		return "tags/"
	}
	return ""
}

// tagPath serves tags/instance (the keys) and tags/instance/<key>, only where the instance allows it.
func tagPath(rest string, v imdsView) ([]byte, bool) {
	if v.Metadata.InstanceMetadataTags != "enabled" {
		return nil, false
	}
	if rest == "" || rest == "/" {
		keys := make([]string, 0, len(v.Tags))
		for _, t := range v.Tags {
			keys = append(keys, t.Key)
		}
		return []byte(strings.Join(keys, "\n")), true
	}
	for _, t := range v.Tags {
		if "/"+t.Key == rest {
			return []byte(t.Value), true
		}
	}
	return nil, false
}

// connKey carries the accepted connection in a request's context (http.Server.ConnContext).
type connKey struct{}

func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// setConnTTL sets IP_TTL on the TCP connection r arrived on, so that what is written next leaves with that TTL.
func setConnTTL(r *http.Request, ttl int) error {
	c, ok := r.Context().Value(connKey{}).(*net.TCPConn)
	if !ok {
		return errors.New("no TCP connection in the request's context")
	}
	return setsockoptTTL(c, ttl)
}

func setsockoptTTL(c *net.TCPConn, ttl int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("setting the IP TTL, %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = setIPTTL(int(fd), ttl) }); err != nil {
		return fmt.Errorf("setting the IP TTL, %w", err)
	}
	if serr != nil {
		return fmt.Errorf("setting the IP TTL, %w", serr)
	}
	return nil
}
