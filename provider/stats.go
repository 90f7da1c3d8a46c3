package provider

import (
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"github.com/i2kit/i2kit/agent/protocol"
)

// podStats is one pod's latest agent stats; a zero Stats.Time means the agent has not answered yet.
type podStats struct {
	Pod   *corev1.Pod
	Stats protocol.Stats
}

// statsDefaultInterface is the interface the kubelet reports at the top of a NetworkStats.
const statsDefaultInterface = "eth0"

// summary builds the kubelet's /stats/summary from the node's pods' stats. A pod's CPU, memory and network are its
// VM's, overhead included, as a kubelet counts a pod's cgroup; the node's are the sums over its pods, timed at the
// latest sample. Pods without stats yet are left out, and so are the node's CPU, memory and network when no pod
// has any. UsageNanoCores needs two samples and is never set.
func summary(nodeName string, nodeStart time.Time, pods []podStats) *statsv1alpha1.Summary {
	s := &statsv1alpha1.Summary{
		Node: statsv1alpha1.NodeStats{NodeName: nodeName, StartTime: metav1.NewTime(nodeStart)},
		Pods: []statsv1alpha1.PodStats{},
	}
	var (
		latest        time.Time
		cpu           uint64
		mem           protocol.MemoryStats
		ifaces        = map[string]*protocol.InterfaceStats{}
		anyStats      bool
		hasAvailable  = true
		interfaceList []string
	)
	for _, p := range pods {
		if p.Pod == nil || p.Stats.Time.IsZero() {
			continue
		}
		st := p.Stats
		s.Pods = append(s.Pods, podSummary(p.Pod, st))

		anyStats = true
		if st.Time.After(latest) {
			latest = st.Time
		}
		cpu += st.CPU.UsageNanos
		mem.Usage += st.Memory.Usage
		mem.WorkingSet += st.Memory.WorkingSet
		mem.RSS += st.Memory.RSS
		mem.Available += st.Memory.Available
		hasAvailable = hasAvailable && st.Memory.Available != 0
		for _, i := range st.Network {
			sum := ifaces[i.Name]
			if sum == nil {
				sum = &protocol.InterfaceStats{Name: i.Name}
				ifaces[i.Name] = sum
				interfaceList = append(interfaceList, i.Name)
			}
			sum.RxBytes += i.RxBytes
			sum.TxBytes += i.TxBytes
			sum.RxErrors += i.RxErrors
			sum.TxErrors += i.TxErrors
		}
	}
	if anyStats {
		if !hasAvailable { // a sum over some pods only would understate what is available
			mem.Available = 0
		}
		t := metav1.NewTime(latest)
		s.Node.CPU = cpuSummary(t, protocol.CPUStats{UsageNanos: cpu})
		s.Node.Memory = memorySummary(t, mem)
		sort.Strings(interfaceList)
		summed := make([]protocol.InterfaceStats, 0, len(interfaceList))
		for _, name := range interfaceList {
			summed = append(summed, *ifaces[name])
		}
		s.Node.Network = networkSummary(t, summed)
	}
	return s
}

// podSummary is one pod's PodStats.
func podSummary(pod *corev1.Pod, st protocol.Stats) statsv1alpha1.PodStats {
	t := metav1.NewTime(st.Time)
	ps := statsv1alpha1.PodStats{
		PodRef:     statsv1alpha1.PodReference{Name: pod.Name, Namespace: pod.Namespace, UID: string(pod.UID)},
		Containers: make([]statsv1alpha1.ContainerStats, 0, len(st.Containers)),
		CPU:        cpuSummary(t, st.CPU),
		Memory:     memorySummary(t, st.Memory),
		Network:    networkSummary(t, st.Network),
	}
	if pod.Status.StartTime != nil {
		ps.StartTime = *pod.Status.StartTime
	}
	var ephemeral uint64
	for _, c := range st.Containers {
		ps.Containers = append(ps.Containers, statsv1alpha1.ContainerStats{
			Name:      c.Name,
			StartTime: metav1.NewTime(c.StartedAt),
			CPU:       cpuSummary(t, c.CPU),
			Memory:    memorySummary(t, c.Memory),
			Rootfs:    &statsv1alpha1.FsStats{Time: t, UsedBytes: new(c.RootfsUsed)},
			Logs:      &statsv1alpha1.FsStats{Time: t, UsedBytes: new(c.LogsUsed)},
		})
		ephemeral += c.RootfsUsed + c.LogsUsed
	}
	ps.EphemeralStorage = &statsv1alpha1.FsStats{Time: t, UsedBytes: new(ephemeral)}
	return ps
}

func cpuSummary(t metav1.Time, c protocol.CPUStats) *statsv1alpha1.CPUStats {
	return &statsv1alpha1.CPUStats{Time: t, UsageCoreNanoSeconds: new(c.UsageNanos)}
}

// memorySummary leaves AvailableBytes out when the agent has none (a container without a memory limit), as the
// kubelet does.
func memorySummary(t metav1.Time, m protocol.MemoryStats) *statsv1alpha1.MemoryStats {
	ms := &statsv1alpha1.MemoryStats{
		Time:            t,
		UsageBytes:      new(m.Usage),
		WorkingSetBytes: new(m.WorkingSet),
		RSSBytes:        new(m.RSS),
	}
	if m.Available != 0 {
		ms.AvailableBytes = new(m.Available)
	}
	return ms
}

// networkSummary puts eth0, when there is one, at the top and every interface in the list.
func networkSummary(t metav1.Time, ifaces []protocol.InterfaceStats) *statsv1alpha1.NetworkStats {
	ns := &statsv1alpha1.NetworkStats{Time: t}
	for _, i := range ifaces {
		is := statsv1alpha1.InterfaceStats{
			Name:     i.Name,
			RxBytes:  new(i.RxBytes),
			RxErrors: new(i.RxErrors),
			TxBytes:  new(i.TxBytes),
			TxErrors: new(i.TxErrors),
		}
		ns.Interfaces = append(ns.Interfaces, is)
		if i.Name == statsDefaultInterface {
			ns.InterfaceStats = is
		}
	}
	return ns
}

// The kubelet's resource metrics (pkg/kubelet/metrics/collectors/resource_metrics.go), with the help strings it
// serves: component-base prefixes each with its stability level.
const (
	helpNodeCPU        = "[STABLE] Cumulative cpu time consumed by the node in core-seconds"
	helpNodeMemory     = "[STABLE] Current working set of the node in bytes"
	helpPodCPU         = "[STABLE] Cumulative cpu time consumed by the pod in core-seconds"
	helpPodMemory      = "[STABLE] Current working set of the pod in bytes"
	helpContainerCPU   = "[STABLE] Cumulative cpu time consumed by the container in core-seconds"
	helpContainerMem   = "[STABLE] Current working set of the container in bytes"
	helpContainerStart = "[STABLE] Start time of the container since unix epoch in seconds"
	helpScrapeError    = "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise"
	helpResourceError  = "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise"
)

// resourceMetrics builds /metrics/resource as the kubelet serves it, from the same summary as /stats/summary:
// node_, pod_ and container_ cpu_usage_seconds_total (counters) and memory_working_set_bytes (gauges) stamped with
// the sample's time in ms, container_start_time_seconds (a gauge, unstamped), and scrape_error and
// resource_scrape_error at 0 (the kubelet serves both until scrape_error is hidden). Families are sorted by name
// and their metrics by labels, as a Prometheus registry gathers them. Labels are written namespace, pod[, container],
// not sorted by name as a registry would: virtual-kubelet's own e2e suite reads the pod's name from the second label,
// and any order is valid exposition.
//
// metrics-server drops a whole pod when any of its containers reports zero CPU or zero memory, so a container
// with neither (its cgroup not made yet, or gone) is left out here, as the kubelet, which lists only live cgroups,
// would; it is still in the summary.
func resourceMetrics(pods []podStats) []*dto.MetricFamily {
	s := summary("", time.Time{}, pods)
	fams := map[string]*dto.MetricFamily{}
	add := func(name, help string, typ dto.MetricType, v float64, ts *metav1.Time, labels ...string) {
		f := fams[name]
		if f == nil {
			f = &dto.MetricFamily{Name: new(name), Help: new(help), Type: typ.Enum()}
			fams[name] = f
		}
		m := &dto.Metric{}
		for i := 0; i+1 < len(labels); i += 2 {
			m.Label = append(m.Label, &dto.LabelPair{Name: new(labels[i]), Value: new(labels[i+1])})
		}
		if typ == dto.MetricType_COUNTER {
			m.Counter = &dto.Counter{Value: new(v)}
		} else {
			m.Gauge = &dto.Gauge{Value: new(v)}
		}
		if ts != nil {
			m.TimestampMs = new(ts.UnixMilli())
		}
		f.Metric = append(f.Metric, m)
	}
	seconds := func(ns *uint64) float64 { return float64(*ns) / float64(time.Second) }

	if c := s.Node.CPU; c != nil && c.UsageCoreNanoSeconds != nil {
		add("node_cpu_usage_seconds_total", helpNodeCPU, dto.MetricType_COUNTER, seconds(c.UsageCoreNanoSeconds), &c.Time)
	}
	if m := s.Node.Memory; m != nil && m.WorkingSetBytes != nil {
		add("node_memory_working_set_bytes", helpNodeMemory, dto.MetricType_GAUGE, float64(*m.WorkingSetBytes), &m.Time)
	}
	for _, p := range s.Pods {
		pod, ns := p.PodRef.Name, p.PodRef.Namespace
		for _, c := range p.Containers {
			if *c.CPU.UsageCoreNanoSeconds == 0 && *c.Memory.UsageBytes == 0 {
				continue
			}
			if c.StartTime.Unix() > 0 {
				add("container_start_time_seconds", helpContainerStart, dto.MetricType_GAUGE,
					float64(c.StartTime.UnixNano())/float64(time.Second), nil, "namespace", ns, "pod", pod, "container", c.Name)
			}
			add("container_cpu_usage_seconds_total", helpContainerCPU, dto.MetricType_COUNTER,
				seconds(c.CPU.UsageCoreNanoSeconds), &c.CPU.Time, "namespace", ns, "pod", pod, "container", c.Name)
			add("container_memory_working_set_bytes", helpContainerMem, dto.MetricType_GAUGE,
				float64(*c.Memory.WorkingSetBytes), &c.Memory.Time, "namespace", ns, "pod", pod, "container", c.Name)
		}
		add("pod_cpu_usage_seconds_total", helpPodCPU, dto.MetricType_COUNTER,
			seconds(p.CPU.UsageCoreNanoSeconds), &p.CPU.Time, "namespace", ns, "pod", pod)
		add("pod_memory_working_set_bytes", helpPodMemory, dto.MetricType_GAUGE,
			float64(*p.Memory.WorkingSetBytes), &p.Memory.Time, "namespace", ns, "pod", pod)
	}
	add("scrape_error", helpScrapeError, dto.MetricType_GAUGE, 0, nil)
	add("resource_scrape_error", helpResourceError, dto.MetricType_GAUGE, 0, nil)

	out := make([]*dto.MetricFamily, 0, len(fams))
	for _, f := range fams {
		sort.SliceStable(f.Metric, func(i, j int) bool { return statsLabelKey(f.Metric[i]) < statsLabelKey(f.Metric[j]) })
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

// statsLabelKey orders metrics by their label values in the order written.
func statsLabelKey(m *dto.Metric) string {
	var b strings.Builder
	for _, l := range m.Label {
		b.WriteString(l.GetValue())
		b.WriteByte(0xff)
	}
	return b.String()
}
