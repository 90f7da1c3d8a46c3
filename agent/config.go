// Package agent is the guest side of a pod VM: i2kit-agent runs as PID 1, mounts the VM's filesystems, runs the
// pod's containers and serves the node over one narrow, versioned protocol (package protocol).
package agent

// ConfigPath is where the image builder puts the image's configuration in the initramfs.
const ConfigPath = "/etc/i2kit/image.json"

// ImagesDir is where each container image's filesystem is mounted, read-only, by container name.
const ImagesDir = "/run/i2kit/images"

// HostnameParam is the kernel command-line parameter that names the pod, the containers' hostname.
const HostnameParam = "i2kit.hostname"

// ConfigParam is the kernel command-line parameter that, set to "channel", makes the agent wait for the pod's
// runtime configuration over the protocol instead of starting the image's containers at boot.
const ConfigParam = "i2kit.config"

// ReadyMarker starts the console line the agent prints when the VM is ready; tests and backends wait for it.
const ReadyMarker = "I2KIT_AGENT_READY"

// ImageConfig is what the builder tells the agent about an image.
type ImageConfig struct {
	// Version of this format.
	Version int `json:"version"`
	// Modules are kernel modules (paths in the initramfs) to load in order before anything else: a modular
	// kernel's virtio, filesystem and cloud drivers. Empty for the built-in podvm kernel.
	Modules []string `json:"modules,omitempty"`
	// Disks are the read-only container image filesystems, found by their erofs UUID whatever the order in which
	// the hypervisor attaches them.
	Disks []Disk `json:"disks"`
	// Containers lists what to run, by name; Disk indexes Disks.
	Containers []Container `json:"containers"`
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
