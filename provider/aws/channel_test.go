package aws

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/aws/awstest"
	"github.com/i2kit/i2kit/provider/vm"
)

// consoleEC2 is a stateful fake of the EC2 calls the channel makes: instances' consoles and tags. Other calls
// panic (the embedded nil interface).
type consoleEC2 struct {
	EC2API

	mu                                     sync.Mutex
	console                                map[string]string // instance ID → console text; an instance exists when it has an entry
	tags                                   map[string]map[string]string
	consoleErr, createTagsErr, describeErr error
	consoleReads, createTags, describes    int
	// afterRead, if set, is called after each console read with the number of reads so far.
	afterRead func(n int)
}

func newConsoleEC2(ids ...string) *consoleEC2 {
	f := &consoleEC2{console: map[string]string{}, tags: map[string]map[string]string{}}
	for _, id := range ids {
		f.console[id] = ""
	}
	return f
}

func (f *consoleEC2) setConsole(id, text string) {
	f.mu.Lock()
	f.console[id] = text
	f.mu.Unlock()
}

func (f *consoleEC2) tag(id, key string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tags[id][key]
}

func (f *consoleEC2) counts() (reads, creates, describes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.consoleReads, f.createTags, f.describes
}

func (f *consoleEC2) GetConsoleOutput(_ context.Context, in *ec2.GetConsoleOutputInput, _ ...func(*ec2.Options)) (*ec2.GetConsoleOutputOutput, error) {
	f.mu.Lock()
	if f.consoleErr != nil {
		f.mu.Unlock()
		return nil, f.consoleErr
	}
	if in.Latest == nil || !*in.Latest {
		f.mu.Unlock()
		panic("GetConsoleOutput without Latest")
	}
	text, ok := f.console[*in.InstanceId]
	if !ok {
		f.mu.Unlock()
		return nil, codedError("InvalidInstanceID.NotFound")
	}
	f.consoleReads++
	n, after := f.consoleReads, f.afterRead
	f.mu.Unlock()
	if after != nil {
		after(n)
	}
	out := &ec2.GetConsoleOutputOutput{InstanceId: in.InstanceId}
	if text != "" { // EC2 leaves Output out while the console is empty
		enc := base64.StdEncoding.EncodeToString([]byte(text))
		out.Output = &enc
	}
	return out, nil
}

func (f *consoleEC2) CreateTags(_ context.Context, in *ec2.CreateTagsInput, _ ...func(*ec2.Options)) (*ec2.CreateTagsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.createTags++
	if f.createTagsErr != nil {
		return nil, f.createTagsErr
	}
	for _, id := range in.Resources {
		if f.tags[id] == nil {
			f.tags[id] = map[string]string{}
		}
		for _, t := range in.Tags {
			f.tags[id][*t.Key] = *t.Value
		}
	}
	return &ec2.CreateTagsOutput{}, nil
}

func (f *consoleEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.describes++
	if f.describeErr != nil {
		return nil, f.describeErr
	}
	var r types.Reservation
	for _, id := range in.InstanceIds {
		if _, ok := f.console[id]; !ok {
			return nil, codedError("InvalidInstanceID.NotFound")
		}
		inst := types.Instance{InstanceId: &id}
		for k, v := range f.tags[id] {
			inst.Tags = append(inst.Tags, types.Tag{Key: &k, Value: &v})
		}
		r.Instances = append(r.Instances, inst)
	}
	return &ec2.DescribeInstancesOutput{Reservations: []types.Reservation{r}}, nil
}

// codedError is an AWS error as the SDK returns it.
func codedError(code string) error {
	return &smithy.GenericAPIError{Code: code, Message: "api error " + code}
}

// testChannel returns a channel over api, with a CA of its own and a port free on 127/8, that backs off briefly.
func testChannel(t *testing.T, api EC2API) *Channel {
	t.Helper()
	ca, err := LoadCA("", "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return withBackoff(NewChannel(api, ca, port))
}

func withBackoff(c *Channel) *Channel {
	c.retryMin, c.retryMax = time.Millisecond, 4*time.Millisecond
	return c
}

// startAgent starts a fake agent for the channel's user-data on ip (at the channel's port).
func startAgent(t *testing.T, c *Channel, ip string) *awstest.FakeAgent {
	t.Helper()
	ud, err := c.UserData(vm.Plan{Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := awstest.NewFakeAgent(ud, ip, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func chanContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// openSession opens a protocol session on conn and asks for the pod's status: the whole path works.
func openSession(t *testing.T, ctx context.Context, conn net.Conn) {
	t.Helper()
	c, err := protocol.NewClient(conn, 5*time.Second)
	if err != nil {
		t.Fatalf("the protocol's handshake over the channel: %v", err)
	}
	defer c.Close()
	if _, err := c.Status(ctx); err != nil {
		t.Fatalf("status over the channel: %v", err)
	}
}

func TestDialPinsTheConsoleKeyAndKeepsItAsATag(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	a := startAgent(t, ch, "127.0.0.1")
	api.setConsole("i-1", "[    0.000000] Linux version 6.1\n[    1.2] i2kit-agent: starting\n"+a.ConsoleLine())
	ctx := chanContext(t)
	conn, err := ch.Dial(ctx, "i-1", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if v := conn.(*tls.Conn).ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("TLS version %x, want 1.3", v)
	}
	openSession(t, ctx, conn)
	if got := api.tag("i-1", TagAgentKey); got != a.Fingerprint() {
		t.Fatalf("tag %s = %q, want the agent's %q", TagAgentKey, got, a.Fingerprint())
	}
	conn, err = ch.Dial(ctx, "i-1", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	openSession(t, ctx, conn)
	if reads, creates, describes := api.counts(); reads != 1 || creates != 1 || describes != 1 {
		t.Fatalf("%d console reads, %d CreateTags, %d DescribeInstances for two dials, want one each", reads, creates, describes)
	}
}

func TestDialRefusesAnImpostor(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	agent := startAgent(t, ch, "127.0.0.1")
	impostor := startAgent(t, ch, "127.0.0.2") // knows everything user-data says, not the agent's key
	api.setConsole("i-1", agent.ConsoleLine())
	ctx := chanContext(t)
	conn, err := ch.Dial(ctx, "i-1", "127.0.0.2")
	if err == nil {
		conn.Close()
		t.Fatal("the channel accepted a server with another key at the instance's address")
	}
	if !errors.Is(err, errAgentKey) {
		t.Fatalf("got %v, want %v", err, errAgentKey)
	}
	if _, ok := impostor.Config(); ok {
		t.Fatal("the impostor got the pod's configuration")
	}
}

func TestDialRefusesTLSBelow13(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	// a server with the pinned key that offers TLS 1.2 at most
	pemBytes, err := newCAPEM(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(pemBytes, pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ch.ca.CertPEM())
	ln, err := tls.Listen("tcp", net.JoinHostPort("127.0.0.3", strconv.Itoa(ch.port)), &tls.Config{
		Certificates: []tls.Certificate{cert}, MaxVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake() //nolint:errcheck
			c.Close()
		}
	}()
	api.setConsole("i-1", boot.KeyLine(boot.KeyFingerprint(cert.Leaf))+"\n")
	conn, err := ch.Dial(chanContext(t), "i-1", "127.0.0.3")
	if err == nil {
		conn.Close()
		t.Fatal("the channel spoke TLS 1.2")
	}
	if !strings.Contains(err.Error(), "protocol version") {
		t.Fatalf("got %v, want a protocol version refusal", err)
	}
}

func TestDialWaitsForTheKeyLine(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	a := startAgent(t, ch, "127.0.0.1")
	api.setConsole("i-1", "[    0.0] booting\n")
	api.afterRead = func(n int) {
		if n == 3 { // the agent prints its key while the node waits
			api.setConsole("i-1", "[    0.0] booting\n"+a.ConsoleLine())
		}
	}
	ctx := chanContext(t)
	conn, err := ch.Dial(ctx, "i-1", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	openSession(t, ctx, conn)
	if reads, _, _ := api.counts(); reads != 4 {
		t.Fatalf("%d console reads, want 4", reads)
	}
}

// The agent prints its key before it listens: a dial between the two is refused, and waits.
func TestDialWaitsForTheAgentToListen(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	a := startAgent(t, ch, "127.0.0.1")
	api.setConsole("i-1", a.ConsoleLine())
	// The instance's address, 127.0.0.6, refuses connections until the agent "listens" there: a forwarder to it.
	addr := net.JoinHostPort("127.0.0.6", strconv.Itoa(ch.port))
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("%s accepts connections before the test listens", addr)
	}
	listening := make(chan struct{})
	go func() {
		defer close(listening)
		time.Sleep(300 * time.Millisecond) // a window for refused dials, not a wait on a result
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(func() { ln.Close() })
		go forward(ln, a.Addr())
	}()
	ctx := chanContext(t)
	conn, err := ch.Dial(ctx, "i-1", "127.0.0.6")
	<-listening
	if err != nil {
		t.Fatalf("a dial before the agent listened: %v", err)
	}
	openSession(t, ctx, conn)
}

// forward copies every connection ln accepts to and from one to addr.
func forward(ln net.Listener, addr string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := net.Dial("tcp", addr)
			if err != nil {
				return
			}
			defer up.Close()
			go io.Copy(up, c) //nolint:errcheck
			io.Copy(c, up)    //nolint:errcheck
		}()
	}
}

func TestDialGivesUpWaitingWithItsContext(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	api.afterRead = func(n int) {
		if n == 2 {
			cancel()
		}
	}
	if _, err := ch.Dial(ctx, "i-1", "127.0.0.1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want the context's end", err)
	}
	if _, creates, _ := api.counts(); creates != 0 {
		t.Fatal("a pin was kept without a key line")
	}
}

func TestALaterKeyLineDoesNotChangeThePin(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	agent := startAgent(t, ch, "127.0.0.1")
	workload := startAgent(t, ch, "127.0.0.2") // a workload that prints a key line and serves it
	api.setConsole("i-1", agent.ConsoleLine()+"container output\n"+workload.ConsoleLine())
	ctx := chanContext(t)
	conn, err := ch.Dial(ctx, "i-1", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	// The console scrolled: the latest output holds only the workload's line.
	api.setConsole("i-1", "container output\n"+workload.ConsoleLine())
	if conn, err := ch.Dial(ctx, "i-1", "127.0.0.2"); !errors.Is(err, errAgentKey) {
		if err == nil {
			conn.Close()
		}
		t.Fatalf("dialling the workload's server: %v, want %v", err, errAgentKey)
	}
	if got := api.tag("i-1", TagAgentKey); got != agent.Fingerprint() {
		t.Fatalf("the tag changed to %q", got)
	}
}

func TestThePinSurvivesARestart(t *testing.T) {
	api := newConsoleEC2("i-1")
	before := testChannel(t, api)
	agent := startAgent(t, before, "127.0.0.1")
	workload := startAgent(t, before, "127.0.0.2")
	api.setConsole("i-1", agent.ConsoleLine())
	ctx := chanContext(t)
	conn, err := before.Dial(ctx, "i-1", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()

	// The node restarts (same CA, same port, nothing in memory); by now the console shows only a workload's line.
	api.setConsole("i-1", workload.ConsoleLine())
	after := withBackoff(NewChannel(api, before.ca, before.port))
	if conn, err := after.Dial(ctx, "i-1", "127.0.0.2"); !errors.Is(err, errAgentKey) {
		if err == nil {
			conn.Close()
		}
		t.Fatalf("after a restart, dialling the workload's server: %v, want %v", err, errAgentKey)
	}
	conn, err = after.Dial(ctx, "i-1", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	openSession(t, ctx, conn)
	if reads, _, _ := api.counts(); reads != 1 {
		t.Fatalf("%d console reads, want only the first node's", reads)
	}
}

func TestDialRefusesAMalformedTag(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	a := startAgent(t, ch, "127.0.0.1")
	api.setConsole("i-1", a.ConsoleLine())
	api.tags["i-1"] = map[string]string{TagAgentKey: "sha256:not-hex"}
	if _, err := ch.Dial(chanContext(t), "i-1", "127.0.0.1"); err == nil || !strings.Contains(err.Error(), "not a key fingerprint") {
		t.Fatalf("got %v", err)
	}
	if reads, _, _ := api.counts(); reads != 0 {
		t.Fatal("a malformed tag sent the channel back to the console")
	}
}

func TestDialReadsABoundedConsole(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	a := startAgent(t, ch, "127.0.0.1")
	noise := strings.Repeat("[    1.0] kernel: noise\n", maxConsole/24+1) // more than the bound, in short lines
	api.setConsole("i-1", noise+a.ConsoleLine())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	api.afterRead = func(n int) {
		if n == 2 {
			cancel()
		}
	}
	if conn, err := ch.Dial(ctx, "i-1", "127.0.0.1"); !errors.Is(err, context.Canceled) {
		if err == nil {
			conn.Close()
		}
		t.Fatalf("a key line past %d bytes of console: %v, want it unread", maxConsole, err)
	}
}

func TestDialConcurrentlyPinsOnce(t *testing.T) {
	api := newConsoleEC2("i-1")
	ch := testChannel(t, api)
	a := startAgent(t, ch, "127.0.0.1")
	api.afterRead = func(n int) {
		if n == 2 {
			api.setConsole("i-1", a.ConsoleLine())
		}
	}
	ctx := chanContext(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			conn, err := ch.Dial(ctx, "i-1", "127.0.0.1")
			if err != nil {
				t.Error(err)
				return
			}
			conn.Close()
		})
	}
	wg.Wait()
	if reads, creates, describes := api.counts(); creates != 1 || describes != 1 || reads != 3 {
		t.Fatalf("%d console reads, %d CreateTags, %d DescribeInstances, want 3, 1, 1", reads, creates, describes)
	}
}

func TestDialNamesTheRefusedAction(t *testing.T) {
	refused := codedError("UnauthorizedOperation")
	for _, tc := range []struct {
		name   string
		set    func(*consoleEC2)
		action string
	}{
		{"describe", func(f *consoleEC2) { f.describeErr = refused }, "ec2:DescribeInstances"},
		{"console", func(f *consoleEC2) { f.consoleErr = refused }, "ec2:GetConsoleOutput"},
		{"tags", func(f *consoleEC2) { f.createTagsErr = refused }, "ec2:CreateTags"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := newConsoleEC2("i-1")
			ch := testChannel(t, api)
			a := startAgent(t, ch, "127.0.0.1")
			api.setConsole("i-1", a.ConsoleLine())
			tc.set(api)
			_, err := ch.Dial(chanContext(t), "i-1", "127.0.0.1")
			if err == nil || !strings.Contains(err.Error(), tc.action) || !strings.Contains(err.Error(), "not allowed") || !errors.Is(err, refused) {
				t.Fatalf("got %v, want a refusal naming %s", err, tc.action)
			}
			// fixed: the next dial succeeds (nothing half-pinned was kept)
			api.mu.Lock()
			api.describeErr, api.consoleErr, api.createTagsErr = nil, nil, nil
			api.mu.Unlock()
			conn, err := ch.Dial(chanContext(t), "i-1", "127.0.0.1")
			if err != nil {
				t.Fatal(err)
			}
			conn.Close()
		})
	}
}

func TestDialNeedsAnIPAndAnInstance(t *testing.T) {
	api := newConsoleEC2()
	ch := testChannel(t, api)
	if _, err := ch.Dial(chanContext(t), "i-1", "ip-10-0-0-1.ec2.internal"); err == nil {
		t.Error("dialled a host name")
	}
	if _, err := ch.Dial(chanContext(t), "i-gone", "127.0.0.1"); err == nil || !strings.Contains(err.Error(), "ec2:DescribeInstances") {
		t.Errorf("an unknown instance: %v", err)
	}
}

func TestChannelUserData(t *testing.T) {
	ch := testChannel(t, newConsoleEC2())
	ch.port = 7443
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		want, err   string
	}{
		{"plain", nil, `{"version":1,"hostname":"web","agentPort":7443,"nodeCA":"<nodeCA>"}`, ""},
		{"metadata kept", map[string]string{AnnotationInstanceMetadata: "enabled"},
			`{"version":1,"hostname":"web","agentPort":7443,"nodeCA":"<nodeCA>","keepMetadata":true}`, ""},
		{"metadata disabled", map[string]string{AnnotationInstanceMetadata: "disabled"},
			`{"version":1,"hostname":"web","agentPort":7443,"nodeCA":"<nodeCA>"}`, ""},
		{"a bad annotation", map[string]string{AnnotationInstanceMetadata: "yes"}, "", `i2kit.io/instance-metadata="yes"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ch.UserData(vm.Plan{UID: "u1", Namespace: "default", Name: "web", Annotations: tc.annotations})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Replace(string(b), jsonString(t, string(ch.ca.CertPEM())), `"<nodeCA>"`, 1)
			if got != tc.want {
				t.Fatalf("user-data\n got %s\nwant %s", got, tc.want)
			}
			if _, err := boot.ParseUserData(b); err != nil {
				t.Fatalf("the agent would refuse it: %v", err)
			}
		})
	}
}

func jsonString(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestChannelUserDataHoldsNoSecret checks what user-data carries, for a CA made in the state directory (whose file holds
// the key too) and one given as files: only the CA's certificate, no private key in any form.
func TestChannelUserDataHoldsNoSecret(t *testing.T) {
	dir := t.TempDir()
	made, err := LoadCA("", "", dir)
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := readPEMFile(dir + "/" + CAFileName)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := splitPEM(t, caFile)
	given, err := LoadCA(writePEM(t, "ca.crt", append(append([]byte(nil), keyPEM...), certPEM...)), writePEM(t, "ca.key", keyPEM), "")
	if err != nil {
		t.Fatal(err)
	}
	keyBlock, _ := pem.Decode(keyPEM)
	for name, ca := range map[string]*CA{"made": made, "given": given} {
		t.Run(name, func(t *testing.T) {
			client, err := ca.ClientCertificate()
			if err != nil {
				t.Fatal(err)
			}
			clientKey, _ := x509.MarshalPKCS8PrivateKey(client.PrivateKey)
			b, err := NewChannel(nil, ca, 7443).UserData(vm.Plan{Name: "web", Annotations: map[string]string{AnnotationInstanceMetadata: "enabled"}})
			if err != nil {
				t.Fatal(err)
			}
			ud, err := boot.ParseUserData(b) // strict: no field beyond the format's
			if err != nil {
				t.Fatal(err)
			}
			for _, secret := range []string{"PRIVATE", base64.StdEncoding.EncodeToString(keyBlock.Bytes)[:40],
				base64.StdEncoding.EncodeToString(clientKey)[:40]} {
				if strings.Contains(string(b), secret) || strings.Contains(ud.NodeCA, secret) {
					t.Fatalf("user-data holds secret material (%.20s…)", secret)
				}
			}
			rest := []byte(ud.NodeCA)
			for n := 0; ; n++ {
				var blk *pem.Block
				blk, rest = pem.Decode(rest)
				if blk == nil {
					if n != 1 || strings.TrimSpace(string(rest)) != "" {
						t.Fatalf("nodeCA holds %d PEM blocks and %q besides, want the CA's certificate alone", n, rest)
					}
					break
				}
				cert, err := x509.ParseCertificate(blk.Bytes)
				if blk.Type != "CERTIFICATE" || len(blk.Headers) > 0 || err != nil || !cert.Equal(ca.cert) {
					t.Fatalf("nodeCA holds a %s block that is not the CA's certificate", blk.Type)
				}
			}
		})
	}
}
