package provider

import (
	"context"
	"fmt"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/util/workqueue"

	"github.com/i2kit/i2kit/agent/protocol"
)

// The work queue keeps pods in step with what they depend on, one pod UID per item: a failed image pull's back-off
// (a delayed enqueue when the next attempt is due), their activeDeadlineSeconds (likewise), their files volumes (ConfigMaps, Secrets, the pod's own
// labels and annotations, service account tokens due for renewal) and the service table. Whatever may have changed
// a pod enqueues it — an update of the pod, a ConfigMap or Secret event of its namespace, a new service table, a
// session configured — and sync does what is due. No pod has a ticker or a poll loop of its own.

const (
	// queueWorkers is how many pods are synced at once.
	queueWorkers = 4
	// resyncPeriod is how often every pod is synced whatever the events said, a kubelet's periodic sync: a safety
	// net for a change no event reported.
	resyncPeriod = time.Minute
)

func newQueue() workqueue.TypedRateLimitingInterface[string] {
	// Failures are tried again from 1 s, doubling to 30 s: what a pod waits for (a ConfigMap) usually comes soon.
	limiter := workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 30*time.Second)
	return workqueue.NewTypedRateLimitingQueueWithConfig(limiter, workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods"})
}

// run works the queue until it shuts down, and enqueues every pod each resyncPeriod.
func (p *Provider) run(ctx context.Context) {
	for range queueWorkers {
		go func() {
			for p.work(ctx) {
			}
		}()
	}
	t := time.NewTicker(resyncPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.enqueueAll("", true)
		}
	}
}

func (p *Provider) work(ctx context.Context) bool {
	uid, shutdown := p.queue.Get()
	if shutdown {
		return false
	}
	defer p.queue.Done(uid)
	if err := p.sync(ctx, uid); err != nil {
		log.G(ctx).WithError(err).WithField("uid", uid).Debug("syncing a pod, trying again")
		p.queue.AddRateLimited(uid)
		return true
	}
	p.queue.Forget(uid)
	return true
}

// enqueueAll enqueues every pod of a namespace ("" for all) that has a VM; with volumes, their files volumes are
// resolved again at the sync (what changed may be in them).
func (p *Provider) enqueueAll(namespace string, volumes bool) {
	p.mu.Lock()
	var uids []string
	for _, pod := range p.pods {
		if namespace == "" || pod.Namespace == namespace {
			if v, ok := p.vms[string(pod.UID)]; ok {
				uids = append(uids, string(pod.UID))
				if volumes {
					v.markVolumesStale()
				}
			}
		}
	}
	p.mu.Unlock()
	for _, uid := range uids {
		p.queue.Add(uid)
	}
}

// ObjectChanged tells the provider that a ConfigMap or Secret of a namespace changed: the pods of the namespace
// that use it are synced (their runtime data resolved again). The node calls it from its informers' events.
func (p *Provider) ObjectChanged(namespace string) { p.enqueueAll(namespace, true) }

// sync does what is due for one pod: end it when its deadline has passed, wake its session when it waits for
// runtime data, send its agent the files volumes whose content changed and the service table it lacks. It
// enqueues the pod again for what comes due later (the deadline, a token's renewal).
func (p *Provider) sync(ctx context.Context, uid string) error {
	v := p.vmFor(uid)
	pod := p.podByUID(uid)
	if v == nil || pod == nil {
		return nil
	}
	next := time.Duration(0)
	due := func(d time.Duration) {
		if d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	d, exceeded := deadline(pod, time.Now())
	if exceeded {
		p.deadlineExceeded(ctx, pod, v)
		return nil
	}
	due(d)
	due(p.pullDue(pod, v, time.Now()))
	due(p.ephemeralDue(ctx, pod, v, time.Now()))
	v.wake()
	if c := v.connected(); c != nil {
		if err := p.pushVolumes(ctx, pod, v, c); err != nil {
			return err
		}
		if err := p.pushServices(ctx, v, c); err != nil {
			return err
		}
		if err := p.pushResize(ctx, pod, v, c); err != nil {
			return err
		}
		v.mu.Lock()
		refresh := v.tokenRefresh
		v.mu.Unlock()
		if !refresh.IsZero() {
			due(max(time.Until(refresh), time.Second))
		}
	}
	if next > 0 {
		p.queue.AddAfter(uid, next)
	}
	return nil
}

// deadline is how long a pod has left before its activeDeadlineSeconds (as it is now: it may be set or shortened
// on a running pod), counted from its start; 0 and false when it has none.
func deadline(pod *corev1.Pod, now time.Time) (left time.Duration, exceeded bool) {
	d := pod.Spec.ActiveDeadlineSeconds
	if d == nil || *d <= 0 {
		return 0, false
	}
	start := now
	if pod.Status.StartTime != nil {
		start = pod.Status.StartTime.Time
	}
	left = start.Add(time.Duration(*d) * time.Second).Sub(now)
	return left, left <= 0
}

// deadlineExceeded fails a pod that was active longer than its activeDeadlineSeconds, as a kubelet does: its VM is
// stopped within its grace period and the pod ends Failed with reason DeadlineExceeded.
func (p *Provider) deadlineExceeded(ctx context.Context, pod *corev1.Pod, v *podVM) {
	v.mu.Lock()
	done := v.deadlineDone
	v.deadlineDone = true
	v.mu.Unlock()
	if done {
		return
	}
	msg := fmt.Sprintf("Pod was active on the node longer than the specified deadline (%ds)", *pod.Spec.ActiveDeadlineSeconds)
	p.cfg.Events.Event(pod, corev1.EventTypeNormal, "DeadlineExceeded", msg)
	grace := 30 * time.Second
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	go func() { // the stop takes the grace period: never inside a queue worker
		p.stopVM(context.WithoutCancel(ctx), pod, v, grace)
		p.storeIfCurrent(pod, failedStatus(pod, p.cfg.InternalIP, "DeadlineExceeded", msg, time.Now()))
	}()
}

// pushVolumes resolves the pod's files volumes again and sends the agent those whose content changed (updated
// ConfigMaps and Secrets, the pod's labels and annotations, renewed tokens). What cannot be resolved stays as it
// was mounted, as on a kubelet.
func (p *Provider) pushVolumes(ctx context.Context, pod *corev1.Pod, v *podVM, c *protocol.Client) error {
	v.pushMu.Lock()
	defer v.pushMu.Unlock()
	v.mu.Lock()
	st := v.vm
	// Only what may have changed a files volume resolves them again: a ConfigMap or Secret event, an update of
	// the pod, a token due for renewal, the periodic resync; a new service table alone does not.
	stale := v.volumesStale || (!v.tokenRefresh.IsZero() && !time.Now().Before(v.tokenRefresh))
	v.volumesStale = false
	v.mu.Unlock()
	if !stale {
		return nil
	}
	rt, err := p.resolve(ctx, pod, st)
	if err != nil {
		return nil
	}
	v.mu.Lock()
	v.tokenRefresh = rt.TokenRefresh
	hashes := v.volumeHashes
	v.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, vol := range rt.Volumes {
		if vol.EmptyDir != nil || vol.Image {
			continue
		}
		h := volumeFilesHash(vol)
		if h == hashes[vol.Name] {
			continue
		}
		if err := c.UpdateVolume(ctx, vol.Name, vol.Files); err != nil {
			return fmt.Errorf("updating volume %s, %w", vol.Name, err)
		}
		v.mu.Lock()
		v.volumeHashes[vol.Name] = h
		v.mu.Unlock()
	}
	return nil
}

// volumeHashes is the content hash of each files volume.
func volumeHashes(vols []protocol.Volume) map[string]string {
	out := map[string]string{}
	for _, v := range vols {
		if v.EmptyDir == nil && !v.Image {
			out[v.Name] = volumeFilesHash(v)
		}
	}
	return out
}
