// Package vm is the contract between the provider and the backends that run pods' VMs (provider/qemu, later
// provider/aws): what a pod's VM is asked to be (Plan), what it is (Status), and the calls every backend answers
// (Backend). Every call takes a context and can fail: a cloud API pages, throttles and times out. Package vmtest
// is the conformance kit every backend must pass.
package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/i2kit/i2kit/vmimage"
)

// State is where a VM is in its life. Booting → Running → Stopping → Terminated; a VM that exits on its own
// (a hypervisor crash, a guest panic, killed by hand, an instance stopped from outside) ends Failed. Running means
// the machine runs; whether its agent serves is the protocol's handshake, not the backend's business.
type State string

const (
	Booting    State = "Booting"
	Running    State = "Running"
	Stopping   State = "Stopping"
	Terminated State = "Terminated"
	Failed     State = "Failed"
)

// Exited reports whether a VM in state s has ended.
func (s State) Exited() bool { return s == Terminated || s == Failed }

// Plan is what one pod's VM is to be: the pod's identity, the image, the size and the tags. It says what to run,
// never how a hypervisor or a cloud does it.
type Plan struct {
	UID, Namespace, Name string
	// Image is the pod's VM image, built in the backend's Format.
	Image *vmimage.Image
	// Published is what the backend's Publish returned for Image ("" for backends that publish nothing).
	Published string
	MemoryMiB int
	CPUs      int
	// Tags label the VM (cluster, node, namespace, name, pod UID): the inventory List and a restart rebuild from.
	Tags map[string]string
	// Annotations are the pod's: a backend reads its own options there (e.g. an instance type).
	Annotations map[string]string
	// HostPorts are the node's ports the pod's containers ask for (hostPort), each to be forwarded to the VM's
	// address at its container port, as the CNI portmap plugin does for a kubelet. Only a backend that is a
	// HostPortForwarder is given any; the provider refuses the pod on the others.
	HostPorts []HostPort
}

// Protocols of a HostPort.
const (
	TCP = "TCP"
	UDP = "UDP"
)

// HostPort is one port of the node forwarded to a pod's VM: connections (TCP) or datagrams (UDP) to HostIP:Port
// on the node reach the VM's address at ContainerPort, their source kept.
type HostPort struct {
	// Protocol is TCP or UDP.
	Protocol string `json:"protocol"`
	// HostIP is the node's IPv4 address the port is forwarded on; "" forwards it on every address of the node,
	// the loopback's included (a process on the node reaches the pod at localhost:Port).
	HostIP string `json:"hostIP,omitempty"`
	// Port is the node's port, ContainerPort the VM's; both in 1..65535.
	Port          int32 `json:"port"`
	ContainerPort int32 `json:"containerPort"`
}

// Overlaps reports whether p and q cannot both be forwarded: the same protocol and port, on the same address or
// either on every address (as a kubelet's NodePorts check has it).
func (p HostPort) Overlaps(q HostPort) bool {
	return p.Protocol == q.Protocol && p.Port == q.Port && (p.HostIP == "" || q.HostIP == "" || p.HostIP == q.HostIP)
}

// String names the port: "[hostIP:]port/protocol".
func (p HostPort) String() string {
	if p.HostIP == "" {
		return fmt.Sprintf("%d/%s", p.Port, p.Protocol)
	}
	return fmt.Sprintf("%s:%d/%s", p.HostIP, p.Port, p.Protocol)
}

// HostPortForwarder is implemented by backends that honour Plan.HostPorts: Launch forwards each of them to the
// VM before the VM starts, or fails (a port another VM already holds, a protocol it cannot forward); the
// forwarding lasts as long as the VM, a restart of the backend included, and Terminate removes it. A backend that
// is not one (each pod its own cloud instance, with an address of its own: the node's ports are not its to give)
// is never given a Plan with HostPorts.
type HostPortForwarder interface {
	ForwardsHostPorts()
}

// Status is a VM's observable state.
type Status struct {
	UID       string    `json:"uid"`
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	IP        string    `json:"ip"`
	State     State     `json:"state"`
	Reason    string    `json:"reason,omitempty"`
	Message   string    `json:"message,omitempty"`
	Started   time.Time `json:"started"`
	// ID is the backend's own name for the VM (a QEMU pid, an instance ID), for logs and error messages.
	ID string `json:"id,omitempty"`
}

// ErrNotFound is returned for pod UIDs a backend has no VM for.
var ErrNotFound = errors.New("vm not found")

// IsNotFound reports whether err says the VM does not exist.
func IsNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// Backend runs pods' VMs. A VM's lifetime is the backend's, never a request context's: contexts bound the calls,
// not the VMs. Implementations report every status change they observe (a VM that exits on its own above all) to
// the function they were made with; Get and List are the source of truth.
type Backend interface {
	// Format is the vmimage output format the backend boots (vmimage.Formats).
	Format() string
	// Launch starts the VM for a pod. It is idempotent per Plan.UID: a second call, also after a restart of the
	// backend or a launch cancelled half way, finds the VM the first made and never makes a second.
	Launch(ctx context.Context, p Plan) (Status, error)
	// Get returns a VM's status, or an error that IsNotFound.
	Get(ctx context.Context, uid string) (Status, error)
	// List returns every VM this node owns, including those a restarted backend found again.
	List(ctx context.Context) ([]Status, error)
	// Terminate ends a VM at once and releases what it held (addresses, devices, disks). The graceful part — the
	// agent stopping the containers within the grace period and powering off — is the caller's, over the
	// protocol. Terminate may be called repeatedly; once the VM is gone it returns an error that IsNotFound.
	Terminate(ctx context.Context, uid string) error
	// DialAgent opens a byte stream to a running VM's agent (package agent/protocol); the caller owns the
	// connection. A backend may allow one open channel per VM at a time.
	DialAgent(ctx context.Context, uid string) (net.Conn, error)
}

// Publisher is implemented by backends that must make a built image bootable before launching it (e.g. an EBS
// snapshot and an AMI). Publish is idempotent per image key; it returns what Plan.Published carries.
type Publisher interface {
	Publish(ctx context.Context, img *vmimage.Image) (string, error)
}
