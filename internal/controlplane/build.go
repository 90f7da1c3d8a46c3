// Package controlplane builds and runs a real, loopback-only Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler) for i2kit's end-to-end tests and for `i2kit dev`.
//
// The binaries are built from the Go module proxy into a versioned cache directory once per machine; the plane
// runs from a state directory of its own on ports of its own, so two planes with different state directories
// and ports never collide.
package controlplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/internal/cachedir"
)

// Versions of the control plane components. Every k8s.io library module of i2kit is aligned with KubernetesVersion.
const (
	KubernetesVersion = "1.37.2"
	EtcdVersion       = "3.7.3"
)

// Binaries lists the executables Build puts into a bin directory.
var Binaries = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"}

// stagingModules are the k8s.io modules that k8s.io/kubernetes replaces with local paths; a module that depends on
// k8s.io/kubernetes must pin each of them to its published tag instead.
var stagingModules = []string{
	"api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
	"cloud-provider", "cluster-bootstrap", "code-generator", "component-base", "component-helpers",
	"controller-manager", "cri-api", "cri-client", "cri-streaming", "csi-translation-lib",
	"dynamic-resource-allocation", "endpointslice", "externaljwt", "kms", "kube-aggregator",
	"kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl", "kubelet", "metrics", "mount-utils",
	"pod-security-admission", "sample-apiserver", "sample-cli-plugin", "sample-controller", "streaming",
}

// CacheDir is the root of i2kit's build cache (see internal/cachedir).
func CacheDir() string { return cachedir.Root() }

// DefaultBinDir is the versioned directory Build fills when no other is given.
func DefaultBinDir() string {
	return filepath.Join(CacheDir(), "controlplane", "k8s-v"+KubernetesVersion+"-etcd-v"+EtcdVersion, "bin")
}

// Built reports whether binDir holds every binary the plane needs.
func Built(binDir string) bool {
	for _, b := range Binaries {
		if fi, err := os.Stat(filepath.Join(binDir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// Build compiles the control plane binaries into binDir with the machine's Go toolchain, unless they are there.
// It holds a file lock so that concurrent callers build once; progress goes to out. A cold build takes about ten
// minutes on two cores. Binaries appear in binDir only when all of them have been built.
func Build(ctx context.Context, binDir string, out io.Writer) error {
	return buildOnce(binDir, func() bool { return Built(binDir) }, func() error { return build(ctx, binDir, out) })
}

// buildOnce runs build unless built says target is there, holding a file lock beside target (target.lock) so that
// concurrent callers, in this process or others, build once: built is asked again once the lock is held.
func buildOnce(target string, built func() bool, build func() error) error {
	if built() {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("creating cache directory, %w", err)
	}
	lock, err := os.OpenFile(target+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("opening build lock, %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("taking build lock, %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck
	if built() {                                         // another process built it while we waited
		return nil
	}
	return build()
}

// build is Build's work, under its lock.
func build(ctx context.Context, binDir string, out io.Writer) error {
	work := binDir + ".work"
	tmpBin := filepath.Join(work, "bin")
	if err := os.RemoveAll(tmpBin); err != nil {
		return fmt.Errorf("cleaning build directory, %w", err)
	}
	if err := os.MkdirAll(tmpBin, 0o755); err != nil {
		return fmt.Errorf("creating build directory, %w", err)
	}
	start := time.Now()
	fmt.Fprintf(out, "building the control plane (kubernetes v%s, etcd v%s) into %s\n", KubernetesVersion, EtcdVersion, binDir)
	fmt.Fprintf(out, "a cold build takes about 10 minutes on 2 cores; later runs reuse it\n")
	if err := buildEtcd(ctx, filepath.Join(work, "etcd"), tmpBin, out); err != nil {
		return err
	}
	if err := buildKube(ctx, filepath.Join(work, "kube"), tmpBin, out); err != nil {
		return err
	}
	if err := os.RemoveAll(binDir); err != nil {
		return fmt.Errorf("replacing %s, %w", binDir, err)
	}
	if err := os.Rename(tmpBin, binDir); err != nil {
		return fmt.Errorf("installing binaries, %w", err)
	}
	fmt.Fprintf(out, "control plane built in %s\n", time.Since(start).Round(time.Second))
	return nil
}

func buildEtcd(ctx context.Context, dir, binDir string, out io.Writer) error {
	mod := fmt.Sprintf("module i2kit.local/etcdbin\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 v%s\n", EtcdVersion)
	if err := writeModule(dir, mod); err != nil {
		return err
	}
	// server/v3 replaces its sibling modules with relative paths, so `go install` refuses it; a wrapper module
	// builds its main package instead.
	fmt.Fprintf(out, "[1/2] etcd: fetching modules\n")
	if err := goCmd(ctx, dir, out, "get", "go.etcd.io/etcd/server/v3@v"+EtcdVersion); err != nil {
		return fmt.Errorf("fetching etcd, %w", err)
	}
	fmt.Fprintf(out, "[1/2] etcd: compiling\n")
	if err := goCmd(ctx, dir, out, "build", "-v", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w",
		"-o", filepath.Join(binDir, "etcd"), "go.etcd.io/etcd/server/v3"); err != nil {
		return fmt.Errorf("compiling etcd, %w", err)
	}
	return nil
}

func buildKube(ctx context.Context, dir, binDir string, out io.Writer) error {
	fmt.Fprintf(out, "[2/2] kubernetes: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl\n")
	return BuildKubeCommands(ctx, dir, binDir, out, "cmd/kube-apiserver", "cmd/kube-controller-manager", "cmd/kube-scheduler", "cmd/kubectl")
}

// BuildKubeCommands compiles main packages of k8s.io/kubernetes at KubernetesVersion, named by their path in that
// module ("cmd/kubectl", "test/images/agnhost"), into binDir as static executables named after the package's last
// element, with the tags and version stamp of the control plane. work is a scratch directory for the wrapper
// module the build needs; progress goes to out.
func BuildKubeCommands(ctx context.Context, work, binDir string, out io.Writer, pkgs ...string) error {
	if err := writeKubeModule(work); err != nil {
		return err
	}
	var full, gets []string
	for _, p := range pkgs {
		full = append(full, "k8s.io/kubernetes/"+p)
		gets = append(gets, "k8s.io/kubernetes/"+p+"@v"+KubernetesVersion)
	}
	fmt.Fprintf(out, "      fetching modules\n")
	if err := goCmd(ctx, work, out, append([]string{"get"}, gets...)...); err != nil {
		return fmt.Errorf("fetching kubernetes, %w", err)
	}
	fmt.Fprintf(out, "      compiling %s\n", strings.Join(pkgs, ", "))
	args := append([]string{"build", "-v", "-trimpath", "-buildvcs=false", "-tags", kubeTags,
		"-ldflags", kubeLdflags(), "-o", binDir + "/"}, full...)
	if err := goCmd(ctx, work, out, args...); err != nil {
		return fmt.Errorf("compiling kubernetes, %w", err)
	}
	return nil
}

// kubeTags are the build tags of every k8s.io/kubernetes binary we build, as upstream's release builds set them.
const kubeTags = "selinux,notest,grpcnotrace"

// writeKubeModule writes into dir a throw-away module that requires k8s.io/kubernetes at KubernetesVersion and
// pins each of its staging modules to the matching published tag (k8s.io/kubernetes replaces them with local paths,
// which `go install pkg@version` refuses and a dependent module cannot resolve).
func writeKubeModule(dir string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "module i2kit.local/kubebins\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n", KubernetesVersion)
	staging := "0." + strings.TrimPrefix(KubernetesVersion, "1.")
	for _, m := range stagingModules {
		fmt.Fprintf(&b, "\tk8s.io/%s => k8s.io/%s v%s\n", m, m, staging)
	}
	b.WriteString(")\n")
	return writeModule(dir, b.String())
}

// kubeLdflags stamps KubernetesVersion into a binary, as upstream's release builds do, and strips it.
func kubeLdflags() string {
	minor := strings.Split(KubernetesVersion, ".")[1]
	ld := "-s -w"
	for _, p := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		ld += fmt.Sprintf(" -X %s.gitVersion=v%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean",
			p, KubernetesVersion, p, p, minor, p)
	}
	return ld
}

func writeModule(dir, goMod string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s, %w", dir, err)
	}
	os.Remove(filepath.Join(dir, "go.sum"))
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(goMod), 0o644); err != nil {
		return fmt.Errorf("writing wrapper module, %w", err)
	}
	return nil
}

// goCmd runs the go command in dir, isolated from the caller's workspace and flags. The package lines of
// `go build -v` become a progress counter; everything else is kept for the error message.
func goCmd(ctx context.Context, dir string, out io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	var tail []string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		start, n, last := time.Now(), 0, time.Now()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			if isPackageLine(line) {
				n++
				if time.Since(last) >= 15*time.Second {
					fmt.Fprintf(out, "      %d packages compiled (%s)\n", n, time.Since(start).Round(time.Second))
					last = time.Now()
				}
				continue
			}
			if strings.HasPrefix(line, "go: downloading") {
				continue
			}
			tail = append(tail, line)
			if len(tail) > 30 {
				tail = tail[1:]
			}
		}
		io.Copy(io.Discard, pr) //nolint:errcheck
	}()
	err := cmd.Run()
	pw.Close()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", args[0], err, strings.Join(tail, "\n"))
	}
	return nil
}

// isPackageLine reports whether a line of `go build -v` output names a package being compiled.
func isPackageLine(line string) bool {
	return line != "" && !strings.ContainsAny(line, " \t:")
}

// ErrNotBuilt is returned by Start when the bin directory lacks a binary.
var ErrNotBuilt = errors.New("control plane binaries are not built")
