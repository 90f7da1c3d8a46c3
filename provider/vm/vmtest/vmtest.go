// Package vmtest is the backend conformance kit: one suite that every vm.Backend must pass, run against real VMs
// (test/vm runs it against qemu) or against an emulated cloud. It checks the contract of package vm: Launch is
// idempotent per pod UID, a restarted backend finds its VMs again, a VM ended from outside shows as exited,
// Terminate is repeatable, the agent channel reaches the agent (whose handshake is readiness and whose power-off
// is a protocol call), and a launch cancelled half way leaves nothing behind.
package vmtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

// Harness is what the kit needs of a backend.
type Harness struct {
	// New makes a backend over the backend's persistent state (a runtime directory, a cloud account's tags): a
	// second call is the same backend after a restart. notify receives its status changes.
	New func(t *testing.T, notify func(vm.Status)) vm.Backend
	// Plan is the plan of a bootable pod VM for uid.
	Plan func(uid string) vm.Plan
	// KillOutside ends a running VM the way the world does: a kill of the hypervisor, an instance terminated from
	// outside.
	KillOutside func(t *testing.T, st vm.Status)
	// Leftovers lists what the backend still holds for uid after Terminate (processes, devices, files, cloud
	// resources): it must be empty.
	Leftovers func(t *testing.T, uid string) []string
	// BootTimeout bounds a VM's boot to its agent's handshake.
	BootTimeout time.Duration
}

// events collects a backend's notifications and lets a test wait for one.
type events struct {
	mu   sync.Mutex
	seen []vm.Status
	kick chan struct{}
}

func newEvents() *events { return &events{kick: make(chan struct{}, 1)} }

func (e *events) add(st vm.Status) {
	e.mu.Lock()
	e.seen = append(e.seen, st)
	e.mu.Unlock()
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// wait returns the first notification for uid that ok accepts, failing the test after timeout.
func (e *events) wait(t *testing.T, uid string, timeout time.Duration, ok func(vm.State) bool) vm.Status {
	t.Helper()
	deadline := time.After(timeout)
	for {
		e.mu.Lock()
		for _, st := range e.seen {
			if st.UID == uid && ok(st.State) {
				e.mu.Unlock()
				return st
			}
		}
		e.mu.Unlock()
		select {
		case <-e.kick:
		case <-deadline:
			t.Fatalf("VM %s: no such status within %s; saw %+v", uid, timeout, e.seen)
		}
	}
}

// Run runs the kit. The subtests share VMs and run in order.
func Run(t *testing.T, h Harness) {
	ctx := context.Background()
	ev := newEvents()
	b := h.New(t, ev.add)

	t.Run("launch twice gives one VM", func(t *testing.T) {
		var wg sync.WaitGroup
		got := make([]vm.Status, 2)
		errs := make([]error, 2)
		for i := range got {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], errs[i] = b.Launch(ctx, h.Plan("a"))
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if got[0].ID != got[1].ID || got[0].IP != got[1].IP || got[0].ID == "" {
			t.Fatalf("two launches of one pod gave %+v and %+v", got[0], got[1])
		}
		if n := count(t, b, "a"); n != 1 {
			t.Fatalf("List has %d VMs of pod a, want 1", n)
		}
	})

	t.Run("the agent channel reaches the agent", func(t *testing.T) {
		c := dialAgent(t, b, "a", h.BootTimeout)
		defer c.Close()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := c.Status(rctx); err != nil {
			t.Fatalf("status from the agent: %v", err)
		}
	})

	t.Run("a restarted backend finds its VMs", func(t *testing.T) {
		before, err := b.Get(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		ev2 := newEvents()
		b2 := h.New(t, ev2.add)
		after, err := b2.Get(ctx, "a")
		if err != nil || after.ID != before.ID || after.State != vm.Running {
			t.Fatalf("after a restart: %+v, %v; want %+v", after, err, before)
		}
		if n := count(t, b2, "a"); n != 1 {
			t.Fatalf("List after a restart has %d VMs of pod a, want 1", n)
		}
		again, err := b2.Launch(ctx, h.Plan("a"))
		if err != nil || again.ID != before.ID {
			t.Fatalf("Launch after a restart: %+v, %v; want the VM that runs", again, err)
		}
		b, ev = b2, ev2
	})

	t.Run("a VM ended from outside shows as exited", func(t *testing.T) {
		st, err := b.Get(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		h.KillOutside(t, st)
		failed := ev.wait(t, "a", time.Minute, func(s vm.State) bool { return s == vm.Failed })
		t.Logf("ended from outside: %s (%s) after %s", failed.State, failed.Reason, time.Since(t0).Round(time.Millisecond))
		if got, err := b.Get(ctx, "a"); err != nil || got.State != vm.Failed {
			t.Errorf("Get after the kill: %+v, %v; want Failed", got, err)
		}
	})

	t.Run("terminate is repeatable and leaves nothing", func(t *testing.T) {
		if err := b.Terminate(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		if err := b.Terminate(ctx, "a"); !vm.IsNotFound(err) {
			t.Errorf("second Terminate: %v, want NotFound", err)
		}
		if _, err := b.Get(ctx, "a"); !vm.IsNotFound(err) {
			t.Errorf("Get after Terminate: %v, want NotFound", err)
		}
		if left := h.Leftovers(t, "a"); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})

	t.Run("power-off is a protocol call", func(t *testing.T) {
		if _, err := b.Launch(ctx, h.Plan("b")); err != nil {
			t.Fatal(err)
		}
		c := dialAgent(t, b, "b", h.BootTimeout)
		t0 := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := c.PowerOff(rctx, time.Second); err != nil {
			t.Fatalf("asking the agent to power off: %v", err)
		}
		st := ev.wait(t, "b", time.Minute, vm.State.Exited)
		c.Close()
		t.Logf("VM b %s %s after the power-off request", st.State, time.Since(t0).Round(time.Millisecond))
		if err := b.Terminate(ctx, "b"); err != nil {
			t.Fatal(err)
		}
		if left := h.Leftovers(t, "b"); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})

	t.Run("a launch cancelled half way leaves nothing behind", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := b.Launch(cctx, h.Plan("c")); err == nil {
			// The backend made the VM before it saw the cancellation: a second launch must find it.
			t.Log("the cancelled launch completed")
		}
		st, err := b.Launch(ctx, h.Plan("c"))
		if err != nil {
			t.Fatal(err)
		}
		if n := count(t, b, "c"); n != 1 {
			t.Fatalf("List has %d VMs of pod c, want 1 (%+v)", n, st)
		}
		if err := b.Terminate(ctx, "c"); err != nil {
			t.Fatal(err)
		}
		if left := h.Leftovers(t, "c"); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
}

// count is how many VMs of pod uid the backend lists.
func count(t *testing.T, b vm.Backend, uid string) int {
	t.Helper()
	all, err := b.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, st := range all {
		if st.UID == uid {
			n++
		}
	}
	return n
}

// dialAgent opens a session with a VM's agent; the handshake waits for the guest's boot.
func dialAgent(t *testing.T, b vm.Backend, uid string, timeout time.Duration) *protocol.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	t0 := time.Now()
	conn, err := b.DialAgent(ctx, uid)
	if err != nil {
		t.Fatalf("dialling the agent of %s: %v", uid, err)
	}
	c, err := protocol.NewClient(conn, timeout)
	if err != nil {
		conn.Close()
		t.Fatalf("handshake with the agent of %s: %v", uid, err)
	}
	t.Logf("agent of %s answered the handshake %s after the dial", uid, time.Since(t0).Round(time.Millisecond))
	return c
}
