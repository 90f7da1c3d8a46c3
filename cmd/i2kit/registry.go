package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/cobra"
)

// registryCmd serves a throw-away, in-memory OCI registry for local clusters, where no outside registry may be
// reachable, and can seed it with images made from static binaries.
func registryCmd() *cobra.Command {
	var addr string
	var binaries []string
	cmd := &cobra.Command{
		Use:   "registry",
		Short: "Serve an in-memory container registry over plain HTTP (for local clusters); --binary seeds it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
			go srv.Serve(l) //nolint:errcheck
			for _, b := range binaries {
				ref, path, ok := strings.Cut(b, "=")
				if !ok {
					return fmt.Errorf("--binary %q: want repo:tag=path", b)
				}
				if err := pushBinary(l.Addr().String()+"/"+ref, path); err != nil {
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
	cmd.Flags().StringSliceVar(&binaries, "binary", nil, "repo:tag=path: push an image whose entrypoint is this static binary")
	return cmd
}

// pushBinary pushes a one-layer linux/amd64 image holding a static binary as its entrypoint.
func pushBinary(ref, path string) error {
	body, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "app", Mode: 0o755, Size: int64(len(body))}) //nolint:errcheck
	tw.Write(body)                                                                //nolint:errcheck
	tw.Close()
	lb := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(lb)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: "amd64",
		Config: v1.Config{Entrypoint: []string{"/app"}, Env: []string{"PATH=/"}}, RootFS: mustRootFS(img)})
	if err != nil {
		return err
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	return remote.Write(r, img)
}

func mustRootFS(img v1.Image) v1.RootFS {
	cf, err := img.ConfigFile()
	if err != nil {
		return v1.RootFS{Type: "layers"}
	}
	return cf.RootFS
}
