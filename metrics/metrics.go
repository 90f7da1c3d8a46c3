// Package metrics is the node's own Prometheus metrics: one registry per node (never the global default), the
// metrics the provider, the image builder and the cloud clients record through their narrow interfaces
// (provider.Metrics, vmimage.Metrics, aws.CallRecorder), and the HTTP handler that serves them. Every name starts
// with i2kit_ and says its unit; labels take only values from small, fixed sets (phases, backends, formats,
// operations, results, error codes bounded by maxCodes), never a pod's name or UID.
package metrics

import (
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Results of an operation, as label values.
const (
	ResultSuccess = "success"
	ResultError   = "error"
	ResultHit     = "hit"
	ResultMiss    = "miss"
)

// Phases are the pod phases i2kit_pods always reports, zero or not, so that a series never vanishes.
var Phases = []string{"Pending", "Running", "Succeeded", "Failed", "Unknown"}

// PodSource is what i2kit_pods reads at each scrape: the number of the node's pods in each phase. It must be safe
// for concurrent use and quick (it runs under the scrape).
type PodSource interface {
	PodPhases() map[string]int
}

// SessionSource is what i2kit_agent_sessions reads at each scrape: the sessions open with pod agents.
type SessionSource interface {
	AgentSessions() int
}

// Metrics is the node's registry and the metrics in it. Its methods are safe for concurrent use, never block,
// and do nothing on a nil *Metrics (a builder used outside a node records nothing).
type Metrics struct {
	reg     *prometheus.Registry
	backend string

	pods     atomic.Pointer[PodSource]
	sessions atomic.Pointer[SessionSource]

	vmLaunch        *prometheus.HistogramVec
	vmLaunchFail    *prometheus.CounterVec
	createToReady   *prometheus.HistogramVec
	imageBuild      *prometheus.HistogramVec
	imageCache      *prometheus.CounterVec
	imagePublish    *prometheus.HistogramVec
	cloudCalls      *prometheus.CounterVec
	cloudErrors     *prometheus.CounterVec
	cloudDuration   *prometheus.HistogramVec
	sessionFailures *prometheus.CounterVec

	codesMu sync.Mutex
	codes   map[string]bool // the error codes seen so far, at most maxCodes
}

// maxCodes bounds the distinct error codes i2kit_cloud_api_errors_total takes: codes come from the cloud's
// answers (or an emulator's), and a label whose values no one bounds grows the node's memory and every
// Prometheus that scrapes it. Codes past the bound count as codeOther.
const maxCodes = 64

// codeOther is the error code of an error whose code is malformed or past maxCodes.
const codeOther = "Other"

// ownCodes are the codes the node gives failures with no answer from the cloud (provider/aws's CodeTransport and
// CodeCanceled): always themselves, outside maxCodes, so that a burst of odd cloud codes cannot hide them.
var ownCodes = map[string]bool{"Transport": true, "Canceled": true}

// codeName is what an error code label may hold: AWS's codes are words, with dots ("InvalidInstanceID.NotFound").
var codeName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._-]{0,63}$`)

// New returns the metrics of a node running backend ("none", "qemu", "aws"), in a registry of their own with the
// Go runtime's and the process's standard collectors and i2kit_build_info.
func New(backend, version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), backend: backend, codes: map[string]bool{}}
	m.vmLaunch = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "i2kit_vm_launch_duration_seconds",
		Help:    "Time from the backend's Launch call to the first answer of the VM's agent, for VMs this process launched.",
		Buckets: []float64{0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300},
	}, []string{"backend"})
	m.vmLaunchFail = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "i2kit_vm_launch_failures_total",
		Help: "VM launches that failed: the backend refused the launch or the image publication, or the VM failed before its agent answered.",
	}, []string{"backend"})
	m.createToReady = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "i2kit_pod_create_to_ready_seconds",
		Help:    "Time from a pod's creation to the node first reporting it Ready, for pods whose VM this process launched.",
		Buckets: []float64{1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200},
	}, []string{"backend"})
	m.imageBuild = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "i2kit_image_build_duration_seconds",
		Help:    "Time to build a pod VM image that was not in the image store (callers joining a build under way are not counted).",
		Buckets: []float64{0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900},
	}, []string{"format", "result"})
	m.imageCache = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "i2kit_image_cache_requests_total",
		Help: "Lookups of a pod VM image in the image store, by result: hit (no build) or miss.",
	}, []string{"format", "result"})
	m.imagePublish = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "i2kit_image_publish_duration_seconds",
		Help:    "Time to publish a pod VM image where the backend boots it from (an AMI), already published ones included.",
		Buckets: []float64{0.1, 1, 5, 10, 30, 60, 120, 300, 600, 900},
	}, []string{"backend", "result"})
	m.cloudCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "i2kit_cloud_api_calls_total",
		Help: "Cloud API calls, each after the SDK's own retries, by service and operation.",
	}, []string{"service", "operation"})
	m.cloudErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "i2kit_cloud_api_errors_total",
		Help: "Cloud API calls that failed, by service, operation and error code (Transport: no answer; Canceled: the caller stopped waiting).",
	}, []string{"service", "operation", "code"})
	m.cloudDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "i2kit_cloud_api_call_duration_seconds",
		Help:    "Duration of cloud API calls, the SDK's retries included, by service and operation.",
		Buckets: []float64{0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
	}, []string{"service", "operation"})
	m.sessionFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "i2kit_agent_session_failures_total",
		Help: "Sessions with pod agents that failed, by stage: dial (reaching an agent that answered before), handshake, configure, or lost (an open session ended).",
	}, []string{"stage"})
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "i2kit_build_info",
		Help:        "The i2kit version and backend this node runs; always 1.",
		ConstLabels: prometheus.Labels{"version": version, "backend": backend},
	})
	info.Set(1)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		info, m.vmLaunch, m.vmLaunchFail, m.createToReady, m.imageBuild, m.imageCache, m.imagePublish,
		m.cloudCalls, m.cloudErrors, m.cloudDuration, m.sessionFailures,
		&scrapeCollector{m: m},
	)
	return m
}

// Registry is the node's registry, for tests and for a caller that adds metrics of its own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats; a failing collector is reported in the answer,
// never a panic.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, Registry: m.reg})
}

// WatchPods makes i2kit_pods and i2kit_agent_sessions read src at each scrape; before it they report zero.
func (m *Metrics) WatchPods(pods PodSource, sessions SessionSource) {
	if m == nil {
		return
	}
	m.pods.Store(&pods)
	m.sessions.Store(&sessions)
}

// VMLaunched records that a VM this process launched answered d after its Launch call.
func (m *Metrics) VMLaunched(d time.Duration) {
	if m == nil {
		return
	}
	m.vmLaunch.WithLabelValues(m.backend).Observe(d.Seconds())
}

// VMLaunchFailed records a launch that failed.
func (m *Metrics) VMLaunchFailed() {
	if m == nil {
		return
	}
	m.vmLaunchFail.WithLabelValues(m.backend).Inc()
}

// PodReady records the time from a pod's creation to the node first reporting it Ready.
func (m *Metrics) PodReady(sinceCreation time.Duration) {
	if m == nil {
		return
	}
	m.createToReady.WithLabelValues(m.backend).Observe(max(sinceCreation, 0).Seconds())
}

// ImagePublished records one publication of a pod VM image, err its failure.
func (m *Metrics) ImagePublished(d time.Duration, err error) {
	if m == nil {
		return
	}
	m.imagePublish.WithLabelValues(m.backend, result(err)).Observe(d.Seconds())
}

// AgentSessionFailed records a failed session with a pod's agent at stage (a constant of the caller's: dial,
// handshake, configure, lost).
func (m *Metrics) AgentSessionFailed(stage string) {
	if m == nil {
		return
	}
	m.sessionFailures.WithLabelValues(stage).Inc()
}

// ImageCacheLookup records one lookup of an image of format in the image store.
func (m *Metrics) ImageCacheLookup(format string, hit bool) {
	if m == nil {
		return
	}
	r := ResultMiss
	if hit {
		r = ResultHit
	}
	m.imageCache.WithLabelValues(format, r).Inc()
}

// ImageBuilt records one build of an image of format that took d, err its failure.
func (m *Metrics) ImageBuilt(format string, d time.Duration, err error) {
	if m == nil {
		return
	}
	m.imageBuild.WithLabelValues(format, result(err)).Observe(d.Seconds())
}

// APICall records one cloud API call of service's operation that took d; code is the error code of its failure,
// "" for a success.
func (m *Metrics) APICall(service, operation string, d time.Duration, code string) {
	if m == nil {
		return
	}
	m.cloudCalls.WithLabelValues(service, operation).Inc()
	m.cloudDuration.WithLabelValues(service, operation).Observe(d.Seconds())
	if code != "" {
		m.cloudErrors.WithLabelValues(service, operation, m.boundCode(code)).Inc()
	}
}

// boundCode is code as a label value: itself when well formed and among the first maxCodes seen, else codeOther.
func (m *Metrics) boundCode(code string) string {
	if ownCodes[code] {
		return code
	}
	if !codeName.MatchString(code) {
		return codeOther
	}
	m.codesMu.Lock()
	defer m.codesMu.Unlock()
	if !m.codes[code] {
		if len(m.codes) >= maxCodes {
			return codeOther
		}
		m.codes[code] = true
	}
	return code
}

func result(err error) string {
	if err != nil {
		return ResultError
	}
	return ResultSuccess
}

// scrapeCollector reports what is counted at scrape time rather than as it happens, so that it cannot drift:
// the node's pods by phase and the open agent sessions.
type scrapeCollector struct{ m *Metrics }

var (
	podsDesc = prometheus.NewDesc("i2kit_pods",
		"The pods on the node, by phase, as the node reports them.", []string{"phase"}, nil)
	sessionsDesc = prometheus.NewDesc("i2kit_agent_sessions",
		"Sessions open with pod agents (connected and configured).", nil, nil)
)

func (c *scrapeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- podsDesc
	ch <- sessionsDesc
}

func (c *scrapeCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	if src := c.m.pods.Load(); src != nil {
		counts = (*src).PodPhases()
	}
	for _, phase := range Phases {
		ch <- prometheus.MustNewConstMetric(podsDesc, prometheus.GaugeValue, float64(counts[phase]), phase)
	}
	sessions := 0
	if src := c.m.sessions.Load(); src != nil {
		sessions = (*src).AgentSessions()
	}
	ch <- prometheus.MustNewConstMetric(sessionsDesc, prometheus.GaugeValue, float64(sessions))
}
