package provider

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/provider/vm"
)

// TestDeadlineLoweredOnARunningPod: activeDeadlineSeconds set on a running pod (the conformance spec updates it to
// 5 s) ends the pod Failed with reason DeadlineExceeded, which nothing reported later overwrites: not the VM's
// exit, not the agent, not another update of the pod.
func TestDeadlineLoweredOnARunningPod(t *testing.T) {
	p, b, n := newVMProvider(t, fakeImages{})
	t.Cleanup(p.Stop)
	ctx := context.Background()
	pod := plainPod("d")
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "d", corev1.PodRunning)
	upd := pod.DeepCopy()
	one := int64(1)
	upd.Spec.ActiveDeadlineSeconds = &one
	if err := p.UpdatePod(ctx, upd); err != nil {
		t.Fatal(err)
	}
	got := waitPhase(t, p, "d", corev1.PodFailed)
	if got.Status.Reason != "DeadlineExceeded" {
		t.Fatalf("failed with reason %q, want DeadlineExceeded", got.Status.Reason)
	}
	waitFor(t, "the VM ended", func() bool { _, term := b.counts(); return len(term) == 1 })
	// What may come after: the backend reporting the VM's end, the periodic sync, a relabel.
	p.VMChanged(vm.Status{UID: "uid-d", Namespace: "default", Name: "d", State: vm.Terminated})
	relabel := upd.DeepCopy()
	relabel.Labels = map[string]string{"after": "deadline"}
	if err := p.UpdatePod(ctx, relabel); err != nil {
		t.Fatal(err)
	}
	if err := p.sync(ctx, "uid-d"); err != nil {
		t.Fatal(err)
	}
	for _, got := range []*corev1.Pod{n.last(), mustGet(t, p, "d")} {
		if got.Status.Phase != corev1.PodFailed || got.Status.Reason != "DeadlineExceeded" ||
			!strings.Contains(got.Status.Message, "longer than the specified deadline") {
			t.Errorf("status after the deadline: %s %q %q", got.Status.Phase, got.Status.Reason, got.Status.Message)
		}
	}
}

func TestDeadline(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	pod := func(d *int64, started bool) *corev1.Pod {
		p := plainPod("d")
		p.Spec.ActiveDeadlineSeconds = d
		if started {
			st := metav1.NewTime(t0)
			p.Status.StartTime = &st
		}
		return p
	}
	i := func(v int64) *int64 { return &v }
	for _, tc := range []struct {
		name     string
		pod      *corev1.Pod
		now      time.Time
		left     time.Duration
		exceeded bool
	}{
		{"none", pod(nil, true), t0.Add(time.Hour), 0, false},
		{"zero is none", pod(i(0), true), t0.Add(time.Hour), 0, false},
		{"raised", pod(i(3600), true), t0.Add(10 * time.Second), 3590 * time.Second, false},
		{"lowered below the time run", pod(i(5), true), t0.Add(10 * time.Second), -5 * time.Second, true},
		{"not started: counts from now", pod(i(5), false), t0, 5 * time.Second, false},
	} {
		left, exceeded := deadline(tc.pod, tc.now)
		if left != tc.left || exceeded != tc.exceeded {
			t.Errorf("%s: %v %v, want %v %v", tc.name, left, exceeded, tc.left, tc.exceeded)
		}
	}
}

func mustGet(t *testing.T, p *Provider, name string) *corev1.Pod {
	t.Helper()
	pod, err := p.GetPod(context.Background(), "default", name)
	if err != nil {
		t.Fatal(err)
	}
	return pod
}

// TestRelabelReachesDownwardAPIVolume: a label changed on a running pod reaches its agent as the new content of
// its downwardAPI volume, as a kubelet's volume manager rewrites it.
func TestRelabelReachesDownwardAPIVolume(t *testing.T) {
	p, b, _ := newVMProvider(t, fakeImages{})
	t.Cleanup(p.Stop)
	ctx := context.Background()
	pod := plainPod("l")
	pod.Labels = map[string]string{"version": "v1"}
	pod.Spec.Volumes = []corev1.Volume{{Name: "podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
		Items: []corev1.DownwardAPIVolumeFile{{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}}}}}}
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "l", corev1.PodRunning)
	waitFor(t, "the agent configured", func() bool { return p.vmFor("uid-l").connected() != nil })
	upd := pod.DeepCopy()
	upd.Labels = map[string]string{"version": "v2"}
	if err := p.UpdatePod(ctx, upd); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the relabelled volume sent to the agent", func() bool {
		for _, f := range b.volume("uid-l", "podinfo") {
			if f.Path == "labels" && strings.Contains(string(f.Data), `version="v2"`) {
				return true
			}
		}
		return false
	})
}

// TestEndedPodKeepsItsStatus: a status computed before the pod ended and stored after it (the agent's, racing the
// VM's failure; a failed pull's, racing the deadline) leaves the pod as it ended, phase, reason and message: a
// kubelet never takes a pod out of a terminal phase.
func TestEndedPodKeepsItsStatus(t *testing.T) {
	p, _, n := newVMProvider(t, fakeImages{})
	t.Cleanup(p.Stop)
	ctx := context.Background()
	pod := plainPod("e")
	if err := p.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	running := waitPhase(t, p, "e", corev1.PodRunning) // computed from the agent before the end
	now := time.Now()
	p.storeIfCurrent(pod, failedStatus(pod, p.cfg.InternalIP, "VMFailed", "the VM ended", now))
	for _, late := range []*corev1.Pod{
		running,
		pendingStatus(pod, p.cfg.InternalIP, "ImagePullBackOff", "Back-off pulling image", now),
		failedStatus(pod, p.cfg.InternalIP, "DeadlineExceeded", "too long", now),
	} {
		if !p.storeIfCurrent(pod, late) {
			t.Fatal("storeIfCurrent: the pod is no longer current")
		}
		for _, got := range []*corev1.Pod{mustGet(t, p, "e"), n.last()} {
			if got.Status.Phase != corev1.PodFailed || got.Status.Reason != "VMFailed" || got.Status.Message != "the VM ended" {
				t.Fatalf("after a late %s status: %s %q %q, want Failed VMFailed", late.Status.Phase,
					got.Status.Phase, got.Status.Reason, got.Status.Message)
			}
		}
	}
}
