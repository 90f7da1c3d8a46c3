// Package vm is the contract between the provider and its backends: what a pod's VM is asked to be (Spec) and
// what it is (Status). Backends (provider/qemu, later provider/aws) implement Backend.
package vm

import (
	"context"
	"errors"
	"net"
	"time"
)

// State is where a VM is in its life. Booting → Running → Stopping → Terminated; a VM that exits on its own
// (QEMU crash, guest panic, killed by hand, instance gone) ends Failed.
type State string

const (
	Booting    State = "Booting"
	Running    State = "Running"
	Stopping   State = "Stopping"
	Terminated State = "Terminated"
	Failed     State = "Failed"
)

// Spec is what a backend needs to run one pod's VM.
type Spec struct {
	UID, Namespace, Name string
	Kernel, Initramfs    string
	Cmdline              string
	Disks                []string
	MemoryMiB, CPUs      int
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
	Ready     time.Time `json:"ready,omitempty"`
	Pid       int       `json:"pid,omitempty"`
}

// ErrNotFound is returned for pod UIDs a backend has no VM for.
var ErrNotFound = errors.New("vm not found")

// Backend runs pods' VMs. Implementations report every status change to the function they were made with.
type Backend interface {
	// Launch starts the VM for a pod; it is idempotent per UID: a second call returns the VM the first made.
	Launch(Spec) (Status, error)
	// Get returns a VM's status, or ErrNotFound.
	Get(uid string) (Status, error)
	// List returns every VM the backend owns, including VMs it adopted at start.
	List() []Status
	// Terminate stops a VM — gracefully within grace, then forcibly — and releases what it held. It may be
	// called repeatedly; once the VM is gone it returns ErrNotFound.
	Terminate(ctx context.Context, uid string, grace time.Duration) error
	// DialAgent opens the channel to a running VM's agent (see package agent/protocol); the caller owns the
	// connection. A backend may allow one open channel per VM at a time.
	DialAgent(ctx context.Context, uid string) (net.Conn, error)
}
