package main

import (
	"fmt"
	"net"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/i2kit/i2kit/internal/devregistry"
)

// registryCmd serves an in-memory registry (internal/devregistry) seeded with static binaries.
func registryCmd() *cobra.Command {
	var addr string
	var binaries []string
	var busybox, user, password string
	cmd := &cobra.Command{
		Use:   "registry",
		Short: "Serve an in-memory container registry over plain HTTP (for local clusters); --binary seeds it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			if (user == "") != (password == "") {
				return fmt.Errorf("--user and --password go together")
			}
			var opts []devregistry.Option
			var push []remote.Option
			if user != "" {
				opts = append(opts, devregistry.BasicAuth(user, password))
				push = append(push, remote.WithAuth(&authn.Basic{Username: user, Password: password}))
			}
			srv := devregistry.Serve(l, opts...)
			for _, b := range binaries {
				ref, path, ok := strings.Cut(b, "=")
				if !ok {
					return fmt.Errorf("--binary %q: want repo:tag=path", b)
				}
				if err := devregistry.PushBinary(l.Addr().String()+"/"+ref, path, busybox, push...); err != nil {
					return err
				}
				fmt.Printf("pushed %s/%s\n", l.Addr(), ref)
			}
			if user != "" {
				fmt.Printf("registry serving on http://%s (basic auth as %s)\n", l.Addr(), user)
			} else {
				fmt.Printf("registry serving on http://%s\n", l.Addr())
			}
			<-cmd.Context().Done()
			return srv.Close()
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:5001", "address to listen on")
	cmd.Flags().StringVar(&busybox, "busybox", "", "path of a static busybox to add to the --binary images as /bin/sh, /bin/cat, ... (Debian's busybox-static: /bin/busybox)")
	cmd.Flags().StringSliceVar(&binaries, "binary", nil, "repo:tag=path: push an image whose entrypoint is this static binary")
	cmd.Flags().StringVar(&user, "user", "", "demand HTTP basic auth as this user (with --password), to try imagePullSecrets")
	cmd.Flags().StringVar(&password, "password", "", "the password of --user")
	return cmd
}
