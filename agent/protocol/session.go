package protocol

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

const (
	helloMagic = "I2KIT-HELLO "
	okMagic    = "I2KIT-OK "
	errMagic   = "I2KIT-ERR "
)

// ErrVersion is returned by the host's handshake when the agent speaks another version.
var ErrVersion = errors.New("agent protocol version mismatch")

func yamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.LogOutput = io.Discard
	c.KeepAliveInterval = 10 * time.Second
	c.ConnectionWriteTimeout = 15 * time.Second
	c.StreamOpenTimeout = 15 * time.Second
	return c
}

// hostYamuxConfig is the host's: it accepts no stream (see Dial), so its backlog is one, and a stream it closed
// that the agent does not close in turn is reset after a short while rather than holding its receive window.
// yamux allows no receive window below its initial 256 KiB: a stream the host opened buffers at most that.
func hostYamuxConfig() *yamux.Config {
	c := yamuxConfig()
	c.AcceptBacklog = 1
	c.StreamCloseTimeout = 15 * time.Second
	return c
}

// Dial runs the host's side of the handshake on conn and returns the session's client side. The handshake
// skips whatever an earlier session left on the stream; it fails after timeout, having buffered at most a
// handshake line whatever the agent sends. The session refuses every stream the agent opens (the host sends a
// go-away before it reads a frame: a stream the agent opens is reset at once and buffers nothing), and it drops
// the agent's pings beyond maxPingsPerSecond (see hostConn). The caller must not Accept on it.
func Dial(conn net.Conn, timeout time.Duration) (*yamux.Session, error) {
	nonce := make([]byte, 8)
	rand.Read(nonce) //nolint:errcheck // never fails
	n := hex.EncodeToString(nonce)
	conn.SetDeadline(time.Now().Add(timeout)) //nolint:errcheck
	if _, err := fmt.Fprintf(conn, "%s%d %s\n", helloMagic, Version, n); err != nil {
		return nil, fmt.Errorf("sending hello, %w", err)
	}
	want := fmt.Sprintf("%s%d %s", okMagic, Version, n)
	for {
		line, err := readLine(conn, okMagic, errMagic)
		if err != nil {
			return nil, fmt.Errorf("waiting for the agent's answer, %w", err)
		}
		if rest, ok := strings.CutPrefix(line, errMagic); ok {
			return nil, fmt.Errorf("%w: %s", ErrVersion, rest)
		}
		if line == want {
			break
		}
		// an answer to an earlier session's hello: skip it
	}
	hc := newHostConn(conn)
	s, err := yamux.Client(hc, hostYamuxConfig())
	if err != nil {
		return nil, fmt.Errorf("starting the session, %w", err)
	}
	// The go-away goes out while yamux reads nothing yet and the handshake's deadline still holds: no stream the
	// agent opens can be queued for an Accept that never comes, and an agent that does not read fails the dial.
	if err := s.GoAway(); err != nil {
		s.Close()
		return nil, fmt.Errorf("refusing the agent's streams, %w", err)
	}
	conn.SetDeadline(time.Time{}) //nolint:errcheck
	hc.open()
	return s, nil
}

// Accept runs the agent's side of the handshake on rw: it skips bytes until a hello, answers it, and returns the
// session's server side. Hellos of another version are refused and skipped.
func Accept(rw io.ReadWriteCloser) (*yamux.Session, error) {
	for {
		line, err := readLine(rw, helloMagic)
		if err != nil {
			return nil, err
		}
		f := strings.Fields(strings.TrimPrefix(line, helloMagic))
		if len(f) != 2 {
			continue
		}
		if v, _ := strconv.Atoi(f[0]); v != Version {
			fmt.Fprintf(rw, "%sversion %s not supported: the agent speaks %d\n", errMagic, f[0], Version)
			continue
		}
		if _, err := fmt.Fprintf(rw, "%s%d %s\n", okMagic, Version, f[1]); err != nil {
			return nil, err
		}
		return yamux.Server(rw, yamuxConfig())
	}
}

// maxHandshakeLine bounds a handshake line from its prefix on; readLine buffers at most this and a prefix's length.
const maxHandshakeLine = 256

// readLine reads r a byte at a time — so that nothing after the line is consumed — until a line that starts with
// one of the prefixes, which it returns without its newline. Bytes before a prefix are skipped. It holds at most
// 64+maxHandshakeLine bytes, whatever r sends: a peer that floods it costs time (bound it with a deadline), not
// memory.
func readLine(r io.Reader, prefixes ...string) (string, error) {
	const keep = 32 // enough for a prefix that spans reads
	var arr [2*64 + maxHandshakeLine]byte
	buf := arr[:0]
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(r, b); err != nil {
			return "", err
		}
		buf = append(buf, b[0])
		start := -1
		for _, p := range prefixes {
			if i := bytes.Index(buf, []byte(p)); i >= 0 && (start < 0 || i < start) {
				start = i
			}
		}
		if start < 0 {
			if len(buf) > 64 {
				buf = buf[:copy(buf, buf[len(buf)-keep:])]
			}
			continue
		}
		if b[0] == '\n' {
			return string(buf[start : len(buf)-1]), nil
		}
		if len(buf)-start > maxHandshakeLine {
			buf = buf[:0] // not a handshake line
		}
	}
}

// Frame channels of an upgraded exec or attach stream.
const (
	Stdin      byte = 0
	Stdout     byte = 1
	Stderr     byte = 2
	ResizeCh   byte = 3 // a JSON Resize
	CloseStdin byte = 4 // no payload: the client's stdin ended
	ExitCh     byte = 5 // a JSON Exit; the last frame
)

// UpgradeFrames and UpgradeRaw name the protocols an HTTP request upgrades to.
const (
	UpgradeFrames = "i2kit-frames/1"
	UpgradeRaw    = "i2kit-raw/1"
)

const maxFrame = 1 << 20

// FrameWriter writes frames; it is safe for concurrent use.
type FrameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// NewFrameWriter writes frames to w.
func NewFrameWriter(w io.Writer) *FrameWriter { return &FrameWriter{w: w} }

// Write sends one frame on channel ch.
func (f *FrameWriter) Write(ch byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		n := min(len(p), maxFrame)
		var hdr [5]byte
		hdr[0] = ch
		binary.BigEndian.PutUint32(hdr[1:], uint32(n))
		if _, err := f.w.Write(append(hdr[:], p[:n]...)); err != nil {
			return err
		}
		p = p[n:]
		if len(p) == 0 {
			return nil
		}
	}
}

// Channel returns an io.Writer that sends each write as a frame on ch.
func (f *FrameWriter) Channel(ch byte) io.Writer { return chanWriter{f, ch} }

type chanWriter struct {
	f  *FrameWriter
	ch byte
}

func (c chanWriter) Write(p []byte) (int, error) {
	if err := c.f.Write(c.ch, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// ReadFrame reads one frame.
func ReadFrame(r io.Reader) (ch byte, payload []byte, err error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes is over the limit", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	return hdr[0], payload, nil
}
