package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/virtual-kubelet/virtual-kubelet/log"

	"github.com/i2kit/i2kit/provider"
	"github.com/i2kit/i2kit/provider/qemu"
	"github.com/i2kit/i2kit/vmimage"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

// attachBackend gives the provider the configured backend and image builder. The returned function releases what
// they hold (the image store) when the node stops; running VMs keep running, to be adopted at the next start.
func attachBackend(ctx context.Context, c Config, p *provider.Provider) (release func(), err error) {
	if c.Backend != "qemu" {
		return func() {}, nil
	}
	kernelPath := c.Images.Kernel
	if kernelPath == "" {
		if kernelPath, err = kernel.Vmlinux(); err != nil {
			return nil, fmt.Errorf("images.kernel: %w", err)
		}
	}
	agentPath := c.Images.Agent
	if agentPath == "" {
		exe, _ := os.Executable()
		agentPath = filepath.Join(filepath.Dir(exe), "i2kit-agent")
	}
	if _, err := os.Stat(agentPath); err != nil {
		return nil, fmt.Errorf("images.agent: %w (make build puts i2kit-agent beside i2kit)", err)
	}
	store, err := vmimage.OpenStore(c.Images.Store, 500, 50<<30)
	if err != nil {
		return nil, fmt.Errorf("images.store: %w", err)
	}
	src := &vmimage.Source{Insecure: c.Images.InsecureRegistries, Mirrors: map[string][]string{}}
	for _, m := range c.Images.Mirrors {
		r, mirror, _ := strings.Cut(m, "=")
		src.Mirrors[r] = append(src.Mirrors[r], mirror)
	}
	builder := &vmimage.Builder{Store: store, Source: src, Kernel: kernelPath, Agent: agentPath}
	b, err := qemu.New(qemu.Config{RuntimeDir: c.QEMU.RuntimeDir, Bridge: c.QEMU.Bridge, PodCIDR: c.PodCIDR}, p.VMChanged)
	if err != nil {
		store.Close()
		return nil, err
	}
	p.UseBackend(b, builder)
	adopted := b.List()
	log.G(ctx).WithField("adopted", len(adopted)).WithField("runtimeDir", c.QEMU.RuntimeDir).Info("qemu backend ready")
	return func() { store.Close() }, nil
}
