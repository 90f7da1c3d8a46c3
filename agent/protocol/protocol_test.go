package protocol

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// serve runs Accept and an HTTP handler on the guest end of a pipe, once.
func serve(t *testing.T, guest net.Conn, h http.Handler) {
	t.Helper()
	go func() {
		sess, err := Accept(guest)
		if err != nil {
			return
		}
		http.Serve(sess, h) //nolint:errcheck
	}()
}

func TestHandshakeSkipsWhatAnEarlierSessionLeft(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(PodStatus{Seq: 7}) //nolint:errcheck
	})
	serve(t, guest, mux)
	// Bytes of an earlier session, then a hello of another version, reach the guest before our hello.
	if _, err := host.Write([]byte("\x00\x01garbage from yamux\nI2KIT-HELLO 99 x\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := readLine(host, errMagic); err != nil || !strings.Contains(line, "99") { // the refusal
		t.Fatalf("answer to version 99 = %q, %v", line, err)
	}
	c, err := NewClient(host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.Status(context.Background())
	if err != nil || st.Seq != 7 {
		t.Fatalf("status over the session = %+v, %v", st, err)
	}
}

func TestHandshakeRefusesAnotherVersion(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	go func() {
		sess, err := Accept(guest)
		if err == nil {
			sess.Close()
		}
	}()
	host.SetDeadline(time.Now().Add(5 * time.Second)) //nolint:errcheck
	if _, err := io.WriteString(host, "I2KIT-HELLO 99 abc\n"); err != nil {
		t.Fatal(err)
	}
	line, err := readLine(host, okMagic, errMagic)
	if err != nil || !strings.HasPrefix(line, errMagic) || !strings.Contains(line, "99") {
		t.Fatalf("answer to version 99 = %q, %v", line, err)
	}
}

func TestReadLineFindsPrefixAfterNoise(t *testing.T) {
	for _, in := range []string{
		"I2KIT-OK 1 n\n",
		"noise I2KIT-OK 1 n\n",
		strings.Repeat("x", 1000) + "I2KIT-OK 1 n\nrest",
	} {
		r := strings.NewReader(in)
		got, err := readLine(r, okMagic)
		if err != nil || got != "I2KIT-OK 1 n" {
			t.Errorf("readLine(%.20q) = %q, %v", in, got, err)
		}
	}
}

func TestFramesRoundTrip(t *testing.T) {
	var b bytes.Buffer
	fw := NewFrameWriter(&b)
	big := bytes.Repeat([]byte("x"), maxFrame+10)
	fw.Write(Stdout, []byte("out"))        //nolint:errcheck
	fw.Write(Stderr, nil)                  //nolint:errcheck
	fw.Channel(Stdin).Write(big)           //nolint:errcheck
	fw.Write(ExitCh, []byte(`{"code":3}`)) //nolint:errcheck
	want := []struct {
		ch byte
		n  int
	}{{Stdout, 3}, {Stderr, 0}, {Stdin, maxFrame}, {Stdin, 10}, {ExitCh, 10}}
	for _, w := range want {
		ch, p, err := ReadFrame(&b)
		if err != nil || ch != w.ch || len(p) != w.n {
			t.Fatalf("frame = %d, %d bytes, %v; want %d, %d bytes", ch, len(p), err, w.ch, w.n)
		}
	}
}

func TestExecOverFrames(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/exec", func(w http.ResponseWriter, r *http.Request) {
		var req ExecRequest
		json.Unmarshal([]byte(r.URL.Query().Get("request")), &req) //nolint:errcheck
		conn, brw, _ := w.(http.Hijacker).Hijack()
		defer conn.Close()
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+UpgradeFrames+"\r\n\r\n") //nolint:errcheck
		fw := NewFrameWriter(conn)
		// echo stdin to stdout until stdin closes, then exit with len(command)
		for {
			ch, p, err := ReadFrame(brw.Reader)
			if err != nil || ch == CloseStdin {
				break
			}
			fw.Write(Stdout, bytes.ToUpper(p)) //nolint:errcheck
		}
		fw.Write(Stderr, []byte(strings.Join(req.Command, " "))) //nolint:errcheck
		b, _ := json.Marshal(Exit{Code: len(req.Command)})
		fw.Write(ExitCh, b) //nolint:errcheck
	})
	serve(t, guest, mux)
	c, err := NewClient(host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out, errOut bytes.Buffer
	code, err := c.Exec(context.Background(), ExecRequest{Container: "c", Command: []string{"a", "b"}, Stdin: true},
		Streams{Stdin: strings.NewReader("hello"), Stdout: &out, Stderr: &errOut})
	if err != nil || code != 2 || out.String() != "HELLO" || errOut.String() != "a b" {
		t.Fatalf("exec = %d, %v, stdout %q, stderr %q", code, err, out.String(), errOut.String())
	}
}

func TestLogOptionsQueryRoundTrip(t *testing.T) {
	o := LogOptions{Container: "web", Follow: true, Previous: true, Timestamps: true, Tail: 10,
		SinceTime: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), LimitBytes: 99}
	got, err := ParseLogOptions(o.Query())
	if err != nil || got != o {
		t.Fatalf("round trip = %+v, %v; want %+v", got, err, o)
	}
	if _, err := ParseLogOptions(url.Values{"tail": {"x"}}); err == nil {
		t.Error("a bad tail was accepted")
	}
}

// TestPowerOffWhenTheSessionEndsFirst: an agent that powers off at once may end its session before its answer to
// the power-off reaches the host; PowerOff then succeeds (the session's end is the answer). Other requests fail.
func TestPowerOffWhenTheSessionEndsFirst(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	go func() {
		sess, err := Accept(guest)
		if err != nil {
			return
		}
		mux := http.NewServeMux()
		mux.HandleFunc("POST /v1/poweroff", func(http.ResponseWriter, *http.Request) { sess.Close() })
		http.Serve(sess, mux) //nolint:errcheck
	}()
	c, err := NewClient(host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.PowerOff(context.Background(), time.Second); err != nil {
		t.Errorf("PowerOff with the session ended by the agent: %v", err)
	}
	if _, err := c.Status(context.Background()); err == nil {
		t.Error("Status over an ended session succeeded")
	}
	// A session that had ended before the request is no answer: the request never reached the agent.
	if err := c.PowerOff(context.Background(), time.Second); err == nil {
		t.Error("PowerOff over a session that had already ended succeeded")
	}
}

// TestRepeatedPowerOffReachesTheAgent: PowerOff may be called again while the pod stops, with a shorter grace (its
// grace period shortened); each call reaches the agent with its grace, which the agent parses back.
func TestRepeatedPowerOffReachesTheAgent(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	got := make(chan time.Duration, 2)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/poweroff", func(w http.ResponseWriter, r *http.Request) {
		g, err := time.ParseDuration(r.URL.Query().Get("grace"))
		if err != nil {
			t.Errorf("grace %q: %v", r.URL.Query().Get("grace"), err)
		}
		got <- g
		w.WriteHeader(http.StatusAccepted)
	})
	serve(t, guest, mux)
	c, err := NewClient(host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, grace := range []time.Duration{100 * time.Second, 5 * time.Second} {
		if err := c.PowerOff(context.Background(), grace); err != nil {
			t.Fatalf("PowerOff(%s): %v", grace, err)
		}
		if g := <-got; g != grace {
			t.Errorf("the agent got grace %s, want %s", g, grace)
		}
	}
}
