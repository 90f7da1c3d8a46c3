package main

import (
	"github.com/spf13/cobra"

	"github.com/i2kit/i2kit/node"
)

func nodeCmd() *cobra.Command {
	var configFile string
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run an i2kit virtual node: register a Node and run the pods bound to it as VMs",
		Long: `Run an i2kit virtual node. Settings come from defaults, then --config (YAML, strictly decoded),
then flags. SIGTERM or SIGINT stops the node cleanly. With --leader-elect, replicas of the node elect one through
a Lease: only it runs the node, the others stand by and take over when it dies; a leader that loses the lease
exits at once (status 1).`,
		Args: cobra.NoArgs,
	}
	flags := node.AddFlags(cmd.Flags())
	cmd.Flags().StringVar(&configFile, "config", "", "YAML configuration file (flags override it)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg := node.DefaultConfig()
		if configFile != "" {
			if err := cfg.LoadFile(configFile); err != nil {
				return err
			}
		}
		flags.Apply(&cfg)
		return node.Run(cmd.Context(), cfg, wiring)
	}
	return cmd
}
