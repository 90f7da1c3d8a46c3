package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/i2kit/i2kit/internal/controlplane"
)

func defaultDevState() string {
	return filepath.Join(controlplane.CacheDir(), "dev")
}

func devCmd() *cobra.Command {
	var cfg controlplane.Config
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "A local Kubernetes control plane (etcd, apiserver, controller-manager, scheduler) for trying i2kit",
	}
	cmd.PersistentFlags().StringVar(&cfg.StateDir, "state-dir", defaultDevState(), "directory for the plane's PKI, data, logs and pids")
	build := &cobra.Command{
		Use:   "build",
		Short: "Build the control plane binaries into the cache (skipped when present)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return controlplane.Build(cmd.Context(), binDir(cfg), os.Stdout)
		},
	}
	up := &cobra.Command{
		Use:   "up",
		Short: "Build (once) and start the control plane, and wait until it is ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := controlplane.Build(cmd.Context(), binDir(cfg), os.Stdout); err != nil {
				return err
			}
			p, err := controlplane.Start(cmd.Context(), cfg, os.Stdout)
			if err != nil {
				return err
			}
			fmt.Printf("\nThe cluster is ready. To use it:\n\n")
			printEnv(p)
			fmt.Printf("\n  kubectl get nodes\n\nStop it with: i2kit dev down --state-dir %s\n", p.Config().StateDir)
			return nil
		},
	}
	for _, c := range []*cobra.Command{build, up} {
		c.Flags().StringVar(&cfg.BinDir, "bin-dir", "", "binary directory (default: the versioned cache directory)")
	}
	up.Flags().IntVar(&cfg.PortBase, "port", 16443, "apiserver port; the plane's other components use the 5 ports after it")
	up.Flags().StringVar(&cfg.Host, "host", "127.0.0.1", "loopback address to listen on")
	up.Flags().StringVar(&cfg.ServiceCIDR, "service-cidr", "10.0.0.0/24", "ClusterIP range")
	up.Flags().StringVar(&cfg.AdvertiseAddress, "advertise-address", "", "address pod VMs reach the apiserver at (the kubernetes Service's endpoint); the apiserver then listens on all addresses: use it in a network namespace")
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop every process of the control plane; --purge also removes its state",
		Args:  cobra.NoArgs,
	}
	purge := down.Flags().Bool("purge", false, "remove the state directory too")
	down.RunE = func(cmd *cobra.Command, _ []string) error {
		p, err := controlplane.Open(cfg.StateDir)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				fmt.Println("no control plane in", cfg.StateDir)
				return nil
			}
			return err
		}
		if err := p.Stop(context.WithoutCancel(cmd.Context())); err != nil {
			return err
		}
		fmt.Println("control plane stopped")
		if *purge {
			if err := os.RemoveAll(p.Config().StateDir); err != nil {
				return fmt.Errorf("removing state, %w", err)
			}
			fmt.Println("removed", p.Config().StateDir)
		}
		return nil
	}
	env := &cobra.Command{
		Use:   "env",
		Short: "Print the environment to use the cluster: eval \"$(i2kit dev env)\"",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			p, err := controlplane.Open(cfg.StateDir)
			if err != nil {
				return err
			}
			printEnv(p)
			return nil
		},
	}
	status := &cobra.Command{
		Use:   "status",
		Short: "Show which components of the control plane run",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			p, err := controlplane.Open(cfg.StateDir)
			if err != nil {
				return err
			}
			st := p.Status()
			names := make([]string, 0, len(st))
			for n := range st {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				if st[n] == 0 {
					fmt.Printf("%-24s stopped\n", n)
				} else {
					fmt.Printf("%-24s running (pid %d)\n", n, st[n])
				}
			}
			fmt.Printf("apiserver %s, state %s\n", p.APIServerURL(), p.Config().StateDir)
			return nil
		},
	}
	cmd.AddCommand(build, up, down, env, status, registryCmd())
	return cmd
}

func binDir(c controlplane.Config) string {
	if c.BinDir != "" {
		return c.BinDir
	}
	return controlplane.DefaultBinDir()
}

func printEnv(p *controlplane.Plane) {
	for _, kv := range p.Env() {
		k, v, _ := strings.Cut(kv, "=")
		if k == "PATH" {
			v = p.Config().BinDir + ":$PATH"
		}
		fmt.Printf("export %s=%s\n", k, v)
	}
}
