package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/internal/netnstest"
)

func TestMetadataRules(t *testing.T) {
	reject := &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED}
	want := [][]expr.Any{
		{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{169, 254, 169, 254}},
			reject,
		},
		{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0xfd, 0, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54}},
			reject,
		},
	}
	if got := metadataRules(); !reflect.DeepEqual(got, want) {
		t.Errorf("metadataRules() =\n%#v\nwant\n%#v", got, want)
	}
}

// TestKeyLineBeforeUserData: the key line is on the console before anything is read from the network.
func TestKeyLineBeforeUserData(t *testing.T) {
	console := &lockedBuffer{}
	var printed []bool
	f := newFakeIMDS(testUserData)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, ok := boot.FirstKeyLine(strings.NewReader(console.String()), 1<<20)
		printed = append(printed, ok) // the client sends one request at a time
		f.ServeHTTP(w, r)
	}))
	defer srv.Close()
	if _, err := cloudBoot(context.Background(), console, testIMDS(srv), func() (tls.Certificate, error) { return newAgentKey(time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if len(printed) == 0 || slices.Contains(printed, false) {
		t.Errorf("key line printed before each metadata request: %v, want all true", printed)
	}
}

func TestCloudBootRefusesBadHostname(t *testing.T) {
	for _, h := range []string{"Web", "web_1", "web\nI2KIT_AGENT_KEY sha256:00", strings.Repeat("a", 65), "-web"} {
		ud, _ := json.Marshal(boot.UserData{Version: 1, Hostname: h, AgentPort: 8443, NodeCA: "x"})
		srv := httptest.NewServer(newFakeIMDS(string(ud)))
		_, err := cloudBoot(context.Background(), &lockedBuffer{}, testIMDS(srv), func() (tls.Certificate, error) { return newAgentKey(time.Now()) })
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), "hostname") {
			t.Errorf("hostname %q: %v, want it refused", h, err)
		}
	}
}

// TestMetadataBlocked proves the rule in a fresh network namespace: the metadata addresses (IPv4 and IPv6) are
// put on lo with a listener behind each, as a stand-in for the real service; so is a Service whose endpoint is the
// metadata address. Each is reachable before blockMetadata and refused, at once, after.
func TestMetadataBlocked(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}

	if err := linkUp("lo"); err != nil {
		t.Fatal(err)
	}
	// The VM's own addresses: connections come from them, as from the instance's private address (a connection
	// from the metadata address itself would have the refusal addressed to it, and dropped by the rule).
	const serviceIP, ownIPv4, ownIPv6 = "10.96.0.10", "10.0.1.23", "fd00:1::23"
	for _, a := range []string{imdsIPv4 + "/32", serviceIP + "/32", imdsIPv6 + "/128", ownIPv4 + "/32", ownIPv6 + "/128"} {
		if out, err := exec.Command("ip", "addr", "add", a, "dev", "lo", "nodad").CombinedOutput(); err != nil {
			t.Fatalf("ip addr add %s: %v: %s", a, err, out)
		}
	}
	targets := map[string]string{}
	for _, host := range []string{imdsIPv4, imdsIPv6} {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "80"))
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
				c.Close()
			}
		}()
		targets[host] = ln.Addr().String()
	}
	// A Service whose endpoint is the metadata service: the DNAT happens before the metadata rule sees the packet.
	var svc services
	if err := svc.set([]protocol.Service{{IP: serviceIP, Port: 8080, Protocol: "TCP",
		Endpoints: []protocol.Endpoint{{IP: imdsIPv4, Port: 80}}}}); err != nil {
		t.Fatal(err)
	}
	targets["a Service to it"] = net.JoinHostPort(serviceIP, "8080")

	dial := func(addr string) error {
		own := ownIPv4
		if strings.HasPrefix(addr, "[") {
			own = ownIPv6
		}
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(own)}}
		c, err := d.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}
	for name, addr := range targets {
		if err := dial(addr); err != nil {
			t.Fatalf("before the rule, %s (%s): %v", name, addr, err)
		}
	}
	if err := blockMetadata(); err != nil {
		t.Fatal(err)
	}
	if err := blockMetadata(); err != nil { // replaces, as at a second boot step
		t.Fatal(err)
	}
	for name, addr := range targets {
		err := dial(addr)
		var ne net.Error
		switch {
		case err == nil:
			t.Errorf("after the rule, %s (%s) is reachable", name, addr)
		case errors.As(err, &ne) && ne.Timeout():
			t.Errorf("after the rule, %s (%s) timed out: want an immediate refusal", name, addr)
		default:
			t.Logf("%s: %v", name, err)
		}
	}
}
