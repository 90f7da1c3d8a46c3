package aws

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestAPIErrorText(t *testing.T) {
	for _, tc := range []struct {
		code, action, want string
		class              func(error) bool
	}{
		{"UnauthorizedOperation", "RunInstances", "ec2:RunInstances is not permitted: the message (add it to the node's IAM policy)", IsUnauthorized},
		{"AccessDenied", "TerminateInstances", "ec2:TerminateInstances is not permitted: the message (add it to the node's IAM policy)", IsUnauthorized},
		{"InsufficientInstanceCapacity", "RunInstances", "ec2:RunInstances: no capacity (InsufficientInstanceCapacity): the message", IsInsufficientCapacity},
		{"InstanceLimitExceeded", "RunInstances", "ec2:RunInstances: no capacity (InstanceLimitExceeded): the message", IsInsufficientCapacity},
		{"RequestLimitExceeded", "DescribeInstances", "ec2:DescribeInstances was throttled (RequestLimitExceeded): the message", IsThrottled},
		{"InvalidInstanceID.NotFound", "TerminateInstances", "ec2:TerminateInstances: not found (InvalidInstanceID.NotFound): the message", isInstanceNotFound},
		{"InvalidAMIID.NotFound", "RunInstances", "ec2:RunInstances failed (InvalidAMIID.NotFound): the message", func(err error) bool {
			return !IsUnauthorized(err) && !IsInsufficientCapacity(err) && !IsThrottled(err) && !isInstanceNotFound(err)
		}},
	} {
		err := fmt.Errorf("launching, %w", apiErr(tc.action, apiError(tc.code, "the message")))
		if got := err.Error(); got != "launching, "+tc.want {
			t.Errorf("%s: %q\nwant %q", tc.code, got, "launching, "+tc.want)
		}
		if !tc.class(err) {
			t.Errorf("%s: not classified", tc.code)
		}
		var ae *APIError
		if !errors.As(err, &ae) || ae.Code != tc.code || ae.Action != "ec2:"+tc.action {
			t.Errorf("%s: %+v", tc.code, ae)
		}
	}
}

func TestAPIErrorBoundsTheMessage(t *testing.T) {
	err := apiErr("RunInstances", apiError("UnauthorizedOperation", "Encoded authorization failure message: "+strings.Repeat("x", 5000)))
	if len(err.Error()) > maxMessage+120 {
		t.Errorf("%d characters", len(err.Error()))
	}
}

func TestNonAPIErrorsAreWrapped(t *testing.T) {
	err := apiErr("DescribeInstances", context.DeadlineExceeded)
	if err.Error() != "calling ec2:DescribeInstances, context deadline exceeded" || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%v", err)
	}
	if apiErr("X", nil) != nil {
		t.Error("a nil error classified")
	}
}
