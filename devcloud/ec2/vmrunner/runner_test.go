package vmrunner

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/internal/netnstest"
)

// syncBuffer is a console safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunnerLifecycle runs the runner with a fake QEMU (a script) in a network namespace of its own: the bridge,
// the TAP, a DHCP exchange on the bridge from the instance's MAC, the metadata service from the instance's address,
// QEMU's own exit reported as Exited, Stop and Close cleaning up.
func TestRunnerLifecycle(t *testing.T) {
	if !netnstest.Reexec(t) {
		return
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	dir := t.TempDir()
	fake := filepath.Join(dir, "qemu")
	// The fake QEMU prints its arguments as a console line, then lives until killed, or exits at once (a guest
	// powering off) once the file exit-now exists.
	script := "#!/bin/sh\necho \"fake-qemu $*\"\n" +
		"if [ -e \"" + filepath.Join(dir, "exit-now") + "\" ]; then exit 0; fi\nexec sleep 600\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{StateDir: filepath.Join(dir, "state"), QEMU: fake, KVM: "off"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	exited := make(chan string, 1)
	console := &syncBuffer{}
	root := make([]byte, 3*copyChunk)
	copy(root[copyChunk:], "root volume")
	inst := ec2.Instance{ID: "i-0123456789abcdef0", InstanceType: "t3.micro", VCPUs: 2, MemoryMiB: 1024, PrivateIP: "10.0.1.7",
		SubnetCIDR: "10.0.1.0/24", AvailabilityZone: "us-east-1a", UserData: []byte("user-data"), BootMode: "uefi",
		RootDeviceName: "/dev/xvda",
		Metadata:       ec2.MetadataOptions{HttpEndpoint: "enabled", HttpTokens: "required", HttpPutResponseHopLimit: 1},
		Disks: []ec2.Disk{{DeviceName: "/dev/xvdb", SizeBytes: copyChunk},
			{DeviceName: "/dev/xvda", SizeBytes: 4 * copyChunk, Content: bytes.NewReader(root)}},
		Console: console, Exited: func(reason string) { exited <- reason }}
	if err := r.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	bridge := bridgeName("i2kec2", "10.0.1.0/24")
	tap := tapName(inst.ID)

	// QEMU was given the root volume first, the capped memory and CPUs, OVMF, the TAP and the MAC.
	line := waitFor(t, ctx, console, "fake-qemu")
	for _, want := range []string{"-m 512M -smp 1", "-bios /usr/share/ovmf/OVMF.fd", "vol0.img", "serial=" + volumeSerial(inst.ID, "/dev/xvda") + ",drive=vol0,bootindex=0",
		"ifname=" + tap, "mac=" + macFor(inst.ID).String()} {
		if !strings.Contains(line, want) {
			t.Errorf("QEMU's arguments %q lack %q", line, want)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "state", inst.ID, "vol0.img")); err != nil || !bytes.Equal(b, append(root, make([]byte, copyChunk)...)) {
		t.Errorf("the root volume is not the snapshot's content (%v)", err)
	}
	if out, _ := exec.Command("ip", "-o", "addr", "show", "dev", bridge).CombinedOutput(); !strings.Contains(string(out), "10.0.1.1/24") ||
		!strings.Contains(string(out), imdsAddr+"/32") {
		t.Errorf("bridge addresses:\n%s", out)
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", "dev", tap).CombinedOutput(); !strings.Contains(string(out), "master "+bridge) {
		t.Errorf("the TAP is not on the bridge:\n%s", out)
	}

	// The DHCP server's socket is bound to the bridge (the answers themselves: TestDHCPAnswers; the exchange with a
	// real guest: test/vm's TestEC2InstanceBootsFromSnapshot).
	if out, _ := exec.Command("ss", "-uln", "sport", "= :67").CombinedOutput(); !strings.Contains(string(out), "%"+bridge) {
		t.Errorf("no DHCP server bound to %s:\n%s", bridge, out)
	}

	// The metadata service answers the instance's address (here a local one) with IMDSv2.
	if err := ip("addr", "add", "10.0.1.7/32", "dev", "lo"); err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(10, 0, 1, 7)}}).DialContext}}
	req, _ := http.NewRequest(http.MethodPut, "http://"+imdsAddr+tokenPath, nil)
	req.Header.Set(tokenTTLHeader, "60")
	tok := string(body(t, hc, req))
	req, _ = http.NewRequest(http.MethodGet, "http://"+imdsAddr+"/latest/user-data", nil)
	req.Header.Set(tokenHeader, tok)
	if got := string(body(t, hc, req)); got != "user-data" {
		t.Errorf("user-data %q", got)
	}

	// Stop kills QEMU, removes the TAP and the directory; QEMU's end is not reported as the guest's.
	if err := r.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(tap); err == nil {
		t.Error("the TAP outlived Stop")
	}
	if _, err := os.Stat(filepath.Join(dir, "state", inst.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the instance's directory outlived Stop: %v", err)
	}
	if err := r.Stop(ctx, inst.ID); err != nil {
		t.Errorf("a second Stop: %v", err)
	}

	// A guest that powers off: QEMU exits 0 by itself and the runner reports it.
	if err := os.WriteFile(filepath.Join(dir, "exit-now"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	inst.ID = "i-0000000000000beef"
	if err := r.Start(ctx, inst); err != nil {
		t.Fatal(err)
	}
	select {
	case reason := <-exited:
		if reason != "the guest powered off" {
			t.Errorf("Exited(%q)", reason)
		}
	case <-ctx.Done():
		t.Fatal("QEMU's own exit was not reported")
	}
	select {
	case reason := <-exited:
		t.Errorf("a stopped instance was reported exited too (%q)", reason)
	default:
	}

	// Starts that fail (an address outside the subnet, an address taken until Stop) leave nothing behind.
	for _, ip := range []string{"10.9.9.9", inst.PrivateIP} {
		bad := inst
		bad.ID, bad.PrivateIP = "i-0000000000000bad0", ip
		if err := r.Start(ctx, bad); err == nil {
			t.Errorf("an instance at %s started", ip)
		}
		if _, err := os.Stat(filepath.Join(dir, "state", bad.ID)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("a failed start left its directory: %v", err)
		}
	}
	if err := r.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.InterfaceByName(bridge); err == nil {
		t.Error("the bridge outlived Close")
	}
	if err := r.Start(ctx, inst); err == nil {
		t.Error("a closed runner started an instance")
	}
}

// waitFor returns the first console line containing s, waiting as the console fills.
func waitFor(t *testing.T, ctx context.Context, c *syncBuffer, s string) string {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, l := range strings.Split(c.String(), "\n") {
			if strings.Contains(l, s) {
				return l
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no console line with %q:\n%s", s, c.String())
		case <-tick.C:
		}
	}
}

func body(t *testing.T, hc *http.Client, req *http.Request) []byte {
	t.Helper()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s: %s %s", req.Method, req.URL.Path, resp.Status, b)
	}
	return b
}
