package aws

import (
	"context"
	"errors"
	"strings"
	"time"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
)

// CallRecorder is told of every AWS API call the backend's clients make, for the node's metrics. Its method must
// be safe for concurrent use and must not block.
type CallRecorder interface {
	// APICall reports one call of service's operation ("ec2", "RunInstances") that took d, the SDK's retries
	// included; code is the AWS error code of its failure (CodeTransport when no answer came, CodeCanceled when the
	// caller stopped waiting), "" for a success.
	APICall(service, operation string, d time.Duration, code string)
}

// Error codes of failures that carry none of AWS's (CallRecorder).
const (
	CodeTransport = "Transport"
	CodeCanceled  = "Canceled"
)

// WithCallMetrics is an option of NewClients and Open that tells r of every call of the clients they make: one
// middleware on every operation of every client, added once where the SDK configuration loads, so that no call
// goes uncounted (the backend's, its image publisher's and its load balancers' alike).
func WithCallMetrics(r CallRecorder) func(*config.LoadOptions) error {
	return config.WithAPIOptions([]func(*middleware.Stack) error{func(s *middleware.Stack) error {
		// In the initialize step, before the retries of the finalize step: one call is one operation, however many
		// attempts it took (the client names the service and operation in the context before the stack runs).
		return s.Initialize.Add(callMetrics{r}, middleware.After)
	}})
}

type callMetrics struct{ r CallRecorder }

func (callMetrics) ID() string { return "i2kit/CallMetrics" }

func (m callMetrics) HandleInitialize(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (
	middleware.InitializeOutput, middleware.Metadata, error) {
	t0 := time.Now()
	out, md, err := next.HandleInitialize(ctx, in)
	m.r.APICall(serviceName(awsmiddleware.GetServiceID(ctx)), awsmiddleware.GetOperationName(ctx), time.Since(t0), callErrorCode(err))
	return out, md, err
}

// serviceName is the short name of an SDK service ID, as the IAM actions name it ("ec2", "ebs"); ELBv2 is "elbv2".
func serviceName(id string) string {
	switch id {
	case "Elastic Load Balancing v2":
		return "elbv2"
	case "":
		return "unknown"
	}
	return strings.ReplaceAll(strings.ToLower(id), " ", "_")
}

// callErrorCode is the code CallRecorder.APICall takes for err.
func callErrorCode(err error) string {
	var ae smithy.APIError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ae) && ae.ErrorCode() != "":
		return ae.ErrorCode()
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return CodeCanceled
	}
	return CodeTransport
}
