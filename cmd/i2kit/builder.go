package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/i2kit/i2kit/node"
	"github.com/i2kit/i2kit/vmimage"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

// openStore opens the image store c names, bounded as c says.
func openStore(c node.ImagesConfig) (*vmimage.Store, error) {
	q, err := resource.ParseQuantity(c.MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("images.maxBytes %q: %w", c.MaxBytes, err)
	}
	return vmimage.OpenStore(c.Store, c.MaxImages, q.Value())
}

// newBuilder is the one constructor of pod VM image builders, for `i2kit image` and `i2kit node` alike: the store,
// the kernels (by default those `make kernel` built), the agent (by default the one beside this binary) and how
// registries are reached. The caller closes b.Store.
func newBuilder(c node.ImagesConfig, progress vmimage.Progress) (*vmimage.Builder, error) {
	k := c.Kernel
	if k == "" {
		var err error
		if k, err = kernel.Vmlinux(); err != nil {
			return nil, fmt.Errorf("images.kernel: %w", err)
		}
	}
	bz, _ := kernel.BzImage() // only raw images need it: their build says so when it is missing
	a := c.Agent
	if a == "" {
		exe, _ := os.Executable()
		a = filepath.Join(filepath.Dir(exe), "i2kit-agent")
	}
	if _, err := os.Stat(a); err != nil {
		return nil, fmt.Errorf("images.agent: %w (make build puts i2kit-agent beside i2kit)", err)
	}
	imageMax, layerMax, err := c.UncompressedLimits()
	if err != nil {
		return nil, err
	}
	src := &vmimage.Source{Insecure: c.InsecureRegistries, Mirrors: map[string][]string{},
		MaxImageBytes: imageMax, MaxLayerBytes: layerMax}
	for _, m := range c.Mirrors {
		reg, mirror, ok := strings.Cut(m, "=")
		if !ok || reg == "" || mirror == "" {
			return nil, fmt.Errorf("images.mirrors %q: want registry=mirror", m)
		}
		if why := vmimage.UnmatchableRegistry(reg); why != "" {
			vklog.L.Warnf("images.mirrors %q is never used: %s", m, why)
		}
		src.Mirrors[reg] = append(src.Mirrors[reg], mirror)
	}
	if len(c.DockerConfigs) > 0 {
		var docs [][]byte
		for _, p := range c.DockerConfigs {
			b, err := os.ReadFile(p)
			if err != nil {
				return nil, fmt.Errorf("images.dockerConfigs: %w", err)
			}
			docs = append(docs, b)
		}
		kc, err := vmimage.DockerConfigKeychain(docs...)
		if err != nil {
			return nil, fmt.Errorf("images.dockerConfigs: %w", err)
		}
		src.Keychain = authn.NewMultiKeychain(kc, authn.DefaultKeychain)
	}
	st, err := openStore(c)
	if err != nil {
		return nil, fmt.Errorf("images.store: %w", err)
	}
	return &vmimage.Builder{Store: st, Source: src, Kernel: k, BzImage: bz, Agent: a, Progress: progress}, nil
}
