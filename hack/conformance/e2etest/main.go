// Command e2etest builds Kubernetes' e2e suite binary and summarizes its JUnit report, for hack/conformance/run.sh.
//
//	go run ./hack/conformance/e2etest build             # build e2e.test unless cached; print its path
//	go run ./hack/conformance/e2etest summary junit.xml # passed/failed/skipped counts and the failed specs
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/i2kit/i2kit/internal/controlplane"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "e2etest:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) == 1 && args[0] == "build":
		p := controlplane.DefaultE2ETestPath()
		if err := controlplane.BuildE2ETest(ctx, p, stderr); err != nil {
			return err
		}
		fmt.Fprintln(stdout, p)
		return nil
	case len(args) == 2 && args[0] == "summary":
		f, err := os.Open(args[1])
		if err != nil {
			return fmt.Errorf("opening report, %w", err)
		}
		defer f.Close()
		s, err := summarize(f)
		if err != nil {
			return err
		}
		s.write(stdout)
		return nil
	}
	return fmt.Errorf("usage: e2etest build | e2etest summary JUNIT.xml")
}
