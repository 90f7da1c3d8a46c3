package agent

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// ContainersDir holds each container's overlay (upper, work) and its root.
const ContainersDir = "/run/i2kit/containers"

// LogsDir holds each container's logs, one file per run, in the CRI format kubectl reads.
const LogsDir = "/run/i2kit/logs"

// containerInitEnv carries a container's configuration to the agent's own re-execution inside the container's
// new namespaces (see ContainerInit).
const containerInitEnv = "I2KIT_CONTAINER"

// ContainerInitArg is the argument that makes i2kit-agent act as a container's init (see ContainerInit).
const ContainerInitArg = "container-init"

// runtime starts and watches the image's containers. A container runs in its own mount, PID, UTS and IPC
// namespaces, on an overlay of its read-only image with a writable upper layer, sharing the VM's network as
// containers share a pod's.
type runtime struct {
	console  io.Writer
	cfg      ImageConfig
	hostname string
	mu       sync.Mutex // serialises console lines
}

// containerSpec is what the agent hands to ContainerInit.
type containerSpec struct {
	Container
	Root     string `json:"root"`
	Hostname string `json:"hostname"`
}

// prepare mounts a container's root: its image (read-only) under a writable overlay.
func (r *runtime) prepare(c Container) (string, error) {
	dir := filepath.Join(ContainersDir, c.Name)
	root := filepath.Join(dir, "root")
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", filepath.Join(ImagesDir, c.Name),
		filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	if err := syscall.Mount("overlay", root, "overlay", 0, opts); err != nil {
		return "", fmt.Errorf("mounting the root of %s, %w", c.Name, err)
	}
	return root, nil
}

// run starts c once and waits for it; its output goes to its log and, prefixed, to the console.
func (r *runtime) run(c Container, root string, attempt int) (int, error) {
	spec, _ := json.Marshal(containerSpec{Container: c, Root: root, Hostname: r.hostname})
	cmd := exec.Command("/proc/self/exe", ContainerInitArg)
	cmd.Env = []string{containerInitEnv + "=" + string(spec)}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC,
	}
	logDir := filepath.Join(LogsDir, c.Name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return -1, err
	}
	logf, err := os.Create(filepath.Join(logDir, fmt.Sprintf("%d.log", attempt)))
	if err != nil {
		return -1, err
	}
	defer logf.Close()
	var wg sync.WaitGroup
	var logMu sync.Mutex
	pipe := func(stream string) (io.Writer, error) {
		pr, pw, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer pr.Close()
			sc := bufio.NewScanner(pr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				logMu.Lock()
				fmt.Fprintf(logf, "%s %s F %s\n", time.Now().UTC().Format(time.RFC3339Nano), stream, sc.Text())
				logMu.Unlock()
				r.say("[%s] %s", c.Name, sc.Text())
			}
		}()
		return pw, nil
	}
	stdout, err := pipe("stdout")
	if err != nil {
		return -1, err
	}
	stderr, err := pipe("stderr")
	if err != nil {
		return -1, err
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err = cmd.Start()
	stdout.(*os.File).Close()
	stderr.(*os.File).Close()
	if err != nil {
		wg.Wait()
		return -1, fmt.Errorf("starting %s, %w", c.Name, err)
	}
	err = cmd.Wait()
	wg.Wait()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}

// supervise runs c, restarting it when it exits, with a kubelet's back-off (10 s doubling to 5 min, reset after
// 10 min of running). An onboot container that exits 0 is done; done is closed then.
func (r *runtime) supervise(c Container, root string, done chan<- struct{}) {
	backoff := 10 * time.Second
	for attempt := 0; ; attempt++ {
		start := time.Now()
		code, err := r.run(c, root, attempt)
		if err != nil {
			r.say("i2kit-agent: container %s: %v", c.Name, err)
		} else {
			r.say("i2kit-agent: container %s exited with code %d", c.Name, code)
		}
		if c.Onboot && err == nil && code == 0 {
			close(done)
			return
		}
		if time.Since(start) > 10*time.Minute {
			backoff = 10 * time.Second
		}
		r.say("i2kit-agent: restarting %s in %s", c.Name, backoff)
		time.Sleep(backoff) // the guest's own supervisor: nothing else waits on this goroutine
		backoff = min(2*backoff, 5*time.Minute)
	}
}

// start runs the onboot containers in order, each to success, then starts every service.
func (r *runtime) start() error {
	roots := map[string]string{}
	for _, c := range r.cfg.Containers {
		root, err := r.prepare(c)
		if err != nil {
			return err
		}
		roots[c.Name] = root
	}
	for _, c := range r.cfg.Containers {
		if c.Onboot {
			done := make(chan struct{})
			go r.supervise(c, roots[c.Name], done)
			<-done
		}
	}
	for _, c := range r.cfg.Containers {
		if !c.Onboot {
			go r.supervise(c, roots[c.Name], nil)
		}
	}
	return nil
}

func (r *runtime) say(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.console, format+"\n", args...)
}
