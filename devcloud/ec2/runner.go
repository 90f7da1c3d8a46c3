package ec2

import (
	"context"
	"io"
	"sync"
)

// Runner is what an instance is: nothing (the default: instances only change state), a test's fake agent, or a
// QEMU VM booted from the image's snapshots.
//
// The server calls Start once per instance, on its own goroutine, after RunInstances has answered; the instance
// is pending until Start returns nil and then running. An error from Start terminates the instance (state reason
// Server.InternalError); the runner releases what it took before returning it. ctx only bounds the start: it is
// cancelled when the instance is terminated while pending; the instance's life after Start is the runner's own
// (never tie a VM to ctx). Stop is called exactly once for each instance whose Start returned nil, when it is
// terminated (by TerminateInstances, TerminateOutside, or after the runner reported Exited); it returns when the
// instance is gone, and the state then moves from shutting-down to terminated. Start and Stop of different
// instances run concurrently.
type Runner interface {
	Start(ctx context.Context, inst Instance) error
	Stop(ctx context.Context, id string) error
}

// Instance is what a Runner needs to make an instance real. The fields are copies taken at launch; the live
// metadata options (ModifyInstanceMetadataOptions) are Server.Instance's.
type Instance struct {
	ID               string
	ImageID          string
	InstanceType     string
	VCPUs            int
	MemoryMiB        int64
	SubnetID         string
	VpcID            string
	AvailabilityZone string
	PrivateIP        string
	SubnetCIDR       string
	UserData         []byte // decoded
	Metadata         MetadataOptions
	Tags             []Tag
	BootMode         string // the image's: legacy-bios, uefi or uefi-preferred
	Architecture     string
	RootDeviceName   string
	Disks            []Disk

	// Console appends to the serial console output that GetConsoleOutput serves; safe for concurrent use.
	Console io.Writer
	// Exited reports that the instance stopped on its own (the guest powered off or crashed): the instance
	// moves to stopped or terminated as its InstanceInitiatedShutdownBehavior says, and Stop is still called.
	Exited func(reason string)
}

// Disk is one EBS volume of an instance, made from a snapshot (or empty).
type Disk struct {
	DeviceName string
	SnapshotID string // empty for a blank volume
	SizeBytes  int64  // the volume's size (VolumeSize GiB)
	// Content reads the snapshot's bytes (zeros where no block was written, and past the snapshot's end);
	// valid until the snapshot is deleted, so a runner copies what it keeps.
	Content io.ReaderAt
}

// MetadataOptions are an instance's IMDS settings.
type MetadataOptions struct {
	HttpEndpoint            string // enabled, disabled
	HttpTokens              string // optional, required
	HttpPutResponseHopLimit int
	InstanceMetadataTags    string // enabled, disabled
}

// nopRunner makes instances that exist only as state.
type nopRunner struct{}

func (nopRunner) Start(context.Context, Instance) error { return nil }
func (nopRunner) Stop(context.Context, string) error    { return nil }

// maxConsole bounds the console output kept per instance; GetConsoleOutput returns the last consoleWindow bytes
// of it, as EC2 returns the latest 64 KiB.
const (
	maxConsole    = 256 << 10
	consoleWindow = 64 << 10
)

// console is an instance's serial console: an append-only buffer keeping the most recent output.
type console struct {
	mu  sync.Mutex
	buf []byte
}

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	if len(c.buf) > maxConsole {
		c.buf = append([]byte(nil), c.buf[len(c.buf)-maxConsole:]...)
	}
	return len(p), nil
}

// latest returns the last consoleWindow bytes written.
func (c *console) latest() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.buf
	if len(b) > consoleWindow {
		b = b[len(b)-consoleWindow:]
	}
	return append([]byte(nil), b...)
}
