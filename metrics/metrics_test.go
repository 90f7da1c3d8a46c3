package metrics

import (
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// pods is a PodSource and SessionSource of fixed counts.
type pods struct {
	phases   map[string]int
	sessions int
}

func (p pods) PodPhases() map[string]int { return p.phases }
func (p pods) AgentSessions() int        { return p.sessions }

// scrape GETs the handler's /metrics as Prometheus does and parses the exposition.
func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the exposition: %v", err)
	}
	return fams
}

// value is the value of the series of name whose labels are labels (name=value pairs), and whether it exists.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.Metric {
		var got []string
		for _, l := range m.Label {
			got = append(got, l.GetName()+"="+l.GetValue())
		}
		if !slices.Equal(got, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// recordOneOfEach records one of everything the node measures.
func recordOneOfEach(m *Metrics) {
	m.WatchPods(pods{phases: map[string]int{"Running": 2, "Pending": 1}, sessions: 2}, pods{sessions: 2})
	m.VMLaunched(3 * time.Second)
	m.VMLaunchFailed()
	m.PodReady(7 * time.Second)
	m.ImagePublished(time.Minute, nil)
	m.AgentSessionFailed("lost")
	m.ImageCacheLookup("direct", true)
	m.ImageCacheLookup("direct", false)
	m.ImageBuilt("direct", 4*time.Second, errors.New("pull failed"))
	m.APICall("ec2", "RunInstances", 300*time.Millisecond, "")
	m.APICall("ec2", "RunInstances", 100*time.Millisecond, "InsufficientInstanceCapacity")
}

// TestEachMetricMoves: every metric the node records reaches the scrape, under its labels.
func TestEachMetricMoves(t *testing.T) {
	m := New("aws", "v1.2.3")
	recordOneOfEach(m)
	fams := scrape(t, m)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"i2kit_build_info", []string{"backend=aws", "version=v1.2.3"}, 1},
		{"i2kit_pods", []string{"phase=Running"}, 2},
		{"i2kit_pods", []string{"phase=Pending"}, 1},
		{"i2kit_pods", []string{"phase=Failed"}, 0},
		{"i2kit_agent_sessions", nil, 2},
		{"i2kit_vm_launch_duration_seconds", []string{"backend=aws"}, 1},
		{"i2kit_vm_launch_failures_total", []string{"backend=aws"}, 1},
		{"i2kit_pod_create_to_ready_seconds", []string{"backend=aws"}, 1},
		{"i2kit_image_publish_duration_seconds", []string{"backend=aws", "result=success"}, 1},
		{"i2kit_agent_session_failures_total", []string{"stage=lost"}, 1},
		{"i2kit_image_cache_requests_total", []string{"format=direct", "result=hit"}, 1},
		{"i2kit_image_cache_requests_total", []string{"format=direct", "result=miss"}, 1},
		{"i2kit_image_build_duration_seconds", []string{"format=direct", "result=error"}, 1},
		{"i2kit_cloud_api_calls_total", []string{"operation=RunInstances", "service=ec2"}, 2},
		{"i2kit_cloud_api_call_duration_seconds", []string{"operation=RunInstances", "service=ec2"}, 2},
		{"i2kit_cloud_api_errors_total", []string{"code=InsufficientInstanceCapacity", "operation=RunInstances", "service=ec2"}, 1},
	} {
		if got, ok := value(fams, tc.name, tc.labels...); !ok || got != tc.want {
			t.Errorf("%s%v = %v (present %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	for _, std := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if fams[std] == nil {
			t.Errorf("no %s: the standard collectors are missing", std)
		}
	}
}

// TestPodsAreCountedAtScrape: i2kit_pods is what the source says at each scrape (no counter that drifts), and
// zero for every phase before the node has pods.
func TestPodsAreCountedAtScrape(t *testing.T) {
	m := New("qemu", "v0")
	for _, phase := range Phases {
		if got, ok := value(scrape(t, m), "i2kit_pods", "phase="+phase); !ok || got != 0 {
			t.Errorf("before WatchPods: %s = %v (present %v), want 0", phase, got, ok)
		}
	}
	src := &pods{phases: map[string]int{"Running": 3}}
	m.WatchPods(src, src)
	if got, _ := value(scrape(t, m), "i2kit_pods", "phase=Running"); got != 3 {
		t.Errorf("Running = %v, want 3", got)
	}
	src.phases = map[string]int{"Running": 1, "Succeeded": 2}
	fams := scrape(t, m)
	if r, _ := value(fams, "i2kit_pods", "phase=Running"); r != 1 {
		t.Errorf("Running = %v after the source changed, want 1", r)
	}
	if s, _ := value(fams, "i2kit_pods", "phase=Succeeded"); s != 2 {
		t.Errorf("Succeeded = %v, want 2", s)
	}
}

// allowedLabels are the only label names the node's metrics take: small, fixed sets of values. A pod's name,
// namespace or UID is never one.
var allowedLabels = []string{"backend", "code", "format", "operation", "phase", "result", "service", "stage", "version"}

// TestNamesAndLabelsGolden: the node's metric names, types and label names are those of testdata/metrics.golden,
// so that a rename is deliberate (go test ./metrics -update rewrites it); every label is one of allowedLabels.
func TestNamesAndLabelsGolden(t *testing.T) {
	m := New("aws", "v1.2.3")
	recordOneOfEach(m)
	fams := scrape(t, m)
	var lines []string
	for name, f := range fams {
		if !strings.HasPrefix(name, "i2kit_") {
			continue
		}
		labels := map[string]bool{}
		for _, s := range f.Metric {
			for _, l := range s.Label {
				labels[l.GetName()] = true
				if !slices.Contains(allowedLabels, l.GetName()) {
					t.Errorf("%s has label %q, not one of %v", name, l.GetName(), allowedLabels)
				}
			}
		}
		names := make([]string, 0, len(labels))
		for l := range labels {
			names = append(names, l)
		}
		slices.Sort(names)
		lines = append(lines, fmt.Sprintf("%s %s {%s}", name, strings.ToLower(f.GetType().String()), strings.Join(names, ",")))
	}
	slices.Sort(lines)
	got := strings.Join(lines, "\n") + "\n"
	const golden = "testdata/metrics.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("metric names and labels changed (go test ./metrics -update if deliberate; update the README):\ngot:\n%swant:\n%s", got, want)
	}
}

// TestErrorCodesAreBounded: error codes come from the cloud's answers; however many distinct ones come, the
// label takes at most maxCodes of them and "Other" for the rest, and a malformed code is "Other".
func TestErrorCodesAreBounded(t *testing.T) {
	m := New("aws", "v0")
	for i := range 3 * maxCodes {
		m.APICall("ec2", "RunInstances", time.Millisecond, fmt.Sprintf("Code%d", i))
	}
	m.APICall("ec2", "RunInstances", time.Millisecond, "not a code {\"}")
	m.APICall("ec2", "RunInstances", time.Millisecond, strings.Repeat("A", 65))
	fams := scrape(t, m)
	if n := len(fams["i2kit_cloud_api_errors_total"].GetMetric()); n != maxCodes+1 {
		t.Errorf("%d error series, want %d codes and Other", n, maxCodes+1)
	}
	if got, _ := value(fams, "i2kit_cloud_api_errors_total", "code=Other", "operation=RunInstances", "service=ec2"); got != 2*maxCodes+2 {
		t.Errorf("Other = %v, want %d", got, 2*maxCodes+2)
	}
	if got, _ := value(fams, "i2kit_cloud_api_errors_total", "code=Code0", "operation=RunInstances", "service=ec2"); got != 1 {
		t.Errorf("Code0 = %v, want 1", got)
	}
	// The node's own codes stay themselves past the bound.
	m.APICall("ec2", "RunInstances", time.Millisecond, "Transport")
	m.APICall("ec2", "RunInstances", time.Millisecond, "Canceled")
	fams = scrape(t, m)
	for _, code := range []string{"Transport", "Canceled"} {
		if got, _ := value(fams, "i2kit_cloud_api_errors_total", "code="+code, "operation=RunInstances", "service=ec2"); got != 1 {
			t.Errorf("%s past the bound = %v, want 1", code, got)
		}
	}
}

// TestNilMetricsRecordNothing: a nil *Metrics (a builder outside a node) is safe to call.
func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.WatchPods(nil, nil)
	m.VMLaunched(time.Second)
	m.VMLaunchFailed()
	m.PodReady(time.Second)
	m.ImagePublished(time.Second, nil)
	m.AgentSessionFailed("lost")
	m.ImageCacheLookup("direct", true)
	m.ImageBuilt("direct", time.Second, nil)
	m.APICall("ec2", "RunInstances", time.Second, "")
}
