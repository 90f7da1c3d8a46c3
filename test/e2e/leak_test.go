package e2e

import (
	"context"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/i2kit/i2kit/node"
	"github.com/i2kit/i2kit/test/harness"
)

// TestNodeStopsWithoutLeaks runs the node in this process, stops it as SIGTERM does (by ending its context) and
// checks that Run returns promptly and leaves no goroutine behind.
func TestNodeStopsWithoutLeaks(t *testing.T) {
	// The test's own client connects first, so that its connection is not counted as the node's.
	if _, err := env.Client.Discovery().ServerVersion(); err != nil {
		t.Fatal(err)
	}
	defer verifyNoLeaks(t, goleak.IgnoreCurrent())
	cfg := node.DefaultConfig()
	cfg.Kubeconfig = env.Plane.KubeconfigPath()
	cfg.NodeName = "i2kit-leak"
	cfg.InternalIP = harness.NodeIP
	cfg.Port = 10260
	cfg.ClientCAFile = filepath.Join(env.Plane.PKIDir(), "ca.crt")
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { env.DeleteNode(t, cfg.NodeName) })
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx, cfg, node.Wiring{}) }()
	if _, err := env.WaitNodeReady(context.Background(), cfg.NodeName, 10*time.Second); err != nil {
		cancel()
		t.Fatalf("node not ready: %v (Run: %v)", err, <-done)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after stop: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return within 15 s of its context ending")
	}
}

// verifyNoLeaks fails the test if goroutines other than ignored remain after 15 s. It runs the garbage
// collector between checks: client-go stops a transport's certificate-rotation goroutine in a GC cleanup.
func verifyNoLeaks(t *testing.T, ignored goleak.Option) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		runtime.GC()
		err := goleak.Find(ignored)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
}
