package ec2

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
)

// endLocked begins an instance's end: shutting-down then terminated (final "terminated"), or stopping then
// stopped (final "stopped"). The runner's Stop runs first (once, and only if its Start succeeded), then the
// transition gate. Ending an instance that is already ending that way is a no-op. s.mu is held.
func (s *Server) endLocked(in *instance, final, reason, code, message string) {
	switch {
	case in.state == "shutting-down" || in.state == "terminated":
		return
	case final == "stopped" && (in.state == "stopping" || in.state == "stopped"):
		return
	}
	in.state = "shutting-down"
	if final == "stopped" {
		in.state = "stopping"
	}
	in.transitionReason, in.reasonCode, in.reasonMessage = reason, code, message
	s.notifyLocked()
	cancel, started := in.cancelStart, in.started
	go func() {
		cancel() // a Start still running gives up
		<-started
		s.mu.Lock()
		stop := in.startErr == nil && !in.runnerStopped
		in.runnerStopped = true
		s.mu.Unlock()
		if stop {
			_ = s.runner.Stop(context.Background(), in.id)
		}
		_ = s.faults.gate(context.Background(), s.opts.TransitionDelay)
		s.mu.Lock()
		defer s.mu.Unlock()
		if in.state != "shutting-down" && in.state != "stopping" {
			return
		}
		if in.state == "stopping" {
			in.state = "stopped"
		} else {
			in.state, in.endTime = "terminated", s.opts.Now()
			delete(s.usedIPs[in.subnet.ID], in.privateIP)
		}
		s.notifyLocked()
	}()
}

// exited handles a runner's report that the instance stopped on its own.
func (s *Server) exited(id, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[id]
	if !ok { // a runner reporting after the record is gone
		return
	}
	final := "stopped"
	if in.shutdownBehavior == "terminate" {
		final = "terminated"
	}
	s.endLocked(in, final, "Instance initiated shutdown", "Client.InstanceInitiatedShutdown",
		"Client.InstanceInitiatedShutdown: Instance initiated shutdown: "+reason)
}

// TerminateOutside terminates an instance as if someone else had (the console, another tool, a spot
// interruption): no API call is counted, and the state moves shutting-down → terminated as usual.
func (s *Server) TerminateOutside(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[id]
	if !ok {
		return fmt.Errorf("terminating instance %s from outside, %w", id, notFound(id))
	}
	s.endLocked(in, "terminated", "User initiated", "Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown")
	return nil
}

// notifyLocked wakes every WaitState; s.mu is held.
func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// WaitState blocks until the instance is in one of states, or ctx ends.
func (s *Server) WaitState(ctx context.Context, id string, states ...string) error {
	for {
		s.mu.Lock()
		in, ok := s.instances[id]
		var state string
		if ok {
			state = in.state
		}
		ch := s.changed
		s.mu.Unlock()
		if !ok {
			return fmt.Errorf("waiting for instance %s, %w", id, notFound(id))
		}
		if slices.Contains(states, state) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for instance %s to be %v (it is %s), %w", id, states, state, ctx.Err())
		case <-ch:
		}
	}
}

// InstanceInfo is an instance as the devcloud's IMDS and tests see it now.
type InstanceInfo struct {
	ID           string
	State        string
	ImageID      string
	InstanceType string
	SubnetID     string
	VpcID        string
	PrivateIP    string
	UserData     []byte
	Metadata     MetadataOptions
	Tags         []Tag
	ClientToken  string
}

// Instance returns the instance's current state (ignoring eventual consistency).
func (s *Server) Instance(id string) (InstanceInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[id]
	if !ok {
		return InstanceInfo{}, false
	}
	return infoLocked(in), true
}

func infoLocked(in *instance) InstanceInfo {
	return InstanceInfo{ID: in.id, State: in.state, ImageID: in.imageID, InstanceType: in.instanceType, SubnetID: in.subnet.ID,
		VpcID: in.subnet.VpcID, PrivateIP: in.privateIP, UserData: slices.Clone(in.userData), Metadata: in.metadata,
		Tags: slices.Clone(in.tags), ClientToken: in.clientToken}
}

// runnerViewLocked is what the runner is given to start the instance.
func (s *Server) runnerViewLocked(in *instance, it InstanceType) Instance {
	v := Instance{ID: in.id, ImageID: in.imageID, InstanceType: in.instanceType, VCPUs: it.VCPUs, MemoryMiB: it.MemoryMiB,
		SubnetID: in.subnet.ID, VpcID: in.subnet.VpcID, AvailabilityZone: in.subnet.AvailabilityZone, PrivateIP: in.privateIP,
		SubnetCIDR: in.subnet.CIDR, UserData: slices.Clone(in.userData), Metadata: in.metadata, Tags: slices.Clone(in.tags),
		BootMode: in.bootMode, Architecture: in.architecture, RootDeviceName: in.rootDevice, Console: in.console}
	id := in.id
	v.Exited = func(reason string) { s.exited(id, reason) }
	for _, d := range in.disks {
		disk := Disk{DeviceName: d.DeviceName, SnapshotID: d.SnapshotID, SizeBytes: int64(d.VolumeSize) << 30}
		if sn, ok := s.snapshots[d.SnapshotID]; ok {
			disk.Content = sn.blocks
		} else {
			disk.Content = zeros{}
		}
		v.Disks = append(v.Disks, disk)
	}
	return v
}

// zeros reads as an endless run of zero bytes: a blank volume.
type zeros struct{}

func (zeros) ReadAt(p []byte, _ int64) (int, error) {
	clear(p)
	return len(p), nil
}

type consoleOutputResponse struct {
	reply
	InstanceID string `xml:"instanceId"`
	Timestamp  string `xml:"timestamp"`
	Output     string `xml:"output,omitempty"`
}

// getConsoleOutput returns the latest 64 KiB of the runner's console, base64-encoded (with or without Latest:
// the buffer is always current).
func (s *Server) getConsoleOutput(q params) (any, error) {
	id := q.str("InstanceId")
	if id == "" {
		return nil, errCode("MissingParameter", "The request must contain the parameter InstanceId")
	}
	if _, err := q.boolean("Latest"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	in, ok := s.instances[id]
	s.mu.Unlock()
	if !ok {
		return nil, notFound(id)
	}
	out := &consoleOutputResponse{InstanceID: id, Timestamp: awsTime(s.opts.Now())}
	if b := in.console.latest(); len(b) > 0 {
		out.Output = base64.StdEncoding.EncodeToString(b)
	}
	return out, nil
}

type modifyMetadataResponse struct {
	reply
	InstanceID string      `xml:"instanceId"`
	Options    metadataXML `xml:"instanceMetadataOptions"`
}

// modifyInstanceMetadataOptions changes the options named in the request, leaving the others.
func (s *Server) modifyInstanceMetadataOptions(q params) (any, error) {
	id := q.str("InstanceId")
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[id]
	if !ok {
		return nil, notFound(id)
	}
	if in.state == "terminated" || in.state == "shutting-down" {
		return nil, errCode("IncorrectInstanceState", "The instance '%s' is not in a state from which it can be modified.", id)
	}
	md, err := applyMetadata(q, "", in.metadata)
	if err != nil {
		return nil, err
	}
	in.metadata = md
	return &modifyMetadataResponse{InstanceID: id, Options: md.xml("pending")}, nil
}
