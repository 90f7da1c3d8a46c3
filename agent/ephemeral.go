package agent

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
)

// EphemeralDir holds the unpacked root filesystems of ephemeral containers, in the VM's memory (/run is a tmpfs):
// an image disk is fixed at boot, and the guest has no loop device to mount one that comes later.
const EphemeralDir = "/run/i2kit/ephemeral"

var (
	// errEphemeralConflict: the container cannot be added now (its name is taken, the pod is not configured or
	// is stopping).
	errEphemeralConflict = errors.New("cannot add the ephemeral container")
	// errEphemeralInvalid: the request cannot be honoured (a bad name, a target the pod lacks).
	errEphemeralInvalid = errors.New("invalid ephemeral container")
)

// containerName is a container name as the API admits it (a DNS label): a path component, safely.
var containerName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// addEphemeral adds an ephemeral container to the running pod, as a kubelet does for kubectl debug: it unpacks its
// root filesystem (see untar) under EphemeralDir, mounts it under a writable overlay as every container's root,
// gives it a cgroup and logs, and starts it once, in the pod's namespaces; with a target, in the target's PID
// namespace (at each start, see runOnce). It is never restarted, and ends with the pod. Its status is in
// status() from now on, marked Ephemeral; exec, attach and logs find it by name (findEphemeral).
func (r *runtime) addEphemeral(ec protocol.EphemeralContainer, rootfs io.Reader) (err error) {
	name := ec.Name
	if len(name) > 63 || !containerName.MatchString(name) {
		return fmt.Errorf("%w: name %q is not a DNS label", errEphemeralInvalid, name)
	}
	r.mu.Lock()
	var target *container
	switch {
	case r.cfg == nil:
		err = fmt.Errorf("%w %s: the pod is not configured yet", errEphemeralConflict, name)
	case r.stopping:
		err = fmt.Errorf("%w %s: the pod is stopping", errEphemeralConflict, name)
	case r.find(name) != nil || r.findEphemeralLocked(name) != nil || r.adding[name]:
		err = fmt.Errorf("%w %s: the pod has a container of that name", errEphemeralConflict, name)
	case ec.TargetContainerName != "":
		if target = r.find(ec.TargetContainerName); target == nil {
			err = fmt.Errorf("%w %s: target container %q is not in the pod", errEphemeralInvalid, name, ec.TargetContainerName)
		}
	}
	if err == nil {
		if r.adding == nil {
			r.adding = map[string]bool{}
		}
		r.adding[name] = true
	}
	r.mu.Unlock()
	if err != nil {
		return err
	}
	lower := filepath.Join(EphemeralDir, name)
	defer func() {
		r.mu.Lock()
		delete(r.adding, name)
		r.mu.Unlock()
		if err != nil {
			os.RemoveAll(lower)
		}
	}()
	if err := os.MkdirAll(lower, 0o755); err != nil {
		return fmt.Errorf("making the root of ephemeral container %s, %w", name, err)
	}
	if err := untar(rootfs, lower, protocol.MaxRootfsBytes); err != nil {
		return fmt.Errorf("unpacking the root filesystem of ephemeral container %s, %w", name, err)
	}
	c := &container{Container: ephemeralImage(name, ec.Image), rc: ec.ContainerConfig, ephemeral: true, target: target,
		wake: make(chan struct{})}
	c.Argv = containerArgv(c.Container, c.rc)
	c.status = protocol.ContainerStatus{Name: name, Ephemeral: true, State: protocol.ContainerState{State: protocol.Waiting, Reason: "ContainerCreating"}}
	checkCreate(c)
	if err := r.mountRoot(c, lower); err != nil {
		return err
	}
	cg, cgErr := makeCgroup(name, protocol.Resources{}) // ephemeral containers have no resources of their own
	if cgErr != nil {
		r.say("i2kit-agent: container %s runs without a cgroup: %v", name, cgErr)
	}
	c.cgroup = cg
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		return fmt.Errorf("%w %s: the pod is stopping", errEphemeralConflict, name)
	}
	r.ephemerals = append(r.ephemerals, c)
	r.changedLocked()
	r.mu.Unlock()
	r.say("i2kit-agent: ephemeral container %s added", name)
	go r.supervise(c)
	return nil
}

// ephemeralImage is the container an image's configuration makes, as the builder makes it for a pod's image.
func ephemeralImage(name string, img protocol.ImageConfig) boot.Container {
	c := boot.Container{Name: name, Entrypoint: slices.Clone(img.Entrypoint), Env: slices.Clone(img.Env),
		WorkingDir: img.WorkingDir, User: img.User}
	c.Argv = append(slices.Clone(img.Entrypoint), img.Cmd...)
	if c.WorkingDir == "" {
		c.WorkingDir = "/"
	}
	return c
}

// findEphemeral returns the ephemeral container named name, or nil.
func (r *runtime) findEphemeral(name string) *container {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.findEphemeralLocked(name)
}

func (r *runtime) findEphemeralLocked(name string) *container {
	for _, c := range r.ephemerals {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// targetPIDNamespace opens the PID namespace of a running container, which an ephemeral container targeting it
// joins: that of its supervisor, the namespace's PID 1.
func (r *runtime) targetPIDNamespace(target *container) (*os.File, error) {
	r.mu.Lock()
	pid := target.pid
	r.mu.Unlock()
	if pid == 0 {
		return nil, fmt.Errorf("target container %s is not running", target.Name)
	}
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", pid))
	if err != nil {
		return nil, fmt.Errorf("opening the PID namespace of target container %s, %w", target.Name, err)
	}
	return ns, nil
}

// addEphemeral serves POST /v1/ephemeral: 201 once the container is added (it starts in the background), 409 when
// it cannot be now, 400 for a bad request or root filesystem. What is left of a refused request's body (bounded)
// is read first, so that the answer reaches a host still sending it.
func (s *server) addEphemeral(w http.ResponseWriter, req *http.Request) {
	ec, rootfs, err := protocol.ReadEphemeral(req.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	err = s.rt.addEphemeral(ec, rootfs)
	if err != nil {
		io.Copy(io.Discard, rootfs) //nolint:errcheck
	}
	switch {
	case err == nil:
		w.WriteHeader(http.StatusCreated)
	case errors.Is(err, errEphemeralConflict):
		http.Error(w, err.Error(), http.StatusConflict)
	case errors.Is(err, errEphemeralInvalid), errors.Is(err, errRootfsTooLarge), errors.Is(err, protocol.ErrRootfsTooLarge):
		http.Error(w, err.Error(), http.StatusBadRequest)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
