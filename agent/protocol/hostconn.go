package protocol

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"
)

// yamux's frame header (its spec.md): version, type, flags, stream ID, length; a data frame's payload follows.
const (
	yamuxHeaderSize = 12
	yamuxTypeData   = 0
	yamuxTypePing   = 2
	yamuxFlagSYN    = 1
)

// maxPingsPerSecond bounds the agent's pings that the host answers. yamux answers each ping from a goroutine of
// its own that waits until the answer is sent, up to ConnectionWriteTimeout: an agent that floods pings and reads
// nothing would otherwise cost the host a goroutine per 12 bytes it sends. The agent's keep-alive pings once
// every KeepAliveInterval.
const maxPingsPerSecond = 8

// hostConn is the byte stream as the host's yamux session reads it: reads wait until open (Dial has sent its
// go-away), and it drops the agent's ping requests beyond maxPingsPerSecond. It passes everything else as is.
type hostConn struct {
	net.Conn
	br        *bufio.Reader // reads c.Conn
	gate      chan struct{} // closed by open
	closed    chan struct{} // closed by Close
	closeOnce sync.Once

	// guarded by the single reader, yamux's receive loop
	hdr     [yamuxHeaderSize]byte
	hdrOff  int    // bytes of hdr already passed on; yamuxHeaderSize when none is pending
	payload uint32 // bytes of the current data frame's payload still to pass on
	window  time.Time
	pings   int
}

func newHostConn(c net.Conn) *hostConn {
	// Frames are read through a buffer, many per read(2), as yamux itself would read them.
	return &hostConn{Conn: c, br: bufio.NewReader(c), gate: make(chan struct{}), closed: make(chan struct{}), hdrOff: yamuxHeaderSize}
}

// open lets reads through.
func (c *hostConn) open() { close(c.gate) }

func (c *hostConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *hostConn) Read(p []byte) (int, error) {
	select {
	case <-c.gate:
	case <-c.closed:
		return 0, net.ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if c.hdrOff < yamuxHeaderSize {
			n := copy(p, c.hdr[c.hdrOff:])
			c.hdrOff += n
			return n, nil
		}
		if c.payload > 0 {
			n, err := c.br.Read(p[:min(uint32(len(p)), c.payload)])
			c.payload -= uint32(n)
			return n, err
		}
		if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			return 0, err
		}
		flags := binary.BigEndian.Uint16(c.hdr[2:4])
		switch c.hdr[1] {
		case yamuxTypePing:
			if flags&yamuxFlagSYN != 0 && !c.allowPing(time.Now()) {
				continue // dropped: the agent waits for an answer that does not come
			}
		case yamuxTypeData:
			c.payload = binary.BigEndian.Uint32(c.hdr[8:12])
		}
		c.hdrOff = 0
	}
}

// allowPing reports whether a ping request that came at now is within maxPingsPerSecond.
func (c *hostConn) allowPing(now time.Time) bool {
	if now.Sub(c.window) >= time.Second {
		c.window, c.pings = now, 0
	}
	c.pings++
	return c.pings <= maxPingsPerSecond
}
