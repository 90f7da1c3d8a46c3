// Command i2kit is the CLI: `node` runs the virtual node, `dev` a local control plane. It is the composition
// root only: flags, logging and wiring.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	vkslog "github.com/virtual-kubelet/virtual-kubelet/log/slog"

	"github.com/i2kit/i2kit/internal/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	root := &cobra.Command{
		Use:           "i2kit",
		Short:         "i2kit: a Kubernetes node whose every pod is a microVM",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.Version,
	}
	var level string
	root.PersistentFlags().StringVar(&level, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		var l slog.Level
		if err := l.UnmarshalText([]byte(level)); err != nil {
			return fmt.Errorf("--log-level %q: %w", level, err)
		}
		logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
		vklog.L = vkslog.FromSlog(logger)
		cmd.SetContext(vklog.WithLogger(cmd.Context(), vklog.L))
		return nil
	}
	root.AddCommand(nodeCmd(), devCmd(), imageCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "i2kit:", err)
		os.Exit(1)
	}
}
