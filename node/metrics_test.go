package node

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/i2kit/i2kit/metrics"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServePlainMetrics: metricsAddress serves the node's metrics; on healthzAddress's address, one listener
// serves both; on another, each listener serves only its own path.
func TestServePlainMetrics(t *testing.T) {
	m := metrics.New("qemu", "v0.0.0-test")
	for _, tc := range []struct {
		name string
		same bool
	}{{"one address", true}, {"two addresses", false}} {
		t.Run(tc.name, func(t *testing.T) {
			healthz, metricsAddr := freeAddr(t), freeAddr(t)
			if tc.same {
				metricsAddr = healthz
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if err := servePlain(ctx, Config{HealthzAddress: healthz, MetricsAddress: metricsAddr}, m.Handler()); err != nil {
				t.Fatal(err)
			}
			if code, body := get(t, "http://"+metricsAddr+"/metrics"); code != http.StatusOK || !strings.Contains(body, "i2kit_build_info") {
				t.Errorf("/metrics = %d %.200q", code, body)
			}
			if code, body := get(t, "http://"+healthz+"/healthz"); code != http.StatusOK || body != "ok" {
				t.Errorf("/healthz = %d %q", code, body)
			}
			if !tc.same {
				if code, _ := get(t, "http://"+healthz+"/metrics"); code != http.StatusNotFound {
					t.Errorf("/metrics on the healthz address = %d, want 404", code)
				}
				if code, _ := get(t, "http://"+metricsAddr+"/healthz"); code != http.StatusNotFound {
					t.Errorf("/healthz on the metrics address = %d, want 404", code)
				}
			}
		})
	}
}

// TestServePlainAddressInUse: an address in use fails the start, naming the field, and leaves no listener bound.
func TestServePlainAddressInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	healthz := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err = servePlain(ctx, Config{HealthzAddress: healthz, MetricsAddress: busy.Addr().String()}, http.NotFoundHandler())
	if err == nil || !strings.HasPrefix(err.Error(), "metricsAddress: ") {
		t.Fatalf("servePlain on an address in use: %v, want a metricsAddress error", err)
	}
	l, err := net.Listen("tcp", healthz)
	if err != nil {
		t.Fatalf("the healthz address stayed bound after the failed start: %v", err)
	}
	l.Close()
}
