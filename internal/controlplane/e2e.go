package controlplane

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// E2EPackage is the package of Kubernetes' end-to-end suite, whose test binary (e2e.test) runs the conformance specs.
const E2EPackage = "k8s.io/kubernetes/test/e2e"

// DefaultE2ETestPath is where BuildE2ETest puts e2e.test when no other path is given: a directory per version.
func DefaultE2ETestPath() string {
	return filepath.Join(CacheDir(), "conformance", "k8s-v"+KubernetesVersion, "e2e.test")
}

// BuildE2ETest compiles the unmodified upstream e2e suite of KubernetesVersion (`go test -c` of E2EPackage, with
// the control plane's tags and version stamp) into the executable path, unless it is there. Like Build it holds a
// file lock so concurrent callers build once, and path appears only once the binary is complete. A cold build
// takes 15 to 25 minutes on two cores.
func BuildE2ETest(ctx context.Context, path string, out io.Writer) error {
	return buildOnce(path, func() bool { return executable(path) }, func() error { return buildE2ETest(ctx, path, out) })
}

// buildE2ETest is BuildE2ETest's work, under its lock.
func buildE2ETest(ctx context.Context, path string, out io.Writer) error {
	work := path + ".work"
	if err := writeKubeModule(work); err != nil {
		return err
	}
	start := time.Now()
	fmt.Fprintf(out, "building e2e.test (kubernetes v%s) into %s\n", KubernetesVersion, path)
	fmt.Fprintf(out, "a cold build takes 15 to 25 minutes on 2 cores; later runs reuse it\n")
	// -t: the suite's _test.go files import packages the non-test build does not.
	if err := goCmd(ctx, work, out, "get", "-t", E2EPackage+"@v"+KubernetesVersion); err != nil {
		return fmt.Errorf("fetching the e2e suite, %w", err)
	}
	tmp := filepath.Join(work, "e2e.test")
	if err := goCmd(ctx, work, out, "test", "-c", "-trimpath", "-buildvcs=false", "-tags", kubeTags,
		"-ldflags", kubeLdflags(), "-o", tmp, E2EPackage); err != nil {
		return fmt.Errorf("compiling the e2e suite, %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("installing e2e.test, %w", err)
	}
	fmt.Fprintf(out, "e2e.test built in %s\n", time.Since(start).Round(time.Second))
	return nil
}

// executable reports whether path is a regular file someone may execute.
func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// KubernetesModuleDir is where the Go module cache holds k8s.io/kubernetes at KubernetesVersion (there once a
// build fetched it; it may not be): the source of files the suite's images carry, such as agnhost's TLS key pair.
func KubernetesModuleDir(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMODCACHE").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module cache, %w", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "k8s.io", "kubernetes@v"+KubernetesVersion), nil
}
