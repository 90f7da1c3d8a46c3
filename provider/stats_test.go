package provider

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/i2kit/i2kit/agent/protocol"
)

// statsNow is 2025-06-01T12:00:00.5Z: 1748779200500 ms.
var statsNow = time.Date(2025, 6, 1, 12, 0, 0, 500_000_000, time.UTC)

func statsPod(ns, name string, started *time.Time) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name)}}
	if started != nil {
		t := metav1.NewTime(*started)
		p.Status.StartTime = &t
	}
	return p
}

// statsFixture is a node with a pod of two containers (one not started yet, all zeros), a pod sampled a second
// later whose VM reports no MemAvailable, and a pod whose agent has not answered yet.
func statsFixture() []podStats {
	webStart := statsNow.Add(-2 * time.Minute)
	return []podStats{{
		Pod: statsPod("default", "web", &webStart),
		Stats: protocol.Stats{
			Time:   statsNow,
			CPU:    protocol.CPUStats{UsageNanos: 12_500_000_000},
			Memory: protocol.MemoryStats{Usage: 300 << 20, WorkingSet: 200 << 20, RSS: 150 << 20, Available: 700 << 20},
			Network: []protocol.InterfaceStats{
				{Name: "eth0", RxBytes: 1000, TxBytes: 2000, RxErrors: 1, TxErrors: 2},
				{Name: "eth1", RxBytes: 10, TxBytes: 20},
			},
			Containers: []protocol.ContainerStats{{
				Name:       "app",
				StartedAt:  statsNow.Add(-90 * time.Second),
				CPU:        protocol.CPUStats{UsageNanos: 2_250_000_000},
				Memory:     protocol.MemoryStats{Usage: 100 << 20, WorkingSet: 80 << 20, RSS: 60 << 20},
				RootfsUsed: 4096,
				LogsUsed:   1024,
			}, {
				Name: "sidecar",
			}},
		},
	}, {
		Pod: statsPod("data", "db", nil),
		Stats: protocol.Stats{
			Time:    statsNow.Add(time.Second),
			CPU:     protocol.CPUStats{UsageNanos: 1_000_000_000},
			Memory:  protocol.MemoryStats{Usage: 50, WorkingSet: 40, RSS: 30},
			Network: []protocol.InterfaceStats{{Name: "eth0", RxBytes: 5, TxBytes: 6}},
			Containers: []protocol.ContainerStats{{
				Name:      "pg",
				StartedAt: statsNow.Add(-time.Hour),
				CPU:       protocol.CPUStats{UsageNanos: 500_000_000},
				Memory:    protocol.MemoryStats{Usage: 10, WorkingSet: 8, RSS: 5, Available: 100},
				LogsUsed:  7,
			}},
		},
	}, {
		Pod: statsPod("default", "new", nil),
	}}
}

func statsU64(v uint64) *uint64 { return &v }

func TestSummary(t *testing.T) {
	nodeStart := statsNow.Add(-time.Hour * 24)
	t0 := metav1.NewTime(statsNow)
	t1 := metav1.NewTime(statsNow.Add(time.Second))
	iface := func(name string, rx, tx, rxe, txe uint64) statsv1alpha1.InterfaceStats {
		return statsv1alpha1.InterfaceStats{Name: name,
			RxBytes: statsU64(rx), TxBytes: statsU64(tx), RxErrors: statsU64(rxe), TxErrors: statsU64(txe)}
	}
	fs := func(t metav1.Time, used uint64) *statsv1alpha1.FsStats {
		return &statsv1alpha1.FsStats{Time: t, UsedBytes: statsU64(used)}
	}
	cpu := func(t metav1.Time, ns uint64) *statsv1alpha1.CPUStats {
		return &statsv1alpha1.CPUStats{Time: t, UsageCoreNanoSeconds: statsU64(ns)}
	}
	mem := func(t metav1.Time, usage, ws, rss uint64, avail *uint64) *statsv1alpha1.MemoryStats {
		return &statsv1alpha1.MemoryStats{Time: t,
			UsageBytes: statsU64(usage), WorkingSetBytes: statsU64(ws), RSSBytes: statsU64(rss), AvailableBytes: avail}
	}
	web := statsv1alpha1.PodStats{
		PodRef:    statsv1alpha1.PodReference{Name: "web", Namespace: "default", UID: "uid-web"},
		StartTime: metav1.NewTime(statsNow.Add(-2 * time.Minute)),
		CPU:       cpu(t0, 12_500_000_000),
		Memory:    mem(t0, 300<<20, 200<<20, 150<<20, statsU64(700<<20)),
		Network: &statsv1alpha1.NetworkStats{
			Time:           t0,
			InterfaceStats: iface("eth0", 1000, 2000, 1, 2),
			Interfaces:     []statsv1alpha1.InterfaceStats{iface("eth0", 1000, 2000, 1, 2), iface("eth1", 10, 20, 0, 0)},
		},
		Containers: []statsv1alpha1.ContainerStats{{
			Name:      "app",
			StartTime: metav1.NewTime(statsNow.Add(-90 * time.Second)),
			CPU:       cpu(t0, 2_250_000_000),
			Memory:    mem(t0, 100<<20, 80<<20, 60<<20, nil),
			Rootfs:    fs(t0, 4096),
			Logs:      fs(t0, 1024),
		}, {
			Name:   "sidecar",
			CPU:    cpu(t0, 0),
			Memory: mem(t0, 0, 0, 0, nil),
			Rootfs: fs(t0, 0),
			Logs:   fs(t0, 0),
		}},
		EphemeralStorage: fs(t0, 5120),
	}
	db := statsv1alpha1.PodStats{
		PodRef: statsv1alpha1.PodReference{Name: "db", Namespace: "data", UID: "uid-db"},
		CPU:    cpu(t1, 1_000_000_000),
		Memory: mem(t1, 50, 40, 30, nil),
		Network: &statsv1alpha1.NetworkStats{
			Time:           t1,
			InterfaceStats: iface("eth0", 5, 6, 0, 0),
			Interfaces:     []statsv1alpha1.InterfaceStats{iface("eth0", 5, 6, 0, 0)},
		},
		Containers: []statsv1alpha1.ContainerStats{{
			Name:      "pg",
			StartTime: metav1.NewTime(statsNow.Add(-time.Hour)),
			CPU:       cpu(t1, 500_000_000),
			Memory:    mem(t1, 10, 8, 5, statsU64(100)),
			Rootfs:    fs(t1, 0),
			Logs:      fs(t1, 7),
		}},
		EphemeralStorage: fs(t1, 7),
	}

	tests := []struct {
		name string
		pods []podStats
		want statsv1alpha1.Summary
	}{{
		name: "no pods",
		want: statsv1alpha1.Summary{
			Node: statsv1alpha1.NodeStats{NodeName: "n1", StartTime: metav1.NewTime(nodeStart)},
			Pods: []statsv1alpha1.PodStats{},
		},
	}, {
		name: "only pods without stats",
		pods: []podStats{{Pod: statsPod("default", "new", nil)}, {Stats: protocol.Stats{Time: statsNow}}},
		want: statsv1alpha1.Summary{
			Node: statsv1alpha1.NodeStats{NodeName: "n1", StartTime: metav1.NewTime(nodeStart)},
			Pods: []statsv1alpha1.PodStats{},
		},
	}, {
		name: "node sums its pods, at the latest sample",
		pods: statsFixture(),
		want: statsv1alpha1.Summary{
			Node: statsv1alpha1.NodeStats{
				NodeName:  "n1",
				StartTime: metav1.NewTime(nodeStart),
				CPU:       cpu(t1, 13_500_000_000),
				// db's VM has no MemAvailable: a sum over web alone would understate it.
				Memory: mem(t1, 300<<20+50, 200<<20+40, 150<<20+30, nil),
				Network: &statsv1alpha1.NetworkStats{
					Time:           t1,
					InterfaceStats: iface("eth0", 1005, 2006, 1, 2),
					Interfaces:     []statsv1alpha1.InterfaceStats{iface("eth0", 1005, 2006, 1, 2), iface("eth1", 10, 20, 0, 0)},
				},
			},
			Pods: []statsv1alpha1.PodStats{web, db},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := summary("n1", nodeStart, tt.pods)
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("summary:\n got %s\nwant %s", statsJSON(t, got), statsJSON(t, &tt.want))
			}
		})
	}
}

func TestSummaryNodeMemoryAvailableIsSummedWhenEveryPodHasIt(t *testing.T) {
	pods := []podStats{
		{Pod: statsPod("a", "a", nil), Stats: protocol.Stats{Time: statsNow, Memory: protocol.MemoryStats{Available: 3}}},
		{Pod: statsPod("b", "b", nil), Stats: protocol.Stats{Time: statsNow, Memory: protocol.MemoryStats{Available: 4}}},
	}
	s := summary("n", statsNow, pods)
	if a := s.Node.Memory.AvailableBytes; a == nil || *a != 7 {
		t.Errorf("node AvailableBytes = %v, want 7", a)
	}
}

func statsJSON(t *testing.T, s *statsv1alpha1.Summary) string {
	t.Helper()
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// statsText renders families in the Prometheus text format, as the kubelet serves them; it also checks that each
// metric carries the value field of its family's type, and only that one.
func statsText(t *testing.T, fams []*dto.MetricFamily) string {
	t.Helper()
	var b strings.Builder
	for _, f := range fams {
		typ := strings.ToLower(f.GetType().String())
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.GetName(), f.GetHelp(), f.GetName(), typ)
		for _, m := range f.Metric {
			var v float64
			switch {
			case f.GetType() == dto.MetricType_COUNTER && m.Counter != nil && m.Gauge == nil:
				v = m.Counter.GetValue()
			case f.GetType() == dto.MetricType_GAUGE && m.Gauge != nil && m.Counter == nil:
				v = m.Gauge.GetValue()
			default:
				t.Errorf("%s: metric %v does not match type %s", f.GetName(), m, typ)
			}
			b.WriteString(f.GetName())
			if len(m.Label) > 0 {
				var ls []string
				for _, l := range m.Label {
					ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				}
				b.WriteString("{" + strings.Join(ls, ",") + "}")
			}
			b.WriteString(" " + strconv.FormatFloat(v, 'g', -1, 64))
			if m.TimestampMs != nil {
				fmt.Fprintf(&b, " %d", m.GetTimestampMs())
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func TestResourceMetrics(t *testing.T) {
	// The footer every scrape ends with: the kubelet's two scrape-error gauges.
	const scrapeErrors = `# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE scrape_error gauge
scrape_error 0
`
	tests := []struct {
		name string
		pods []podStats
		want string
	}{{
		name: "no pods",
		want: scrapeErrors,
	}, {
		name: "pods without stats are skipped",
		pods: []podStats{{Pod: statsPod("default", "new", nil)}},
		want: scrapeErrors,
	}, {
		// sidecar (all zeros: not started) is left out, or metrics-server would drop the whole web pod; "new" has
		// no stats yet.
		name: "node, pods and containers",
		pods: statsFixture(),
		want: `# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{namespace="data",pod="db",container="pg"} 0.5 1748779201500
container_cpu_usage_seconds_total{namespace="default",pod="web",container="app"} 2.25 1748779200500
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{namespace="data",pod="db",container="pg"} 8 1748779201500
container_memory_working_set_bytes{namespace="default",pod="web",container="app"} 8.388608e+07 1748779200500
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{namespace="data",pod="db",container="pg"} 1.7487756005e+09
container_start_time_seconds{namespace="default",pod="web",container="app"} 1.7487791105e+09
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 13.5 1748779201500
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 2.0971524e+08 1748779201500
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace="data",pod="db"} 1 1748779201500
pod_cpu_usage_seconds_total{namespace="default",pod="web"} 12.5 1748779200500
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace="data",pod="db"} 40 1748779201500
pod_memory_working_set_bytes{namespace="default",pod="web"} 2.097152e+08 1748779200500
` + scrapeErrors,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := statsText(t, resourceMetrics(tt.pods)); got != tt.want {
				t.Errorf("resourceMetrics:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}
