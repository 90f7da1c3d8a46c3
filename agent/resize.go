package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/agent/protocol"
)

// A container's resources become its cgroup's values as a kubelet's runtime writes them on cgroup v2 (the kubelet's
// MilliCPUToShares and MilliCPUToQuota, then runc's conversion of shares to a weight), so that what a pod reads in
// /sys/fs/cgroup is what it would read on any node.
const (
	cpuPeriod      = 100000 // µs, the CFS period
	minQuota       = 1000   // µs: a quota is at least 1 ms per period
	minShares      = 2
	maxShares      = 262144
	sharesPerCPU   = 1024
	milliCPUPerCPU = 1000
)

// errBelowUsage is why a memory limit was refused: the container uses more than it.
var errBelowUsage = errors.New("the container uses more memory than the new limit")

// errUnknownContainer is a resize of a container the pod lacks; errBadResize a request that cannot be applied.
var (
	errUnknownContainer = errors.New("no such container")
	errBadResize        = errors.New("bad resize request")
)

// cgroupValues are the contents of a container's cgroup files for its resources.
type cgroupValues struct {
	MemoryMax string // memory.max: bytes, or "max"
	CPUMax    string // cpu.max: "<quota> <period>", or "max <period>"
	CPUWeight string // cpu.weight: 1 to 10000
}

// cgroupFor computes a container's cgroup values from its resources.
func cgroupFor(r protocol.Resources) cgroupValues {
	v := cgroupValues{MemoryMax: "max", CPUMax: fmt.Sprintf("max %d", cpuPeriod)}
	if r.MemoryLimit > 0 {
		v.MemoryMax = strconv.FormatInt(r.MemoryLimit, 10)
	}
	if r.CPULimit > 0 {
		v.CPUMax = fmt.Sprintf("%d %d", milliCPUToQuota(r.CPULimit), cpuPeriod)
	}
	v.CPUWeight = strconv.FormatInt(sharesToWeight(milliCPUToShares(r.CPURequest)), 10)
	return v
}

// milliCPUToShares is the kubelet's: 1024 shares per CPU, at least 2, at most 262144.
func milliCPUToShares(milli int64) int64 {
	s := milli * sharesPerCPU / milliCPUPerCPU
	return min(max(s, minShares), maxShares)
}

// milliCPUToQuota is the kubelet's: the CFS quota per period for a limit in millicores, at least 1 ms.
func milliCPUToQuota(milli int64) int64 {
	return max(milli*cpuPeriod/milliCPUPerCPU, minQuota)
}

// sharesToWeight maps cgroup v1 shares [2, 262144] onto cgroup v2 weights [1, 10000], as runc does.
func sharesToWeight(shares int64) int64 {
	return 1 + (shares-2)*9999/262142
}

// applyResources writes a container's resources into its cgroup dir. With checkUsage a memory limit below the
// cgroup's memory.current is refused (errBelowUsage) and nothing is written, as a kubelet refuses to lower a
// running container's limit under its use rather than have the kernel reclaim or kill.
func applyResources(dir string, r protocol.Resources, checkUsage bool) error {
	if r.MemoryLimit > 0 && checkUsage {
		if b, err := os.ReadFile(filepath.Join(dir, "memory.current")); err == nil {
			if used, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && r.MemoryLimit < used {
				return fmt.Errorf("attempting to set memory limit (%d) below current usage (%d), %w", r.MemoryLimit, used, errBelowUsage)
			}
		}
	}
	v := cgroupFor(r)
	write := func(file, value string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
			return fmt.Errorf("setting %s, %w", file, err)
		}
		return nil
	}
	if err := write("cpu.max", v.CPUMax); err != nil {
		return err
	}
	if err := write("cpu.weight", v.CPUWeight); err != nil {
		return err
	}
	if err := write("memory.max", v.MemoryMax); err != nil {
		return err
	}
	if r.MemoryLimit > 0 {
		os.WriteFile(filepath.Join(dir, "memory.swap.max"), []byte("0"), 0) //nolint:errcheck // no swap in the VM anyway
	}
	return nil
}

// resize applies a ResizeRequest to a container (see protocol.ResizeRequest). In place, the cgroup is rewritten
// now; with a restart, the next run starts with the new resources (see runOnce) and the current one is stopped.
func (r *runtime) resize(name string, req protocol.ResizeRequest) error {
	res := req.Resources
	if res.CPURequest < 0 || res.CPULimit < 0 || res.MemoryRequest < 0 || res.MemoryLimit < 0 || req.GracePeriodSeconds < 0 {
		return fmt.Errorf("resizing container %s: negative resources, %w", name, errBadResize)
	}
	c := r.find(name)
	if c == nil {
		return fmt.Errorf("container %q, %w", name, errUnknownContainer)
	}
	r.resizeMu.Lock()
	defer r.resizeMu.Unlock()
	r.mu.Lock()
	if r.cfg == nil {
		r.mu.Unlock()
		return fmt.Errorf("the pod is not configured yet, %w", errBadResize)
	}
	running, cgroup := c.pid != 0, c.cgroup
	r.mu.Unlock()
	if !req.Restart && cgroup != "" {
		// A container that is not running gets its new values now too: its next run keeps them.
		if err := applyResources(cgroup, res, running); err != nil {
			return fmt.Errorf("container %s: %w", name, err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c.rc.CPURequest, c.rc.CPULimit, c.rc.MemoryRequest, c.rc.MemoryLimit = res.CPURequest, res.CPULimit, res.MemoryRequest, res.MemoryLimit
	c.status.Resources = &res
	// A run being stopped (the pod stops, or c is a retired sidecar) is left to stop in its order, its preStop hook
	// first: a kubelet resizes no terminating container.
	if req.Restart && c.pid != 0 && !r.stopping && !c.retired {
		c.restartNow = true
		c.status.Killed = fmt.Sprintf("Container %s resize requires restart", c.Name)
		pid, ended := c.pid, c.ended
		r.kill(pid, syscall.SIGTERM)
		go r.killAfter(pid, ended, time.Duration(req.GracePeriodSeconds)*time.Second)
	}
	r.changedLocked()
	return nil
}

// applyRunResources writes c's configured resources into its cgroup before a run starts: a resize with a restart
// left them for this run.
func (r *runtime) applyRunResources(c *container) {
	if c.cgroup == "" {
		return
	}
	r.resizeMu.Lock()
	defer r.resizeMu.Unlock()
	r.mu.Lock()
	res := c.rc.Resources()
	r.mu.Unlock()
	if err := applyResources(c.cgroup, res, false); err != nil {
		r.say("i2kit-agent: container %s: %v", c.Name, err)
	}
}

// maxResizeRequest bounds a resize request's body (a few numbers).
const maxResizeRequest = 4 << 10

// resize serves PUT /v1/containers/{name}/resources: 204 once applied, 404 for a container the pod lacks, 409 for
// a memory limit below the container's use (the message says so, as a kubelet's does), 400 for a bad request, 500
// when the cgroup cannot be written.
func (s *server) resize(w http.ResponseWriter, req *http.Request) {
	var rr protocol.ResizeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, maxResizeRequest)).Decode(&rr); err != nil {
		http.Error(w, "decoding the resize request: "+err.Error(), http.StatusBadRequest)
		return
	}
	err := s.rt.resize(req.PathValue("name"), rr)
	switch {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, errUnknownContainer):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, errBelowUsage):
		http.Error(w, err.Error(), http.StatusConflict)
	case errors.Is(err, errBadResize):
		http.Error(w, err.Error(), http.StatusBadRequest)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
