package provider

import (
	"context"

	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

// podVM is everything the provider holds of one pod's VM, by pod UID: the image pull under way, the VM's last
// known status, the session with its agent and what that agent was last sent. The pod object itself stays in
// Provider.pods (the API server's copy, as the node has it now).
type podVM struct {
	uid string
	key string // the pod's namespace/name in Provider.pods

	mu sync.Mutex
	// pull ends the image pull under way, nil when none runs; pullDone is closed when it has ended.
	pull     context.CancelFunc
	pullDone chan struct{}
	// The back-off of failed pulls: the next wait, when the next attempt is due, when ErrImagePull turns
	// ImagePullBackOff, and what the last attempt said (an Event is emitted when it changes).
	pullWait               time.Duration
	pullRetry, pullBackoff time.Time
	pullErr, pullUnread    string
	// imageIDs names each container's image by digest (a kubelet's imageID).
	imageIDs map[string]string
	vm       vm.Status
	// exited is closed once the backend reports the VM ended.
	exited chan struct{}
	// deleting is set once the pod's VM is being stopped on purpose (delete, deadline): its exit is no failure.
	deleting bool
	// stop is the pod's deletion under way (deleteVM), nil before.
	stop *vmStop
	// configured is set once an agent took the pod's configuration: containers may run.
	configured bool
	// envWarned is set once the Events for the pod's skipped optional env references were emitted.
	envWarned bool

	// The session with the agent, kept by runSession (session.go).
	session *agentSession
	// client is the connected, configured session's client; nil while there is none. ready is closed once a
	// client is set and replaced when it is lost.
	client *protocol.Client
	ready  chan struct{}
	status *protocol.PodStatus
	// kick wakes a session waiting for runtime data that was missing (a ConfigMap not created yet).
	kick chan struct{}
	// volumeHashes is what each files volume held when last sent; servicesGen the service table the agent has.
	volumeHashes map[string]string
	servicesGen  uint64
	// pushMu serialises what the work queue sends to the agent (volumes, the service table).
	pushMu sync.Mutex
	// volumesStale says the files volumes may have changed since they were sent (see pushVolumes).
	volumesStale bool
	// deadlineDone is set once an exceeded activeDeadlineSeconds has been acted on.
	deadlineDone bool
	// launched is when this process called the backend's Launch for the VM, until its agent first answers (or the
	// launch fails): the VM's launch is being timed. awaitReady says this process launched the VM and has not yet
	// reported the pod Ready: its creation to readiness is being timed.
	launched   time.Time
	awaitReady bool
	// tokenRefresh is when the next service account token of the pod's volumes is due for renewal.
	tokenRefresh time.Time
	// resize is what the provider keeps of the pod's in-place resizes (resize.go).
	resize resizeState
	// ephemeral is the node's side of the pod's ephemeral containers, by name (see ephemeralDue).
	ephemeral map[string]*ephemeralRun
}

func newPodVM(uid, key string) *podVM {
	return &podVM{uid: uid, key: key, exited: make(chan struct{}), ready: make(chan struct{}), kick: make(chan struct{}, 1)}
}

// vmFor returns the pod VM state of a UID, or nil.
func (p *Provider) vmFor(uid string) *podVM {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.vms[uid]
}

// vmOf returns the pod VM state of pod, making it if there is none.
func (p *Provider) vmOf(pod *corev1.Pod) *podVM {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[string(pod.UID)]
	if v == nil {
		v = newPodVM(string(pod.UID), key(pod.Namespace, pod.Name))
		p.vms[v.uid] = v
	}
	return v
}

// forgetVM drops a pod's VM state.
func (p *Provider) forgetVM(uid string) {
	p.mu.Lock()
	delete(p.vms, uid)
	p.mu.Unlock()
}

// connected returns the configured session's client, or nil.
func (v *podVM) connected() *protocol.Client {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.client
}

// wake tells a session waiting for runtime data to try again.
func (v *podVM) wake() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

// markVolumesStale makes the next sync resolve the pod's files volumes again.
func (v *podVM) markVolumesStale() {
	v.mu.Lock()
	v.volumesStale = true
	v.mu.Unlock()
}
