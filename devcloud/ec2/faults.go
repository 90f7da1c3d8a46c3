package ec2

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// faults is the fault injection tests drive through the Server's methods.
type faults struct {
	mu       sync.Mutex
	next     map[string][]*apiError // action → errors for its next calls, in order
	denied   map[string]*apiError   // action → UnauthorizedOperation
	capacity map[string]*apiError   // instance type → launch error
	hide     int                    // new instances stay invisible for this many DescribeInstances
	hold     chan struct{}          // non-nil: transitions wait until it is closed
	holds    int                    // unreleased HoldTransitions
}

func newFaults() faults {
	return faults{next: map[string][]*apiError{}, denied: map[string]*apiError{}, capacity: map[string]*apiError{}}
}

// before returns the error injected for this call of action, if any.
func (f *faults) before(action string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.denied[action]; e != nil {
		return e
	}
	if q := f.next[action]; len(q) > 0 {
		f.next[action] = q[1:]
		return q[0]
	}
	return nil
}

// capacityErr returns the launch error injected for an instance type.
func (f *faults) capacityErr(instanceType string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.capacity[instanceType]; e != nil {
		return e
	}
	return nil
}

func (f *faults) hideNew() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hide
}

// gate waits out delay and any hold; it returns early with ctx's error.
func (f *faults) gate(ctx context.Context, delay time.Duration) error {
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	hold := f.hold
	f.mu.Unlock()
	if hold == nil {
		return nil
	}
	select {
	case <-hold:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// statusOf is the HTTP status EC2 answers a code with: server errors are 5xx (and retried by the SDK),
// throttling 503, the rest 400.
func statusOf(code string) int {
	switch code {
	case "InsufficientInstanceCapacity", "InternalError", "Unavailable", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity":
		return http.StatusInternalServerError
	case "RequestLimitExceeded":
		return http.StatusServiceUnavailable
	case "UnauthorizedOperation":
		return http.StatusForbidden
	}
	return http.StatusBadRequest
}

// FailNext makes the next n calls of action (an EC2 action or an EBS operation such as "PutSnapshotBlock") fail
// with code, e.g. "InstanceLimitExceeded" or "InternalError". SDK retries count as calls.
func (s *Server) FailNext(action, code string, n int) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	for range n {
		s.faults.next[action] = append(s.faults.next[action], &apiError{status: statusOf(code), Code: code,
			Message: fmt.Sprintf("injected %s for %s", code, action)})
	}
}

// Throttle makes the next n calls of action fail with RequestLimitExceeded (RequestThrottledException for EBS
// operations). The SDK's retryer retries these: n counts attempts, not operations.
func (s *Server) Throttle(action string, n int) {
	s.FailNext(action, "RequestLimitExceeded", n)
}

// Deny makes every call of action fail with UnauthorizedOperation (AccessDeniedException for EBS), naming the
// IAM action as AWS does, until Allow.
func (s *Server) Deny(action string) {
	service := "ec2"
	if ebsOperations[action] {
		service = "ebs"
	}
	e := &apiError{status: http.StatusForbidden, Code: "UnauthorizedOperation", Message: fmt.Sprintf(
		"You are not authorized to perform this operation. User: arn:aws:iam::%s:user/devcloud is not authorized to perform: %s:%s",
		s.opts.AccountID, service, action)}
	s.faults.mu.Lock()
	s.faults.denied[action] = e
	s.faults.mu.Unlock()
}

// Allow undoes Deny.
func (s *Server) Allow(action string) {
	s.faults.mu.Lock()
	delete(s.faults.denied, action)
	s.faults.mu.Unlock()
}

// FailInstanceType makes every RunInstances of an instance type fail with code (InsufficientInstanceCapacity,
// InstanceLimitExceeded, Unsupported, ...) after the request was validated; an empty code clears it.
func (s *Server) FailInstanceType(instanceType, code string) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	if code == "" {
		delete(s.faults.capacity, instanceType)
		return
	}
	msg := fmt.Sprintf("We currently do not have sufficient %s capacity in the Availability Zone you requested.", instanceType)
	if code != "InsufficientInstanceCapacity" {
		msg = fmt.Sprintf("injected %s for %s", code, instanceType)
	}
	s.faults.capacity[instanceType] = &apiError{status: statusOf(code), Code: code, Message: msg}
}

// HideNewInstances makes instances launched from now on invisible to the next n DescribeInstances calls
// (eventual consistency: InvalidInstanceID.NotFound by ID, absent from lists); 0 turns it off.
func (s *Server) HideNewInstances(n int) {
	s.faults.mu.Lock()
	s.faults.hide = n
	s.faults.mu.Unlock()
}

// HoldTransitions stops state transitions (pending → running, shutting-down → terminated, stopping →
// stopped) where they are until every returned release has been called; calling one release twice is harmless.
func (s *Server) HoldTransitions() (release func()) {
	s.faults.mu.Lock()
	defer s.faults.mu.Unlock()
	if s.faults.hold == nil {
		s.faults.hold = make(chan struct{})
	}
	s.faults.holds++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.faults.mu.Lock()
			defer s.faults.mu.Unlock()
			if s.faults.holds--; s.faults.holds == 0 {
				close(s.faults.hold)
				s.faults.hold = nil
			}
		})
	}
}

// ebsOperations are the EBS direct APIs' operations (their IAM actions are ebs:*).
var ebsOperations = map[string]bool{"StartSnapshot": true, "PutSnapshotBlock": true, "CompleteSnapshot": true,
	"ListSnapshotBlocks": true, "GetSnapshotBlock": true}
