// Package harness runs i2kit's end-to-end tests: inside a network namespace of their own, against a real control
// plane (internal/controlplane) and the real i2kit binary, driven by client-go and kubectl as a user would.
package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/i2kit/i2kit/internal/controlplane"
)

// NodeIP is the node's InternalIP inside the test's network namespace. The apiserver's node proxy refuses
// loopback addresses, so the namespace's lo carries this global-unicast address (RFC 2544 benchmarking range);
// traffic to it never leaves the namespace.
const NodeIP = "198.18.0.10"

const netnsEnv = "I2KIT_E2E_IN_NETNS"

// Env is what the tests of one package share: the plane, a clientset, and the built binaries.
type Env struct {
	Plane   *controlplane.Plane
	Client  kubernetes.Interface
	I2kit   string // path of the i2kit binary built for this run
	Kubectl string
	Dir     string // scratch directory removed at the end
}

// Main runs m inside a new network namespace with a control plane. It re-executes the test binary in the new
// namespace (which needs root), builds the plane's binaries (once per machine, with progress on stderr) and the
// i2kit binary, starts the plane, runs the tests and stops everything it started.
func Main(m *testing.M, portBase int, env **Env) {
	if os.Getenv(netnsEnv) == "" {
		if err := controlplane.Build(context.Background(), controlplane.DefaultBinDir(), os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "building the control plane:", err)
			os.Exit(1)
		}
		os.Exit(reexecInNetns())
	}
	code, err := run(m, portBase, env)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e harness:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func reexecInNetns() int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e tests need root (they create a network namespace); run `make e2e` as root")
		return 1
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), netnsEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "re-executing in a network namespace:", err)
		return 1
	}
	return 0
}

// NetnsMain runs m inside a new network namespace of its own (root needed), with lo up and NodeIP on it, for
// tests that create bridges, TAPs and VMs: nothing they make is seen outside, and it all goes with the namespace.
func NetnsMain(m *testing.M) {
	if os.Getenv(netnsEnv) == "" {
		os.Exit(reexecInNetns())
	}
	if err := setupNetns(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func setupNetns() error {
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", NodeIP + "/32", "dev", "lo"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %w: %s", args, err, out)
		}
	}
	return nil
}

func run(m *testing.M, portBase int, envp **Env) (int, error) {
	if err := setupNetns(); err != nil {
		return 1, err
	}
	dir, err := os.MkdirTemp("", "i2kit-e2e-")
	if err != nil {
		return 1, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "i2kit")
	for _, b := range []struct{ out, pkg string }{{bin, "./cmd/i2kit"}, {filepath.Join(dir, "i2kit-agent"), "./cmd/i2kit-agent"}} {
		build := exec.CommandContext(ctx, "go", "build", "-o", b.out, b.pkg)
		build.Dir = moduleRoot()
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return 1, fmt.Errorf("building %s: %w: %s", b.pkg, err, out)
		}
	}
	plane, err := controlplane.Start(ctx, controlplane.Config{StateDir: filepath.Join(dir, "plane"), PortBase: portBase,
		AdvertiseAddress: NodeIP, DieWithParent: true}, os.Stderr)
	if err != nil {
		return 1, err
	}
	defer plane.Stop(context.Background()) //nolint:errcheck
	rc, err := clientcmd.BuildConfigFromFlags("", plane.KubeconfigPath())
	if err != nil {
		return 1, err
	}
	rc.QPS, rc.Burst = 500, 1000 // tests poll; client-side throttling would distort what they measure
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return 1, err
	}
	*envp = &Env{Plane: plane, Client: client, I2kit: bin, Kubectl: filepath.Join(plane.Config().BinDir, "kubectl"), Dir: dir}
	return m.Run(), nil
}

// moduleRoot is the repository root, two directories above this file.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
