package aws

import (
	"errors"
	"fmt"

	"github.com/aws/smithy-go"
)

// The AWS error codes the backend tells apart. Everything else is an error to report as it is.
var (
	// authCodes refuse an action for want of an IAM permission.
	authCodes = codes("UnauthorizedOperation", "AccessDenied", "AccessDeniedException", "UnauthorizedAccess",
		"Blocked", "AuthFailure")
	// capacityCodes say an instance type cannot be had here now: the launch falls back to the next type.
	// InvalidParameterCombination is among them because EC2 answers it for a type the AMI or the subnet's zone does
	// not support (no ENA, no UEFI): another type may do.
	capacityCodes = codes("InsufficientInstanceCapacity", "InstanceLimitExceeded", "VcpuLimitExceeded",
		"Unsupported", "InvalidParameterCombination", "InsufficientCapacity", "InsufficientHostCapacity")
	// throttleCodes say the account called too often: back off, then call again.
	throttleCodes = codes("RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
		"RequestThrottledException", "TooManyRequestsException", "EC2ThrottledException", "ConcurrentLimitExceededException")
	// notFoundCodes say a resource does not exist (or, right after its creation, is not visible yet).
	notFoundCodes = codes("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")
	// subnetFullCodes say a subnet has no free address: the launch tries another subnet.
	subnetFullCodes = codes("InsufficientFreeAddressesInSubnet")
)

func codes(cs ...string) map[string]bool {
	m := make(map[string]bool, len(cs))
	for _, c := range cs {
		m[c] = true
	}
	return m
}

// maxMessage bounds the part of an AWS error message an error repeats: an UnauthorizedOperation carries a long
// encoded authorization message that says nothing to a reader of pod Events.
const maxMessage = 300

// APIError is AWS refusing an action, classified where it enters the backend. Its text names the action ("ec2:
// RunInstances") and the code, so that the pod Event it ends in says what to fix.
type APIError struct {
	// Action is the IAM action, e.g. "ec2:RunInstances".
	Action  string
	Code    string
	Message string
	err     error
}

func (e *APIError) Error() string {
	switch {
	case authCodes[e.Code]:
		return fmt.Sprintf("%s is not permitted: %s (add it to the node's IAM policy)", e.Action, e.Message)
	case capacityCodes[e.Code]:
		return fmt.Sprintf("%s: no capacity (%s): %s", e.Action, e.Code, e.Message)
	case throttleCodes[e.Code]:
		return fmt.Sprintf("%s was throttled (%s): %s", e.Action, e.Code, e.Message)
	case notFoundCodes[e.Code]:
		return fmt.Sprintf("%s: not found (%s): %s", e.Action, e.Code, e.Message)
	}
	return fmt.Sprintf("%s failed (%s): %s", e.Action, e.Code, e.Message)
}

func (e *APIError) Unwrap() error { return e.err }

// apiErr classifies err from calling the EC2 action (e.g. "RunInstances"): serviceErr of "ec2".
func apiErr(action string, err error) error { return serviceErr("ec2", action, err) }

// serviceErr classifies err from calling a service's action: an AWS API error becomes an *APIError that names
// service+":"+action; any other error (a network failure, a cancelled context) is wrapped as "calling
// service:action, %w".
func serviceErr(service, action string, err error) error {
	if err == nil {
		return nil
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return fmt.Errorf("calling %s:%s, %w", service, action, err)
	}
	msg := ae.ErrorMessage()
	if len(msg) > maxMessage {
		msg = msg[:maxMessage] + "…"
	}
	return &APIError{Action: service + ":" + action, Code: ae.ErrorCode(), Message: msg, err: err}
}

// errorCode is the AWS error code in err's chain, "" when there is none.
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

// IsUnauthorized reports whether AWS refused an action for want of a permission.
func IsUnauthorized(err error) bool { return authCodes[errorCode(err)] }

// IsInsufficientCapacity reports whether an instance type cannot be had now (another type may).
func IsInsufficientCapacity(err error) bool { return capacityCodes[errorCode(err)] }

// IsThrottled reports whether the account called too often.
func IsThrottled(err error) bool { return throttleCodes[errorCode(err)] }

// isInstanceNotFound reports whether an instance does not exist, or is not visible yet.
func isInstanceNotFound(err error) bool { return notFoundCodes[errorCode(err)] }

func isSubnetFull(err error) bool { return subnetFullCodes[errorCode(err)] }

func isIdempotentMismatch(err error) bool { return errorCode(err) == "IdempotentParameterMismatch" }
