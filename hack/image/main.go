// Command image assembles the i2kit node's container image without Docker, reproducibly: the same inputs and
// SOURCE_DATE_EPOCH give the same digest. It pushes the image to a registry (--push) or writes an OCI layout
// (--oci-layout). `make image` runs it.
//
// The image targets the aws backend (and "none"): it holds i2kit, the agent, the pod-VM kernel, and the programs
// the node runs to build pod-VM images (mkfs.erofs; for the EC2 raw disk sfdisk, mkfs.vfat, mmd, mcopy, objcopy
// and the systemd EFI stub), with their shared libraries taken from this host. It holds no QEMU: the qemu backend
// needs KVM, a bridge and TAPs on the host, which a pod in a cluster generally has not; run that backend as a host
// process. It is a separate program, not an i2kit subcommand, so that the node's binary links nothing it needs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/i2kit/i2kit/vmimage/kernel"
)

// awsTools are the programs the node runs for the aws backend's images (vmimage: rootfs.go, raw.go with EFI).
var awsTools = []string{"mkfs.erofs", "sfdisk", "mkfs.vfat", "mmd", "mcopy", "objcopy"}

// efiStub is the systemd-boot stub the EFI raw disk's unified kernel image is built on (vmimage/raw.go).
const efiStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	in := Inputs{KernelName: filepath.Base(kernel.Dir())}
	var push, ociLayout, tools string
	var insecure bool
	fs.StringVar(&in.I2kit, "i2kit", "bin/i2kit", "the static i2kit binary")
	fs.StringVar(&in.Agent, "agent", "bin/i2kit-agent", "the static i2kit-agent binary")
	fs.StringVar(&in.KernelDir, "kernel-dir", kernel.Dir(), "directory of the pod-VM kernel (vmlinux, bzImage) that `make kernel` built")
	fs.StringVar(&tools, "tools", strings.Join(awsTools, ","), "host programs the node runs, comma-separated (with their shared libraries)")
	fs.StringVar(&in.CACerts, "ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle (PEM) of this host to put in the image")
	fs.StringVar(&in.Version, "version", "dev", "image version label (org.opencontainers.image.version)")
	fs.StringVar(&in.Source, "source", "https://github.com/i2kit/i2kit", "image source label (org.opencontainers.image.source)")
	fs.StringVar(&push, "push", "", "push the image to REGISTRY/REPO:TAG")
	fs.BoolVar(&insecure, "insecure", false, "with --push: the registry speaks plain HTTP")
	fs.StringVar(&ociLayout, "oci-layout", "", "write the image as an OCI layout into this directory (new or empty)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (push == "") == (ociLayout == "") {
		return errors.New("want one of --push REGISTRY/REPO:TAG and --oci-layout DIR")
	}
	if tools != "" {
		in.Tools = strings.Split(tools, ",")
		in.Files = []string{efiStub}
	}
	epoch, err := sourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH"))
	if err != nil {
		return err
	}
	in.Epoch = epoch
	img, err := Build(in)
	if err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	if ociLayout != "" {
		if err := writeLayout(ociLayout, img); err != nil {
			return err
		}
		fmt.Printf("%s@%s\n", ociLayout, d)
		return nil
	}
	ref, err := pushImage(ctx, push, insecure, img)
	if err != nil {
		return err
	}
	fmt.Printf("%s@%s\n", ref.Context(), d)
	return nil
}

// sourceDateEpoch is the image's time: SOURCE_DATE_EPOCH (seconds) when set, else the Unix epoch.
func sourceDateEpoch(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: want seconds since 1970", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// writeLayout writes img as the only image of a new OCI layout in dir, for linux/amd64.
func writeLayout(dir string, img v1.Image) error {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("--oci-layout %s: not empty", dir)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("writing OCI layout, %w", err)
	}
	if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
		return fmt.Errorf("writing OCI layout, %w", err)
	}
	return nil
}

// pushImage pushes img to ref with the credentials of the docker config (~/.docker/config.json), if any.
func pushImage(ctx context.Context, ref string, insecure bool, img v1.Image) (name.Reference, error) {
	var opts []name.Option
	if insecure {
		opts = append(opts, name.Insecure)
	}
	r, err := name.ParseReference(ref, opts...)
	if err != nil {
		return nil, fmt.Errorf("--push %q: %w", ref, err)
	}
	if err := remote.Write(r, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return nil, fmt.Errorf("pushing %s, %w", r, err)
	}
	return r, nil
}
