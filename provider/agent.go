package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	utilexec "k8s.io/utils/exec"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

// handshakeTimeout bounds one attempt to open a session with an agent.
const handshakeTimeout = 5 * time.Second

// podAgent is the node's session with one pod's agent. A goroutine keeps it connected for as long as the pod is
// on the node, redialling when the session ends (a node restart, a broken channel).
type podAgent struct {
	cancel context.CancelFunc

	mu      sync.Mutex
	client  *protocol.Client // nil while not connected
	ready   chan struct{}    // closed once a client is set, replaced when it is lost
	status  *protocol.PodStatus
	stopped chan struct{}
	// servicesGen is the generation of the service table the agent has (see SetServices); pushMu serialises
	// sending it.
	servicesGen uint64
	pushMu      sync.Mutex
}

// agentFor returns the session of a pod by UID, or nil.
func (p *Provider) agentFor(uid string) *podAgent {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.agents[uid]
}

// connectAgent starts the session with a pod's agent unless one runs; the VM is up (its agent said it is ready).
func (p *Provider) connectAgent(ctx context.Context, pod *corev1.Pod) {
	uid := string(pod.UID)
	p.mu.Lock()
	if _, ok := p.agents[uid]; ok {
		p.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a := &podAgent{cancel: cancel, ready: make(chan struct{}), stopped: make(chan struct{})}
	p.agents[uid] = a
	p.mu.Unlock()
	go func() {
		defer close(a.stopped)
		p.runAgent(ctx, pod, a)
	}()
	go p.enforceDeadline(ctx, pod)
}

// disconnectAgentAsync ends a pod's session without waiting (from the session's own goroutines).
func (p *Provider) disconnectAgentAsync(uid string) {
	p.mu.Lock()
	a := p.agents[uid]
	p.mu.Unlock()
	if a != nil {
		a.cancel()
	}
}

// disconnectAgent ends a pod's session and waits for its goroutine.
func (p *Provider) disconnectAgent(uid string) {
	p.mu.Lock()
	a := p.agents[uid]
	delete(p.agents, uid)
	p.mu.Unlock()
	if a != nil {
		a.cancel()
		<-a.stopped
	}
}

func (p *Provider) runAgent(ctx context.Context, pod *corev1.Pod, a *podAgent) {
	logger := log.G(ctx).WithField("pod", key(pod.Namespace, pod.Name)).WithField("uid", pod.UID)
	vst, err := p.backend.Get(string(pod.UID))
	if err != nil {
		return
	}
	rt, ok := p.awaitRuntime(ctx, pod, vst)
	if !ok {
		return
	}
	cfg := podConfig(pod, vst.IP, rt, resolvConf(pod, p.clusterDNS(), p.nodeResolv))
	for attempt := 0; ctx.Err() == nil; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(min(time.Duration(attempt)*200*time.Millisecond, 2*time.Second)):
			}
		}
		if st, err := p.backend.Get(string(pod.UID)); err != nil || st.State != vm.Running {
			return // the VM ended: its status says why
		}
		conn, err := p.backend.DialAgent(ctx, string(pod.UID))
		if err != nil {
			logger.WithError(err).Debug("reaching the agent")
			continue
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		c, err := protocol.NewClient(conn, handshakeTimeout)
		stop()
		if err != nil {
			logger.WithError(err).Warn("opening a session with the agent")
			continue
		}
		var gen uint64
		cfg.Services, gen = p.serviceTable()
		if err := c.Configure(ctx, cfg); err != nil {
			c.Close()
			if re := (*protocol.RemoteError)(nil); errors.As(err, &re) {
				p.podFailed(pod, "CreateContainerConfigError", err.Error())
				return
			}
			logger.WithError(err).Warn("configuring the pod")
			continue
		}
		a.mu.Lock()
		a.client, a.servicesGen = c, gen
		close(a.ready)
		a.mu.Unlock()
		go p.pushServices(ctx, a) // a change that came while configuring
		attempt = 0
		go p.refreshVolumes(ctx, pod, vst, c, cfg.Volumes)
		err = c.Watch(ctx, func(st protocol.PodStatus) { p.agentChanged(pod, a, st) })
		c.Close()
		a.mu.Lock()
		a.client, a.ready = nil, make(chan struct{})
		a.mu.Unlock()
		if ctx.Err() == nil {
			logger.WithError(err).Info("the session with the agent ended; reconnecting")
		}
	}
}

// agentChanged applies the agent's view of the containers to the pod's status, with the Events a kubelet emits.
func (p *Provider) agentChanged(pod *corev1.Pod, a *podAgent, st protocol.PodStatus) {
	a.mu.Lock()
	prev := a.status
	a.status = &st
	a.mu.Unlock()
	vst, err := p.backend.Get(string(pod.UID))
	if err != nil || vst.State != vm.Running {
		return
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
			p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Unhealthy", c.LastProbeFailure)
		}
		if c.Killed != "" && c.Killed != b.Killed {
			p.cfg.Events.Event(pod, corev1.EventTypeNormal, "Killing", c.Killed)
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
			p.cfg.Events.Eventf(pod, corev1.EventTypeWarning, "Failed", "Error: %s", c.State.Message)
		}
	}
	p.mu.Lock()
	ids := p.images[string(pod.UID)]
	p.mu.Unlock()
	p.storeIfCurrent(pod, podStatus(pod, p.cfg.InternalIP, vst, st, ids))
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
	p.mu.Lock()
	hasBackend := p.backend != nil
	p.mu.Unlock()
	if !hasBackend {
		return nil, errdefs.InvalidInputf("pod %s/%s is not running: node %s has no backend configured", namespace, name, p.cfg.NodeName)
	}
	a := p.agentFor(string(pod.UID))
	if a == nil {
		return nil, errdefs.InvalidInputf("pod %s/%s is not running yet", namespace, name)
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		a.mu.Lock()
		c, ready := a.client, a.ready
		a.mu.Unlock()
		if c != nil {
			return c, nil
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

func containerErr(err error, namespace, pod, container string) error {
	if protocol.IsNotFound(err) {
		return errdefs.NotFoundf("container %s is not in pod %s/%s", container, namespace, pod)
	}
	var re *protocol.RemoteError
	if errors.As(err, &re) {
		return errdefs.InvalidInput(re.Message)
	}
	return err
}

// GetContainerLogs returns a container's log as kubectl logs asks for it.
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, container string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	c, err := p.client(ctx, namespace, podName, 10*time.Second)
	if err != nil {
		return nil, err
	}
	o := protocol.LogOptions{Container: container, Follow: opts.Follow, Previous: opts.Previous,
		Timestamps: opts.Timestamps, Tail: opts.Tail, SinceTime: opts.SinceTime, LimitBytes: int64(opts.LimitBytes)}
	if o.Tail == 0 {
		o.Tail = -1 // virtual-kubelet's zero value: no tail was asked for
	}
	if opts.SinceSeconds > 0 {
		o.SinceTime = time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second)
	}
	rc, err := c.Logs(ctx, o)
	if err != nil {
		return nil, containerErr(err, namespace, podName, container)
	}
	return rc, nil
}

// RunInContainer runs a command in a container, as kubectl exec does; a non-zero exit reaches kubectl as such.
func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, container string, cmd []string, attach api.AttachIO) error {
	c, err := p.client(ctx, namespace, podName, 10*time.Second)
	if err != nil {
		return err
	}
	s, closeOut := streams(attach)
	defer closeOut()
	code, err := c.Exec(ctx, protocol.ExecRequest{Container: container, Command: cmd, Stdin: attach.Stdin() != nil, TTY: attach.TTY()}, s)
	return exitErr(code, containerErr(err, namespace, podName, container))
}

// AttachToContainer attaches to a container's main process, as kubectl attach does.
func (p *Provider) AttachToContainer(ctx context.Context, namespace, podName, container string, attach api.AttachIO) error {
	c, err := p.client(ctx, namespace, podName, 10*time.Second)
	if err != nil {
		return err
	}
	s, closeOut := streams(attach)
	defer closeOut()
	code, err := c.Attach(ctx, protocol.AttachRequest{Container: container, Stdin: attach.Stdin() != nil, TTY: attach.TTY()}, s)
	return exitErr(code, containerErr(err, namespace, podName, container))
}

// PortForward connects stream to a port of the pod, as kubectl port-forward does.
func (p *Provider) PortForward(ctx context.Context, namespace, podName string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	c, err := p.client(ctx, namespace, podName, 10*time.Second)
	if err != nil {
		return err
	}
	if err := c.PortForward(ctx, int(port), stream); err != nil {
		return fmt.Errorf("forwarding port %d of pod %s/%s, %w", port, namespace, podName, containerErr(err, namespace, podName, ""))
	}
	return nil
}

func streams(attach api.AttachIO) (protocol.Streams, func()) {
	s := protocol.Streams{Stdin: attach.Stdin()}
	if w := attach.Stdout(); w != nil {
		s.Stdout = w
	}
	if w := attach.Stderr(); w != nil {
		s.Stderr = w
	}
	var stop chan struct{}
	if attach.TTY() {
		stop = make(chan struct{})
		rs := make(chan protocol.Resize)
		s.Resize = rs
		go func() {
			for {
				select {
				case sz := <-attach.Resize():
					select {
					case rs <- protocol.Resize{Width: sz.Width, Height: sz.Height}:
					case <-stop:
						return
					}
				case <-stop:
					return
				}
			}
		}()
	}
	return s, func() {
		if stop != nil {
			close(stop)
		}
		for _, w := range []io.WriteCloser{attach.Stdout(), attach.Stderr()} {
			if w != nil {
				w.Close()
			}
		}
	}
}

func exitErr(code int, err error) error {
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}
