package node

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// testElection is an election with durations short enough for a test: a lease of 1 s (the Lease records whole
// seconds), given up after 500 ms without renewal.
func testElection(identity string) LeaderElectionConfig {
	return LeaderElectionConfig{Enabled: true, LeaseName: "i2kit", Namespace: "i2kit-system", Identity: identity,
		LeaseDuration: metav1.Duration{Duration: time.Second},
		RenewDeadline: metav1.Duration{Duration: 500 * time.Millisecond},
		RetryPeriod:   metav1.Duration{Duration: 100 * time.Millisecond}}
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func holder(t *testing.T, client *fake.Clientset, lc LeaderElectionConfig) string {
	t.Helper()
	l, err := client.CoordinationV1().Leases(lc.Namespace).Get(context.Background(), lc.LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// TestStandbyRunsNothingUntilItTakesOver: a replica whose lease another holds keeps trying and runs nothing; once
// the holder stops renewing it takes the lease within the lease's duration and runs the node; a requested stop
// ends the node first and then releases the lease for the next replica.
func TestStandbyRunsNothingUntilItTakesOver(t *testing.T) {
	lc := testElection("standby")
	now := metav1.NewMicroTime(time.Now())
	client := fake.NewClientset(&coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: lc.Namespace, Name: lc.LeaseName},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: new("leader"), LeaseDurationSeconds: new(int32(3600)),
			AcquireTime: &now, RenewTime: &now},
	})
	var tries atomic.Int32
	client.PrependReactor("get", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		tries.Add(1)
		return false, nil, nil
	})
	ran, nodeStopped := make(chan struct{}), make(chan struct{})
	runNode := func(ctx context.Context) error {
		close(ran)
		<-ctx.Done()
		close(nodeStopped)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	result := make(chan error, 1)
	go func() {
		result <- lead(ctx, client, lc, runNode, func() { t.Error("lost called, but the lease was never lost") })
	}()

	waitFor(t, "the standby to try the lease five times", func() bool { return tries.Load() >= 5 })
	if closed(ran) {
		t.Fatal("the standby ran the node while another replica held the lease")
	}

	// The leader renews once more, now with a 1 s lease, and dies: the standby takes over after 1 s unrenewed.
	l, err := client.CoordinationV1().Leases(lc.Namespace).Get(ctx, lc.LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	renewed := metav1.NewMicroTime(time.Now())
	l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = new(int32(1)), &renewed
	if _, err := client.CoordinationV1().Leases(lc.Namespace).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	waitFor(t, "the standby to run the node", func() bool { return closed(ran) })
	if took := time.Since(t0); took < 900*time.Millisecond {
		t.Errorf("the standby took the lease %s after its last renewal, before its 1 s had passed", took)
	}
	if h := holder(t, client, lc); h != "standby" {
		t.Errorf("lease holder %q, want standby", h)
	}

	cancel()
	if err := <-result; err != nil {
		t.Errorf("lead after a requested stop: %v", err)
	}
	if !closed(nodeStopped) {
		t.Error("lead returned before the node stopped")
	}
	if h := holder(t, client, lc); h != "" {
		t.Errorf("after a requested stop the lease is held by %q, want released (no holder)", h)
	}
}

// TestLosingTheLeaseStopsTheNode: a leader that cannot renew its lease within the renew deadline calls lost at
// once, while the node still runs (cmd/i2kit exits there); if lost returns, the node is stopped and lead says so.
func TestLosingTheLeaseStopsTheNode(t *testing.T) {
	lc := testElection("leader")
	client := fake.NewClientset()
	var apiDown atomic.Bool
	client.PrependReactor("*", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if apiDown.Load() {
			return true, nil, apierrors.NewServiceUnavailable("the API server is away")
		}
		return false, nil, nil
	})
	ran, nodeStopped, lost := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var stoppedBeforeLost atomic.Bool
	runNode := func(ctx context.Context) error {
		close(ran)
		<-ctx.Done()
		close(nodeStopped)
		return ctx.Err()
	}
	result := make(chan error, 1)
	go func() {
		result <- lead(context.Background(), client, lc, runNode, func() {
			stoppedBeforeLost.Store(closed(nodeStopped))
			close(lost)
		})
	}()
	waitFor(t, "the leader to run the node", func() bool { return closed(ran) })
	apiDown.Store(true)
	t0 := time.Now()
	waitFor(t, "lost to be called", func() bool { return closed(lost) })
	if took := time.Since(t0); took > lc.LeaseDuration.Duration {
		t.Errorf("lost called %s after renewals began to fail, later than the lease's %s", took, lc.LeaseDuration.Duration)
	}
	if stoppedBeforeLost.Load() {
		t.Error("the node was stopped before lost was called: lost must come at once, not after a shutdown")
	}
	if err := <-result; !errors.Is(err, ErrLeaseLost) {
		t.Errorf("lead = %v, want ErrLeaseLost", err)
	}
	if !closed(nodeStopped) {
		t.Error("lead returned with the node still running")
	}
}

// TestNodeFailureHandsTheLeaseOver: a node that fails while leading releases the lease, so that a standby takes
// over at once, and its error is lead's.
func TestNodeFailureHandsTheLeaseOver(t *testing.T) {
	lc := testElection("leader")
	client := fake.NewClientset()
	boom := errors.New("backend gone")
	err := lead(context.Background(), client, lc, func(context.Context) error { return boom }, func() { t.Error("lost called") })
	if !errors.Is(err, boom) {
		t.Fatalf("lead = %v, want the node's error", err)
	}
	if h := holder(t, client, lc); h != "" {
		t.Errorf("lease held by %q after the node failed, want released", h)
	}
}

func TestServeHealthz(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	if err := servePlain(ctx, Config{HealthzAddress: addr}, nil); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(b) != "ok" {
		t.Errorf("/healthz = %d %q, want 200 ok", resp.StatusCode, b)
	}
	if err := servePlain(ctx, Config{HealthzAddress: addr}, nil); err == nil {
		t.Error("a second server on the same address started: want the address-in-use error")
	}
	cancel()
	waitFor(t, "the health server to stop", func() bool {
		_, err := http.Get("http://" + addr + "/healthz")
		return err != nil
	})
}
