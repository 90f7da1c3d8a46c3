package provider

import (
	"context"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	corev1 "k8s.io/api/core/v1"
)

// powerOffMargin is how long past a pod's grace period the node waits for its VM to power off by itself (the agent
// has killed what still ran at the deadline; syncing and powering off remain) before the backend ends it.
const powerOffMargin = 5 * time.Second

// vmStop is the deletion of a pod's VM under way: by when its containers must be stopped. A kubelet takes a
// shorter grace period given while a pod terminates (a second delete with a smaller gracePeriodSeconds) and kills
// by the new deadline; so the deadline only ever moves earlier, never later.
type vmStop struct {
	mu    sync.Mutex
	by    time.Time
	moved chan struct{} // closed and replaced when by moves
}

func newVMStop(by time.Time) *vmStop {
	return &vmStop{by: by, moved: make(chan struct{})}
}

// shorten moves the deadline to by if that is earlier, and reports whether it moved.
func (s *vmStop) shorten(by time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !by.Before(s.by) {
		return false
	}
	s.by = by
	close(s.moved)
	s.moved = make(chan struct{})
	return true
}

// when returns the deadline and a channel closed when it next moves.
func (s *vmStop) when() (time.Time, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.by, s.moved
}

// awaitExit waits until v's VM has exited, the stop's deadline (plus powerOffMargin) has passed — following the
// deadline when it moves earlier — or ctx ends.
func awaitExit(ctx context.Context, v *podVM, s *vmStop) {
	for {
		by, moved := s.when()
		t := time.NewTimer(time.Until(by.Add(powerOffMargin)))
		select {
		case <-v.exited:
		case <-t.C:
		case <-ctx.Done():
		case <-moved:
			t.Stop()
			continue
		}
		t.Stop()
		return
	}
}

// shortenDelete moves a deletion's deadline to by if that is earlier (a second delete with a shorter grace period)
// and tells the pod's agent, whose stop then cuts the preStop hooks and kills what runs by the new deadline. A
// later by changes nothing.
func (p *Provider) shortenDelete(ctx context.Context, pod *corev1.Pod, v *podVM, s *vmStop, by time.Time) {
	if !s.shorten(by) {
		return
	}
	grace := max(time.Until(by), 0)
	l := log.G(ctx).WithField("pod", key(pod.Namespace, pod.Name))
	c := v.connected()
	if c == nil {
		l.Info("the pod's grace period was shortened; no agent to tell, the VM ends by the new deadline")
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.PowerOff(rctx, grace); err != nil {
		l.WithError(err).Info("telling the agent of the pod's shortened grace period; the VM ends by the new deadline")
	}
}
