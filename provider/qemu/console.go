package qemu

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"
)

// consoleLogMax bounds each of console.log and console.log.1: a guest that floods its console costs the host at
// most twice this in its runtime directory (a tmpfs under /run).
const consoleLogMax = 512 << 10

// rotatingLog is an io.Writer onto a file that is rotated once it holds max bytes: path is renamed to path.1
// (replacing the older one) and a new path is started. The bytes kept are the last max to 2*max written. It is
// not safe for concurrent use.
type rotatingLog struct {
	path string
	max  int64
	f    *os.File
	n    int64 // bytes in f
}

func openRotatingLog(path string, max int64) (*rotatingLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening console log, %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening console log, %w", err)
	}
	return &rotatingLog{path: path, max: max, f: f, n: st.Size()}, nil
}

func (l *rotatingLog) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if l.n >= l.max {
			if err := l.rotate(); err != nil {
				return written, err
			}
		}
		chunk := p
		if room := l.max - l.n; int64(len(chunk)) > room {
			chunk = chunk[:room]
		}
		n, err := l.f.Write(chunk)
		written, l.n, p = written+n, l.n+int64(n), p[n:]
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

func (l *rotatingLog) rotate() error {
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("rotating console log, %w", err)
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return fmt.Errorf("rotating console log, %w", err)
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("rotating console log, %w", err)
	}
	l.f, l.n = f, 0
	return nil
}

func (l *rotatingLog) Close() error { return l.f.Close() }

// recordConsole copies the VM's console (QEMU serves it on console.sock, dropping output while no one reads)
// into the rotated console.log of its runtime directory until QEMU closes the connection or ctx ends. It is a
// debug aid: failures are silent. It connects again after a node restart (adopt), QEMU accepting one reader at a
// time.
func recordConsole(ctx context.Context, dir string) {
	var c net.Conn
	for c == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", filepath.Join(dir, "console.sock"))
		if err == nil {
			c = conn
			break
		}
		select { // QEMU creates the socket soon after it starts
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	l, err := openRotatingLog(filepath.Join(dir, "console.log"), consoleLogMax)
	if err != nil {
		return
	}
	defer l.Close()
	io.Copy(l, c) //nolint:errcheck
}
