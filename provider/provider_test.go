package provider

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
)

func testPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name)},
		Spec: corev1.PodSpec{
			NodeName:       "i2kit",
			InitContainers: []corev1.Container{{Name: "init", Image: "busybox"}},
			Containers:     []corev1.Container{{Name: "web", Image: "nginx"}, {Name: "sidecar", Image: "envoy"}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodPending, QOSClass: corev1.PodQOSBestEffort},
	}
}

type notifications struct {
	mu   sync.Mutex
	pods []*corev1.Pod
}

func (n *notifications) add(p *corev1.Pod) { n.mu.Lock(); n.pods = append(n.pods, p); n.mu.Unlock() }
func (n *notifications) last() *corev1.Pod {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.pods[len(n.pods)-1]
}

func newTestProvider() (*Provider, *record.FakeRecorder, *notifications) {
	rec := record.NewFakeRecorder(10)
	p := New(Config{NodeName: "i2kit", InternalIP: "198.18.0.10", Events: rec})
	n := &notifications{}
	p.NotifyPods(context.Background(), n.add)
	return p, rec, n
}

func TestCreatePodWithoutBackendStaysPendingWithReason(t *testing.T) {
	p, rec, n := newTestProvider()
	if err := p.CreatePod(context.Background(), testPod("a")); err != nil {
		t.Fatal(err)
	}
	got := n.last()
	if got.Status.Phase != corev1.PodPending {
		t.Errorf("phase = %s, want Pending", got.Status.Phase)
	}
	if got.Status.QOSClass != corev1.PodQOSBestEffort {
		t.Errorf("qosClass dropped: %q", got.Status.QOSClass)
	}
	if got.Status.HostIP != "198.18.0.10" {
		t.Errorf("hostIP = %q", got.Status.HostIP)
	}
	if len(got.Status.ContainerStatuses) != 2 || len(got.Status.InitContainerStatuses) != 1 {
		t.Fatalf("container statuses = %+v", got.Status)
	}
	// The init container, which a kubelet would start first, carries the reason (kubectl shows Init:NoBackend); the
	// app containers wait for it with PodInitializing.
	for i, cs := range append(got.Status.InitContainerStatuses, got.Status.ContainerStatuses...) {
		want := map[bool]string{true: ReasonNoBackend, false: "PodInitializing"}[i == 0]
		if cs.State.Waiting == nil || cs.State.Waiting.Reason != want || cs.State.Running != nil {
			t.Errorf("container %s state = %+v, want waiting %s", cs.Name, cs.State, want)
		}
	}
	for _, c := range got.Status.Conditions {
		if c.Type == corev1.PodReady && (c.Status != corev1.ConditionFalse || c.Reason != ReasonNoBackend) {
			t.Errorf("Ready condition = %+v", c)
		}
	}
	select {
	case e := <-rec.Events:
		if !strings.HasPrefix(e, "Warning "+ReasonNoBackend+" ") || !strings.Contains(e, "no backend") {
			t.Errorf("event = %q", e)
		}
	default:
		t.Error("no Event recorded")
	}
	st, err := p.GetPodStatus(context.Background(), "default", "a")
	if err != nil || st.Phase != corev1.PodPending {
		t.Errorf("GetPodStatus = %v, %v", st, err)
	}
}

func TestDeletePodReportsTerminalAndIsRepeatable(t *testing.T) {
	p, _, n := newTestProvider()
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		if err := p.CreatePod(ctx, testPod(name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.DeletePod(ctx, testPod("a")); err != nil {
		t.Fatal(err)
	}
	got := n.last()
	for _, cs := range append(got.Status.InitContainerStatuses, got.Status.ContainerStatuses...) {
		if cs.State.Terminated == nil || cs.State.Waiting != nil {
			t.Errorf("after delete, container %s state = %+v, want terminated", cs.Name, cs.State)
		}
	}
	pods, _ := p.GetPods(ctx)
	if len(pods) != 1 || pods[0].Name != "b" {
		t.Errorf("GetPods after delete = %d pods, want only b", len(pods))
	}
	if err := p.DeletePod(ctx, testPod("a")); !errdefs.IsNotFound(err) {
		t.Errorf("second DeletePod = %v, want NotFound", err)
	}
	if _, err := p.GetPod(ctx, "default", "a"); !errdefs.IsNotFound(err) {
		t.Errorf("GetPod of deleted pod = %v, want NotFound", err)
	}
}

func TestUpdatePodKeepsStatus(t *testing.T) {
	p, _, _ := newTestProvider()
	ctx := context.Background()
	if err := p.UpdatePod(ctx, testPod("a")); !errdefs.IsNotFound(err) {
		t.Errorf("UpdatePod of unknown pod = %v, want NotFound", err)
	}
	p.CreatePod(ctx, testPod("a")) //nolint:errcheck
	upd := testPod("a")
	upd.Labels = map[string]string{"x": "y"}
	upd.Status = corev1.PodStatus{}
	if err := p.UpdatePod(ctx, upd); err != nil {
		t.Fatal(err)
	}
	got, _ := p.GetPod(ctx, "default", "a")
	if got.Labels["x"] != "y" || got.Status.Phase != corev1.PodPending {
		t.Errorf("after update: labels %v phase %q", got.Labels, got.Status.Phase)
	}
}

func TestUpdatePodSaysWhatItDoesNotApply(t *testing.T) {
	p, rec, n := newTestProvider()
	ctx := context.Background()
	p.CreatePod(ctx, testPod("a")) //nolint:errcheck
	<-rec.Events                   // NoBackend
	upd := testPod("a")
	upd.Spec.Containers[0].Image = "nginx:2"
	upd.Spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debugger", Image: "busybox"}}}
	if err := p.UpdatePod(ctx, upd); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Warning Unsupported container web keeps image nginx", "Warning Unsupported ephemeral container debugger cannot run"} {
		select {
		case e := <-rec.Events:
			if !strings.HasPrefix(e, want) {
				t.Errorf("event %q, want %q...", e, want)
			}
		default:
			t.Errorf("no event %q", want)
		}
	}
	es := n.last().Status.EphemeralContainerStatuses
	if len(es) != 1 || es[0].Name != "debugger" || es[0].State.Terminated == nil || es[0].State.Terminated.Reason != ReasonUnsupported {
		t.Errorf("ephemeral container statuses = %+v, want debugger terminated with reason Unsupported", es)
	}
	// A second update of the same pod says nothing again.
	if err := p.UpdatePod(ctx, upd.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-rec.Events:
		t.Errorf("a repeated update: event %q", e)
	default:
	}
}

func TestStreamsExplainWhyNothingRuns(t *testing.T) {
	p, _, _ := newTestProvider()
	ctx := context.Background()
	p.CreatePod(ctx, testPod("a")) //nolint:errcheck
	if _, err := p.GetContainerLogs(ctx, "default", "a", "web", api.ContainerLogOpts{}); err == nil || !strings.Contains(err.Error(), "no backend") {
		t.Errorf("logs of a pod without a VM: %v", err)
	}
	if err := p.RunInContainer(ctx, "default", "missing", "web", []string{"true"}, nil); !errdefs.IsNotFound(err) {
		t.Errorf("exec in an unknown pod: %v, want NotFound", err)
	}
}
