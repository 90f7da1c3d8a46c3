package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/vmimage"
)

// RootfsSource makes an ephemeral container's root filesystem from its image (vmimage.Builder.Rootfs): resolved
// and pulled as Pull says, flattened from the builder's verified layers, with at most maxBytes of files.
type RootfsSource interface {
	Rootfs(ctx context.Context, ref string, pull vmimage.Pull, maxBytes int64) (*vmimage.Rootfs, error)
}

var _ RootfsSource = (*vmimage.Builder)(nil)

// ephemeralRun is the node's side of one ephemeral container (kubectl debug) of a running pod: bringing its image
// into the VM over the agent's session (see startEphemeral). Once the agent took it, its status is the agent's.
type ephemeralRun struct {
	// state is the container's state until the agent reports it: Waiting (ContainerCreating, ErrImagePull,
	// ImagePullBackOff, CreateContainerError) or, for a VM whose agent cannot take it, Terminated Unsupported.
	state   protocol.ContainerState
	imageID string
	busy    bool // an attempt is under way
	sent    bool // the agent took the container
	final   bool // never tried again (Unsupported)
	// wait is the next back-off after a failed attempt; retry when the next attempt is due.
	wait  time.Duration
	retry time.Time
}

// ephemeralDue starts what is due of a pod's ephemeral containers (sync calls it): each new one is noted Waiting
// with ContainerCreating at once, and is brought into the VM once its agent is connected; a failed attempt is tried
// again with the kubelet's image pull back-off. It returns how long until the next attempt is due, 0 for none.
func (p *Provider) ephemeralDue(ctx context.Context, pod *corev1.Pod, v *podVM, now time.Time) time.Duration {
	if len(pod.Spec.EphemeralContainers) == 0 || p.rootfs == nil {
		return 0
	}
	c := v.connected()
	var next time.Duration
	var start []corev1.EphemeralContainer
	added := false
	v.mu.Lock()
	if v.ephemeral == nil {
		v.ephemeral = map[string]*ephemeralRun{}
	}
	for _, ec := range pod.Spec.EphemeralContainers {
		run := v.ephemeral[ec.Name]
		if run == nil {
			run = &ephemeralRun{state: protocol.ContainerState{State: protocol.Waiting, Reason: "ContainerCreating"}}
			v.ephemeral[ec.Name], added = run, true
		}
		if !run.sent && v.status != nil && agentHas(v.status, ec.Name) {
			run.sent = true // taken before this node started
		}
		switch {
		case run.sent || run.busy || run.final || v.deleting || c == nil: // a configured session enqueues the pod
		case v.status == nil: // the session's first status, due at once, tells what the agent already has
			next = time.Second
		case now.Before(run.retry):
			if d := run.retry.Sub(now); next == 0 || d < next {
				next = d
			}
		default:
			run.busy = true
			start = append(start, ec)
		}
	}
	v.mu.Unlock()
	if added {
		p.republish(pod)
	}
	for _, ec := range start {
		go p.startEphemeral(context.WithoutCancel(ctx), pod, v, c, ec)
	}
	return next
}

// agentHas reports whether the agent's status lists the ephemeral container name.
func agentHas(st *protocol.PodStatus, name string) bool {
	for _, c := range st.Containers {
		if c.Ephemeral && c.Name == name {
			return true
		}
	}
	return false
}

// republish stores the pod's status again, for its ephemeral containers' (withStatus).
func (p *Provider) republish(pod *corev1.Pod) {
	if cur := p.current(pod); cur != nil {
		p.storeIfCurrent(cur, cur)
	}
}

// startEphemeral makes one attempt at bringing an ephemeral container into the pod's VM, with a kubelet's Events:
// its image is pulled as the pod's are (its pull secrets, the container's pull policy) and flattened (RootfsSource),
// its configuration resolved as other containers' are (env, mounts, security context), and both sent to the agent
// (protocol.AddEphemeral), which starts it. An agent that cannot take it leaves it Terminated with reason
// Unsupported for good; other failures are tried again after the back-off. The attempt ends with the agent's
// session.
func (p *Provider) startEphemeral(ctx context.Context, pod *corev1.Pod, v *podVM, c *protocol.Client, ec corev1.EphemeralContainer) {
	logger := log.G(ctx).WithField("pod", key(pod.Namespace, pod.Name)).WithField("container", ec.Name)
	// The attempt is the session's: it ends with it (a deleted pod's session is closed), its pull included.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-c.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	state, imageID, err := p.addEphemeral(ctx, pod, v, c, ec)
	now := time.Now()
	v.mu.Lock()
	run := v.ephemeral[ec.Name]
	run.busy = false
	switch {
	case err == nil:
		run.sent, run.imageID = true, imageID
	case errors.Is(err, protocol.ErrUnsupported):
		run.final = true
	default:
		if run.wait == 0 {
			run.wait = p.pullBackoff
		}
		run.retry = now.Add(run.wait)
		run.wait = min(2*run.wait, maxPullBackoff)
	}
	run.state = state
	wait, final := run.wait, run.final
	v.mu.Unlock()
	if err != nil {
		logger.WithError(err).Info("adding the ephemeral container")
		if !final {
			p.queue.AddAfter(v.uid, wait/2)
		}
	}
	p.republish(pod)
}

// addEphemeral is startEphemeral's attempt; it returns the container's state as the node then sees it.
func (p *Provider) addEphemeral(ctx context.Context, pod *corev1.Pod, v *podVM, c *protocol.Client, ec corev1.EphemeralContainer) (protocol.ContainerState, string, error) {
	waiting := func(reason, msg string) protocol.ContainerState {
		return protocol.ContainerState{State: protocol.Waiting, Reason: reason, Message: msg}
	}
	cur := p.current(pod)
	if cur == nil {
		return waiting("ContainerCreating", ""), "", errors.New("the pod is gone")
	}
	container := corev1.Container(ec.EphemeralContainerCommon)
	pull, _, err := p.pullFor(cur)
	if err == nil {
		pull.Policies = map[string]vmimage.PullPolicy{ec.Image: pullPolicy(container)}
		p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "Pulling", "Pulling image %q", ec.Image)
	}
	var fs *vmimage.Rootfs
	t0 := time.Now()
	if err == nil {
		actx, cancel := context.WithTimeout(ctx, pullTimeout)
		fs, err = p.rootfs.Rootfs(actx, ec.Image, pull, protocol.MaxRootfsBytes)
		cancel()
	}
	if err != nil {
		reason := "ErrImagePull"
		if errors.Is(err, vmimage.ErrNeverPull) {
			reason = "ErrImageNeverPull"
		}
		msg := fmt.Sprintf("Failed to pull image %q: %v", ec.Image, err)
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Failed", msg)
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Failed", "Error: "+reason)
		return waiting(reason, msg), "", err
	}
	defer fs.Close()
	p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "Pulled", "Successfully pulled image %q in %s", ec.Image, time.Since(t0).Round(time.Millisecond))
	cfg, err := p.ephemeralConfig(ctx, cur, v, container)
	if err != nil {
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Failed", "Error: "+err.Error())
		return waiting("CreateContainerConfigError", err.Error()), "", err
	}
	img := fs.Config
	req := protocol.EphemeralContainer{ContainerConfig: cfg, TargetContainerName: ec.TargetContainerName,
		Image: protocol.ImageConfig{Entrypoint: img.Entrypoint, Cmd: img.Cmd, Env: img.Env, WorkingDir: img.WorkingDir, User: img.User}}
	pr, pw := io.Pipe()
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		pw.CloseWithError(fs.WriteTar(pw))
	}()
	err = c.AddEphemeral(ctx, req, pr)
	pr.CloseWithError(errors.New("the request ended")) // the writer stops, if the agent did not read it all
	<-wrote
	switch {
	case errors.Is(err, protocol.ErrUnsupported):
		msg := ephemeralUnsupported(ec.Name, olderAgent)
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, ReasonUnsupported, msg)
		return ephemeralTerminated(msg), "", err
	case err != nil:
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Failed", "Error: "+err.Error())
		return waiting("CreateContainerError", err.Error()), "", err
	}
	p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "Created", "Created container %s", ec.Name)
	return waiting("ContainerCreating", ""), fs.Ref + "@" + fs.Digest, nil
}

// ephemeralConfig resolves an ephemeral container's runtime configuration as other containers' (podConfig): its
// env (envFrom and $(VAR) references), command and args, mounts of the pod's volumes and security context.
func (p *Provider) ephemeralConfig(ctx context.Context, pod *corev1.Pod, v *podVM, c corev1.Container) (protocol.ContainerConfig, error) {
	one := pod.DeepCopy()
	one.Spec.InitContainers, one.Spec.Containers, one.Spec.EphemeralContainers = nil, []corev1.Container{c}, nil
	v.mu.Lock()
	st := v.vm
	v.mu.Unlock()
	rt, err := p.resolve(ctx, one, st)
	if err != nil {
		return protocol.ContainerConfig{}, err
	}
	return podConfig(one, st.IP, rt, nil).Containers[0], nil
}

// Why an ephemeral container cannot run (ephemeralUnsupported).
const (
	noEphemeral = "this node cannot bring images into running pod VMs"
	olderAgent  = "the pod's VM was built by a node without ephemeral containers"
)

// ephemeralUnsupported says why an ephemeral container cannot run in a pod's VM.
func ephemeralUnsupported(name, why string) string {
	return fmt.Sprintf("ephemeral container %s cannot run: %s; use kubectl exec, or kubectl debug --copy-to for a new pod", name, why)
}

func ephemeralTerminated(msg string) protocol.ContainerState {
	return protocol.ContainerState{State: protocol.Terminated, ExitCode: 128, Reason: ReasonUnsupported, Message: msg}
}

// ephemeralView is what the node knows of a pod's ephemeral containers for their statuses: its own runs, and the
// agent's statuses of those it took.
type ephemeralView struct {
	runs  map[string]ephemeralRun
	agent map[string]protocol.ContainerStatus
	// unsupported, when set, says why none can run (a node without a backend): each is terminated Unsupported.
	unsupported string
}

// ephemeralStatuses are a pod's ephemeralContainerStatuses, as a kubelet reports them: the agent's status once it
// took the container (never ready, never restarted), else the node's state (waiting while the image comes,
// ContainerCreating until then).
func ephemeralStatuses(pod *corev1.Pod, view ephemeralView) []corev1.ContainerStatus {
	var out []corev1.ContainerStatus
	for _, ec := range pod.Spec.EphemeralContainers {
		run := view.runs[ec.Name]
		cs := corev1.ContainerStatus{Name: ec.Name, Image: ec.Image, ImageID: run.imageID}
		if a, ok := view.agent[ec.Name]; ok && run.sent {
			started := a.State.State == protocol.Running
			cs.State, cs.Started = containerState(a.State), &started
			if a.State.State != protocol.Waiting {
				cs.ContainerID = fmt.Sprintf("i2kit://%s/%s/0", pod.UID, ec.Name)
			}
		} else if run.state.State != "" {
			cs.State = containerState(run.state)
		} else if view.unsupported != "" {
			cs.State = containerState(ephemeralTerminated(ephemeralUnsupported(ec.Name, view.unsupported)))
		} else {
			cs.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}
		}
		if t := cs.State.Terminated; t != nil && t.Reason == ReasonUnsupported {
			t.StartedAt, t.FinishedAt = metav1.Time{}, metav1.Time{}
		}
		out = append(out, cs)
	}
	return out
}

// ephemeralView is what v knows of its pod's ephemeral containers; it takes v.mu (after p.mu, if held).
func (v *podVM) ephemeralView() ephemeralView {
	v.mu.Lock()
	defer v.mu.Unlock()
	view := ephemeralView{runs: map[string]ephemeralRun{}, agent: map[string]protocol.ContainerStatus{}}
	for n, r := range v.ephemeral {
		view.runs[n] = *r
	}
	if v.status != nil {
		for _, c := range v.status.Containers {
			if c.Ephemeral {
				view.agent[c.Name] = c
			}
		}
	}
	return view
}
