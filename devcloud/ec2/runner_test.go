package ec2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// fakeRunner's instances boot when the test releases them, write a console line, and record their stops.
type fakeRunner struct {
	mu       sync.Mutex
	gates    map[string]chan error
	started  map[string]Instance
	stopped  map[string]int
	canceled map[string]bool
}

func newFakeRunner() *fakeRunner {
	return &fakeRunner{gates: map[string]chan error{}, started: map[string]Instance{}, stopped: map[string]int{}, canceled: map[string]bool{}}
}

func (r *fakeRunner) gate(id string) chan error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gates[id] == nil {
		r.gates[id] = make(chan error, 1)
	}
	return r.gates[id]
}

func (r *fakeRunner) release(id string)         { r.gate(id) <- nil }
func (r *fakeRunner) fail(id string, err error) { r.gate(id) <- err }

func (r *fakeRunner) Start(ctx context.Context, inst Instance) error {
	r.mu.Lock()
	r.started[inst.ID] = inst
	r.mu.Unlock()
	select {
	case err := <-r.gate(inst.ID):
		if err != nil {
			return err
		}
		fmt.Fprintf(inst.Console, "booted %s\n", inst.ID)
		return nil
	case <-ctx.Done():
		r.mu.Lock()
		r.canceled[inst.ID] = true
		r.mu.Unlock()
		return ctx.Err()
	}
}

func (r *fakeRunner) Stop(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped[id]++
	return nil
}

func (r *fakeRunner) stops(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stopped[id]
}

func (r *fakeRunner) instance(id string) Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.started[id]
}

func TestRunnerLifecycle(t *testing.T) {
	r := newFakeRunner()
	e := newEnv(t, Options{Runner: r})
	ctx := ctxT(t)
	ami, snap := e.image(t, "lifecycle")
	out, err := e.run(t, ami, "lc", 4)
	if err != nil {
		t.Fatal(err)
	}
	ok, failing, pendingKill, exits := ids(out)[0], ids(out)[1], ids(out)[2], ids(out)[3]

	// Start succeeded: running; the runner saw the launch as it was asked, disks included.
	r.release(ok)
	if err := e.srv.WaitState(ctx, ok, "running"); err != nil {
		t.Fatal(err)
	}
	inst := r.instance(ok)
	if string(inst.UserData) != `{"version":1}` || inst.Metadata.HttpTokens != "required" || inst.BootMode != "uefi" ||
		len(inst.Disks) != 1 || inst.Disks[0].SnapshotID != snap || inst.Disks[0].SizeBytes != 1<<30 || inst.PrivateIP == "" || inst.VCPUs != 2 {
		t.Errorf("runner saw %+v", inst)
	}
	got := make([]byte, 3*blockSize)
	if _, err := inst.Disks[0].Content.ReadAt(got, 0); err != nil || string(got) != string(disk(3*blockSize)) {
		t.Errorf("the disk does not read back as the uploaded image (%v)", err)
	}

	// Start failed: terminated with EC2's launch-failure reason, and no Stop.
	r.fail(failing, errors.New("no firmware"))
	if err := e.srv.WaitState(ctx, failing, "terminated"); err != nil {
		t.Fatal(err)
	}
	d, err := e.ec2.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{InstanceIds: []string{failing}})
	if err != nil {
		t.Fatal(err)
	}
	if sr := d.Reservations[0].Instances[0].StateReason; sr == nil || aws.ToString(sr.Code) != "Server.InternalError" {
		t.Errorf("state reason of a failed launch = %+v", sr)
	}

	// Terminated while pending: Start's context ends, Stop is not called for a start that never succeeded.
	if _, err := e.ec2.TerminateInstances(ctx, &awsec2.TerminateInstancesInput{InstanceIds: []string{pendingKill}}); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.WaitState(ctx, pendingKill, "terminated"); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	canceled := r.canceled[pendingKill]
	r.mu.Unlock()
	if !canceled || r.stops(pendingKill) != 0 {
		t.Errorf("pending kill: start canceled %v, stops %d", canceled, r.stops(pendingKill))
	}

	// The instance powers off by itself; launched with shutdown behaviour terminate, it terminates; Stop once.
	r.release(exits)
	if err := e.srv.WaitState(ctx, exits, "running"); err != nil {
		t.Fatal(err)
	}
	r.instance(exits).Exited("guest powered off")
	if err := e.srv.WaitState(ctx, exits, "terminated"); err != nil {
		t.Fatal(err)
	}
	if n := r.stops(exits); n != 1 {
		t.Errorf("Stop called %d times after an exit, want 1", n)
	}

	// Terminated behind the node's back: no API call, Stop once, terminated, and listed as such.
	e.srv.ResetCalls()
	if err := e.srv.TerminateOutside(ok); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.WaitState(ctx, ok, "terminated"); err != nil {
		t.Fatal(err)
	}
	if r.stops(ok) != 1 || e.srv.Calls("TerminateInstances") != 0 {
		t.Errorf("outside termination: stops %d, TerminateInstances calls %d", r.stops(ok), e.srv.Calls("TerminateInstances"))
	}
	if err := e.srv.TerminateOutside("i-0000000000000dead"); err == nil {
		t.Error("terminating an unknown instance from outside succeeded")
	}
}

func TestStopBehaviourAndConsoleBound(t *testing.T) {
	r := newFakeRunner()
	e := newEnv(t, Options{Runner: r})
	ctx := ctxT(t)
	ami, _ := e.image(t, "stopper")
	in := runInput(ami, "s", 1)
	in.InstanceInitiatedShutdownBehavior = types.ShutdownBehaviorStop
	out, err := e.ec2.RunInstances(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	id := ids(out)[0]
	r.release(id)
	if err := e.srv.WaitState(ctx, id, "running"); err != nil {
		t.Fatal(err)
	}
	// The console keeps only the latest output; GetConsoleOutput returns its last 64 KiB.
	line := make([]byte, 1000)
	for i := range line {
		line[i] = 'x'
	}
	for range 400 {
		_, _ = r.instance(id).Console.Write(line)
	}
	_, _ = io.WriteString(r.instance(id).Console, "LAST")
	c, err := e.ec2.GetConsoleOutput(ctx, &awsec2.GetConsoleOutputInput{InstanceId: aws.String(id)})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(aws.ToString(c.Output)); n != len(b64(make([]byte, consoleWindow))) {
		t.Errorf("console output has %d base64 characters, want the last %d bytes", n, consoleWindow)
	}
	r.instance(id).Exited("halt")
	if err := e.srv.WaitState(ctx, id, "stopped"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ec2.TerminateInstances(ctx, &awsec2.TerminateInstancesInput{InstanceIds: []string{id}}); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.WaitState(ctx, id, "terminated"); err != nil {
		t.Fatal(err)
	}
	if n := r.stops(id); n != 1 {
		t.Errorf("Stop called %d times, want 1", n)
	}
}
