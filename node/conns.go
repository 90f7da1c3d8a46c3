package node

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// dialer dials the node's API connections and closes all of them when the node stops, including those of
// watches and requests still winding down, so that a stopped node leaves no connection or goroutine behind.
type dialer struct {
	d      net.Dialer
	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

func newDialer() *dialer {
	return &dialer{d: net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}, conns: map[*trackedConn]struct{}{}}
}

var errDialerClosed = errors.New("node is stopping: no new API connections")

// DialContext dials like net.Dialer and tracks the connection until it is closed.
func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		c.Close()
		return nil, errDialerClosed
	}
	tc := &trackedConn{Conn: c, d: d}
	d.conns[tc] = struct{}{}
	return tc, nil
}

// CloseAll closes every tracked connection and refuses new ones.
func (d *dialer) CloseAll() {
	d.mu.Lock()
	d.closed = true
	conns := d.conns
	d.conns = map[*trackedConn]struct{}{}
	d.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	d    *dialer
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.d.mu.Lock()
		delete(c.d.conns, c)
		c.d.mu.Unlock()
	})
	return c.Conn.Close()
}
