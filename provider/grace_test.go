package provider

import (
	"context"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/provider/vm"
)

func deletedPod(name string, grace int64) *corev1.Pod {
	pod := plainPod(name)
	pod.DeletionGracePeriodSeconds = &grace
	return pod
}

// TestShortenedGraceReachesTheAgent: DeletePod returns once the agent took the power-off, not after the grace period
// (the pod controller holds the pod's key meanwhile), so that a second delete with a shorter grace period reaches
// the agent as a second power-off with the shorter grace; a longer one changes nothing. The pod is forgotten, and
// reported terminated, once the VM has exited.
func TestShortenedGraceReachesTheAgent(t *testing.T) {
	p, b, n := newVMProvider(t, fakeImages{})
	b.acceptPowerOff = true
	ctx := context.Background()
	if err := p.CreatePod(ctx, plainPod("a")); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "a", corev1.PodRunning)
	for _, grace := range []int64{100, 5, 60} {
		done := make(chan error, 1)
		go func() { done <- p.DeletePod(ctx, deletedPod("a", grace)) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("DeletePod (grace %d s): %v", grace, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("DeletePod (grace %d s) still runs after 5 s: it waits out the grace period", grace)
		}
	}
	b.mu.Lock()
	got := append([]time.Duration(nil), b.powerOffs...)
	b.mu.Unlock()
	if len(got) != 2 || got[0] != 100*time.Second || got[1] > 5*time.Second || got[1] < 4*time.Second {
		t.Fatalf("the agent was asked to power off within %v, want [100s ~5s] (a longer grace is not sent)", got)
	}
	if _, err := p.GetPod(ctx, "default", "a"); err != nil {
		t.Fatalf("the pod was forgotten while its VM still stops: %v", err)
	}
	st, _ := b.Get(ctx, "uid-a")
	st.State = vm.Terminated // the agent powered the VM off
	b.set(st)
	b.notify(st)
	err := wait.PollUntilContextTimeout(ctx, 5*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := p.GetPod(ctx, "default", "a")
		return errdefs.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatal("the pod was not forgotten once its VM exited")
	}
	if last := n.last(); last.Status.ContainerStatuses[0].State.Terminated == nil {
		t.Errorf("last status %+v, want the containers terminated", last.Status.ContainerStatuses)
	}
}

func TestVMStopOnlyMovesEarlier(t *testing.T) {
	now := time.Now()
	s := newVMStop(now.Add(time.Minute))
	if s.shorten(now.Add(2 * time.Minute)) {
		t.Error("a later deadline moved the stop")
	}
	if !s.shorten(now.Add(time.Second)) {
		t.Error("an earlier deadline did not move the stop")
	}
	if by, _ := s.when(); !by.Equal(now.Add(time.Second)) {
		t.Errorf("deadline %s from now, want 1s", by.Sub(now))
	}
}
