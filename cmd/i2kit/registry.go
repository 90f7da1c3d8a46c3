package main

import (
	"fmt"
	"net"
	"strings"

	"github.com/spf13/cobra"

	"github.com/i2kit/i2kit/internal/devregistry"
)

// registryCmd serves an in-memory registry (internal/devregistry) seeded with static binaries.
func registryCmd() *cobra.Command {
	var addr string
	var binaries []string
	var busybox string
	cmd := &cobra.Command{
		Use:   "registry",
		Short: "Serve an in-memory container registry over plain HTTP (for local clusters); --binary seeds it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			srv := devregistry.Serve(l)
			for _, b := range binaries {
				ref, path, ok := strings.Cut(b, "=")
				if !ok {
					return fmt.Errorf("--binary %q: want repo:tag=path", b)
				}
				if err := devregistry.PushBinary(l.Addr().String()+"/"+ref, path, busybox); err != nil {
					return err
				}
				fmt.Printf("pushed %s/%s\n", l.Addr(), ref)
			}
			fmt.Printf("registry serving on http://%s\n", l.Addr())
			<-cmd.Context().Done()
			return srv.Close()
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:5001", "address to listen on")
	cmd.Flags().StringVar(&busybox, "busybox", "", "path of a static busybox to add to the --binary images as /bin/sh, /bin/cat, ... (Debian's busybox-static: /bin/busybox)")
	cmd.Flags().StringSliceVar(&binaries, "binary", nil, "repo:tag=path: push an image whose entrypoint is this static binary")
	return cmd
}
