package node

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"

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

// TestKubeletAPIServesMetrics: the kubelet API's /metrics is the node's metrics, authorized as nodes/metrics, and
// /metrics/resource stays the provider's.
func TestKubeletAPIServesMetrics(t *testing.T) {
	m := metrics.New("qemu", "v0.0.0-test")
	mux := kubeletMux(m.Handler())
	mux.Handle("/", api.PodHandler(api.PodHandlerConfig{
		GetMetricsResource: func(context.Context) ([]*dto.MetricFamily, error) {
			return []*dto.MetricFamily{{Name: new("container_cpu_usage_seconds_total"), Type: dto.MetricType_COUNTER.Enum(),
				Metric: []*dto.Metric{{Counter: &dto.Counter{Value: new(1.0)}}}}}, nil
		},
	}, false))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	if code, body := get(t, srv.URL+"/metrics"); code != http.StatusOK || !strings.Contains(body, "i2kit_pods") {
		t.Errorf("/metrics = %d %.200q, want the node's metrics", code, body)
	}
	if code, body := get(t, srv.URL+"/metrics/resource"); code != http.StatusOK || !strings.Contains(body, "container_cpu_usage_seconds_total") || strings.Contains(body, "i2kit_") {
		t.Errorf("/metrics/resource = %d %.200q, want the provider's", code, body)
	}
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if a := (nodeutil.NodeRequestAttr{NodeName: "n"}).GetRequestAttributes(nil, req); a.GetSubresource() != "metrics" || a.GetResource() != "nodes" {
		t.Errorf("/metrics is authorized as %s/%s, want nodes/metrics", a.GetResource(), a.GetSubresource())
	}
}
