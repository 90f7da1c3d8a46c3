package node

import (
	"context"
	"errors"
	"net"
	"testing"
)

func TestDialerClosesEveryConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	d := newDialer()
	ctx := context.Background()
	a, err := d.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := d.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b.Close() // a connection closed by its user is forgotten
	if len(d.conns) != 1 {
		t.Fatalf("tracked %d connections, want 1", len(d.conns))
	}
	d.CloseAll()
	if _, err := a.Write([]byte("x")); err == nil {
		t.Error("a connection survived CloseAll")
	}
	if _, err := d.DialContext(ctx, "tcp", l.Addr().String()); !errors.Is(err, errDialerClosed) {
		t.Errorf("dial after CloseAll: %v, want errDialerClosed", err)
	}
}
