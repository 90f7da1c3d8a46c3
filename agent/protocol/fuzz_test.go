package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The fuzz targets feed the decoders the host and the agent apply to each other's bytes. Run them with
// `make fuzz-agent`; their seed corpora are under testdata/fuzz.

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte("\x01\x00\x00\x00\x03out\x05\x00\x00\x00\x0a{\"code\":3}"))
	f.Add([]byte("\x02\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			ch, p, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(p) > maxFrame {
				t.Fatalf("a frame of %d bytes", len(p))
			}
			var b bytes.Buffer
			if err := NewFrameWriter(&b).Write(ch, p); err != nil || b.Len() != 5+len(p) {
				t.Fatalf("re-encoding a frame: %d bytes, %v", b.Len(), err)
			}
		}
	})
}

func FuzzReadLine(f *testing.F) {
	f.Add([]byte("noise I2KIT-OK 1 n\nrest"))
	f.Add([]byte("I2KIT-ERR version 9 not supported\n"))
	f.Add([]byte(strings.Repeat("I2KIT-O", 50) + "K 1 x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		line, err := readLine(bytes.NewReader(data), okMagic, errMagic)
		if err != nil {
			return
		}
		if !strings.HasPrefix(line, okMagic) && !strings.HasPrefix(line, errMagic) || strings.Contains(line, "\n") ||
			len(line) > maxHandshakeLine {
			t.Fatalf("readLine = %q", line)
		}
	})
}

// fuzzConn is a peer that sends data, then end of file, and swallows what it is sent.
type fuzzConn struct {
	net.Conn // nil: only what the handshake uses is implemented
	r        io.Reader
}

func (c *fuzzConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

func FuzzDial(f *testing.F) {
	f.Add([]byte("I2KIT-OK 1 0011223344556677\n"))
	f.Add([]byte("I2KIT-ERR version 1 not supported: the agent speaks 2\n"))
	f.Add([]byte("\x00\x01garbage I2KIT-OK 1 x\nI2KIT-OK 2"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Dial(&fuzzConn{r: bytes.NewReader(data)}, time.Second)
		if err == nil { // the nonce is random: the peer cannot have answered it
			s.Close()
			t.Fatal("the handshake succeeded against a peer that never saw the hello")
		}
		if errors.Is(err, ErrVersion) && !strings.Contains(string(data), errMagic) {
			t.Fatalf("a version error without the agent's refusal: %v for %q", err, data)
		}
	})
}

func FuzzAccept(f *testing.F) {
	f.Add([]byte("I2KIT-HELLO 1 abc\n\x00\x01\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00"))
	f.Add([]byte("I2KIT-HELLO 99 abc\nI2KIT-HELLO 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Accept(&fuzzConn{r: bytes.NewReader(data)})
		if err != nil {
			return
		}
		s.Close()
	})
}

func FuzzDecodeStatus(f *testing.F) {
	b, _ := json.Marshal(PodStatus{Seq: 2, Configured: true, Containers: []ContainerStatus{{Name: "web",
		State: ContainerState{State: Running, StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, LastState: &ContainerState{State: Terminated}}}})
	f.Add(b)
	f.Add([]byte(`{"containers":null,"Containers":[{},{}]}`))
	f.Add([]byte(`{"containers":[` + strings.Repeat(`{},`, MaxContainers) + `{}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decodeStatus(data)
		var want PodStatus
		plainErr := json.Unmarshal(data, &want)
		switch {
		case err == nil && len(st.Containers) > MaxContainers:
			t.Fatalf("%d containers decoded", len(st.Containers))
		case err == nil && (plainErr != nil || !reflect.DeepEqual(st, want)):
			t.Fatalf("decodeStatus = %+v; encoding/json: %+v, %v", st, want, plainErr)
		case err != nil && plainErr == nil && len(want.Containers) <= MaxContainers:
			t.Fatalf("decodeStatus failed (%v) on what encoding/json decodes", err)
		}
	})
}

func FuzzDecodeStats(f *testing.F) {
	b, _ := json.Marshal(Stats{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Network: []InterfaceStats{{Name: "eth0", RxBytes: 9}},
		Containers: []ContainerStats{{Name: "web", Memory: MemoryStats{Usage: 1}}}})
	f.Add(b)
	f.Add([]byte(`{"network":[],"containers":[{"name":"a"},{"name":"b"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decodeStats(data)
		var want Stats
		plainErr := json.Unmarshal(data, &want)
		switch {
		case err == nil && (len(st.Containers) > MaxContainers || len(st.Network) > maxInterfaces):
			t.Fatalf("%d containers, %d interfaces decoded", len(st.Containers), len(st.Network))
		case err == nil && (plainErr != nil || !reflect.DeepEqual(st, want)):
			t.Fatalf("decodeStats = %+v; encoding/json: %+v, %v", st, want, plainErr)
		case err != nil && plainErr == nil && len(want.Containers) <= MaxContainers && len(want.Network) <= maxInterfaces:
			t.Fatalf("decodeStats failed (%v) on what encoding/json decodes", err)
		}
	})
}
