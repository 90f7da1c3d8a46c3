package e2e

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/internal/devregistry"
)

// spoofMarker starts the marker of every frame test/spoof sends (its MarkerPrefix).
const spoofMarker = "i2kit-spoof:"

// TestPodsCannotSpoof runs a victim pod and a hostile pod (CAP_NET_RAW) as VMs on one qemu node. The hostile pod
// writes raw frames that impersonate the victim (its MAC, its address, ARP requests in its name) or the gateway,
// then an honest frame. On the host's bridge only the honest frame arrives; the host still maps the victim's
// address to the victim's MAC, the victim still maps the gateway's address to the gateway's MAC (not the
// attacker's), and the victim still answers at its address.
func TestPodsCannotSpoof(t *testing.T) {
	ctx := context.Background()
	reg := localRegistry(t)
	bin := buildStatic(t, "github.com/i2kit/i2kit/test/spoof")
	if err := devregistry.PushBinary(reg+"/spoof:1", bin, "/bin/busybox"); err != nil {
		t.Fatal(err)
	}
	const nodeName, bridge = "i2kit-spoof", "i2kitspoof"
	runDir := filepath.Join(t.TempDir(), "run")
	t.Cleanup(func() { killVMs(runDir) })
	n := env.StartNode(t, nodeName, 10262, "--backend", "qemu", "--insecure-registry", reg,
		"--qemu-runtime-dir", runDir, "--qemu-bridge", bridge, "--pod-cidr", "10.95.0.0/24",
		"--image-store", filepath.Join(t.TempDir(), "images"))
	if _, err := env.WaitNodeReady(ctx, nodeName, 10*time.Second); err != nil {
		t.Fatalf("node not ready: %v\n%s", err, n.Log())
	}
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() {
		for _, p := range []string{"spoof-victim", "spoof-attacker"} {
			pods.Delete(ctx, p, metav1.DeleteOptions{}) //nolint:errcheck
		}
	})
	for _, p := range []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Name: "spoof-victim"}, Spec: corev1.PodSpec{NodeName: nodeName,
			AutomountServiceAccountToken: new(false), Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "spoof-attacker"}, Spec: corev1.PodSpec{NodeName: nodeName,
			AutomountServiceAccountToken: new(false), Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "spoof", Image: reg + "/spoof:1",
				SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_RAW"}}}}}}},
	} {
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	victim := waitRunning(t, "spoof-victim", n.Log)
	waitRunning(t, "spoof-attacker", n.Log)
	macOf := func(pod string) string {
		return strings.ToLower(strings.TrimSpace(kubectl(t, "exec", pod, "--", "cat", "/sys/class/net/eth0/address")))
	}
	victimMAC, attackerMAC := macOf("spoof-victim"), macOf("spoof-attacker")
	gw := bridgeIPv4(t, bridge)
	victimURL := "http://" + net.JoinHostPort(victim.Status.PodIP, "8080") + "/"

	// The host and the victim talk first: the neighbour entries that ARP spoofing would overwrite exist.
	if body := httpGetBody(t, victimURL); !strings.Contains(body, "spoof-victim") {
		t.Fatalf("the victim answered %q before the attack", body)
	}
	capture := bridgeCapture(t, bridge)
	out := kubectl(t, "exec", "spoof-attacker", "--", "/app", "send", victimMAC, victim.Status.PodIP, gw.String())
	t.Logf("the attacker:\n%s", out)
	if got := receiveSpoofMarkers(t, capture, "honest"); !slices.Equal(got, []string{"honest"}) {
		t.Errorf("the host's bridge received frames %q from the attacker, want only its honest one", got)
	}
	if mac := hostNeighbour(t, victim.Status.PodIP, bridge); mac != "" && mac != victimMAC {
		t.Errorf("the host maps the victim's address %s to %s, want the victim's %s (the attacker's is %s)",
			victim.Status.PodIP, mac, victimMAC, attackerMAC)
	}
	for _, line := range strings.Split(kubectl(t, "exec", "spoof-victim", "--", "cat", "/proc/net/arp"), "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == gw.String() && strings.EqualFold(f[3], attackerMAC) {
			t.Errorf("the victim maps the gateway's address to the attacker's MAC: %q", line)
		}
	}
	if body := httpGetBody(t, victimURL); !strings.Contains(body, "spoof-victim") {
		t.Errorf("after the attack the victim's address answered %q", body)
	}
}

// bridgeIPv4 is the bridge's IPv4 address: the pod VMs' gateway.
func bridgeIPv4(t *testing.T, bridge string) net.IP {
	t.Helper()
	ifi, err := net.InterfaceByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.To4()
		}
	}
	t.Fatalf("bridge %s has no IPv4 address", bridge)
	return nil
}

// httpGetBody GETs url until it answers (for a minute) and returns the body.
func httpGetBody(t *testing.T, url string) string {
	t.Helper()
	var body string
	var lastErr error
	client := &http.Client{Timeout: 5 * time.Second}
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		resp, err := client.Get(url)
		if err != nil {
			lastErr = err
			return false, nil
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		body, lastErr = string(b), err
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("GET %s: %v (%v)", url, err, lastErr)
	}
	return body
}

// bridgeCapture opens a packet socket on the bridge (the host's side: what the bridge delivers to the host, every
// broadcast frame a port lets in) whose reads give up after 5 s.
func bridgeCapture(t *testing.T, bridge string) int {
	t.Helper()
	ifi, err := net.InterfaceByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	all := uint16(unix.ETH_P_ALL)<<8 | uint16(unix.ETH_P_ALL)>>8 // network byte order
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(all))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: all, Ifindex: ifi.Index}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

// receiveSpoofMarkers returns the markers of the attacker's frames that come in on fd, up to and including the one
// marked last (sent last: frames from one port arrive in order), for at most 30 s.
func receiveSpoofMarkers(t *testing.T, fd int, last string) []string {
	t.Helper()
	var got []string
	buf := make([]byte, 2048)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if err != nil {
			t.Fatalf("capturing on the bridge (got %q): %v", got, err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		frame := string(buf[:n])
		i := strings.Index(frame, spoofMarker)
		if i < 0 {
			continue
		}
		m, _, _ := strings.Cut(frame[i+len(spoofMarker):], ";")
		got = append(got, m)
		if m == last {
			return got
		}
	}
	t.Fatalf("the attacker's %q frame never reached the bridge (got %q): the test proves nothing", last, got)
	return nil
}

// hostNeighbour is the MAC the host's neighbour table gives ip on dev, "" when it has none.
func hostNeighbour(t *testing.T, ip, dev string) string {
	t.Helper()
	out, err := exec.Command("ip", "neigh", "show", ip, "dev", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip neigh: %v: %s", err, out)
	}
	f := strings.Fields(string(out))
	if i := slices.Index(f, "lladdr"); i >= 0 && i+1 < len(f) {
		return strings.ToLower(f[i+1])
	}
	return ""
}
