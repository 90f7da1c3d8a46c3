package protocol

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/hashicorp/yamux"
)

// MaxResponseBytes bounds every response the host reads whole from an agent: a status (or one line of a watch), a
// stats snapshot. An agent is hostile (a workload may have taken it over), so a response over the bound is a
// protocol violation: the call fails with ErrOverLimit and the session ends. Error bodies are cut at
// maxErrorBody; exec and attach stream frames bounded by ReadFrame; a log is cut at its LimitBytes whatever the
// agent sends.
const MaxResponseBytes = 4 << 20

// MaxContainers bounds the containers a PodStatus or a Stats from an agent may list (a pod's init and app
// containers, far fewer in practice); more is a protocol violation, like a response over MaxResponseBytes. It
// is checked as the list is decoded, so that a response of tiny entries cannot cost more than this many.
const MaxContainers = 256

// maxInterfaces bounds the network interfaces of a Stats (a VM has lo and one or two more).
const maxInterfaces = 64

// maxErrorBody bounds the message of an agent's error answer; maxResponseHeader the headers of any answer.
const (
	maxErrorBody      = 4096
	maxResponseHeader = 64 << 10
)

// ErrOverLimit is why a call failed when the agent's answer broke one of the bounds above.
var ErrOverLimit = errors.New("the agent's answer is over the protocol's limits")

// Client is the host's side of a session with one agent. Its methods are safe for concurrent use; each runs on a
// stream of its own. Once the session ends (Done is closed), every call fails and a new Client must be dialled.
type Client struct {
	sess *yamux.Session
	http *http.Client
}

// NewClient handshakes on conn (see Dial) and returns a Client that owns it.
func NewClient(conn net.Conn, timeout time.Duration) (*Client, error) {
	s, err := Dial(conn, timeout)
	if err != nil {
		conn.Close()
		return nil, err
	}
	tr := &http.Transport{
		DialContext:            func(context.Context, string, string) (net.Conn, error) { return s.Open() },
		DisableKeepAlives:      true, // a stream per request: streams are cheap, and none outlives its request
		MaxResponseHeaderBytes: maxResponseHeader,
		// Only a request that asks for it (AddEphemeral) waits for the agent's 100 Continue before its body; an
		// agent that says nothing within this long gets the body anyway, as HTTP/1.1 wants.
		ExpectContinueTimeout: 10 * time.Second,
	}
	return &Client{sess: s, http: &http.Client{Transport: tr}}, nil
}

// Done is closed when the session ends.
func (c *Client) Done() <-chan struct{} { return c.sess.CloseChan() }

// Close ends the session.
func (c *Client) Close() error { return c.sess.Close() }

// RemoteError is an error the agent answered with.
type RemoteError struct {
	Status  int
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// IsNotFound reports whether the agent answered that what was asked for (a container) does not exist.
func IsNotFound(err error) bool {
	var re *RemoteError
	return errors.As(err, &re) && re.Status == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body any, hdr http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	u := "http://agent" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusSwitchingProtocols {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		return nil, &RemoteError{Status: resp.StatusCode, Message: string(bytes.TrimSpace(msg))}
	}
	return resp, nil
}

func (c *Client) getJSON(ctx context.Context, path string, out func([]byte) error) error {
	resp, err := c.do(ctx, http.MethodGet, path, nil, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := readBounded(resp.Body, MaxResponseBytes)
	if err == nil {
		err = out(b)
	}
	return c.violated(err)
}

// violated ends the session when err says the agent broke the protocol's bounds, and returns err.
func (c *Client) violated(err error) error {
	if errors.Is(err, ErrOverLimit) {
		c.sess.Close()
	}
	return err
}

// readBounded reads r to its end, failing with ErrOverLimit past max bytes (having read at most max+1).
func readBounded(r io.Reader, max int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, int64(max)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > max {
		return nil, fmt.Errorf("%w: an answer of more than %d bytes", ErrOverLimit, max)
	}
	return b, nil
}

// readBoundedLine reads a line of at most max bytes (its newline not counted), without the newline; past max it
// fails with ErrOverLimit, having buffered at most max plus br's size.
func readBoundedLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > max+1 || (err != nil && len(line)+len(frag) > max) {
			return nil, fmt.Errorf("%w: a line of more than %d bytes", ErrOverLimit, max)
		}
		line = append(line, frag...)
		switch err {
		case nil:
			return line[:len(line)-1], nil
		case bufio.ErrBufferFull:
			continue
		}
		return nil, err
	}
}

// Configure sends the pod's runtime configuration; the agent starts the containers. Repeated calls are no-ops.
func (c *Client) Configure(ctx context.Context, cfg PodConfig) error {
	resp, err := c.do(ctx, http.MethodPut, "/v1/pod", nil, cfg, nil)
	if err != nil {
		return fmt.Errorf("configuring the pod, %w", err)
	}
	resp.Body.Close()
	return nil
}

// SetServices replaces the pod's service table: connections to a Service's ClusterIP and port are forwarded to
// its endpoints from then on (established ones keep theirs).
func (c *Client) SetServices(ctx context.Context, table []Service) error {
	resp, err := c.do(ctx, http.MethodPut, "/v1/services", nil, table, nil)
	if err != nil {
		return fmt.Errorf("setting the service table, %w", err)
	}
	resp.Body.Close()
	return nil
}

// UpdateVolume replaces the content of a files volume atomically.
func (c *Client) UpdateVolume(ctx context.Context, name string, files []File) error {
	resp, err := c.do(ctx, http.MethodPut, "/v1/volumes/"+url.PathEscape(name), nil, files, nil)
	if err != nil {
		return fmt.Errorf("updating volume %s, %w", name, err)
	}
	resp.Body.Close()
	return nil
}

// Resize changes a container's resources in place, or restarts it with them (see ResizeRequest). The agent's
// refusal (a memory limit below the container's use) is a *RemoteError whose message says why.
func (c *Client) Resize(ctx context.Context, container string, r ResizeRequest) error {
	resp, err := c.do(ctx, http.MethodPut, "/v1/containers/"+url.PathEscape(container)+"/resources", nil, r, nil)
	if err != nil {
		return fmt.Errorf("resizing container %s, %w", container, err)
	}
	resp.Body.Close()
	return nil
}

// Status returns the pod's status.
func (c *Client) Status(ctx context.Context) (PodStatus, error) {
	var st PodStatus
	err := c.getJSON(ctx, "/v1/status", func(b []byte) (err error) { st, err = decodeStatus(b); return err })
	return st, err
}

// Watch calls f with the pod's status and again at every change, until ctx ends or the session does. Each status
// is a line of at most MaxResponseBytes; a longer one ends the session with ErrOverLimit.
func (c *Client) Watch(ctx context.Context, f func(PodStatus)) error {
	resp, err := c.do(ctx, http.MethodGet, "/v1/status", url.Values{"watch": {"1"}}, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := readBoundedLine(br, MaxResponseBytes)
		if err != nil {
			return c.violated(err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		st, err := decodeStatus(line)
		if err != nil {
			return c.violated(err)
		}
		f(st)
	}
}

// Stats returns a snapshot of the VM's resource use.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := c.getJSON(ctx, "/v1/stats", func(b []byte) (err error) { st, err = decodeStats(b); return err })
	return st, err
}

// Logs returns a container's log; with Follow it streams until the container stops or ctx ends.
func (c *Client) Logs(ctx context.Context, o LogOptions) (io.ReadCloser, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v1/logs", o.Query(), nil, nil)
	if err != nil {
		return nil, err
	}
	if o.LimitBytes > 0 { // the agent is not trusted to honour it
		return struct {
			io.Reader
			io.Closer
		}{io.LimitReader(resp.Body, o.LimitBytes), resp.Body}, nil
	}
	return resp.Body, nil
}

// Query encodes o for the logs route.
func (o LogOptions) Query() url.Values {
	q := url.Values{"container": {o.Container}, "tail": {strconv.Itoa(o.Tail)}}
	if o.Follow {
		q.Set("follow", "1")
	}
	if o.Previous {
		q.Set("previous", "1")
	}
	if o.Timestamps {
		q.Set("timestamps", "1")
	}
	if !o.SinceTime.IsZero() {
		q.Set("since", o.SinceTime.Format(time.RFC3339Nano))
	}
	if o.LimitBytes > 0 {
		q.Set("limitBytes", strconv.FormatInt(o.LimitBytes, 10))
	}
	return q
}

// ParseLogOptions decodes the logs route's query.
func ParseLogOptions(q url.Values) (LogOptions, error) {
	o := LogOptions{Container: q.Get("container"), Follow: q.Get("follow") == "1", Previous: q.Get("previous") == "1",
		Timestamps: q.Get("timestamps") == "1", Tail: -1}
	var err error
	if s := q.Get("tail"); s != "" {
		if o.Tail, err = strconv.Atoi(s); err != nil {
			return o, fmt.Errorf("tail: %w", err)
		}
	}
	if s := q.Get("since"); s != "" {
		if o.SinceTime, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return o, fmt.Errorf("since: %w", err)
		}
	}
	if s := q.Get("limitBytes"); s != "" {
		if o.LimitBytes, err = strconv.ParseInt(s, 10, 64); err != nil {
			return o, fmt.Errorf("limitBytes: %w", err)
		}
	}
	return o, nil
}

// Streams are the client's ends of an exec or attach. Nil members are not streamed.
type Streams struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Resize         <-chan Resize
}

// Exec runs a command in a container and returns its exit code once it ends.
func (c *Client) Exec(ctx context.Context, r ExecRequest, s Streams) (int, error) {
	b, _ := json.Marshal(r)
	return c.frames(ctx, "/v1/exec", b, s)
}

// Attach attaches to a container's main process until it ends or ctx does.
func (c *Client) Attach(ctx context.Context, r AttachRequest, s Streams) (int, error) {
	b, _ := json.Marshal(r)
	return c.frames(ctx, "/v1/attach", b, s)
}

func (c *Client) frames(ctx context.Context, path string, req []byte, s Streams) (int, error) {
	hdr := http.Header{"Connection": {"Upgrade"}, "Upgrade": {UpgradeFrames}}
	resp, err := c.do(ctx, http.MethodPost, path, url.Values{"request": {string(req)}}, nil, hdr)
	if err != nil {
		return -1, err
	}
	rw, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		resp.Body.Close()
		return -1, fmt.Errorf("the agent did not upgrade %s (%s)", path, resp.Status)
	}
	defer rw.Close()
	stop := context.AfterFunc(ctx, func() { rw.Close() })
	defer stop()
	fw := NewFrameWriter(rw)
	done := make(chan struct{})
	defer close(done)
	if s.Stdin != nil {
		go func() {
			io.Copy(fw.Channel(Stdin), s.Stdin) //nolint:errcheck
			fw.Write(CloseStdin, nil)           //nolint:errcheck
		}()
	}
	if s.Resize != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case sz, ok := <-s.Resize:
					if !ok {
						return
					}
					b, _ := json.Marshal(sz)
					fw.Write(ResizeCh, b) //nolint:errcheck
				}
			}
		}()
	}
	br := bufio.NewReader(rw)
	for {
		ch, p, err := ReadFrame(br)
		if err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fmt.Errorf("reading from the agent, %w", err)
		}
		switch ch {
		case Stdout:
			if s.Stdout != nil {
				s.Stdout.Write(p) //nolint:errcheck
			}
		case Stderr:
			if s.Stderr != nil {
				s.Stderr.Write(p) //nolint:errcheck
			}
		case ExitCh:
			var e Exit
			if err := json.Unmarshal(p, &e); err != nil {
				return -1, err
			}
			if e.Error != "" {
				return e.Code, errors.New(e.Error)
			}
			return e.Code, nil
		}
	}
}

// PortForward copies between rw and port inside the VM (its localhost) until either side closes.
func (c *Client) PortForward(ctx context.Context, port int, rw io.ReadWriter) error {
	hdr := http.Header{"Connection": {"Upgrade"}, "Upgrade": {UpgradeRaw}}
	resp, err := c.do(ctx, http.MethodPost, "/v1/portforward", url.Values{"port": {strconv.Itoa(port)}}, nil, hdr)
	if err != nil {
		return err
	}
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if resp.StatusCode != http.StatusSwitchingProtocols || !ok {
		resp.Body.Close()
		return fmt.Errorf("the agent did not upgrade the port-forward (%s)", resp.Status)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	errc := make(chan error, 2)
	go func() {
		_, err := io.Copy(conn, rw)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite() //nolint:errcheck
		}
		errc <- err
	}()
	go func() { _, err := io.Copy(rw, conn); errc <- err }()
	return <-errc
}

// PowerOff asks the agent to stop every container within grace and power the VM off. Called again while the pod
// stops, with a shorter grace (the pod's grace period shortened), it moves the agent's deadline earlier; a longer
// one changes nothing. An agent older than that answers but keeps its first deadline.
func (c *Client) PowerOff(ctx context.Context, grace time.Duration) error {
	closedBefore := c.sess.IsClosed()
	resp, err := c.do(ctx, http.MethodPost, "/v1/poweroff", url.Values{"grace": {grace.String()}}, nil, nil)
	if err != nil {
		// An agent with nothing to stop powers off at once, and the end of its session can overtake its answer on
		// the host's side of the stream: the session's end is then the answer — if it ended after the request.
		if !closedBefore && (errors.Is(err, yamux.ErrSessionShutdown) || c.sess.IsClosed()) {
			return nil
		}
		return err
	}
	resp.Body.Close()
	return nil
}
