// Package boot is the contract between a pod VM image and the agent that boots in it: where the image builder puts
// the image's configuration, how the container disks are found, and the kernel command line the host passes. The
// host (vmimage, the backends) and the guest (package agent) import it; it holds no runtime code of either.
package boot

import (
	"encoding/hex"
	"fmt"
	"net"
	"strings"
)

// ConfigPath is where the image builder puts the image's configuration in the initramfs.
const ConfigPath = "/etc/i2kit/image.json"

// ImagesDir is where each container image's filesystem is mounted, read-only, by container name.
const ImagesDir = "/run/i2kit/images"

// ImageVolumesDir is where each image volume's filesystem is mounted, read-only, by volume name.
const ImageVolumesDir = "/run/i2kit/imagevolumes"

// HostnameParam is the kernel command-line parameter that names the pod, the containers' hostname.
const HostnameParam = "i2kit.hostname"

// ConfigParam is the kernel command-line parameter that, set to "channel", makes the agent wait for the pod's
// runtime configuration over the protocol instead of starting the image's containers at boot.
const ConfigParam = "i2kit.config"

// ReadyMarker starts the console line the agent prints once it serves the protocol. It is a debug aid (and what
// tests of images booted without a node wait for): no backend relies on the console, readiness is the protocol's
// handshake.
const ReadyMarker = "I2KIT_AGENT_READY"

// ImageConfig is what the builder tells the agent about an image.
type ImageConfig struct {
	// Version of this format.
	Version int `json:"version"`
	// Modules are kernel modules (paths in the initramfs) to load in order before anything else: a modular
	// kernel's virtio, filesystem and cloud drivers. Empty for the built-in podvm kernel.
	Modules []string `json:"modules,omitempty"`
	// Disks are the read-only container image filesystems, found by their erofs UUID whatever the order in which
	// the hypervisor attaches them (virtio, NVMe: device names are never relied on).
	Disks []Disk `json:"disks"`
	// Containers lists what to run, by name; Disk indexes Disks.
	Containers []Container `json:"containers"`
	// Volumes are the pod's image volumes (pod.spec.volumes[].image), by name; Disk indexes Disks. The agent
	// mounts each read-only at ImageVolumesDir/<name>; the node's runtime configuration mounts them in containers.
	Volumes []Volume `json:"volumes,omitempty"`
}

// Volume is an image volume: an OCI image's filesystem that containers mount, read-only, as a volume.
type Volume struct {
	Name string `json:"name"`
	Disk int    `json:"disk"`
}

// Disk is one container image filesystem.
type Disk struct {
	UUID   string `json:"uuid"`   // erofs superblock UUID, canonical text form
	Digest string `json:"digest"` // image manifest digest it was built from
	Size   int64  `json:"size"`
}

// Container is one container of the image, ready to run: the image's configuration merged with the spec's.
type Container struct {
	Name   string `json:"name"`
	Disk   int    `json:"disk"`
	Onboot bool   `json:"onboot,omitempty"`
	// Argv is what runs: the image's entrypoint and cmd, or the spec's command and args. A pod's command and args
	// arrive at run time and replace it (see protocol.ContainerConfig).
	Argv []string `json:"argv"`
	// Entrypoint is the image's, which a pod's args alone are appended to.
	Entrypoint []string `json:"entrypoint,omitempty"`
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"workingDir"`
	// User is the image's user: "uid[:gid]" or a name looked up in the container's /etc/passwd and /etc/group.
	User string `json:"user,omitempty"`
}

// FormatUUID renders 16 bytes in the canonical 8-4-4-4-12 form.
func FormatUUID(b []byte) string {
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Params is what a backend tells the agent of one pod's VM on the kernel command line.
type Params struct {
	// Hostname is the pod's name, the containers' hostname. A pod name is a DNS subdomain: safe on a command line.
	Hostname string
	// Channel makes the agent wait for the pod's runtime configuration from the node (ConfigParam=channel)
	// instead of running the image's containers at boot.
	Channel bool
	// Network configures eth0 statically before the agent starts (the kernel's ip=); nil leaves it to the agent
	// (e.g. DHCP or the cloud's metadata).
	Network *Network
	// Cloud makes a cloud image's command line, shared by every instance booted from it: the kernel configures
	// the network by DHCP (ip=dhcp, which needs CONFIG_IP_PNP_DHCP) and the agent reads its configuration from the
	// instance metadata service (ConfigParam=CloudConfig) and waits for the node's over TLS. It overrides Channel
	// and Network; Hostname must be empty (the hostname comes in user-data).
	Cloud bool
}

// Network is a static IPv4 configuration of the VM's first interface.
type Network struct {
	IP, Gateway net.IP
	Mask        net.IPMask
}

// Cmdline is the kernel command line of a pod's VM: the image's own (base) followed by the parameters. It is the
// only place the command line is assembled.
func Cmdline(base string, p Params) string {
	parts := strings.Fields(base)
	switch {
	case p.Cloud:
		parts = append(parts, ConfigParam+"="+CloudConfig, "ip=dhcp")
	case p.Channel:
		parts = append(parts, ConfigParam+"=channel")
	}
	if n := p.Network; n != nil && !p.Cloud {
		parts = append(parts, fmt.Sprintf("ip=%s::%s:%s::eth0:off", n.IP, n.Gateway, net.IP(n.Mask)))
	}
	if p.Hostname != "" {
		parts = append(parts, HostnameParam+"="+p.Hostname)
	}
	return strings.Join(parts, " ")
}
