package agent

import (
	"context"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/agent/protocol"
)

// defaultGrace is a kubelet's terminationGracePeriodSeconds when the pod gives none.
const defaultGrace = 30 * time.Second

// containerKind is a container's place in the pod's start order, as a kubelet sees it.
type containerKind int

const (
	// appKind is a regular container: it starts once every init container has succeeded or started.
	appKind containerKind = iota
	// initKind is a regular init container: it runs to success before the next container starts.
	initKind
	// sidecarKind is a restartable init container (restartPolicy Always): the next container starts once it is
	// started, and it runs, restarted whatever its exit, until the pod's app containers are done.
	sidecarKind
)

// kindOf is c's kind: from the node's configuration when it marks init containers (byConfig), else from the image,
// whose onboot containers are the regular init containers (an older node sends no kinds; sidecars then run as
// app containers).
func kindOf(c *container, byConfig bool) containerKind {
	switch {
	case !byConfig && c.Onboot, byConfig && c.rc.Init && c.rc.RestartPolicy != protocol.RestartAlways:
		return initKind
	case byConfig && c.rc.Init:
		return sidecarKind
	}
	return appKind
}

// startOrder is the order the pod's containers start in: the node's configuration's when it marks init containers
// (a kubelet's: init containers in the pod's order, then the app containers), else the image's (onboot first).
// Containers of the image that the configuration does not list come last, in the image's order.
func startOrder(image []*container, cfg []protocol.ContainerConfig) (order []*container, byConfig bool) {
	byConfig = slices.ContainsFunc(cfg, func(cc protocol.ContainerConfig) bool { return cc.Init })
	if !byConfig {
		return slices.Clone(image), false
	}
	for _, cc := range cfg {
		if i := slices.IndexFunc(image, func(c *container) bool { return c.Name == cc.Name }); i >= 0 && !slices.Contains(order, image[i]) {
			order = append(order, image[i])
		}
	}
	for _, c := range image {
		if !slices.Contains(order, c) {
			order = append(order, c)
		}
	}
	return order, true
}

// restarts reports whether a container of kind k that exited with code restarts, as a kubelet decides: a sidecar
// always restarts; a regular init container only after a failure, if its policy would restart it; an app
// container by its policy (protocol.ShouldRestart: its restart rules, its own restartPolicy (own), the pod's).
func restarts(k containerKind, pod, own string, rules []protocol.RestartRule, code int) bool {
	if k == sidecarKind {
		return true
	}
	should := protocol.ShouldRestart(pod, own, rules, code)
	if k == appKind {
		return should
	}
	return code != 0 && should
}

// podRunner is what startPod drives: the runtime, or a fake in tests.
type podRunner interface {
	// supervise runs c, restarting it as restarts says, until it is done for good, the pod stops, or c is stopped
	// as a sidecar whose pod is done; it reports whether c's last run succeeded. It returns false at once for a
	// container that cannot be created.
	supervise(c *container) bool
	// whenStarted returns a channel closed once c is first started: it runs, its postStart hook has returned and
	// its startup probe, if any, has succeeded. It is never closed if c never starts.
	whenStarted(c *container) <-chan struct{}
	// initFailed leaves the containers that will not start after init container c failed for good waiting,
	// saying why.
	initFailed(c *container, rest []*container)
	// stopSidecars stops the running sidecars once the app containers are done for good: each after the ones
	// after it, within the pod's grace period; none restarts.
	stopSidecars(sidecars []*container)
}

// startPod starts the pod's containers in order (see startOrder) as a kubelet does: a regular init container runs
// to success before the next container starts, a sidecar is started and the next container waits until it is
// started (postStart hook returned, startup probe succeeded), and the app containers start together once every
// init container is done. When the app containers are all done for good (a Never or OnFailure pod's), the
// sidecars are stopped so that the pod completes. It returns once the containers are done or stop closes.
func startPod(p podRunner, order []*container, stop <-chan struct{}) {
	var sidecars, apps []*container
	for i, c := range order {
		switch c.kind {
		case initKind:
			if p.supervise(c) {
				continue
			}
			select {
			case <-stop:
				return
			default:
			}
			p.initFailed(c, order[i+1:])
			if c.createErr == nil && len(sidecars) > 0 {
				// It ran and failed for good: the pod has failed, and a kubelet stops what still runs of it.
				p.stopSidecars(sidecars)
			}
			return
		case sidecarKind:
			sidecars = append(sidecars, c)
			ended := make(chan struct{})
			go func() {
				defer close(ended)
				p.supervise(c)
			}()
			select {
			case <-p.whenStarted(c):
			case <-ended: // it cannot be created, or was stopped: what follows it never starts
				select {
				case <-stop:
				default:
					p.initFailed(c, order[i+1:])
				}
				return
			case <-stop:
				return
			}
		default:
			apps = append(apps, c)
		}
	}
	var wg sync.WaitGroup
	for _, c := range apps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.supervise(c)
		}()
	}
	wg.Wait()
	select {
	case <-stop:
		return
	default:
	}
	for _, c := range apps {
		if c.createErr != nil {
			return // it never ran: a kubelet keeps the pod waiting for it, sidecars and all
		}
	}
	if len(sidecars) > 0 && len(apps) > 0 {
		p.stopSidecars(sidecars)
	}
}

// stopOrder is the order in which a kubelet stops a pod's containers: the app containers (and any init container
// still running) together first, then the sidecars one at a time in reverse order, each once those after it have
// ended. Each group is stopped once every earlier group has ended.
func stopOrder(cs []*container) [][]*container {
	var first, sidecars []*container
	for _, c := range cs {
		if c.kind == sidecarKind {
			sidecars = append(sidecars, c)
		} else {
			first = append(first, c)
		}
	}
	var groups [][]*container
	if len(first) > 0 {
		groups = append(groups, first)
	}
	for _, c := range slices.Backward(sidecars) {
		groups = append(groups, []*container{c})
	}
	return groups
}

// terminate stops groups of containers by deadline d, as a kubelet stops a pod: the preStop hooks of every running
// container run first, all at once (each run's once, whoever terminates it), and are cut at the deadline; then each
// group in turn gets SIGTERM once the earlier groups have ended; what still runs at the deadline (or when ctx ends)
// gets SIGKILL. The deadline may move earlier while it runs (a shortened grace period): hooks are cut and SIGKILL
// sent by the new one. It returns once every container it signalled has ended.
func (r *runtime) terminate(ctx context.Context, groups [][]*container, d *stopDeadline) {
	type run struct {
		c              *container
		pid            int
		ended, started chan struct{}
	}
	r.mu.Lock()
	var runs [][]run
	var hooked []*container
	for _, g := range groups {
		var rs []run
		for _, c := range g {
			if c.pid != 0 {
				rs = append(rs, run{c, c.pid, c.ended, c.started})
				if c.rc.PreStop != nil && !c.preStopRun { // once per run: stopSidecars may have run it already
					c.preStopRun = true
					hooked = append(hooked, c)
				}
			}
		}
		runs = append(runs, rs)
	}
	r.mu.Unlock()
	// dctx ends at the deadline, wherever it moves, or with ctx: the hooks run within it, and SIGKILL follows it.
	dctx, cancel := d.context(ctx)
	defer cancel()
	var hooks sync.WaitGroup
	for _, c := range hooked {
		hooks.Add(1)
		go func() {
			defer hooks.Done()
			if err := r.runHook(dctx, c, c.rc.PreStop); err != nil {
				r.say("i2kit-agent: container %s: preStop hook failed: %v", c.Name, err)
			}
		}()
	}
	hooks.Wait()
	killAll := func(from int) {
		for _, rs := range runs[from:] {
			for _, x := range rs {
				select {
				case <-x.ended: // its pid may be another process's by now
				default:
					r.kill(x.pid, syscall.SIGKILL)
				}
			}
		}
		for _, rs := range runs[from:] {
			for _, x := range rs {
				<-x.ended
			}
		}
	}
	for gi, rs := range runs {
		for _, x := range rs {
			select { // a container just starting gets its SIGTERM once its supervisor can pass it on
			case <-x.started:
			case <-x.ended:
				continue
			case <-dctx.Done():
			}
			r.kill(x.pid, syscall.SIGTERM)
		}
		for _, x := range rs {
			select {
			case <-x.ended:
				continue
			case <-dctx.Done():
			}
			killAll(gi)
			return
		}
	}
}

// kill sends sig to a run's supervisor; tests replace signal.
func (r *runtime) kill(pid int, sig syscall.Signal) {
	if r.signal != nil {
		r.signal(pid, sig)
		return
	}
	syscall.Kill(pid, sig) //nolint:errcheck // it may have ended meanwhile
}

var _ podRunner = (*runtime)(nil)

// whenStarted: see podRunner. It watches c's status until c is started or the pod stops.
func (r *runtime) whenStarted(c *container) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for {
			r.mu.Lock()
			started, stopping, changed := c.status.Started, r.stopping || c.retired, r.changed
			r.mu.Unlock()
			switch {
			case started:
				close(ch)
				return
			case stopping:
				return
			}
			<-changed
		}
	}()
	return ch
}

// initFailed: see podRunner. The containers left waiting say PodInitializing, as a kubelet's do, but for one that
// cannot be created, which says why.
func (r *runtime) initFailed(c *container, rest []*container) {
	for _, s := range rest {
		if s.createErr == nil {
			r.setState(s, protocol.ContainerState{State: protocol.Waiting, Reason: "PodInitializing",
				Message: "init container " + c.Name + " failed"})
		}
	}
}

// stopSidecars: see podRunner. They get the pod's grace period (at least a kubelet's minimum of 2 s).
func (r *runtime) stopSidecars(sidecars []*container) {
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		return // stop stops them
	}
	for _, c := range sidecars {
		c.retired = true
		wakeUp(c)
	}
	grace := defaultGrace
	if g := r.cfg.TerminationGracePeriodSeconds; g != nil {
		grace = max(time.Duration(*g)*time.Second, 2*time.Second)
	}
	r.mu.Unlock()
	r.say("i2kit-agent: the app containers are done: stopping the sidecars")
	d := &stopDeadline{}
	d.shorten(time.Now().Add(grace))
	r.terminate(context.Background(), stopOrder(sidecars), d)
}
