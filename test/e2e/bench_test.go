package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

// BenchmarkNodeStartToReady measures `i2kit node` from exec to the Node's Ready condition in the API server, and
// from SIGTERM to exit. It reports medians: the machines are shared and noisy.
func BenchmarkNodeStartToReady(b *testing.B) {
	var ready, stop []time.Duration
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("i2kit-bench-%d", i)
		n := env.StartNode(b, name, 10270, "--client-ca-file", filepath.Join(env.Plane.PKIDir(), "ca.crt"))
		if _, err := env.WaitNodeReady(context.Background(), name, 30*time.Second); err != nil {
			b.Fatalf("node not ready: %v\n%s", err, n.Log())
		}
		ready = append(ready, time.Since(n.Started))
		t0 := time.Now()
		if err := n.Stop(b, 15*time.Second); err != nil {
			b.Fatal(err)
		}
		stop = append(stop, time.Since(t0))
		env.DeleteNode(b, name)
	}
	b.ReportMetric(ms(median(ready)), "ms-to-ready(median)")
	b.ReportMetric(ms(median(stop)), "ms-to-stop(median)")
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
