package provider

import (
	"context"
	"reflect"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/provider/vm"
)

func TestHostPorts(t *testing.T) {
	port := func(hostPort, containerPort int32, proto corev1.Protocol, hostIP string) corev1.ContainerPort {
		return corev1.ContainerPort{HostPort: hostPort, ContainerPort: containerPort, Protocol: proto, HostIP: hostIP}
	}
	pod := func(init, main []corev1.ContainerPort) *corev1.Pod {
		p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "x", Ports: main}}}}
		if init != nil {
			p.Spec.InitContainers = []corev1.Container{{Name: "sidecar", Image: "x", Ports: init}}
		}
		return p
	}
	for _, tc := range []struct {
		name     string
		pod      *corev1.Pod
		forwards bool
		want     []vm.HostPort
		wantWhy  string
	}{
		{name: "no ports", pod: pod(nil, nil), forwards: true},
		{name: "container ports without hostPort", pod: pod(nil, []corev1.ContainerPort{port(0, 8080, "", "")}), forwards: true},
		{name: "no ports on a backend that forwards none", pod: pod(nil, []corev1.ContainerPort{port(0, 8080, "", "")})},
		{name: "TCP by default", pod: pod(nil, []corev1.ContainerPort{port(5000, 5000, "", "")}), forwards: true,
			want: []vm.HostPort{{Protocol: vm.TCP, Port: 5000, ContainerPort: 5000}}},
		{name: "UDP, a host IP, and an init container's",
			pod: pod([]corev1.ContainerPort{port(9090, 90, corev1.ProtocolTCP, "")},
				[]corev1.ContainerPort{port(0, 80, "", ""), port(5353, 53, corev1.ProtocolUDP, "192.168.1.5")}),
			forwards: true,
			want: []vm.HostPort{{Protocol: vm.TCP, Port: 9090, ContainerPort: 90},
				{Protocol: vm.UDP, HostIP: "192.168.1.5", Port: 5353, ContainerPort: 53}}},
		{name: "0.0.0.0 is every address", pod: pod(nil, []corev1.ContainerPort{port(18080, 8080, "", "0.0.0.0")}), forwards: true,
			want: []vm.HostPort{{Protocol: vm.TCP, Port: 18080, ContainerPort: 8080}}},
		{name: "4-in-6 host IP", pod: pod(nil, []corev1.ContainerPort{port(18080, 8080, "", "::ffff:10.0.0.1")}), forwards: true,
			want: []vm.HostPort{{Protocol: vm.TCP, HostIP: "10.0.0.1", Port: 18080, ContainerPort: 8080}}},
		{name: "SCTP", pod: pod(nil, []corev1.ContainerPort{port(5000, 5000, corev1.ProtocolSCTP, "")}), forwards: true,
			wantWhy: `hostPort 5000/SCTP of container "web"`},
		{name: "IPv6 host IP", pod: pod(nil, []corev1.ContainerPort{port(5000, 5000, "", "fd00::1")}), forwards: true,
			wantWhy: `on host IP "fd00::1"`},
		{name: "port out of range", pod: pod(nil, []corev1.ContainerPort{port(70000, 5000, "", "")}), forwards: true,
			wantWhy: "a port is 1 to 65535"},
		{name: "a backend that forwards none", pod: pod(nil, []corev1.ContainerPort{port(5000, 5000, "", "")}),
			wantWhy: `hostPort 5000/TCP of container "web" (this node's backend`},
		{name: "a sidecar's on a backend that forwards none", pod: pod([]corev1.ContainerPort{port(9090, 90, "", "")}, nil),
			wantWhy: `hostPort 9090/TCP of container "sidecar"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, why := hostPorts(tc.pod, tc.forwards)
			if (tc.wantWhy == "") != (why == "") || !strings.Contains(why, tc.wantWhy) {
				t.Errorf("why = %q, want %q", why, tc.wantWhy)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("host ports = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// forwardingBackend is a fakeBackend that forwards host ports (vm.HostPortForwarder) and keeps the plans it got.
type forwardingBackend struct {
	*fakeBackend
	mu    sync.Mutex
	plans []vm.Plan
}

func (f *forwardingBackend) ForwardsHostPorts() {}

func (f *forwardingBackend) Launch(ctx context.Context, p vm.Plan) (vm.Status, error) {
	f.mu.Lock()
	f.plans = append(f.plans, p)
	f.mu.Unlock()
	return f.fakeBackend.Launch(ctx, p)
}

func hostPortPod(name string) *corev1.Pod {
	pod := plainPod(name)
	pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 5000, HostPort: 5000, Protocol: corev1.ProtocolTCP}}
	return pod
}

// TestHostPortRefusedWithoutForwarding: a backend that forwards no host port gets no pod that asks for one; the pod
// fails at once, Unsupported, as hostNetwork does.
func TestHostPortRefusedWithoutForwarding(t *testing.T) {
	p, rec, _ := newTestProvider()
	b := &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}
	p.UseBackend(b, fakeImages{})
	if err := p.CreatePod(context.Background(), hostPortPod("a")); err != nil {
		t.Fatal(err)
	}
	got, _ := p.GetPod(context.Background(), "default", "a")
	if launches, _ := b.counts(); got.Status.Phase != corev1.PodFailed || got.Status.Reason != ReasonUnsupported || launches != 0 {
		t.Errorf("status %s/%s after %d launches, want Failed/Unsupported after none", got.Status.Phase, got.Status.Reason, launches)
	}
	if !strings.Contains(got.Status.Message, "hostPort 5000/TCP") {
		t.Errorf("message %q does not name the host port", got.Status.Message)
	}
	select {
	case e := <-rec.Events:
		if !strings.HasPrefix(e, "Warning Unsupported this pod cannot run as an i2kit VM: hostPort 5000/TCP") {
			t.Errorf("event %q, want Warning Unsupported naming the host port", e)
		}
	default:
		t.Error("no Unsupported event")
	}
}

// TestHostPortForwarded: a backend that forwards host ports gets them in the pod's plan.
func TestHostPortForwarded(t *testing.T) {
	p, _, _ := newTestProvider()
	b := &forwardingBackend{fakeBackend: &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}}
	p.UseBackend(b, fakeImages{})
	if err := p.CreatePod(context.Background(), hostPortPod("a")); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "a", corev1.PodRunning)
	b.mu.Lock()
	defer b.mu.Unlock()
	want := []vm.HostPort{{Protocol: vm.TCP, Port: 5000, ContainerPort: 5000}}
	if len(b.plans) != 1 || !reflect.DeepEqual(b.plans[0].HostPorts, want) {
		t.Errorf("plans %+v, want one with host ports %+v", b.plans, want)
	}
}

// TestHostPortTakenIsRejected: as a kubelet's NodePorts check, a pod whose host port another pod of the node holds
// (same protocol and port, the same address or either on every address) is rejected at admission — Failed, reason
// NodePorts, a Warning Event, no VM — while one on another protocol, port or address, or after the holder ended,
// is admitted.
func TestHostPortTakenIsRejected(t *testing.T) {
	port := func(proto corev1.Protocol, hostIP string, hostPort int32) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: hostPort, Protocol: proto, HostIP: hostIP}}
		}
	}
	for _, tc := range []struct {
		name        string
		first, next func(*corev1.Pod)
		firstEnded  bool
		rejected    bool
	}{
		{"same port", port("TCP", "", 5000), port("TCP", "", 5000), false, true},
		{"every address holds a given one", port("TCP", "", 5000), port("TCP", "10.0.0.1", 5000), false, true},
		{"a given address takes every address", port("TCP", "10.0.0.1", 5000), port("TCP", "0.0.0.0", 5000), false, true},
		{"a sidecar's port", func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "proxy", Image: "hello", RestartPolicy: new(corev1.ContainerRestartPolicyAlways),
				Ports: []corev1.ContainerPort{{ContainerPort: 1, HostPort: 5000}}}}
		}, port("TCP", "", 5000), false, true},
		{"another protocol", port("TCP", "", 5000), port("UDP", "", 5000), false, false},
		{"another port", port("TCP", "", 5000), port("TCP", "", 5001), false, false},
		{"other addresses", port("TCP", "10.0.0.1", 5000), port("TCP", "10.0.0.2", 5000), false, false},
		{"the holder ended", port("TCP", "", 5000), port("TCP", "", 5000), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, rec, _ := newTestProvider()
			b := &forwardingBackend{fakeBackend: &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}}
			p.UseBackend(b, fakeImages{})
			first, next := plainPod("first"), plainPod("next")
			tc.first(first)
			tc.next(next)
			if err := p.CreatePod(context.Background(), first); err != nil {
				t.Fatal(err)
			}
			waitPhase(t, p, "first", corev1.PodRunning)
			if tc.firstEnded { // its VM crashed: a pod of restartPolicy Always that a kubelet would not restart here
				st, _ := b.Get(context.Background(), "uid-first")
				st.State, st.Reason = vm.Failed, "VMExited"
				b.set(st)
				p.VMChanged(st)
				waitPhase(t, p, "first", corev1.PodFailed)
			}
			for len(rec.Events) > 0 {
				<-rec.Events
			}
			if err := p.CreatePod(context.Background(), next); err != nil {
				t.Fatal(err)
			}
			got, _ := p.GetPod(context.Background(), "default", "next")
			if !tc.rejected {
				if got.Status.Phase == corev1.PodFailed {
					t.Fatalf("rejected: %s %q", got.Status.Reason, got.Status.Message)
				}
				return
			}
			if got.Status.Phase != corev1.PodFailed || got.Status.Reason != ReasonNodePorts ||
				got.Status.Message != "Pod was rejected: "+nodePortsMessage {
				t.Errorf("status %s/%s (%q), want Failed/NodePorts (%q)", got.Status.Phase, got.Status.Reason, got.Status.Message, nodePortsMessage)
			}
			if launches, _ := b.counts(); launches != 1 {
				t.Errorf("%d launches, want the first pod's only", launches)
			}
			select {
			case e := <-rec.Events:
				if want := "Warning NodePorts " + nodePortsMessage; e != want {
					t.Errorf("event %q, want %q", e, want)
				}
			default:
				t.Error("no Event")
			}
		})
	}
}

// TestHostPortAdmissionIsOneAtATime: pods that ask for one host port, created at once, are admitted one at a time:
// exactly one of them gets it.
func TestHostPortAdmissionIsOneAtATime(t *testing.T) {
	p, _, _ := newTestProvider()
	b := &forwardingBackend{fakeBackend: &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}}
	p.UseBackend(b, fakeImages{})
	var wg sync.WaitGroup
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	for _, name := range names {
		wg.Go(func() {
			if err := p.CreatePod(context.Background(), hostPortPod(name)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	admitted := 0
	for _, name := range names {
		got, _ := p.GetPod(context.Background(), "default", name)
		if got.Status.Reason != ReasonNodePorts {
			admitted++
		}
	}
	if admitted != 1 {
		t.Errorf("%d pods admitted with host port 5000, want 1", admitted)
	}
}
