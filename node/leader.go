package node

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/util/retry"
)

// ErrLeaseLost is what Run returns when the replica lost the leader lease and its LeaseLost hook returned.
var ErrLeaseLost = errors.New("lost the leader lease")

// lead campaigns for the Lease lc names and calls run once this replica holds it; a replica that never gets it
// never calls run. It returns when:
//   - ctx ends before this replica leads: nil;
//   - run returns (ctx ended, or the node failed): run's result, once the lease is released — after run returned,
//     so that a standby takes over at once without ever running beside this replica;
//   - the lease is lost (not renewed within RenewDeadline): lost is called at once, from the elector's goroutine,
//     while run still runs; it is expected to end the process (cmd/i2kit exits, as kube-controller-manager does), so
//     that nothing this replica started outlives its lease. If lost returns, run's context is cancelled and lead
//     returns ErrLeaseLost once run has returned.
func lead(ctx context.Context, client kubernetes.Interface, lc LeaderElectionConfig, run func(context.Context) error, lost func()) error {
	logger := log.G(ctx).WithField("lease", lc.Namespace+"/"+lc.LeaseName).WithField("identity", lc.Identity)
	var (
		elected  = make(chan struct{}) // closed when this replica starts leading
		ended    = make(chan struct{}) // closed when the elector returns
		stopping atomic.Bool           // set before lead stops the elector itself: its end is then no loss
		leading  atomic.Bool
	)
	// The elector runs on a context of its own so that the lease outlives ctx until run has returned.
	electCtx, stopElecting := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElecting()
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: lc.Namespace, Name: lc.LeaseName},
			Client:     client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: lc.Identity},
		},
		LeaseDuration: lc.LeaseDuration.Duration,
		RenewDeadline: lc.RenewDeadline.Duration,
		RetryPeriod:   lc.RetryPeriod.Duration,
		// Not ReleaseOnCancel: the elector would release before calling OnStoppedLeading, and a release that hangs
		// on an unreachable API server (up to RenewDeadline) would delay the exit of a replica that lost its lease
		// past the moment a standby may take it. lead releases the lease itself after a requested stop.
		Name: lc.LeaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				leading.Store(true)
				close(elected)
			},
			OnStoppedLeading: func() {
				if leading.Load() && !stopping.Load() {
					logger.Error("lost the leader lease: stopping at once, so that the node does not run beside the next leader")
					lost()
				}
			},
			OnNewLeader: func(identity string) {
				if identity != lc.Identity {
					logger.WithField("leader", identity).Info("standing by: another replica leads")
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leaderElection: %w", err)
	}
	logger.Info("campaigning for the leader lease")
	go func() { defer close(ended); le.Run(electCtx) }()
	stop := func() {
		stopping.Store(true)
		stopElecting()
		<-ended
	}
	select {
	case <-ctx.Done():
		stop()
		if leading.Load() {
			releaseLease(client, lc, logger)
		}
		return nil
	case <-ended: // unasked, the elector returns only after leading: the lease was lost at once
		return ErrLeaseLost
	case <-elected:
	}
	select {
	case <-ended:
		return ErrLeaseLost
	default:
	}
	logger.Info("leading: running the node")
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	result := make(chan error, 1)
	go func() { result <- run(runCtx) }()
	select {
	case err := <-result:
		stop()
		releaseLease(client, lc, logger)
		return err
	case <-ended: // only the cases above stop the elector: this end is a loss
		stopRun()
		<-result
		return ErrLeaseLost
	}
}

// releaseLease gives up the Lease if this replica still holds it, as client-go's elector does on release: no holder,
// and a one-second duration, so that a standby takes it at its next try instead of waiting LeaseDuration out.
func releaseLease(client kubernetes.Interface, lc LeaderElectionConfig, logger log.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), lc.RenewDeadline.Duration)
	defer cancel()
	leases := client.CoordinationV1().Leases(lc.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		l, err := leases.Get(ctx, lc.LeaseName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != lc.Identity {
			return nil // another replica holds it already
		}
		now := metav1.NewMicroTime(time.Now())
		l.Spec = coordinationv1.LeaseSpec{HolderIdentity: new(""), LeaseDurationSeconds: new(int32(1)),
			AcquireTime: &now, RenewTime: &now, LeaseTransitions: l.Spec.LeaseTransitions}
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		logger.WithError(err).Warn("releasing the leader lease: a standby takes it when it expires")
		return
	}
	logger.Info("released the leader lease")
}
