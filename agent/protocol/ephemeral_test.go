package protocol

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// ephemeralAgent serves AddEphemeral as the agent does: it reads the configuration and the whole rootfs stream,
// and hands them to got.
func ephemeralAgent(t *testing.T, got func(EphemeralContainer, []byte, error)) *Client {
	t.Helper()
	host, guest := net.Pipe()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/ephemeral", func(w http.ResponseWriter, r *http.Request) {
		ec, rootfs, err := ReadEphemeral(r.Body)
		var b []byte
		if err == nil {
			b, err = io.ReadAll(rootfs)
		}
		got(ec, b, err)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	serve(t, guest, mux)
	c, err := NewClient(host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestAddEphemeralRoundTrip(t *testing.T) {
	var gotEC EphemeralContainer
	var gotFS []byte
	c := ephemeralAgent(t, func(ec EphemeralContainer, fs []byte, err error) {
		if err != nil {
			t.Errorf("agent: %v", err)
		}
		gotEC, gotFS = ec, fs
	})
	ec := EphemeralContainer{ContainerConfig: ContainerConfig{Name: "debugger", Command: []string{"sh", "-c", "echo hi"},
		Env: []string{"A=b"}, Stdin: true, TTY: true}, Image: ImageConfig{Entrypoint: []string{"/bin/sh"}, User: "1000"},
		TargetContainerName: "web"}
	fs := bytes.Repeat([]byte("tar!"), 100000)
	if err := c.AddEphemeral(context.Background(), ec, bytes.NewReader(fs)); err != nil {
		t.Fatal(err)
	}
	if gotEC.Name != "debugger" || gotEC.TargetContainerName != "web" || !gotEC.TTY || gotEC.Image.User != "1000" ||
		strings.Join(gotEC.Command, " ") != "sh -c echo hi" {
		t.Errorf("the agent got %+v", gotEC)
	}
	if !bytes.Equal(gotFS, fs) {
		t.Errorf("the agent got %d bytes of rootfs, want %d", len(gotFS), len(fs))
	}
}

// TestAddEphemeralBound: a rootfs over the bound fails on the host's side, and an agent reading a stream over the
// bound (a host that does not check) stops at it.
func TestAddEphemeralBound(t *testing.T) {
	defer func(m int64) { maxRootfs = m }(maxRootfs)
	maxRootfs = 64 << 10
	// The first request's handler may still be reading when the second is served: only a whole read is kept.
	var agentRead atomic.Int64
	c := ephemeralAgent(t, func(_ EphemeralContainer, fs []byte, err error) {
		if err == nil {
			agentRead.Store(int64(len(fs)))
		}
	})
	err := c.AddEphemeral(context.Background(), EphemeralContainer{ContainerConfig: ContainerConfig{Name: "d"}},
		bytes.NewReader(make([]byte, maxRootfs+1)))
	if !errors.Is(err, ErrRootfsTooLarge) {
		t.Errorf("AddEphemeral of %d bytes = %v, want ErrRootfsTooLarge", maxRootfs+1, err)
	}
	if err := c.AddEphemeral(context.Background(), EphemeralContainer{ContainerConfig: ContainerConfig{Name: "d"}},
		bytes.NewReader(make([]byte, maxRootfs))); err != nil || agentRead.Load() != maxRootfs {
		t.Errorf("AddEphemeral of exactly the bound = %v (agent read %d)", err, agentRead.Load())
	}

	_, rootfs, err := ReadEphemeral(io.MultiReader(strings.NewReader(`{"name":"d"}`+"\n"), bytes.NewReader(make([]byte, 2*maxRootfs))))
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, rootfs)
	if !errors.Is(err, ErrRootfsTooLarge) || n > maxRootfs {
		t.Errorf("the agent read %d bytes of an endless rootfs, %v; want at most %d and ErrRootfsTooLarge", n, err, maxRootfs)
	}
	if _, _, err := ReadEphemeral(strings.NewReader(strings.Repeat("x", maxEphemeralConfig+10) + "\n")); !errors.Is(err, ErrOverLimit) {
		t.Errorf("a configuration line over its bound = %v, want ErrOverLimit", err)
	}
}

// readCounter counts the bytes read from it.
type readCounter struct {
	r io.Reader
	n atomic.Int64
}

func (c *readCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestAddEphemeralOlderAgent: an agent without the route answers 404 before any of the body is sent, and the
// call fails with ErrUnsupported.
func TestAddEphemeralOlderAgent(t *testing.T) {
	host, guest := net.Pipe()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(http.ResponseWriter, *http.Request) {})
	serve(t, guest, mux)
	c, err := NewClient(host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rootfs := &readCounter{r: bytes.NewReader(make([]byte, 1<<20))}
	err = c.AddEphemeral(context.Background(), EphemeralContainer{ContainerConfig: ContainerConfig{Name: "d"}}, rootfs)
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("AddEphemeral to an older agent = %v, want ErrUnsupported", err)
	}
	if n := rootfs.n.Load(); n != 0 {
		t.Errorf("%d bytes of the rootfs were read for an agent that does not take them", n)
	}
}
