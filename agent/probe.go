package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/agent/protocol"
)

// Container probes, run as a kubelet runs them: a startup probe holds the others back until it succeeds, a
// readiness probe sets the container's Ready, and a failed liveness or startup probe kills the container, which
// then restarts (or not) per the pod's restart policy. Once the pod stops, as a kubelet once the pod is being
// deleted, liveness and startup probes end quietly (a container being stopped is not killed for failing them),
// while readiness probes go on, so that the pod reports not ready while it terminates.

// probeSecond is the unit of a probe's times; tests shorten it.
var probeSecond = time.Second

// probeUserAgent is what a kubelet of the Kubernetes version i2kit speaks for sends.
const probeUserAgent = "kube-probe/1.37"

// probeOutputMax caps what an exec probe's output and an HTTP probe's body are read to, as a kubelet does.
const probeOutputMax = 10 << 10

// probeKillGrace is the grace period of a container killed by a probe that sets none.
const probeKillGrace = 30

type probeKind int

const (
	startupProbe probeKind = iota
	readinessProbe
	livenessProbe
)

func (k probeKind) String() string { return [...]string{"Startup", "Readiness", "Liveness"}[k] }

// probeResult is a probe's result as the prober holds it.
type probeResult int8

const (
	probeUnknown probeResult = iota
	probeSuccess
	probeFailure
)

// threshold turns a probe's attempts into its result: successes attempts in a row that succeed make it succeed,
// failures attempts in a row that fail make it fail, and a shorter run keeps the result it had.
type threshold struct {
	successes, failures int // the thresholds
	result              probeResult
	last                bool // the last attempt's outcome
	run                 int  // attempts in a row with that outcome
}

// newThreshold starts a probe's count from a kubelet's initial results: a liveness probe succeeds until it fails,
// a readiness probe fails until it succeeds, a startup probe has no result until it has one.
func newThreshold(kind probeKind, p *protocol.Probe) *threshold {
	t := &threshold{successes: int(orDefault(p.SuccessThreshold, 1)), failures: int(orDefault(p.FailureThreshold, 3))}
	switch kind {
	case livenessProbe:
		t.result = probeSuccess
	case readinessProbe:
		t.result = probeFailure
	}
	return t
}

// observe counts an attempt and returns the probe's result, and whether it changed.
func (t *threshold) observe(ok bool) (probeResult, bool) {
	if t.run > 0 && ok == t.last {
		t.run = min(t.run+1, 1<<20)
	} else {
		t.last, t.run = ok, 1
	}
	result := t.result
	switch {
	case ok && t.run >= t.successes:
		result = probeSuccess
	case !ok && t.run >= t.failures:
		result = probeFailure
	}
	changed := result != t.result
	t.result = result
	return result, changed
}

func orDefault(v, def int32) int32 {
	if v <= 0 {
		return def
	}
	return v
}

func probeSeconds(s int32) time.Duration { return time.Duration(s) * probeSecond }

// probe runs c's probes for the run that ends when ended is closed, and stops with it.
func (r *runtime) probe(c *container, ended <-chan struct{}) {
	// The probes are set once, before any run; c.rc's resources are not (a resize changes them under runtime.mu):
	// the probes alone are read here, not a copy of c.rc.
	startup, readiness, liveness := c.rc.Startup, c.rc.Readiness, c.rc.Liveness
	if startup == nil && readiness == nil && liveness == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-ended
		cancel()
	}()
	started := make(chan struct{}) // closed once the startup probe succeeds
	if startup == nil {
		close(started)
	} else {
		go r.probeLoop(ctx, c, ended, startupProbe, startup, started)
	}
	if readiness != nil {
		go r.probeLoop(ctx, c, ended, readinessProbe, readiness, started)
	}
	if liveness != nil {
		go r.probeLoop(ctx, c, ended, livenessProbe, liveness, started)
	}
}

// probeLoop runs one probe: after its initial delay (and, but for the startup probe, once the container has
// started), every period, until the run ends, the startup probe succeeds, or the probe kills the container.
func (r *runtime) probeLoop(ctx context.Context, c *container, ended <-chan struct{}, kind probeKind, p *protocol.Probe, started chan struct{}) {
	delay := time.NewTimer(probeSeconds(p.InitialDelaySeconds))
	select {
	case <-delay.C:
	case <-ctx.Done():
		delay.Stop()
		return
	}
	if kind != startupProbe {
		select {
		case <-started:
		case <-ctx.Done():
			return
		}
	}
	t := newThreshold(kind, p)
	tick := time.NewTicker(probeSeconds(orDefault(p.PeriodSeconds, 10)))
	defer tick.Stop()
	for {
		if kind != readinessProbe && r.isStopping() {
			return
		}
		warning, err := r.runProbe(ctx, c, p)
		if ctx.Err() != nil {
			return // the run ended while probing: the attempt means nothing
		}
		result, changed := t.observe(err == nil)
		if r.probed(c, ended, kind, p, attempt{warning, err}, result, changed, started) {
			return
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

// attempt is what one probe attempt said: err for a failure; warning, with a success, what a kubelet reports as a
// ProbeWarning (an HTTP probe redirected to another host).
type attempt struct {
	warning string
	err     error
}

// isStopping reports whether the pod is stopping.
func (r *runtime) isStopping() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopping
}

// probed records a probe attempt in c's status and acts on the probe's result when it changes. It reports
// whether the probe is done for this run. A liveness or startup probe is done, without a word, once the pod
// stops: a kubelet sets their result to success and stops them when the pod is being deleted.
func (r *runtime) probed(c *container, ended <-chan struct{}, kind probeKind, p *protocol.Probe, a attempt,
	result probeResult, changed bool, started chan struct{}) (done bool) {
	var killed string
	defer func() {
		if killed != "" {
			r.say("i2kit-agent: %s", killed)
		}
	}()
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-ended:
		return true
	default:
	}
	if kind != readinessProbe && r.stopping {
		return true
	}
	dirty := false
	switch {
	case a.err != nil:
		c.status.ProbeFailures++
		c.status.LastProbeFailure = kind.String() + " probe failed: " + a.err.Error()
		dirty = true
	case a.warning != "":
		c.status.ProbeWarnings++
		c.status.LastProbeWarning = kind.String() + " probe warning: " + a.warning
		dirty = true
	}
	if changed {
		switch {
		case kind == startupProbe && result == probeSuccess:
			c.status.Started = true
			if c.rc.Readiness == nil {
				c.status.Ready = true
			}
			close(started)
			done, dirty = true, true
		case kind == readinessProbe:
			c.status.Ready = result == probeSuccess
			dirty = true
		case result == probeFailure: // liveness or startup
			c.status.Killed = fmt.Sprintf("Container %s failed %s probe, will be restarted", c.Name, strings.ToLower(kind.String()))
			grace := probeSeconds(probeKillGrace)
			if p.TerminationGracePeriodSeconds != nil {
				grace = time.Duration(*p.TerminationGracePeriodSeconds) * probeSecond
			}
			killed = c.status.LastProbeFailure + "; " + c.status.Killed
			pid := c.pid
			syscall.Kill(pid, syscall.SIGTERM) //nolint:errcheck
			go r.killAfter(pid, ended, grace)
			done, dirty = true, true
		}
	}
	if dirty {
		r.changedLocked()
	}
	return done
}

// killAfter kills a run's supervisor with SIGKILL if the run has not ended within grace.
func (r *runtime) killAfter(pid int, ended <-chan struct{}, grace time.Duration) {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-ended:
		return
	case <-t.C:
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-ended:
	default:
		syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck
	}
}

// runProbe runs a probe's handler once, within its timeout; a nil error is a success, which may come with a
// warning (see probeHTTP).
func (r *runtime) runProbe(ctx context.Context, c *container, p *protocol.Probe) (warning string, err error) {
	timeout := probeSeconds(orDefault(p.TimeoutSeconds, 1))
	switch {
	case len(p.Exec) > 0:
		return "", r.probeExec(ctx, c, p.Exec, timeout)
	case p.HTTPGet != nil:
		return probeHTTP(ctx, p.HTTPGet, podIP(), timeout)
	case p.TCPSocket != nil:
		host := p.TCPSocket.Host
		if host == "" {
			host = podIP()
		}
		return "", probeTCP(ctx, host, p.TCPSocket.Port, timeout)
	case p.GRPC != nil:
		return "", probeGRPC(ctx, p.GRPC, podIP(), timeout)
	}
	return "", errors.New("the probe has no handler")
}

// podIP is the VM's eth0 IPv4 address, the pod's IP, or 127.0.0.1 without one.
func podIP() string {
	if ifi, err := net.InterfaceByName("eth0"); err == nil {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
				return n.IP.To4().String()
			}
		}
	}
	return "127.0.0.1"
}

// probeExec runs argv in the container; exit code 0 is a success.
func (r *runtime) probeExec(ctx context.Context, c *container, argv []string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	code, out, err := r.runIn(ctx, c, argv)
	cmd := strings.Join(argv, " ")
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("command %q timed out", cmd)
	case err != nil:
		return fmt.Errorf("command %q: %w", cmd, err)
	case code != 0:
		msg := fmt.Sprintf("command %q exited with %d", cmd, code)
		if o := strings.TrimSpace(string(out)); o != "" {
			if len(o) > 1024 {
				o = o[:1024] + "…"
			}
			msg += ": " + o
		}
		return errors.New(msg)
	}
	return nil
}

// runIn runs argv in container c through its supervisor, with stdin /dev/null and stdout and stderr on one pipe,
// and returns its exit code and output (the first probeOutputMax bytes). When ctx ends first, the command's process
// group is killed.
func (r *runtime) runIn(ctx context.Context, c *container, argv []string) (code int, output []byte, err error) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return -1, nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		devnull.Close()
		return -1, nil, err
	}
	defer pr.Close()
	var conn *net.UnixConn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	proc, code, err := r.startIn(ctx, c, &conn, argv, false, [3]*os.File{devnull, pw, pw})
	if err != nil {
		return code, nil, err
	}
	out := &cappedBuffer{max: probeOutputMax}
	copied := make(chan struct{})
	go func() {
		io.Copy(out, pr) //nolint:errcheck
		close(copied)
	}()
	code = proc.wait(ctx)
	// A background child that keeps the pipe open does not hold the command.
	select {
	case <-copied:
	case <-time.After(time.Second):
		pr.Close()
		<-copied
	}
	if code < 0 {
		return -1, out.b, fmt.Errorf("lost the command's exit status in %s", c.Name)
	}
	return code, out.b, ctx.Err()
}

// cappedBuffer keeps the first max bytes written to it and discards the rest.
type cappedBuffer struct {
	b   []byte
	max int
}

func (w *cappedBuffer) Write(p []byte) (int, error) {
	if room := w.max - len(w.b); room > 0 {
		w.b = append(w.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// probeHTTP GETs the action's URL (host, when the action names none); a status in [200, 400) is a success.
// Redirects are followed on the same host only. As a kubelet has it, a redirect status that ends the probe (one to
// another host) is a success with a warning: "Probe terminated redirects, Response body: " and the body's first
// probeOutputMax bytes.
func probeHTTP(ctx context.Context, a *protocol.HTTPGetAction, host string, timeout time.Duration) (warning string, err error) {
	scheme := strings.ToLower(a.Scheme)
	if scheme == "" {
		scheme = "http"
	}
	if a.Host != "" {
		host = a.Host
	}
	path := a.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	u, err := url.Parse(scheme + "://" + net.JoinHostPort(host, strconv.Itoa(a.Port)) + path)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("User-Agent", probeUserAgent)
	req.Header.Set("Accept", "*/*")
	for k, v := range a.Headers {
		if strings.EqualFold(k, "Host") {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, DisableKeepAlives: true} //nolint:gosec // as a kubelet
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		if req.URL.Hostname() != via[0].URL.Hostname() {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, probeOutputMax))
	if err != nil {
		return "", err
	}
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return "Probe terminated redirects, Response body: " + strings.ToValidUTF8(string(body), "\uFFFD"), nil
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return "", nil
	}
	return "", fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
}

// probeTCP opens a TCP connection to host:port and closes it.
func probeTCP(ctx context.Context, host string, port int, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return conn.Close()
}

// gRPC health statuses (grpc.health.v1.HealthCheckResponse.ServingStatus).
var grpcServingStatus = []string{"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"}

// gRPC status codes, by number.
var grpcCodes = []string{"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
	"Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated"}

// probeGRPC calls grpc.health.v1.Health/Check on host:port over HTTP/2 without TLS; SERVING is a success.
func probeGRPC(ctx context.Context, a *protocol.GRPCAction, host string, timeout time.Duration) error {
	addr := net.JoinHostPort(host, strconv.Itoa(a.Port))
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	msg := healthCheckRequest(a.Service)
	body := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:], uint32(len(msg)))
	body = append(body, msg...)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/grpc.health.v1.Health/Check", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	req.Header.Set("User-Agent", probeUserAgent)
	req.Header.Set("Grpc-Timeout", strconv.FormatInt(max(timeout.Milliseconds(), 1), 10)+"m")
	resp, err := client.Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("timeout: failed to connect service %q within %s: %w", addr, timeout, err)
		}
		return fmt.Errorf("failed to connect service %q: %w", addr, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("rpc error: reading the response: %w", err)
	}
	status := resp.Trailer.Get("Grpc-Status")
	message := resp.Trailer.Get("Grpc-Message")
	if status == "" { // a trailers-only response
		status, message = resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message")
	}
	if resp.StatusCode != http.StatusOK && status == "" {
		return fmt.Errorf("rpc error: HTTP status %d", resp.StatusCode)
	}
	if status != "0" {
		code := status
		if n, err := strconv.Atoi(status); err == nil && n >= 0 && n < len(grpcCodes) {
			code = grpcCodes[n]
		}
		if m, err := url.PathUnescape(message); err == nil {
			message = m
		}
		return fmt.Errorf("rpc error: code = %s desc = %s", code, message)
	}
	if len(data) < 5 || data[0] != 0 || int(binary.BigEndian.Uint32(data[1:5])) > len(data)-5 {
		return errors.New("rpc error: malformed health check response")
	}
	serving, err := healthCheckStatus(data[5 : 5+binary.BigEndian.Uint32(data[1:5])])
	if err != nil {
		return fmt.Errorf("rpc error: %w", err)
	}
	if serving != 1 {
		name := strconv.FormatUint(serving, 10)
		if serving < uint64(len(grpcServingStatus)) {
			name = grpcServingStatus[serving]
		}
		return fmt.Errorf("service unhealthy (responded with %q)", name)
	}
	return nil
}

// healthCheckRequest encodes grpc.health.v1.HealthCheckRequest{service}.
func healthCheckRequest(service string) []byte {
	if service == "" {
		return nil
	}
	b := []byte{1<<3 | 2} // field 1, length-delimited
	b = binary.AppendUvarint(b, uint64(len(service)))
	return append(b, service...)
}

// healthCheckStatus decodes the status (field 1, a varint) of a grpc.health.v1.HealthCheckResponse.
func healthCheckStatus(b []byte) (uint64, error) {
	var status uint64
	for len(b) > 0 {
		key, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, errors.New("malformed health check response")
		}
		b = b[n:]
		switch key & 7 {
		case 0:
			v, n := binary.Uvarint(b)
			if n <= 0 {
				return 0, errors.New("malformed health check response")
			}
			if key>>3 == 1 {
				status = v
			}
			b = b[n:]
		case 1, 5:
			size := 8
			if key&7 == 5 {
				size = 4
			}
			if len(b) < size {
				return 0, errors.New("malformed health check response")
			}
			b = b[size:]
		case 2:
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return 0, errors.New("malformed health check response")
			}
			b = b[n+int(l):]
		default:
			return 0, errors.New("malformed health check response")
		}
	}
	return status, nil
}
