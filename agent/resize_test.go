package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/agent/protocol"
)

// TestCgroupFor: golden values from the kubelet's formulas (MilliCPUToShares, MilliCPUToQuota, runc's weight).
func TestCgroupFor(t *testing.T) {
	const mi = 1 << 20
	for _, tc := range []struct {
		name string
		res  protocol.Resources
		want cgroupValues
	}{
		{"none", protocol.Resources{}, cgroupValues{MemoryMax: "max", CPUMax: "max 100000", CPUWeight: "1"}},
		// 20m: shares 20, weight 1; a 30m limit is a 3000 µs quota; 45Mi in bytes.
		{"burstable", protocol.Resources{CPURequest: 20, CPULimit: 30, MemoryRequest: 35 * mi, MemoryLimit: 45 * mi},
			cgroupValues{MemoryMax: "47185920", CPUMax: "3000 100000", CPUWeight: "1"}},
		{"resized", protocol.Resources{CPURequest: 20, CPULimit: 35, MemoryLimit: 50 * mi},
			cgroupValues{MemoryMax: "52428800", CPUMax: "3500 100000", CPUWeight: "1"}},
		{"35Mi", protocol.Resources{MemoryLimit: 35 * mi}, cgroupValues{MemoryMax: "36700160", CPUMax: "max 100000", CPUWeight: "1"}},
		// 5m is a 500 µs quota, raised to the 1 ms minimum; 1m is 1 share, raised to 2.
		{"minimums", protocol.Resources{CPURequest: 1, CPULimit: 5}, cgroupValues{MemoryMax: "max", CPUMax: "1000 100000", CPUWeight: "1"}},
		// 100m: shares 102, weight 1+100*9999/262142 = 4; 1 CPU: shares 1024, weight 1+1022*9999/262142 = 39.
		{"100m", protocol.Resources{CPURequest: 100, CPULimit: 100}, cgroupValues{MemoryMax: "max", CPUMax: "10000 100000", CPUWeight: "4"}},
		{"1 CPU", protocol.Resources{CPURequest: 1000, CPULimit: 2500}, cgroupValues{MemoryMax: "max", CPUMax: "250000 100000", CPUWeight: "39"}},
		// Shares stop at 262144: weight 10000.
		{"huge", protocol.Resources{CPURequest: 1_000_000}, cgroupValues{MemoryMax: "max", CPUMax: "max 100000", CPUWeight: "10000"}},
	} {
		if got := cgroupFor(tc.res); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

// fakeCgroup is a directory standing for a container's cgroup, using used bytes of memory.
func fakeCgroup(t *testing.T, used string) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "memory.current"), []byte(used+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readCgroup(t *testing.T, dir, file string) string {
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestApplyResourcesRefusesALimitBelowUse: the kubelet's check before it lowers a running container's limit, with
// its message; nothing is written then.
func TestApplyResourcesRefusesALimitBelowUse(t *testing.T) {
	dir := fakeCgroup(t, "2000000")
	err := applyResources(dir, protocol.Resources{CPULimit: 35, MemoryLimit: 10240}, true)
	if err == nil || !regexp.MustCompile(`memory limit \(\d+\) below current usage`).MatchString(err.Error()) {
		t.Fatalf("err %v, want a memory limit below current usage", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cpu.max")); err == nil {
		t.Error("cpu.max was written although the resize was refused")
	}
	if err := applyResources(dir, protocol.Resources{CPULimit: 35, MemoryLimit: 52428800}, true); err != nil {
		t.Fatal(err)
	}
	if got := readCgroup(t, dir, "memory.max") + "|" + readCgroup(t, dir, "cpu.max") + "|" + readCgroup(t, dir, "cpu.weight"); got != "52428800|3500 100000|1" {
		t.Errorf("cgroup %q", got)
	}
	// A container that does not run (a restart) gets any limit.
	if err := applyResources(dir, protocol.Resources{MemoryLimit: 10240}, false); err != nil {
		t.Fatal(err)
	}
	if got := readCgroup(t, dir, "memory.max"); got != "10240" {
		t.Errorf("memory.max %q", got)
	}
}

func resizeRuntime(t *testing.T) (*runtime, *container) {
	r := newRuntime(io.Discard, boot.ImageConfig{Containers: []boot.Container{{Name: "c1"}}}, "pod")
	r.cfg = &protocol.PodConfig{RestartPolicy: protocol.RestartOnFailure}
	c := r.find("c1")
	c.cgroup = fakeCgroup(t, "1000000")
	return r, c
}

// TestResizeInPlace: the cgroup is rewritten, the status reports the new resources, a limit below use is refused
// with a 409 that says so and changes nothing.
func TestResizeInPlace(t *testing.T) {
	r, c := resizeRuntime(t)
	c.pid = 1 << 30 // running
	srv := (&server{rt: r}).handler()
	put := func(name, body string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, httptest.NewRequest(http.MethodPut, "/v1/containers/"+name+"/resources", strings.NewReader(body)))
		return w
	}
	if w := put("c1", `{"resources":{"cpuRequest":20,"cpuLimit":35,"memoryLimit":52428800}}`); w.Code != http.StatusNoContent {
		t.Fatalf("resize: %d %s", w.Code, w.Body)
	}
	if got := readCgroup(t, c.cgroup, "memory.max") + "|" + readCgroup(t, c.cgroup, "cpu.max"); got != "52428800|3500 100000" {
		t.Errorf("cgroup %q", got)
	}
	st, _ := r.status()
	if res := st.Containers[0].Resources; res == nil || *res != (protocol.Resources{CPURequest: 20, CPULimit: 35, MemoryLimit: 52428800}) {
		t.Errorf("status resources %+v", res)
	}
	w := put("c1", `{"resources":{"memoryLimit":10240}}`)
	if w.Code != http.StatusConflict || !regexp.MustCompile(`memory limit \(10240\) below current usage \(1000000\)`).MatchString(w.Body.String()) {
		t.Errorf("below use: %d %s", w.Code, w.Body)
	}
	if got := readCgroup(t, c.cgroup, "memory.max"); got != "52428800" {
		t.Errorf("memory.max %q after a refused resize", got)
	}
	if st, _ := r.status(); st.Containers[0].Resources.MemoryLimit != 52428800 {
		t.Errorf("status resources %+v after a refused resize", st.Containers[0].Resources)
	}
	if w := put("nope", `{"resources":{}}`); w.Code != http.StatusNotFound {
		t.Errorf("unknown container: %d", w.Code)
	}
	if w := put("c1", `{"resources":{"cpuLimit":-1}}`); w.Code != http.StatusBadRequest {
		t.Errorf("negative: %d", w.Code)
	}
	if w := put("c1", `{"resources":{"cpuLimit":1}`+strings.Repeat(" ", maxResizeRequest)+`}`); w.Code != http.StatusBadRequest {
		t.Errorf("oversized request: %d", w.Code)
	}
}

// TestResizeWithRestart: the run is stopped and marked to restart at once with the new resources, which its next
// run writes (not the live cgroup, whose process is still being stopped).
func TestResizeWithRestart(t *testing.T) {
	r, c := resizeRuntime(t)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.pid, c.ended = cmd.Process.Pid, make(chan struct{})
	defer close(c.ended)
	if err := r.resize("c1", protocol.ResizeRequest{Resources: protocol.Resources{MemoryLimit: 10240}, Restart: true, GracePeriodSeconds: 30}); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("the run was not stopped with SIGTERM: %v", err)
	}
	r.mu.Lock()
	restart, killed := c.restartNow, c.status.Killed
	r.mu.Unlock()
	if !restart || killed != "Container c1 resize requires restart" {
		t.Errorf("restartNow %v, killed %q", restart, killed)
	}
	if _, err := os.Stat(filepath.Join(c.cgroup, "memory.max")); err == nil {
		t.Error("the live cgroup was written: the limit is below its use")
	}
	r.applyRunResources(c)
	if got := readCgroup(t, c.cgroup, "memory.max"); got != "10240" {
		t.Errorf("the next run's memory.max %q", got)
	}
}

// TestRootMountsGiveTheContainerItsCgroup: a container with a cgroup reads it at /sys/fs/cgroup, read-only, mounted
// after /sys (over which it lies).
func TestRootMountsGiveTheContainerItsCgroup(t *testing.T) {
	ms := systemMounts(false, true)
	last := ms[len(ms)-1]
	if last.fstype != "cgroup2" || last.dst != "sys/fs/cgroup" || last.flags&syscall.MS_RDONLY == 0 {
		t.Errorf("last mount %+v, want cgroup2 read-only at sys/fs/cgroup", last)
	}
	for _, m := range systemMounts(false, false) {
		if m.fstype == "cgroup2" {
			t.Error("a container without a cgroup got a cgroup mount")
		}
	}
}

// TestResizeRacesNothing: a resize while a run starts (its probes read the container's configuration) is not a data
// race: the resources it changes are only read under the runtime's lock (run with -race).
func TestResizeRacesNothing(t *testing.T) {
	r, c := resizeRuntime(t)
	c.rc.Readiness = &protocol.Probe{InitialDelaySeconds: 3600, TCPSocket: &protocol.TCPAction{Port: 1}}
	ended := make(chan struct{})
	defer close(ended)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.probe(c, ended)
	}()
	if err := r.resize("c1", protocol.ResizeRequest{Resources: protocol.Resources{CPULimit: 500}}); err != nil {
		t.Fatal(err)
	}
	<-done
}

// TestResizeLeavesAStoppingRunAlone: a resize with a restart of a container that is being stopped (the pod stops,
// or it is a retired sidecar) records the resources but does not kill the run: it stops in its order, preStop
// hook first.
func TestResizeLeavesAStoppingRunAlone(t *testing.T) {
	for _, name := range []string{"pod stopping", "sidecar retired"} {
		t.Run(name, func(t *testing.T) {
			r, c := resizeRuntime(t)
			f := &fakeRuns{byPID: map[int]*container{}}
			r.signal = f.signal
			f.add(c, fakePID)
			if name == "pod stopping" {
				r.stopping = true
			} else {
				c.retired = true
			}
			if err := r.resize("c1", protocol.ResizeRequest{Resources: protocol.Resources{CPULimit: 500}, Restart: true}); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.log) > 0 || c.restartNow {
				t.Errorf("signals %q, restartNow %v: the stopping run was killed by a resize", f.log, c.restartNow)
			}
			if c.rc.CPULimit != 500 {
				t.Errorf("cpu limit %d, want the resize's 500", c.rc.CPULimit)
			}
		})
	}
}
