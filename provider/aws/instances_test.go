package aws

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/i2kit/i2kit/provider/vm"
)

// launchedTypes lists the instance type and subnet of every RunInstances call from the nth on.
func (f *fakeEC2) launchedTypes(from int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, in := range f.runs[from:] {
		out = append(out, string(in.InstanceType)+"@"+*in.SubnetId)
	}
	return out
}

func TestCapacityFallsBackAndShunsTheType(t *testing.T) {
	for _, code := range []string{"InsufficientInstanceCapacity", "InstanceLimitExceeded", "Unsupported", "InvalidParameterCombination"} {
		t.Run(code, func(t *testing.T) {
			h := newHarness()
			b := h.backend(t)
			h.f.noCapacity["t3.nano"] = code
			st, err := b.Launch(context.Background(), testPlan("a"))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(h.f.launchedTypes(0), " "); got != "t3.nano@subnet-a t3.micro@subnet-a" {
				t.Errorf("tried %s, want t3.nano then t3.micro", got)
			}
			if it := h.f.instance(st.ID); it.InstanceType != "t3.micro" {
				t.Errorf("runs on %s", it.InstanceType)
			}
			// The failed type is shunned: the next pod tries it last.
			if _, err := b.Launch(context.Background(), testPlan("b")); err != nil {
				t.Fatal(err)
			}
			if got := h.f.launchedTypes(2); got[0] != "t3.micro@subnet-a" {
				t.Errorf("the next pod tried %v first, want t3.micro (t3.nano shunned)", got)
			}
			// ... for a while.
			h.clock.advance(shunFor)
			delete(h.f.noCapacity, "t3.nano")
			if _, err := b.Launch(context.Background(), testPlan("c")); err != nil {
				t.Fatal(err)
			}
			if got := h.f.launchedTypes(3); got[0] != "t3.nano@subnet-a" {
				t.Errorf("after the shun expired the next pod tried %v first, want t3.nano", got)
			}
		})
	}
}

// Capacity is per zone: the same type in the pod's next subnet comes before a dearer type.
func TestCapacityTriesTheNextSubnetFirst(t *testing.T) {
	h := newHarness()
	b := h.backend(t, func(c *Config) { c.Subnets = []string{"subnet-a", "subnet-b"} })
	first := b.candidates("a", b.types[:1])[0].subnet
	h.f.noCapacity["t3.nano@"+first] = "InsufficientInstanceCapacity"
	if _, err := b.Launch(context.Background(), testPlan("a")); err != nil {
		t.Fatal(err)
	}
	got := h.f.launchedTypes(0)
	if len(got) != 2 || !strings.HasPrefix(got[1], "t3.nano@") || got[1] == got[0] {
		t.Errorf("tried %v, want t3.nano in the other subnet", got)
	}
}

func TestSubnetOutOfAddressesIsSkipped(t *testing.T) {
	h := newHarness()
	b := h.backend(t, func(c *Config) { c.Subnets = []string{"subnet-a", "subnet-b"} })
	order := b.candidates("a", b.types[:1])
	first, second := order[0].subnet, order[1].subnet
	h.f.fail("RunInstances", apiError("InsufficientFreeAddressesInSubnet", "no free addresses"))
	h.f.noCapacity["t3.nano@"+second] = "InsufficientInstanceCapacity"
	if _, err := b.Launch(context.Background(), testPlan("a")); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(h.f.launchedTypes(0), " ")
	if want := "t3.nano@" + first + " t3.nano@" + second + " t3.micro@" + second; got != want {
		t.Errorf("tried %s, want %s: no more tries in the subnet without addresses", got, want)
	}
	// The next pods try that subnet last.
	if c := b.candidates("b", b.types[1:2]); c[0].subnet != second {
		t.Errorf("the next pod tries %v first", c)
	}
}

func TestSubnetsWithoutAddressesAtStartGoLast(t *testing.T) {
	h := newHarness()
	b := h.backend(t, func(c *Config) { c.Subnets = []string{"subnet-full", "subnet-a"} })
	for _, uid := range []string{"a", "b", "c", "d", "e"} {
		if c := b.candidates(uid, b.types[:1]); c[0].subnet != "subnet-a" {
			t.Errorf("pod %s: %v first", uid, c[0])
		}
	}
}

func TestLaunchWithoutCapacityAnywhereFailsBounded(t *testing.T) {
	h := newHarness()
	b := h.backend(t, func(c *Config) { c.Subnets = []string{"subnet-a", "subnet-b"} })
	for _, it := range b.types {
		h.f.noCapacity[it.Name] = "InsufficientInstanceCapacity"
	}
	_, err := b.Launch(context.Background(), testPlan("a"))
	if err == nil || !IsInsufficientCapacity(err) || !strings.Contains(err.Error(), "tried t3.nano in") {
		t.Fatalf("launch: %v, want a capacity error listing what was tried", err)
	}
	if n := h.f.count("RunInstances"); n != maxLaunchAttempts {
		t.Errorf("%d RunInstances calls, want %d", n, maxLaunchAttempts)
	}
}

func TestThrottlingBacksOff(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	throttled := apiError("RequestLimitExceeded", "Request limit exceeded.")
	h.f.fail("RunInstances", throttled, throttled, throttled)
	if _, err := b.Launch(context.Background(), testPlan("a")); err != nil {
		t.Fatal(err)
	}
	if n := h.f.count("RunInstances"); n != 4 {
		t.Errorf("%d RunInstances calls, want 4", n)
	}
	if len(h.sleeps) != 3 {
		t.Fatalf("waited %v, want 3 back-offs", h.sleeps)
	}
	for i, d := range h.sleeps {
		if lo, hi := throttleBase<<i/2, throttleBase<<i; d < lo || d > hi {
			t.Errorf("back-off %d: %s, want within [%s, %s]", i, d, lo, hi)
		}
	}

	// Throttled for good: a bounded number of calls, then an error naming the action.
	h.sleeps = nil
	for range 20 {
		h.f.fail("RunInstances", throttled)
	}
	_, err := b.Launch(context.Background(), testPlan("b"))
	if err == nil || !IsThrottled(err) || !strings.Contains(err.Error(), "ec2:RunInstances was throttled") {
		t.Fatalf("launch: %v, want a throttling error", err)
	}
	if n := h.f.count("RunInstances"); n != 4+throttleRetries+1 {
		t.Errorf("%d RunInstances calls, want %d", n, 4+throttleRetries+1)
	}
	var total time.Duration
	for _, d := range h.sleeps {
		total += d
		if d > throttleCap || d < throttleBase/2 {
			t.Errorf("back-off %s out of [%s, %s]", d, throttleBase/2, throttleCap)
		}
	}
	if total > 15*time.Second {
		t.Errorf("waited %s in all", total)
	}
}

// An instance not listed yet right after its launch is eventual consistency: it stays Booting, and a Terminate
// EC2 answers NotFound is asked again once the instance shows.
func TestEventualConsistency(t *testing.T) {
	h := newHarness()
	h.f.lagging = true
	b := h.backend(t)
	ctx := context.Background()
	st, err := b.Launch(ctx, testPlan("a"))
	if err != nil {
		t.Fatal(err)
	}
	sync1(t, b)
	if got, _ := b.Get(ctx, "a"); got.State != vm.Booting {
		t.Fatalf("an instance not listed yet: %+v, want Booting", got)
	}
	if _, err := b.Launch(ctx, testPlan("b")); err != nil {
		t.Fatal(err)
	}
	if err := b.Terminate(ctx, "b"); err != nil {
		t.Fatalf("terminating an instance EC2 does not know yet: %v", err)
	}
	if got, _ := b.Get(ctx, "b"); got.State != vm.Terminated {
		t.Errorf("after Terminate: %+v", got)
	}
	h.f.settle()
	h.f.runAll()
	sync1(t, b)
	if got, _ := b.Get(ctx, "a"); got.State != vm.Running || got.ID != st.ID {
		t.Errorf("once listed: %+v, want Running", got)
	}
	bid := h.f.ids()[1]
	if s := h.f.state(bid); s != ec2types.InstanceStateNameShuttingDown {
		t.Errorf("the instance terminated before EC2 knew it is %s, want shutting-down", s)
	}
	for _, st := range h.seen.of("a") {
		if st.State == vm.Failed {
			t.Errorf("notified %+v", st)
		}
	}
}

// A listing may find a new instance before its launch records it: the launch keeps what the listing knows.
func TestListingBeforeTheLaunchRecords(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	h.f.afterRun = func() {
		h.f.runAll()
		sync1(t, b)
	}
	st, err := b.Launch(context.Background(), testPlan("a"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Get(context.Background(), "a"); got.State != vm.Running || st.State != vm.Running {
		t.Errorf("launch answered %s, Get %s; want Running, as listed", st.State, got.State)
	}
	var states []vm.State
	for _, s := range h.seen.of("a") {
		states = append(states, s.State)
	}
	if fmt.Sprint(states) != "[Running]" {
		t.Errorf("notified %v, want [Running]", states)
	}
}

func TestInstanceNeverListedFails(t *testing.T) {
	h := newHarness()
	h.f.lagging = true
	b := h.backend(t)
	if _, err := b.Launch(context.Background(), testPlan("a")); err != nil {
		t.Fatal(err)
	}
	h.clock.advance(settleTime)
	sync1(t, b)
	if got, _ := b.Get(context.Background(), "a"); got.State != vm.Failed || got.Reason != "InstanceNotFound" {
		t.Errorf("never listed: %+v, want Failed InstanceNotFound", got)
	}
}

// An instance stopped or terminated from outside fails its pod at the next sync, with a reason.
func TestInstanceEndedFromOutsideFailsWithinOneSync(t *testing.T) {
	for _, tc := range []struct {
		name   string
		end    func(f *fakeEC2, id string)
		reason string
		msg    string
	}{
		{"stopped", func(f *fakeEC2, id string) {
			f.setState(id, ec2types.InstanceStateNameStopped, "Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown")
		}, "InstanceStopped", "was stopped from outside the node (Client.UserInitiatedShutdown: User initiated shutdown)"},
		{"shutting down", func(f *fakeEC2, id string) {
			f.setState(id, ec2types.InstanceStateNameShuttingDown, "Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown")
		}, "InstanceTerminated", "was terminated from outside the node"},
		{"terminated", func(f *fakeEC2, id string) { f.setState(id, ec2types.InstanceStateNameTerminated, "", "") },
			"InstanceTerminated", "is gone: it was terminated from outside the node"},
		{"powered off by its guest", func(f *fakeEC2, id string) {
			f.setState(id, ec2types.InstanceStateNameShuttingDown, "Client.InstanceInitiatedShutdown", "Client.InstanceInitiatedShutdown: Instance initiated shutdown")
		}, "InstanceShutdown", "shut itself down"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness()
			b := h.backend(t)
			ctx := context.Background()
			st, err := b.Launch(ctx, testPlan("a"))
			if err != nil {
				t.Fatal(err)
			}
			h.f.runAll()
			sync1(t, b)
			tc.end(h.f, st.ID)
			sync1(t, b)
			got, _ := b.Get(ctx, "a")
			if got.State != vm.Failed || got.Reason != tc.reason || !strings.Contains(got.Message, tc.msg) || !strings.Contains(got.Message, st.ID) {
				t.Fatalf("after one sync: %+v, want Failed %s %q", got, tc.reason, tc.msg)
			}
			seen := h.seen.of("a")
			if last := seen[len(seen)-1]; last.State != vm.Failed || last.Reason != tc.reason {
				t.Errorf("last notification %+v", last)
			}
			var states []vm.State
			for _, s := range seen {
				states = append(states, s.State)
			}
			if fmt.Sprint(states) != "[Booting Running Failed]" {
				t.Errorf("notified %v, want each change once", states)
			}
			h.f.setState(st.ID, ec2types.InstanceStateNameRunning, "", "") // started again by hand, or listed late
			sync1(t, b)                                                    // a failed VM stays so
			if got, _ := b.Get(ctx, "a"); got.State != vm.Failed {
				t.Errorf("a sync later: %+v", got)
			}
			// Terminate releases what is left; once gone, NotFound.
			if err := b.Terminate(ctx, "a"); err != nil {
				t.Fatal(err)
			}
			h.f.reap()
			sync1(t, b)
			if err := b.Terminate(ctx, "a"); !vm.IsNotFound(err) {
				t.Errorf("second Terminate: %v, want NotFound", err)
			}
			if _, err := b.Get(ctx, "a"); !vm.IsNotFound(err) {
				t.Errorf("Get after Terminate: %v, want NotFound", err)
			}
			if n := h.f.live(TagPodUID, "a"); n != 0 {
				t.Errorf("%d instances of pod a left", n)
			}
		})
	}
}

func TestTerminateIsRepeatable(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	ctx := context.Background()
	st, err := b.Launch(ctx, testPlan("a"))
	if err != nil {
		t.Fatal(err)
	}
	h.f.runAll()
	sync1(t, b)
	for i := range 2 {
		if err := b.Terminate(ctx, "a"); err != nil {
			t.Fatalf("Terminate %d: %v", i+1, err)
		}
		if got, err := b.Get(ctx, "a"); err != nil || got.State != vm.Terminated {
			t.Errorf("after Terminate %d: %+v, %v; want Terminated", i+1, got, err)
		}
	}
	if n := h.f.count("TerminateInstances"); n != 2 {
		t.Errorf("%d TerminateInstances calls, want 2", n)
	}
	if s := h.f.state(st.ID); s != ec2types.InstanceStateNameShuttingDown {
		t.Errorf("instance %s", s)
	}
	sync1(t, b) // shows it shutting down: gone for the backend
	if err := b.Terminate(ctx, "a"); !vm.IsNotFound(err) {
		t.Errorf("Terminate once gone: %v, want NotFound", err)
	}
	if _, err := b.Get(ctx, "a"); !vm.IsNotFound(err) {
		t.Errorf("Get once gone: %v, want NotFound", err)
	}
	if n := h.f.count("TerminateInstances"); n != 2 {
		t.Errorf("%d TerminateInstances calls, want still 2", n)
	}
	sync1(t, b) // still listed shutting down: not adopted again
	if all, _ := b.List(ctx); len(all) != 0 {
		t.Errorf("List: %+v", all)
	}
	if states := h.seen.of("a"); states[len(states)-1].State != vm.Terminated {
		t.Errorf("last notification %+v", states[len(states)-1])
	}
}

func TestTerminateUnauthorizedNamesTheAction(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	if _, err := b.Launch(context.Background(), testPlan("a")); err != nil {
		t.Fatal(err)
	}
	h.f.fail("TerminateInstances", apiError("UnauthorizedOperation", "You are not authorized to perform this operation."))
	err := b.Terminate(context.Background(), "a")
	if err == nil || !strings.Contains(err.Error(), "ec2:TerminateInstances is not permitted") {
		t.Fatalf("Terminate: %v", err)
	}
	if got, _ := b.Get(context.Background(), "a"); got.State == vm.Terminated {
		t.Errorf("a refused Terminate left %+v", got)
	}
}

func TestAdoption(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	ctx := context.Background()
	want := map[string]vm.Status{}
	for _, uid := range []string{"a", "b", "c"} {
		st, err := b.Launch(ctx, testPlan(uid))
		if err != nil {
			t.Fatal(err)
		}
		want[uid] = st
	}
	h.f.runAll()
	// Not this node's: another node's, another cluster's, and one without a pod UID.
	h.f.add(ec2types.InstanceStateNameRunning, h.clock.now(), map[string]string{TagCluster: "c1", TagNode: "n2", TagPodUID: "x"})
	h.f.add(ec2types.InstanceStateNameRunning, h.clock.now(), map[string]string{TagCluster: "c2", TagNode: "n1", TagPodUID: "y"})
	h.f.add(ec2types.InstanceStateNameRunning, h.clock.now(), map[string]string{TagCluster: "c1", TagNode: "n1"})
	b2 := h.backend(t)
	all, _ := b2.List(ctx)
	if len(all) != 3 {
		t.Fatalf("adopted %+v, want a, b and c", all)
	}
	for _, got := range all {
		w := want[got.UID]
		if got.ID != w.ID || got.IP != w.IP || got.Namespace != "default" || got.Name != "pod-"+got.UID || got.State != vm.Running {
			t.Errorf("adopted %+v, want %+v Running", got, w)
		}
	}
	runs := h.f.count("RunInstances")
	for uid, w := range want {
		if st, err := b2.Launch(ctx, testPlan(uid)); err != nil || st.ID != w.ID {
			t.Errorf("launch of adopted %s: %+v, %v", uid, st, err)
		}
	}
	if n := h.f.count("RunInstances"); n != runs {
		t.Errorf("launches of adopted pods called RunInstances %d times", n-runs)
	}
}

// Two instances of one pod (a crash during a fallback, the first listing missing the first instance): the
// listing keeps the oldest and ends the other.
func TestDuplicateInstancesAreEnded(t *testing.T) {
	h := newHarness()
	tags := map[string]string{TagCluster: "c1", TagNode: "n1", TagPodUID: "a", TagPodNamespace: "default", TagPodName: "pod-a"}
	older := h.f.add(ec2types.InstanceStateNameRunning, h.clock.now().Add(-time.Minute), tags)
	newer := h.f.add(ec2types.InstanceStateNameRunning, h.clock.now(), tags)
	b := h.backend(t)
	if got, _ := b.Get(context.Background(), "a"); got.ID != older {
		t.Errorf("adopted %s, want the older %s", got.ID, older)
	}
	if s := h.f.state(newer); s != ec2types.InstanceStateNameShuttingDown {
		t.Errorf("the duplicate is %s, want shutting-down", s)
	}
	if s := h.f.state(older); s != ec2types.InstanceStateNameRunning {
		t.Errorf("the pod's instance is %s", s)
	}
}

func TestMetadataEndpointOffAfterFirstDial(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	ctx := context.Background()
	opted := testPlan("opted")
	opted.Annotations = map[string]string{AnnotationInstanceMetadata: "enabled"}
	for _, p := range []vm.Plan{testPlan("a"), opted} {
		if _, err := b.Launch(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// A dial waits for a booting instance to run, within its context.
	bctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := b.DialAgent(bctx, "a"); !errors.Is(err, context.DeadlineExceeded) || vm.IsNotFound(err) {
		t.Errorf("dial of a VM that stays booting: %v, want it to wait until its context ends", err)
	}
	if _, err := b.DialAgent(ctx, "nope"); !vm.IsNotFound(err) {
		t.Errorf("dial of an unknown VM: %v, want NotFound", err)
	}
	h.f.runAll()
	sync1(t, b)
	h.f.fail("ModifyInstanceMetadataOptions", apiError("RequestExpired", "try again"))
	for range 3 {
		c, err := b.DialAgent(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	st, _ := b.Get(ctx, "a")
	if n := h.f.count("ModifyInstanceMetadataOptions"); n != 2 {
		t.Errorf("%d ModifyInstanceMetadataOptions calls, want 2 (a failure, then once)", n)
	}
	if mo := h.f.instance(st.ID).MetadataOptions; mo.HttpEndpoint != ec2types.InstanceMetadataEndpointStateDisabled {
		t.Errorf("metadata endpoint %s", mo.HttpEndpoint)
	}
	if c, err := b.DialAgent(ctx, "opted"); err != nil {
		t.Fatal(err)
	} else {
		c.Close()
	}
	if n := h.f.count("ModifyInstanceMetadataOptions"); n != 2 {
		t.Errorf("the opted-in pod's dial turned its endpoint off")
	}
	// A restarted node knows both from the instances: disabled already, and opted in.
	b2 := h.backend(t)
	for _, uid := range []string{"a", "opted"} {
		c, err := b2.DialAgent(ctx, uid)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	if n := h.f.count("ModifyInstanceMetadataOptions"); n != 2 {
		t.Errorf("%d ModifyInstanceMetadataOptions calls after a restart, want none more", n-2)
	}
	if want := st.ID + "@" + st.IP; h.ch.dials[0] != want {
		t.Errorf("dialled %s, want %s", h.ch.dials[0], want)
	}
}

func TestDialFailureIsReported(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	if _, err := b.Launch(context.Background(), testPlan("a")); err != nil {
		t.Fatal(err)
	}
	h.f.runAll()
	sync1(t, b)
	h.ch.err = errors.New("connection refused")
	if _, err := b.DialAgent(context.Background(), "a"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("dial: %v", err)
	}
	if n := h.f.count("ModifyInstanceMetadataOptions"); n != 0 {
		t.Errorf("the endpoint was turned off before the agent connected")
	}
}

// One sync of 1,000 running pods is ceil(1000/page) DescribeInstances calls and nothing else.
func TestSyncAPICallsAt1000Pods(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	launch1000(t, b, h)
	for _, page := range []int32{100, 1000} {
		b.pageSize = page
		h.f.resetCalls()
		sync1(t, b)
		want := fmt.Sprint(map[string]int{"DescribeInstances": int((1000 + page - 1) / page)})
		if got := fmt.Sprint(h.f.total()); got != want {
			t.Errorf("page %d: one sync made %s, want %s", page, got, want)
		}
	}
	if all, _ := b.List(context.Background()); len(all) != 1000 || all[0].State != vm.Running {
		t.Errorf("List: %d VMs", len(all))
	}
}

func launch1000(t testing.TB, b *Backend, h *harness) {
	t.Helper()
	for i := range 1000 {
		if _, err := b.Launch(context.Background(), testPlan(fmt.Sprintf("pod-%04d", i))); err != nil {
			t.Fatal(err)
		}
	}
	h.f.runAll()
	sync1(t, b)
}

func BenchmarkSync1000Pods(bm *testing.B) {
	h := newHarness()
	b := h.backend(bm)
	launch1000(bm, b, h)
	h.f.resetCalls()
	bm.ResetTimer()
	for range bm.N {
		if err := b.refresh(context.Background()); err != nil {
			bm.Fatal(err)
		}
	}
	bm.StopTimer()
	calls := 0
	for _, n := range h.f.total() {
		calls += n
	}
	bm.ReportMetric(float64(calls)/float64(bm.N), "api-calls/sync")
}

// TestEndedInstancesLeaveNoPin: an instance the node terminated leaves the channel's pins once a listing shows it
// ending, so that the pins do not grow with every pod the node has run.
func TestEndedInstancesLeaveNoPin(t *testing.T) {
	h := newHarness()
	b := h.backend(t)
	ctx := context.Background()
	st, err := b.Launch(ctx, testPlan("a"))
	if err != nil {
		t.Fatal(err)
	}
	h.f.runAll()
	sync1(t, b)
	if err := b.Terminate(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	sync1(t, b) // shows it shutting down: the backend lets it go
	h.ch.mu.Lock()
	defer h.ch.mu.Unlock()
	if !slices.Contains(h.ch.forgotten, st.ID) {
		t.Errorf("the channel still pins %s after its instance ended (forgotten: %v)", st.ID, h.ch.forgotten)
	}
}
