package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image's layout. The node finds the agent beside its binary and, with I2KIT_CACHE set, the kernel where
// `make kernel` puts it in a cache (vmimage/kernel.Dir) and its image store under the same root (node.DefaultConfig).
const (
	binDir    = "/usr/local/bin"
	cacheRoot = "/var/cache/i2kit"
	// stateDir is the aws backend's default state directory (provider/aws.DefaultStateDir).
	stateDir = "/var/lib/i2kit/aws"
	caFile   = "/etc/ssl/certs/ca-certificates.crt"
	nonroot  = 65532
)

// Inputs are the host files the image is assembled from.
type Inputs struct {
	I2kit, Agent string // the static node and agent binaries
	// KernelDir holds the pod-VM kernel (vmlinux, bzImage) that `make kernel` built; KernelName is the directory's
	// name in the image's cache (vmimage/kernel.Dir's), which the node computes from its own kernel fragment.
	KernelDir, KernelName string
	// Tools are the host programs the node runs (with their libraries); Files other host files it reads, copied
	// to the same path.
	Tools, Files []string
	CACerts      string // the CA bundle (PEM)
	Version      string // org.opencontainers.image.version
	Source       string // org.opencontainers.image.source
	Epoch        time.Time
}

// base is the distroless-style base: users root, nobody and nonroot (65532), the CA bundle, /tmp, the nonroot
// user's home and the node's writable directories, and a merged /usr.
func base(in Inputs) ([]entry, error) {
	ca, err := os.ReadFile(in.CACerts)
	if err != nil {
		return nil, fmt.Errorf("CA certificates, %w", err)
	}
	return []entry{
		file("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"+
			"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")),
		file("/etc/group", 0o644, []byte("root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n")),
		file("/etc/nsswitch.conf", 0o644, []byte("passwd: files\ngroup: files\nhosts: files dns\n")),
		file(caFile, 0o644, ca),
		dir("/tmp", 0o777|os.ModeSticky, 0),
		dir("/root", 0o700, 0),
		dir("/home/nonroot", 0o700, nonroot),
		dir(cacheRoot+"/images", 0o755, nonroot),
		dir(stateDir, 0o700, nonroot),
		symlink("/bin", "usr/bin"), symlink("/sbin", "usr/sbin"),
		symlink("/lib", "usr/lib"), symlink("/lib64", "usr/lib64"),
		dir("/usr/bin", 0o755, 0), dir("/usr/sbin", 0o755, 0), dir("/usr/lib", 0o755, 0), dir("/usr/lib64", 0o755, 0),
	}, nil
}

// Build assembles the node's image: four layers, from the least to the most often changed (base, the tools the
// node runs, the pod-VM kernel, the i2kit binaries), every byte determined by the inputs and Epoch.
func Build(in Inputs) (v1.Image, error) {
	baseEntries, err := base(in)
	if err != nil {
		return nil, err
	}
	tools, err := hostTools(in.Tools)
	if err != nil {
		return nil, err
	}
	for _, f := range in.Files {
		e, err := hostFile(f)
		if err != nil {
			return nil, fmt.Errorf("file %s, %w", f, err)
		}
		tools = append(tools, e)
	}
	var kernelEntries []entry
	for _, k := range []string{"vmlinux", "bzImage"} {
		b, err := os.ReadFile(filepath.Join(in.KernelDir, k))
		if err != nil {
			return nil, fmt.Errorf("pod-VM kernel (make kernel), %w", err)
		}
		kernelEntries = append(kernelEntries, file(cacheRoot+"/kernel/"+in.KernelName+"/"+k, 0o644, b))
	}
	var bins []entry
	for _, b := range []struct{ src, name string }{{in.I2kit, "i2kit"}, {in.Agent, "i2kit-agent"}} {
		data, err := os.ReadFile(b.src)
		if err != nil {
			return nil, fmt.Errorf("%s binary, %w", b.name, err)
		}
		bins = append(bins, file(binDir+"/"+b.name, 0o755, data))
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, l := range []struct {
		entries []entry
		what    string
	}{{baseEntries, "base"}, {tools, "the node's tools"}, {kernelEntries, "the pod-VM kernel"}, {bins, "i2kit and its agent"}} {
		layer, err := newLayer(l.entries, in.Epoch)
		if err != nil {
			return nil, fmt.Errorf("layer of %s, %w", l.what, err)
		}
		img, err = mutate.Append(img, mutate.Addendum{Layer: layer, History: v1.History{
			Created: v1.Time{Time: in.Epoch}, CreatedBy: "hack/image: " + l.what}})
		if err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: in.Epoch}
	cf.Config = v1.Config{
		Entrypoint: []string{binDir + "/i2kit"},
		Cmd:        []string{"node"},
		User:       fmt.Sprintf("%d:%d", nonroot, nonroot),
		WorkingDir: "/",
		Env: []string{
			"PATH=/usr/local/bin:/usr/bin:/usr/sbin",
			"SSL_CERT_FILE=" + caFile,
			"I2KIT_CACHE=" + cacheRoot,
			"HOME=/home/nonroot",
		},
		Labels: map[string]string{
			"org.opencontainers.image.title":   "i2kit node",
			"org.opencontainers.image.version": in.Version,
			"org.opencontainers.image.source":  in.Source,
		},
	}
	return mutate.ConfigFile(img, cf)
}
