package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
)

// fakeBackend is a stateful vm.Backend: Launch makes a VM that reports Running through notify.
type fakeBackend struct {
	mu         sync.Mutex
	vms        map[string]vm.Status
	launches   int
	terminated []string
	notify     func(vm.Status)
	// volumes is what the fake agents were sent by UpdateVolume, by pod UID and volume name.
	volumes map[string]map[string][]protocol.File
	// acceptPowerOff makes the fake agents take power-off requests, recorded in powerOffs, and keep running until
	// the test ends their VM; without it they answer 404, and the node ends the VM at once.
	acceptPowerOff bool
	powerOffs      []time.Duration
	// launching, when set, receives each Launch as it begins; the Launch then waits for launchGate.
	launching, launchGate chan struct{}
}

// volume returns what the agent of a pod was last sent for a volume by UpdateVolume.
func (f *fakeBackend) volume(uid, name string) []protocol.File {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.volumes[uid][name]
}

func (f *fakeBackend) Format() string { return "direct" }

func (f *fakeBackend) Launch(_ context.Context, s vm.Plan) (vm.Status, error) {
	if f.launching != nil {
		f.launching <- struct{}{}
		<-f.launchGate
	}
	f.mu.Lock()
	if st, ok := f.vms[s.UID]; ok {
		f.mu.Unlock()
		return st, nil
	}
	f.launches++
	st := vm.Status{UID: s.UID, Namespace: s.Namespace, Name: s.Name, IP: fmt.Sprintf("10.0.0.%d", f.launches+1),
		State: vm.Booting, Started: time.Now()}
	f.vms[s.UID] = st
	f.mu.Unlock()
	running := st
	running.State = vm.Running
	go func() {
		f.mu.Lock()
		_, ok := f.vms[s.UID]
		if ok { // not terminated meanwhile
			f.vms[s.UID] = running
		}
		f.mu.Unlock()
		if ok {
			f.notify(running)
		}
	}()
	return st, nil
}

func (f *fakeBackend) set(st vm.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.vms[st.UID] = st
}

func (f *fakeBackend) counts() (launches int, terminated []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.launches, append([]string(nil), f.terminated...)
}

func (f *fakeBackend) Get(_ context.Context, uid string) (vm.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.vms[uid]
	if !ok {
		return vm.Status{}, vm.ErrNotFound
	}
	return st, nil
}

func (f *fakeBackend) List(context.Context) ([]vm.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []vm.Status
	for _, st := range f.vms {
		out = append(out, st)
	}
	return out, nil
}

func (f *fakeBackend) Terminate(_ context.Context, uid string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.vms[uid]; !ok {
		return vm.ErrNotFound
	}
	delete(f.vms, uid)
	f.terminated = append(f.terminated, uid)
	return nil
}

// DialAgent serves a fake agent over the real protocol: it takes the pod's configuration and reports every
// configured container running.
func (f *fakeBackend) DialAgent(_ context.Context, uid string) (net.Conn, error) {
	if _, err := f.Get(context.Background(), uid); err != nil {
		return nil, err
	}
	host, guest := net.Pipe()
	go func() {
		sess, err := protocol.Accept(guest)
		if err != nil {
			return
		}
		var mu sync.Mutex
		var cfg *protocol.PodConfig
		configured := make(chan struct{})
		mux := http.NewServeMux()
		mux.HandleFunc("PUT /v1/pod", func(w http.ResponseWriter, r *http.Request) {
			var c protocol.PodConfig
			json.NewDecoder(r.Body).Decode(&c) //nolint:errcheck
			mu.Lock()
			if cfg == nil {
				cfg = &c
				close(configured)
			}
			mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		})
		mux.HandleFunc("PUT /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
			var files []protocol.File
			json.NewDecoder(r.Body).Decode(&files) //nolint:errcheck
			f.mu.Lock()
			if f.volumes == nil {
				f.volumes = map[string]map[string][]protocol.File{}
			}
			if f.volumes[uid] == nil {
				f.volumes[uid] = map[string][]protocol.File{}
			}
			f.volumes[uid][r.PathValue("name")] = files
			f.mu.Unlock()
			w.WriteHeader(http.StatusNoContent)
		})
		mux.HandleFunc("POST /v1/poweroff", func(w http.ResponseWriter, r *http.Request) {
			grace, err := time.ParseDuration(r.URL.Query().Get("grace"))
			f.mu.Lock()
			accept := f.acceptPowerOff && err == nil
			if accept {
				f.powerOffs = append(f.powerOffs, grace)
			}
			f.mu.Unlock()
			if !accept {
				http.NotFound(w, r)
				return
			}
			w.WriteHeader(http.StatusAccepted)
		})
		mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
			<-configured
			mu.Lock()
			st := protocol.PodStatus{Seq: 1, Configured: true}
			for _, c := range cfg.Containers {
				st.Containers = append(st.Containers, protocol.ContainerStatus{Name: c.Name,
					State: protocol.ContainerState{State: protocol.Running, StartedAt: time.Now()}, Ready: true, Started: true})
			}
			mu.Unlock()
			json.NewEncoder(w).Encode(st) //nolint:errcheck
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		})
		http.Serve(sess, mux) //nolint:errcheck
	}()
	return host, nil
}

type fakeImages struct{ err error }

func (f fakeImages) EnsureWith(context.Context, *vmimage.Spec, string, vmimage.Pull) (*vmimage.Image, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &vmimage.Image{Key: strings.Repeat("a", 64), Kernel: "/k", Initramfs: "/i"}, nil
}

func newVMProvider(t *testing.T, images ImageBuilder) (*Provider, *fakeBackend, *notifications) {
	p, _, n := newTestProvider()
	b := &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}
	p.UseBackend(b, images)
	return p, b, n
}

func waitPhase(t *testing.T, p *Provider, name string, phase corev1.PodPhase) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		pod, err := p.GetPod(ctx, "default", name)
		got = pod
		return err == nil && pod.Status.Phase == phase, nil
	})
	if err != nil {
		t.Fatalf("pod %s not %s: %+v", name, phase, got)
	}
	return got
}

func plainPod(name string) *corev1.Pod {
	pod := testPod(name)
	pod.Spec.InitContainers = nil
	return pod
}

func TestPodRunsAsVM(t *testing.T) {
	p, b, _ := newVMProvider(t, fakeImages{})
	ctx := context.Background()
	if err := p.CreatePod(ctx, plainPod("a")); err != nil {
		t.Fatal(err)
	}
	got := waitPhase(t, p, "a", corev1.PodRunning)
	if got.Status.PodIP == "" || got.Status.QOSClass == "" || !got.Status.ContainerStatuses[0].Ready {
		t.Errorf("running status = %+v", got.Status)
	}
	if err := p.DeletePod(ctx, plainPod("a")); err != nil {
		t.Fatal(err)
	}
	if _, term := b.counts(); len(term) != 1 || term[0] != "uid-a" {
		t.Errorf("terminated %v, want [uid-a]", term)
	}
}

// TestPodDeletedWhileItsVMLaunches: a pod deleted while its VM is being launched (a Deployment deleted while a
// replacement pod starts) finds no VM to end; the launch that completes after must end the VM it made, or the VM
// stays until garbage collection finds it orphaned (e2e TestPodsRunAsVMs saw its runtime directory left over).
func TestPodDeletedWhileItsVMLaunches(t *testing.T) {
	p, b, _ := newVMProvider(t, fakeImages{})
	b.launching, b.launchGate = make(chan struct{}), make(chan struct{})
	ctx := context.Background()
	if err := p.CreatePod(ctx, plainPod("a")); err != nil {
		t.Fatal(err)
	}
	<-b.launching
	gone := plainPod("a")
	gone.DeletionGracePeriodSeconds = new(int64(30))
	if err := p.DeletePod(ctx, gone); err != nil {
		t.Fatal(err)
	}
	close(b.launchGate)
	wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) { //nolint:errcheck // the check below says what is wrong
		launches, term := b.counts()
		return launches == 1 && len(term) == 1, nil
	})
	if _, err := b.Get(ctx, "uid-a"); err == nil || !vm.IsNotFound(err) {
		t.Errorf("the VM launched for a deleted pod still runs (%v)", err)
	}
}

func TestAdoptedVMIsNotLaunchedAgain(t *testing.T) {
	p, b, _ := newVMProvider(t, fakeImages{})
	b.set(vm.Status{UID: "uid-a", IP: "10.0.0.9", State: vm.Running, Started: time.Now()})
	if err := p.CreatePod(context.Background(), plainPod("a")); err != nil {
		t.Fatal(err)
	}
	got := waitPhase(t, p, "a", corev1.PodRunning)
	if launches, _ := b.counts(); got.Status.PodIP != "10.0.0.9" || launches != 0 {
		t.Errorf("adopted pod IP %s after %d launches; want 10.0.0.9 and none", got.Status.PodIP, launches)
	}
}

func TestImageFailureIsReported(t *testing.T) {
	p, _, _ := newVMProvider(t, fakeImages{err: errors.New("manifest unknown")})
	if err := p.CreatePod(context.Background(), plainPod("a")); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		pod, _ := p.GetPod(ctx, "default", "a")
		w := pod.Status.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "ErrImagePull" && strings.Contains(w.Message, "manifest unknown"), nil
	})
	if err != nil {
		t.Fatal("image failure not in the container status")
	}
}

func TestUnsupportedPodFails(t *testing.T) {
	p, b, _ := newVMProvider(t, fakeImages{})
	pod := plainPod("a")
	pod.Spec.HostNetwork = true
	if err := p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got, _ := p.GetPod(context.Background(), "default", "a")
	if launches, _ := b.counts(); got.Status.Phase != corev1.PodFailed || got.Status.Reason != ReasonUnsupported || launches != 0 {
		t.Errorf("status %s/%s after %d launches", got.Status.Phase, got.Status.Reason, launches)
	}
}

// TestRejectedPodFails checks that a pod a kubelet's admission refuses fails as a kubelet's rejectPod leaves it:
// Failed with the handler's reason, "Pod was rejected: " and its message, a Warning Event, and no VM.
func TestRejectedPodFails(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*corev1.Pod)
		reason string
		msg    string
	}{
		{"windows", func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Windows} }, ReasonPodOSNotSupported,
			"Failed to admit pod as the OS field doesn't match node OS"},
		{"unsafe sysctl", func(p *corev1.Pod) {
			p.Spec.SecurityContext = &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{{Name: "kernel.msgmax", Value: "10000000000"}}}
		}, ReasonSysctlForbidden, `forbidden sysctl: "kernel.msgmax" not allowlisted`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, rec, _ := newTestProvider()
			b := &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}
			p.UseBackend(b, fakeImages{})
			pod := plainPod("a")
			tc.mutate(pod)
			if err := p.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			got, _ := p.GetPod(context.Background(), "default", "a")
			if launches, _ := b.counts(); got.Status.Phase != corev1.PodFailed || got.Status.Reason != tc.reason ||
				got.Status.Message != "Pod was rejected: "+tc.msg || launches != 0 {
				t.Errorf("status %s/%s (%q) after %d launches, want Failed/%s (%q) and none", got.Status.Phase, got.Status.Reason,
					got.Status.Message, launches, tc.reason, "Pod was rejected: "+tc.msg)
			}
			select {
			case e := <-rec.Events:
				if want := "Warning " + tc.reason + " " + tc.msg; e != want {
					t.Errorf("event %q, want %q", e, want)
				}
			default:
				t.Error("no Event")
			}
		})
	}
}

func TestCollectGarbageEndsOnlyOrphans(t *testing.T) {
	p, b, _ := newVMProvider(t, fakeImages{})
	p.CreatePod(context.Background(), plainPod("a")) //nolint:errcheck
	waitPhase(t, p, "a", corev1.PodRunning)
	old := time.Now().Add(-time.Minute)
	b.set(vm.Status{UID: "uid-gone", State: vm.Running, Started: old})
	b.set(vm.Status{UID: "uid-new", State: vm.Booting, Started: time.Now()})
	b.set(vm.Status{UID: "uid-ending", State: vm.Terminated, Started: old})
	p.CollectGarbage(context.Background(), 30*time.Second)
	if _, term := b.counts(); len(term) != 0 {
		t.Errorf("the first sweep terminated %v, want nothing (an orphan must be seen twice)", term)
	}
	p.CollectGarbage(context.Background(), 30*time.Second)
	if _, term := b.counts(); len(term) != 1 || term[0] != "uid-gone" {
		t.Errorf("terminated %v, want only the old orphan", term)
	}
}

// An orphan must be seen on two sweeps in a row: a VM whose pod showed up in between is no orphan.
func TestCollectGarbageNeedsTwoSweepsInARow(t *testing.T) {
	p, b, _ := newVMProvider(t, fakeImages{})
	old := time.Now().Add(-time.Minute)
	b.set(vm.Status{UID: "uid-a", State: vm.Running, Started: old})
	p.CollectGarbage(context.Background(), 30*time.Second) // uid-a has no pod yet
	p.mu.Lock()
	p.pods["default/a"] = plainPod("a")
	p.mu.Unlock()
	p.CollectGarbage(context.Background(), 30*time.Second) // now it has
	p.mu.Lock()
	delete(p.pods, "default/a") // and then lost it again
	p.mu.Unlock()
	p.CollectGarbage(context.Background(), 30*time.Second)
	if _, term := b.counts(); len(term) != 0 {
		t.Errorf("terminated %v, want nothing: uid-a was orphaned on two sweeps, not in a row", term)
	}
	p.CollectGarbage(context.Background(), 30*time.Second)
	if _, term := b.counts(); len(term) != 1 {
		t.Errorf("terminated %v after two orphaned sweeps in a row, want uid-a", term)
	}
}

func TestVMSize(t *testing.T) {
	pod := plainPod("a")
	if mem, cpu := vmSize(pod); mem != 128 || cpu != 1 {
		t.Errorf("no resources: %d MiB %d vCPU, want the floors", mem, cpu)
	}
	pod.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: mustQ("512Mi"), corev1.ResourceCPU: mustQ("1500m")}
	pod.Spec.Containers[1].Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: mustQ("256Mi")}
	if mem, cpu := vmSize(pod); mem != 512+256+64 || cpu != 2 {
		t.Errorf("sized %d MiB %d vCPU, want 832 and 2", mem, cpu)
	}
}

func mustQ(s string) resource.Quantity { return resource.MustParse(s) }

func TestFitsNode(t *testing.T) {
	node := corev1.ResourceList{corev1.ResourceCPU: mustQ("4"), corev1.ResourceMemory: mustQ("8Gi")}
	for _, tc := range []struct {
		name     string
		limits   corev1.ResourceList
		requests corev1.ResourceList
		capacity corev1.ResourceList
		want     string
	}{
		{"no resources", nil, nil, node, ""},
		{"exactly the node", corev1.ResourceList{corev1.ResourceCPU: mustQ("4"), corev1.ResourceMemory: mustQ("8Gi")}, nil, node, ""},
		{"too many cpus", corev1.ResourceList{corev1.ResourceCPU: mustQ("1000")}, nil, node, "OutOfcpu"},
		{"a millicpu too many", corev1.ResourceList{corev1.ResourceCPU: mustQ("4001m")}, nil, node, "OutOfcpu"},
		{"too much memory", corev1.ResourceList{corev1.ResourceMemory: mustQ("1Ti")}, nil, node, "OutOfmemory"},
		{"requests when no limits", nil, corev1.ResourceList{corev1.ResourceMemory: mustQ("9Gi")}, node, "OutOfmemory"},
		{"limits win over requests", corev1.ResourceList{corev1.ResourceMemory: mustQ("1Gi")},
			corev1.ResourceList{corev1.ResourceMemory: mustQ("9Gi")}, node, ""},
		{"huge quantities do not overflow", corev1.ResourceList{corev1.ResourceMemory: mustQ("8Ei")}, nil, node, "OutOfmemory"},
		{"no capacity known", corev1.ResourceList{corev1.ResourceCPU: mustQ("1000")}, nil, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := plainPod("a")
			pod.Spec.Containers[0].Resources = corev1.ResourceRequirements{Limits: tc.limits, Requests: tc.requests}
			if got, msg := fitsNode(pod, tc.capacity); got != tc.want {
				t.Errorf("fitsNode = %q (%s), want %q", got, msg, tc.want)
			}
		})
	}
}

// TestOversizedPodIsRefused checks that a pod larger than the node fails with a kubelet's reason and a Warning
// Event, and is never launched (no -m 1048640M -smp 1000 VM).
func TestOversizedPodIsRefused(t *testing.T) {
	p, rec, _ := newTestProvider()
	p.cfg.Capacity = corev1.ResourceList{corev1.ResourceCPU: mustQ("4"), corev1.ResourceMemory: mustQ("8Gi")}
	b := &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}
	p.UseBackend(b, fakeImages{})
	pod := plainPod("big")
	pod.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: mustQ("1000"), corev1.ResourceMemory: mustQ("1Ti")}
	if err := p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	got, _ := p.GetPod(context.Background(), "default", "big")
	if launches, _ := b.counts(); got.Status.Phase != corev1.PodFailed || got.Status.Reason != "OutOfcpu" || launches != 0 {
		t.Errorf("status %s/%s (%s) after %d launches, want Failed/OutOfcpu and none", got.Status.Phase, got.Status.Reason, got.Status.Message, launches)
	}
	select {
	case e := <-rec.Events:
		if !strings.HasPrefix(e, "Warning OutOfcpu") {
			t.Errorf("event %q, want a Warning OutOfcpu", e)
		}
	default:
		t.Error("no Event")
	}
}
