package awstest_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/aws"
	"github.com/i2kit/i2kit/provider/aws/awstest"
)

func newCA(t *testing.T) *aws.CA {
	t.Helper()
	ca, err := aws.LoadCA("", "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func userData(t *testing.T, ca *aws.CA, port int) []byte {
	t.Helper()
	b, err := json.Marshal(boot.UserData{Version: boot.UserDataVersion, Hostname: "web", AgentPort: port, NodeCA: string(ca.CertPEM())})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// freePort returns a TCP port free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// dial connects to a and opens a protocol session, presenting cert (nil: none) and pinning a's key.
func dial(t *testing.T, a *awstest.FakeAgent, cert *tls.Certificate) (*protocol.Client, error) {
	t.Helper()
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if boot.KeyFingerprint(cs.PeerCertificates[0]) != a.Fingerprint() {
				return errors.New("not the agent's key")
			}
			return nil
		},
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := tls.Dial("tcp", a.Addr(), cfg)
	if err != nil {
		return nil, err
	}
	return protocol.NewClient(conn, 5*time.Second)
}

func TestFakeAgentServesTheProtocol(t *testing.T) {
	ca := newCA(t)
	port := freePort(t)
	off := make(chan struct{})
	a, err := awstest.NewFakeAgent(userData(t, ca, port), "127.0.0.1", func() { close(off) })
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Addr() != "127.0.0.1:"+strconv.Itoa(port) {
		t.Fatalf("listening on %s, want the user-data's port %d", a.Addr(), port)
	}
	if got, ok := boot.FirstKeyLine(strings.NewReader("[ 0.1] booting\n"+a.ConsoleLine()), 1<<10); !ok || got != a.Fingerprint() {
		t.Fatalf("console line %q gives %q", a.ConsoleLine(), got)
	}
	cert, err := ca.ClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	c, err := dial(t, a, cert)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil || st.Configured {
		t.Fatalf("status before configuration: %+v, %v", st, err)
	}
	watched := make(chan protocol.PodStatus, 4)
	go c.Watch(ctx, func(st protocol.PodStatus) { watched <- st }) //nolint:errcheck
	<-watched
	if err := c.Configure(ctx, protocol.PodConfig{Containers: []protocol.ContainerConfig{{Name: "app"}}}); err != nil {
		t.Fatal(err)
	}
	st = <-watched
	if !st.Configured || len(st.Containers) != 1 || st.Containers[0].State.State != protocol.Running {
		t.Fatalf("status after configuration: %+v", st)
	}
	if cfg, ok := a.Config(); !ok || cfg.Containers[0].Name != "app" {
		t.Fatalf("the agent holds %+v %v", cfg, ok)
	}
	if err := c.PowerOff(ctx, time.Second); err != nil {
		t.Fatalf("power-off: %v", err)
	}
	select {
	case <-off:
	case <-ctx.Done():
		t.Fatal("onPowerOff was not called")
	}
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the session outlived the power-off")
	}
	if _, err := net.Dial("tcp", a.Addr()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dialling a powered-off agent: %v, want connection refused", err)
	}
}

func TestFakeAgentRefusesClientsWithoutTheNodesCertificate(t *testing.T) {
	ca := newCA(t)
	otherCert, err := newCA(t).ClientCertificate()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
	}{
		{"no certificate", nil},
		{"a certificate another CA signed", otherCert},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := awstest.NewFakeAgent(userData(t, ca, freePort(t)), "127.0.0.1", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			// Under TLS 1.3 the client's handshake ends before the server has checked its certificate: the
			// refusal shows on the protocol's handshake.
			if c, err := dial(t, a, tc.cert); err == nil {
				c.Close()
				t.Fatal("the agent served a client the node's CA did not certify")
			}
			a.Close() // waits for the connection's end
			if a.Refused() != 1 {
				t.Fatalf("refused %d handshakes, want 1", a.Refused())
			}
		})
	}
}

func TestFakeAgentNeedsValidUserData(t *testing.T) {
	for _, raw := range []string{
		`{"version":1,"hostname":"web","agentPort":7443,"nodeCA":"no PEM here"}`,
		`{"version":1,"hostname":"web","agentPort":7443,"nodeCA":"x","token":"secret"}`,
	} {
		if a, err := awstest.NewFakeAgent([]byte(raw), "127.0.0.1:0", nil); err == nil {
			a.Close()
			t.Errorf("started with user-data %s", raw)
		}
	}
}
