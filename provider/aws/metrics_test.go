package aws

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ebs"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"

	devec2 "github.com/i2kit/i2kit/devcloud/ec2"
)

// callLog records what WithCallMetrics reports.
type callLog struct {
	mu    sync.Mutex
	calls []call
}

type call struct{ service, operation, code string }

func (l *callLog) APICall(service, operation string, _ time.Duration, code string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, call{service, operation, code})
}

func (l *callLog) take() []call {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.calls
	l.calls = nil
	return out
}

// TestCallMetricsCountEveryClientsCalls runs the real SDK clients NewClients makes against the local EC2 endpoint:
// each operation is one call however many attempts it took, a failure carries its AWS code, and EBS's and ELBv2's
// calls count as EC2's do.
func TestCallMetricsCountEveryClientsCalls(t *testing.T) {
	srv := devec2.New(devec2.Options{})
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	cfg := testConfig()
	cfg.Endpoint = hs.URL
	log := &callLog{}
	cl, err := NewClients(t.Context(), cfg, WithCallMetrics(log),
		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")),
		config.WithRetryer(func() sdkaws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 0, nil })
			})
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	check := func(what string, want ...call) {
		t.Helper()
		got := log.take()
		if len(got) != len(want) {
			t.Fatalf("%s: recorded %v, want %v", what, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s: recorded %v, want %v", what, got[i], want[i])
			}
		}
	}

	if _, err := cl.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{}); err != nil {
		t.Fatal(err)
	}
	check("a success", call{"ec2", "DescribeInstances", ""})

	srv.Throttle("DescribeInstances", 2) // the SDK retries: two more attempts, one operation
	if _, err := cl.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{}); err != nil {
		t.Fatal(err)
	}
	check("a call retried by the SDK", call{"ec2", "DescribeInstances", ""})

	srv.Deny("RunInstances")
	if _, err := cl.EC2.RunInstances(ctx, &ec2.RunInstancesInput{MinCount: sdkaws.Int32(1), MaxCount: sdkaws.Int32(1)}); err == nil {
		t.Fatal("a denied RunInstances succeeded")
	}
	check("a refusal", call{"ec2", "RunInstances", "UnauthorizedOperation"})

	srv.Deny("ListSnapshotBlocks")
	if _, err := cl.EBS.ListSnapshotBlocks(ctx, &ebs.ListSnapshotBlocksInput{SnapshotId: sdkaws.String("snap-1")}); err == nil {
		t.Fatal("a denied ListSnapshotBlocks succeeded")
	}
	check("an EBS refusal", call{"ebs", "ListSnapshotBlocks", "AccessDeniedException"})

	// devcloud serves no ELBv2 without a fallback: the call fails, and still counts, under its service.
	_, err = cl.ELBv2.DescribeLoadBalancers(ctx, &elbv2.DescribeLoadBalancersInput{})
	got := log.take()
	if len(got) != 1 || got[0].service != "elbv2" || got[0].operation != "DescribeLoadBalancers" || (got[0].code == "") != (err == nil) {
		t.Errorf("an ELBv2 call (error %v): recorded %v", err, got)
	}

	hs.Close()
	if _, err := cl.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{}); err == nil {
		t.Fatal("a call to a closed endpoint succeeded")
	}
	check("no answer", call{"ec2", "DescribeInstances", CodeTransport})

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	cl.EC2.DescribeInstances(cctx, &ec2.DescribeInstancesInput{}) //nolint:errcheck
	check("a cancelled call", call{"ec2", "DescribeInstances", CodeCanceled})
}
