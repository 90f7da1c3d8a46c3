package provider

import (
	"context"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

const (
	// bootTimeout bounds the first handshake with a VM's agent: the hello waits in the channel until the guest
	// has booted and opens it (seconds under TCG, more when many VMs boot at once). The handshake is readiness.
	bootTimeout = 3 * time.Minute
	// handshakeTimeout bounds a later handshake (a reconnection to an agent that already served).
	handshakeTimeout = 5 * time.Second
)

// agentSession is the goroutine that keeps the node's session with one pod's agent for as long as the pod is on
// the node, reconnecting when it ends (a node restart, a broken channel).
type agentSession struct {
	cancel  context.CancelFunc
	stopped chan struct{}
}

// connectAgent starts the session with a pod's agent unless one runs; the VM runs.
func (p *Provider) connectAgent(ctx context.Context, pod *corev1.Pod) {
	v := p.vmOf(pod)
	v.mu.Lock()
	if v.session != nil {
		v.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &agentSession{cancel: cancel, stopped: make(chan struct{})}
	v.session = s
	v.mu.Unlock()
	go func() {
		defer close(s.stopped)
		p.runSession(ctx, pod, v)
	}()
	p.queue.Add(v.uid) // the deadline counts from now
}

// disconnectAgent ends a pod's session; with wait, it waits for the session's goroutine.
func (p *Provider) disconnectAgent(uid string, wait bool) {
	v := p.vmFor(uid)
	if v == nil {
		return
	}
	v.mu.Lock()
	s := v.session
	v.session = nil
	v.mu.Unlock()
	if s != nil {
		s.cancel()
		if wait {
			<-s.stopped
		}
	}
}

// runSession opens sessions with the pod's agent, configures the pod and follows its status until ctx ends. The
// first successful handshake is the VM's readiness.
func (p *Provider) runSession(ctx context.Context, pod *corev1.Pod, v *podVM) {
	logger := log.G(ctx).WithField("pod", key(pod.Namespace, pod.Name)).WithField("uid", pod.UID)
	uid := string(pod.UID)
	served := false // an agent answered once: later handshakes need not wait for a boot
	for attempt := 0; ctx.Err() == nil; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(min(time.Duration(attempt)*200*time.Millisecond, 2*time.Second)):
			}
		}
		st, err := p.backend.Get(ctx, uid)
		if vm.IsNotFound(err) || (err == nil && st.State.Exited()) {
			return // the VM ended: its status says why
		}
		if err != nil {
			logger.WithError(err).Debug("looking up the VM")
			continue
		}
		conn, err := p.backend.DialAgent(ctx, uid)
		if err != nil {
			if served && ctx.Err() == nil { // while the VM boots, its agent is not there yet
				p.cfg.Metrics.AgentSessionFailed(StageDial)
			}
			logger.WithError(err).Debug("reaching the agent")
			continue
		}
		timeout := bootTimeout
		if served {
			timeout = handshakeTimeout
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		c, err := protocol.NewClient(conn, timeout)
		stop()
		if err != nil {
			conn.Close()
			if ctx.Err() == nil {
				p.cfg.Metrics.AgentSessionFailed(StageHandshake)
			}
			logger.WithError(err).Warn("opening a session with the agent")
			continue
		}
		served = true
		v.mu.Lock()
		launched := v.launched
		v.launched = time.Time{}
		v.mu.Unlock()
		if !launched.IsZero() {
			p.cfg.Metrics.VMLaunched(time.Since(launched))
		}
		rt, cur, ok := p.awaitRuntime(ctx, pod, v, st)
		if !ok {
			c.Close()
			return
		}
		cfg := podConfig(cur, st.IP, rt, resolvConf(cur, p.clusterDNS(), p.nodeResolv))
		var gen uint64
		cfg.Services, gen = p.serviceTable()
		if err := c.Configure(ctx, cfg); err != nil {
			c.Close()
			if ctx.Err() == nil {
				p.cfg.Metrics.AgentSessionFailed(StageConfigure)
			}
			if re := (*protocol.RemoteError)(nil); errors.As(err, &re) {
				p.podFailed(pod, "CreateContainerConfigError", err.Error())
				return
			}
			logger.WithError(err).Warn("configuring the pod")
			continue
		}
		v.mu.Lock()
		v.client, v.servicesGen, v.configured = c, gen, true
		v.volumeHashes = volumeHashes(cfg.Volumes)
		v.tokenRefresh = rt.TokenRefresh
		close(v.ready)
		v.mu.Unlock()
		p.queue.Add(uid) // a service table or volume change that came while configuring
		attempt = 0
		err = c.Watch(ctx, func(st protocol.PodStatus) { p.agentChanged(pod, v, st) })
		c.Close()
		v.mu.Lock()
		v.client, v.ready = nil, make(chan struct{})
		ending := v.deleting || isClosed(v.exited) // a VM powering off ends its session
		v.mu.Unlock()
		if ctx.Err() == nil && !ending {
			p.cfg.Metrics.AgentSessionFailed(StageLost)
			logger.WithError(err).Info("the session with the agent ended; reconnecting")
		}
	}
}

// awaitRuntime resolves the pod's runtime data. While something it needs is missing (a ConfigMap not created yet)
// the containers wait with CreateContainerConfigError and a Warning Event says why, as on a kubelet, with
// virtual-kubelet's own Event beside it (MandatoryConfigMapNotFound, …); the work queue wakes the session when what
// the pod uses changes. Optional references skipped get virtual-kubelet's Events (OptionalSecretNotFound, …) once
// per VM. It returns the pod as it was resolved.
func (p *Provider) awaitRuntime(ctx context.Context, pod *corev1.Pod, v *podVM, st vm.Status) (podRuntime, *corev1.Pod, bool) {
	last := ""
	for {
		cur := p.current(pod) // the pod as it is now: an update may have fixed what failed
		if cur == nil {
			return podRuntime{}, nil, false
		}
		rt, err := p.resolve(ctx, cur, st)
		if err == nil {
			v.mu.Lock()
			warned := v.envWarned
			v.envWarned = warned || len(rt.Warnings) > 0 // a later resolution may skip what this one found
			v.mu.Unlock()
			for _, w := range rt.Warnings {
				if !warned {
					p.cfg.Events.Event(pod, corev1.EventTypeWarning, w.Reason, w.Message)
				}
			}
			return rt, cur, true
		}
		if msg := err.Error(); msg != last {
			last = msg
			p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Failed", "Error: "+msg)
			if re := (*refError)(nil); errors.As(err, &re) {
				p.cfg.Events.Event(pod, corev1.EventTypeWarning, re.Reason, re.Message)
			}
			p.storeIfCurrent(pod, pendingStatus(pod, p.cfg.InternalIP, "CreateContainerConfigError", msg, time.Now()))
		}
		p.queue.AddRateLimited(v.uid) // a safety net for changes no event reports
		select {
		case <-ctx.Done():
			return podRuntime{}, nil, false
		case <-v.kick:
		}
	}
}

// agentChanged applies the agent's view of the containers to the pod's status, with the Events a kubelet emits.
// While the pod is being deleted its status still follows the agent's as long as the VM runs (a kubelet goes on
// reporting readiness while a pod terminates), with the probes' Events only: the containers' ends are the delete's.
// The status is computed from the pod as the node has it now, not as it was when the session opened: its labels,
// deadline and the conditions of its readiness gates may have changed since.
func (p *Provider) agentChanged(pod *corev1.Pod, v *podVM, st protocol.PodStatus) {
	v.mu.Lock()
	prev := v.status
	v.status = &st
	vst, ids, deleting := v.vm, v.imageIDs, v.deleting
	v.mu.Unlock()
	if vst.State != vm.Running {
		return
	}
	if pod = p.current(pod); pod == nil {
		return // deleted or replaced
	}
	before := map[string]protocol.ContainerStatus{}
	if prev != nil {
		for _, c := range prev.Containers {
			before[c.Name] = c
		}
	} else {
		// A pod adopted after a node restart: what the API server shows already had its Events.
		for _, cs := range append(append([]corev1.ContainerStatus(nil), pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...) {
			if r := cs.State.Running; r != nil {
				before[cs.Name] = protocol.ContainerStatus{Name: cs.Name, State: protocol.ContainerState{State: protocol.Running, StartedAt: r.StartedAt.Time}}
			}
		}
	}
	for _, c := range st.Containers {
		b := before[c.Name]
		if c.ProbeFailures > b.ProbeFailures && c.LastProbeFailure != "" {
			p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Unhealthy", guestText(c.LastProbeFailure))
		}
		if c.ProbeWarnings > b.ProbeWarnings && c.LastProbeWarning != "" {
			p.cfg.Events.Event(pod, corev1.EventTypeWarning, "ProbeWarning", guestText(c.LastProbeWarning))
		}
		if deleting {
			continue
		}
		if c.Killed != "" && c.Killed != b.Killed {
			p.cfg.Events.Event(pod, corev1.EventTypeNormal, "Killing", guestText(c.Killed))
		}
		switch {
		// The API keeps times to the second.
		case c.State.State == protocol.Running && !c.State.StartedAt.Truncate(time.Second).Equal(b.State.StartedAt.Truncate(time.Second)):
			p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "Started", "Started container %s", c.Name)
		case c.State.Reason == "CrashLoopBackOff" && b.State.Reason != "CrashLoopBackOff":
			p.cfg.Events.Eventf(pod, corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s_%s(%s)",
				c.Name, pod.Name, pod.Namespace, pod.UID)
		case (c.State.Reason == "StartError" || c.State.Reason == "CreateContainerError" || c.State.Reason == "CreateContainerConfigError") &&
			(b.State.Reason != c.State.Reason || b.State.Message != c.State.Message):
			p.cfg.Events.Eventf(pod, corev1.EventTypeWarning, "Failed", "Error: %s", guestText(c.State.Message))
		}
	}
	upd := podStatus(pod, p.cfg.InternalIP, vst, st, ids)
	if p.storeIfCurrent(pod, upd) && isReady(upd) && !deleting {
		v.mu.Lock()
		first := v.awaitReady
		v.awaitReady = false
		v.mu.Unlock()
		if first && !pod.CreationTimestamp.IsZero() {
			p.cfg.Metrics.PodReady(time.Since(pod.CreationTimestamp.Time))
		}
	}
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// isReady reports whether a pod's status has its Ready condition true.
func isReady(pod *corev1.Pod) bool {
	c := findCondition(pod.Status.Conditions, corev1.PodReady)
	return c != nil && c.Status == corev1.ConditionTrue
}

func (p *Provider) podFailed(pod *corev1.Pod, reason, msg string) {
	p.cfg.Events.Event(pod, corev1.EventTypeWarning, reason, msg)
	p.storeIfCurrent(pod, failedStatus(pod, p.cfg.InternalIP, reason, msg, time.Now()))
}

// client returns the session with a pod's agent, waiting up to wait for it to be (re)established.
func (p *Provider) client(ctx context.Context, namespace, name string, wait time.Duration) (*protocol.Client, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	if p.backend == nil {
		return nil, errdefs.InvalidInputf("pod %s/%s is not running: node %s has no backend configured", namespace, name, p.cfg.NodeName)
	}
	v := p.vmFor(string(pod.UID))
	if v == nil {
		return nil, errdefs.InvalidInputf("pod %s/%s is not running yet", namespace, name)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		v.mu.Lock()
		c, ready, running := v.client, v.ready, v.session != nil
		v.mu.Unlock()
		if c != nil {
			return c, nil
		}
		if !running {
			return nil, errdefs.InvalidInputf("pod %s/%s is not running yet", namespace, name)
		}
		select {
		case <-ready:
		case <-t.C:
			return nil, errdefs.InvalidInputf("pod %s/%s: its VM's agent cannot be reached", namespace, name)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// maxGuestText bounds what of a guest's text (a probe's output, a kill's reason) goes into one Event: the
// events.k8s.io limit on an Event's note. The agent's answers are bounded as a whole (protocol.MaxResponseBytes),
// not per message, so a hostile guest could otherwise make every Event megabytes long.
const maxGuestText = 1024

// guestText is s cut to maxGuestText bytes, on a rune boundary, marked as cut.
func guestText(s string) string {
	if len(s) <= maxGuestText {
		return s
	}
	const mark = " [truncated]"
	cut := maxGuestText - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
