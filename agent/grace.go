package agent

import (
	"context"
	"sync"
	"time"
)

// stopDeadline is when the pod's stop must be over: its preStop hooks are cut and what still runs is killed then.
// A kubelet's pod worker takes a shorter grace period given while the pod terminates (a second delete with a
// smaller gracePeriodSeconds) and kills by the new deadline; so the deadline only ever moves earlier, never later.
// Its zero value has no deadline yet; it is safe for concurrent use.
type stopDeadline struct {
	mu    sync.Mutex
	at    time.Time     // zero until set
	moved chan struct{} // closed and replaced when at moves
}

// shorten sets the deadline to at if there is none yet or at is earlier, and reports whether it moved. A later
// at leaves it as it was.
func (d *stopDeadline) shorten(at time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.at.IsZero() && !at.Before(d.at) {
		return false
	}
	d.at = at
	if d.moved != nil {
		close(d.moved)
	}
	d.moved = make(chan struct{})
	return true
}

// when returns the deadline (zero if none) and a channel closed when it next moves.
func (d *stopDeadline) when() (time.Time, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.moved == nil {
		d.moved = make(chan struct{})
	}
	return d.at, d.moved
}

// context returns a context that ends at the deadline, following it when it moves earlier, or when parent ends.
// Without a deadline it ends at once. Cancel releases it.
func (d *stopDeadline) context(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	go func() {
		for {
			at, moved := d.when()
			t := time.NewTimer(time.Until(at))
			select {
			case <-t.C:
				cancel()
				return
			case <-moved:
				t.Stop()
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
	}()
	return ctx, cancel
}

// shortenStop moves the pod's stop deadline to grace from now, if that is earlier (see stopDeadline): a stop under
// way cuts its preStop hooks and kills what still runs by then. A stop that starts later keeps the earlier one.
func (r *runtime) shortenStop(grace time.Duration) {
	if r.stopBy.shorten(time.Now().Add(grace)) {
		r.say("i2kit-agent: the pod's stop deadline is now %s away", grace)
	}
}
