// Package protocol is the one narrow, versioned protocol between the node (host) and a pod VM's agent (guest).
//
// It runs over any reliable byte stream the backend gives: the virtio-serial port's unix socket under QEMU, vsock
// where the host has it, TLS over TCP for cloud instances. A session starts with a line handshake that resyncs a
// stream on which an earlier session may have left bytes (a node that restarted): the host sends
// "I2KIT-HELLO <version> <nonce>\n", the guest answers "I2KIT-OK <version> <nonce>\n", and both then speak yamux,
// the host as client. Every yamux stream carries one HTTP/1.1 request from host to guest (routes below); the
// interactive ones (exec, attach, port-forward) upgrade the stream to Frames or to raw bytes.
//
//	PUT  /v1/pod                     PodConfig: start the pod's containers (once; repeated calls only replace its Services)
//	GET  /v1/status[?watch=1]        PodStatus, or a stream of them as JSON lines, one per change
//	GET  /v1/logs?container=…        the container's log (LogOptions in the query), streamed when following
//	POST /v1/exec, /v1/attach        upgrade to Frames (ExecRequest / AttachRequest in the query)
//	POST /v1/portforward?port=N      upgrade to a raw byte stream to localhost:N inside the VM
//	GET  /v1/stats                   Stats
//	PUT  /v1/volumes/{name}          []File: replace a files volume's content atomically (ConfigMap, Secret, token updates)
//	PUT  /v1/services                []Service: replace the service table (ClusterIP forwarding)
//	PUT  /v1/containers/{name}/resources  ResizeRequest: resize a container in place (its cgroup), or restart it so
//	                                 resized; 409 when its memory use is over the new memory limit
//	POST /v1/poweroff?grace=…        stop every container within grace (preStop hooks, SIGTERM, then SIGKILL) and
//	                                 power off; repeated while the pod stops, it moves the stop's deadline to
//	                                 grace from now if that is earlier (a shortened grace period), never later
//
// Versioning: fields and routes are only ever added, each optional, so that both sides of one Version still agree
// (an agent that lacks a route answers 404, one that lacks a field ignores it); anything else bumps Version.
package protocol

import (
	"time"
)

// Version is this protocol's version; the handshake refuses any other.
const Version = 1

// PortName is the virtio-serial port name the agent listens on.
const PortName = "i2kit.agent"

// RestartPolicy values, as in a PodSpec.
const (
	RestartAlways    = "Always"
	RestartOnFailure = "OnFailure"
	RestartNever     = "Never"
)

// PodConfig is the pod's runtime configuration, sent after boot and never baked into an image.
type PodConfig struct {
	RestartPolicy string            `json:"restartPolicy"`
	Containers    []ContainerConfig `json:"containers"`
	Volumes       []Volume          `json:"volumes,omitempty"`
	// Hosts is the content of every container's /etc/hosts, as a kubelet renders it (hostAliases included).
	Hosts []byte `json:"hosts,omitempty"`
	// ResolvConf is the content of every container's /etc/resolv.conf (dnsPolicy and dnsConfig); nil keeps
	// the image's.
	ResolvConf []byte `json:"resolvConf,omitempty"`
	// Hostname replaces the pod's name as the containers' hostname (spec.hostname).
	Hostname string `json:"hostname,omitempty"`
	// Services is the cluster's service table, programmed before any container starts; PUT /v1/services
	// replaces it later.
	Services []Service `json:"services,omitempty"`
	// FSGroup, when set, owns the pod's volumes as a kubelet's fsGroup does: the group owns every volume's files
	// and directories (setgid), and files volumes' files are group-readable.
	FSGroup *int64 `json:"fsGroup,omitempty"`
	// ShareProcessNamespace puts every container of the pod, init containers included, in one PID namespace
	// (spec.shareProcessNamespace): each sees and may signal the others' processes, and a pause process is its
	// PID 1. Without it each container has a PID namespace of its own.
	ShareProcessNamespace bool `json:"shareProcessNamespace,omitempty"`
	// TerminationGracePeriodSeconds bounds how long the pod's sidecars get to stop once its app containers are
	// done for good (nil: 30, a kubelet's default).
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds,omitempty"`
	// Sysctls are the pod's sysctls (spec.securityContext.sysctls), set in the VM's kernel before any container
	// starts, node-level ones included: the kernel is the pod's alone. Those of the IPC and UTS namespaces are set
	// again in each container's own. The node has admitted them (allowedUnsafeSysctls).
	Sysctls []Sysctl `json:"sysctls,omitempty"`
}

// Sysctl is a kernel parameter and its value. Name has dots between its elements ("net.ipv4.tcp_syncookies"), a
// slash standing for a dot within an element ("net.ipv4.conf.eth0/1.rp_filter" is
// /proc/sys/net/ipv4/conf/eth0.1/rp_filter).
type Sysctl struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Service is one port of a ClusterIP Service as a pod reaches it: connections to IP:Port over Protocol go to one of
// the ready Endpoints, chosen at random per connection, as kube-proxy spreads them. With no endpoint, they are
// refused.
type Service struct {
	IP        string     `json:"ip"`
	Port      int        `json:"port"`
	Protocol  string     `json:"protocol"` // TCP, UDP or SCTP (SCTP is not forwarded)
	Endpoints []Endpoint `json:"endpoints,omitempty"`
}

// Endpoint is a ready backend of a Service port.
type Endpoint struct {
	IP   string `json:"ip"`
	Port int    `json:"port"`
}

// Volume is one of the pod's volumes, made in the VM before any container starts. At most one of EmptyDir, Files
// and Image is set; none is a files volume without files.
type Volume struct {
	Name string `json:"name"`
	// Image is an image volume (pod.spec.volumes[].image): the filesystem of the image's disk of that name
	// (boot.ImageConfig.Volumes), which the agent mounted read-only at boot. Containers mount it read-only.
	Image bool `json:"image,omitempty"`
	// EmptyDir is a writable directory for the pod's life, in the VM's memory.
	EmptyDir *EmptyDir `json:"emptyDir,omitempty"`
	// Files is the whole content of a configMap, secret, downwardAPI or projected volume, written as a kubelet's
	// atomic writer does (the files live in a timestamped directory that a "..data" symlink points at, and each
	// top-level name is a symlink through "..data"), so that an update swaps every file at once.
	Files []File `json:"files,omitempty"`
}

// EmptyDir sizes an emptyDir volume; SizeLimit 0 is half the VM's memory (the tmpfs default). Every emptyDir is
// a tmpfs; Memory (medium: Memory) gives it the mode a kubelet's tmpfs has, 1777, where the default medium's
// directory is 0777.
type EmptyDir struct {
	SizeLimit int64 `json:"sizeLimit,omitempty"`
	Memory    bool  `json:"memory,omitempty"`
}

// File is one file of a files volume: a relative, clean path (subdirectories allowed), its content and mode.
type File struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
	Mode uint32 `json:"mode"`
}

// Mount places a volume (or SubPath inside it) at Path in a container.
type Mount struct {
	Volume   string `json:"volume"`
	Path     string `json:"path"`
	SubPath  string `json:"subPath,omitempty"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// ContainerConfig is one container's runtime configuration; Name matches a container of the image. A node
// lists the init containers first, in the pod's order, then the app containers: the agent starts them in that order
// (see Init). A node that marks no container Init leaves the agent to the image's order (onboot containers first).
type ContainerConfig struct {
	Name string `json:"name"`
	// Init marks an init container: a regular one runs to success before the next container starts; one with
	// RestartPolicy Always is a sidecar, started before the next container, which waits until it is started.
	Init bool `json:"init,omitempty"`
	// RestartPolicy is the container's own (Always for a sidecar), overriding the pod's; "" follows the pod's.
	RestartPolicy string `json:"restartPolicy,omitempty"`
	// RestartRules are the container's restartPolicyRules, tried in order on each exit before RestartPolicy (see
	// ShouldRestart); only with a RestartPolicy of its own.
	RestartRules []RestartRule `json:"restartRules,omitempty"`
	// Command and Args are the container's, as in a PodSpec with $(VAR) references already expanded: Command
	// replaces the image's entrypoint (and drops its cmd), Args its cmd. Nil keeps the image's.
	Command []string `json:"command,omitempty"`
	Args    []string `json:"args,omitempty"`
	// Env is appended to the image's environment, later entries winning.
	Env []string `json:"env,omitempty"`
	// Stdin keeps the main process's standard input open for attach.
	Stdin bool `json:"stdin,omitempty"`
	// StdinOnce closes that standard input when the first attach that wrote to it ends (not with TTY).
	StdinOnce bool `json:"stdinOnce,omitempty"`
	// TTY gives the main process a terminal for its standard input, output and error (its controlling
	// terminal); the output is logged as stdout, and attach with TTY drives it (resizes included).
	TTY bool `json:"tty,omitempty"`
	// MemoryLimit in bytes and CPULimit in millicores; 0 is unlimited.
	MemoryLimit int64 `json:"memoryLimit,omitempty"`
	CPULimit    int64 `json:"cpuLimit,omitempty"`
	// CPURequest in millicores weighs the container's share of the CPUs (cpu.weight; 0 is the least weight);
	// MemoryRequest in bytes is only reported back (see Resources).
	CPURequest    int64 `json:"cpuRequest,omitempty"`
	MemoryRequest int64 `json:"memoryRequest,omitempty"`
	// Mounts are made in the container's mount namespace in order, before its command starts.
	Mounts []Mount `json:"mounts,omitempty"`
	// Security is the container's effective security context (the pod's merged with the container's).
	Security *Security `json:"security,omitempty"`
	// Probes, as in a PodSpec; ports are numbers (the node resolves named ports).
	Liveness  *Probe `json:"liveness,omitempty"`
	Readiness *Probe `json:"readiness,omitempty"`
	Startup   *Probe `json:"startup,omitempty"`
	// PostStart runs once the container started (a failure kills it); PreStop before it is stopped, within the
	// grace period.
	PostStart *Hook `json:"postStart,omitempty"`
	PreStop   *Hook `json:"preStop,omitempty"`
	// TerminationMessagePath is where the container may write why it ended (default /dev/termination-log);
	// with TerminationMessagePolicy FallbackToLogsOnError, a failed container without one reports its log's end.
	TerminationMessagePath   string `json:"terminationMessagePath,omitempty"`
	TerminationMessagePolicy string `json:"terminationMessagePolicy,omitempty"`
}

// Resources are a container's resources as its cgroup applies them: CPULimit (millicores) as cpu.max,
// CPURequest (millicores) as cpu.weight, MemoryLimit (bytes) as memory.max; 0 is no limit (the least weight for
// CPURequest). MemoryRequest (bytes) has no cgroup value: it is kept and reported, so that a change of it is a
// resize too.
type Resources struct {
	CPURequest    int64 `json:"cpuRequest,omitempty"`
	CPULimit      int64 `json:"cpuLimit,omitempty"`
	MemoryRequest int64 `json:"memoryRequest,omitempty"`
	MemoryLimit   int64 `json:"memoryLimit,omitempty"`
}

// RestartRule is one of a container's restartPolicyRules: Action ("Restart") when the exit code is (Operator "In")
// or is not ("NotIn") one of Values.
type RestartRule struct {
	Action   string  `json:"action"`
	Operator string  `json:"operator"`
	Values   []int32 `json:"values,omitempty"`
}

// matches reports whether code is (In) or is not (NotIn) one of the rule's values; another operator matches
// nothing.
func (r RestartRule) matches(code int) bool {
	in := false
	for _, v := range r.Values {
		in = in || int(v) == code
	}
	switch r.Operator {
	case "In":
		return in
	case "NotIn":
		return !in
	}
	return false
}

// ShouldRestart reports whether a container that exited with code restarts, as a kubelet decides with
// ContainerRestartRules (podutil.ContainerShouldRestart): with a restart policy of its own (own), the first of its
// rules that matches code decides when its action is Restart (another action falls through: RestartAllContainers
// is an alpha feature a node does not have), then its own policy; without one, the pod's. It is a pure function.
func ShouldRestart(pod, own string, rules []RestartRule, code int) bool {
	policy := pod
	if own != "" {
		for _, r := range rules {
			if r.matches(code) {
				if r.Action == "Restart" {
					return true
				}
				break
			}
		}
		policy = own
	}
	switch policy {
	case RestartNever:
		return false
	case RestartOnFailure:
		return code != 0
	}
	return true // Always, and a kubelet's default
}

// Resources returns the container's configured resources.
func (c ContainerConfig) Resources() Resources {
	return Resources{CPURequest: c.CPURequest, CPULimit: c.CPULimit, MemoryRequest: c.MemoryRequest, MemoryLimit: c.MemoryLimit}
}

// ResizeRequest changes a running pod's container to Resources, in place (its cgroup's limits are rewritten; a
// memory limit below the container's current use is refused), or with Restart by restarting it with them: the
// current run is stopped (SIGTERM, SIGKILL after GracePeriodSeconds) and the next starts at once, whatever the
// pod's restartPolicy, counting a restart.
type ResizeRequest struct {
	Resources          Resources `json:"resources"`
	Restart            bool      `json:"restart,omitempty"`
	GracePeriodSeconds int64     `json:"gracePeriodSeconds,omitempty"`
}

// Hook is a lifecycle handler: exactly one of Exec, HTTPGet and SleepSeconds.
type Hook struct {
	Exec         []string       `json:"exec,omitempty"`
	HTTPGet      *HTTPGetAction `json:"httpGet,omitempty"`
	SleepSeconds int64          `json:"sleepSeconds,omitempty"`
}

// Security is what the agent honours of a container's security context.
type Security struct {
	// RunAsUser and RunAsGroup override the image's user; nil keeps it.
	RunAsUser  *int64 `json:"runAsUser,omitempty"`
	RunAsGroup *int64 `json:"runAsGroup,omitempty"`
	// SupplementalGroups are added to the process's groups (the pod's supplementalGroups and fsGroup).
	SupplementalGroups []int64 `json:"supplementalGroups,omitempty"`
	// RunAsNonRoot refuses to start the container when its user would be root.
	RunAsNonRoot bool `json:"runAsNonRoot,omitempty"`
	// ReadOnlyRootFilesystem mounts the container's root read-only (volumes keep their own mode).
	ReadOnlyRootFilesystem bool `json:"readOnlyRootFilesystem,omitempty"`
	// Capabilities is the capability bounding set of the container's processes, by name without "CAP_"
	// (the runtime default with the context's adds and drops); nil keeps every capability.
	Capabilities []string `json:"capabilities"`
	// NoNewPrivileges sets no_new_privs (allowPrivilegeEscalation: false): setuid binaries and file
	// capabilities grant nothing.
	NoNewPrivileges bool `json:"noNewPrivileges,omitempty"`
	// Privileged gives the container what a privileged container has on a node, within the VM: every capability
	// (Capabilities is nil), the VM's devices, and /sys read-write.
	Privileged bool `json:"privileged,omitempty"`
}

// Probe is a container probe, as in a PodSpec. Exactly one of Exec, HTTPGet, TCPSocket and GRPC is set.
type Probe struct {
	Exec      []string       `json:"exec,omitempty"`
	HTTPGet   *HTTPGetAction `json:"httpGet,omitempty"`
	TCPSocket *TCPAction     `json:"tcpSocket,omitempty"`
	GRPC      *GRPCAction    `json:"grpc,omitempty"`

	InitialDelaySeconds int32 `json:"initialDelaySeconds,omitempty"`
	TimeoutSeconds      int32 `json:"timeoutSeconds,omitempty"`   // default 1
	PeriodSeconds       int32 `json:"periodSeconds,omitempty"`    // default 10
	SuccessThreshold    int32 `json:"successThreshold,omitempty"` // default 1
	FailureThreshold    int32 `json:"failureThreshold,omitempty"` // default 3
	// TerminationGracePeriodSeconds, when set, replaces the pod's on a liveness or startup failure.
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds,omitempty"`
}

// HTTPGetAction probes with an HTTP GET; success is a status in [200, 400).
type HTTPGetAction struct {
	Scheme  string            `json:"scheme,omitempty"` // HTTP (default) or HTTPS (not verified)
	Host    string            `json:"host,omitempty"`   // default: the pod's IP
	Port    int               `json:"port"`
	Path    string            `json:"path,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
}

// TCPAction probes by opening a TCP connection.
type TCPAction struct {
	Host string `json:"host,omitempty"`
	Port int    `json:"port"`
}

// GRPCAction probes with the gRPC health checking protocol.
type GRPCAction struct {
	Port    int    `json:"port"`
	Service string `json:"service,omitempty"`
}

// Container states.
const (
	Waiting    = "waiting"
	Running    = "running"
	Terminated = "terminated"
)

// PodStatus is what the agent knows of the pod's containers. Seq rises with every change.
type PodStatus struct {
	Seq        uint64            `json:"seq"`
	Configured bool              `json:"configured"`
	Containers []ContainerStatus `json:"containers"`
}

// ContainerStatus is one container's state, as a kubelet reports it. Ready follows the readiness probe (a
// running container without one is ready); Started the startup probe (without one: running).
type ContainerStatus struct {
	Name         string          `json:"name"`
	State        ContainerState  `json:"state"`
	LastState    *ContainerState `json:"lastState,omitempty"`
	RestartCount int             `json:"restartCount"`
	Ready        bool            `json:"ready"`
	Started      bool            `json:"started"`
	// ProbeFailures counts the container's failed probe attempts; LastProbeFailure says why the last one failed,
	// as a kubelet's Unhealthy event does ("Liveness probe failed: HTTP probe failed with statuscode: 500").
	ProbeFailures    int    `json:"probeFailures,omitempty"`
	LastProbeFailure string `json:"lastProbeFailure,omitempty"`
	// ProbeWarnings counts the container's probe attempts that succeeded with a warning; LastProbeWarning is the
	// last one's, as a kubelet's ProbeWarning event says it ("Liveness probe warning: Probe terminated redirects,
	// Response body: ...", an HTTP probe redirected to another host).
	ProbeWarnings    int    `json:"probeWarnings,omitempty"`
	LastProbeWarning string `json:"lastProbeWarning,omitempty"`
	// Ephemeral marks an ephemeral container's status (see AddEphemeral): it is never restarted.
	Ephemeral bool `json:"ephemeral,omitempty"`
	// Killed says why the agent killed the current run ("Container web failed liveness probe, will be
	// restarted"); it is cleared when the next run starts.
	Killed string `json:"killed,omitempty"`
	// Resources are what the container's cgroup applies now (the configuration's, then each resize's); nil
	// before the pod is configured.
	Resources *Resources `json:"resources,omitempty"`
}

// ContainerState is a container's state. Waiting carries Reason (ContainerCreating, CrashLoopBackOff);
// Terminated carries ExitCode, Reason (Completed, Error, OOMKilled) and Message.
type ContainerState struct {
	State      string    `json:"state"`
	Reason     string    `json:"reason,omitempty"`
	Message    string    `json:"message,omitempty"`
	ExitCode   int       `json:"exitCode,omitempty"`
	Signal     int       `json:"signal,omitempty"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
}

// LogOptions select a container's log, as kubectl logs does.
type LogOptions struct {
	Container  string
	Follow     bool
	Previous   bool
	Timestamps bool
	Tail       int // lines from the end; -1 for all
	SinceTime  time.Time
	LimitBytes int64
}

// ExecRequest runs a command in a container.
type ExecRequest struct {
	Container string   `json:"container"`
	Command   []string `json:"command"`
	Stdin     bool     `json:"stdin"`
	TTY       bool     `json:"tty"`
}

// AttachRequest attaches to a container's main process.
type AttachRequest struct {
	Container string `json:"container"`
	Stdin     bool   `json:"stdin"`
	TTY       bool   `json:"tty"`
}

// Exit is the end of an exec or attach: the process's exit code, or why it could not run.
type Exit struct {
	Code  int    `json:"code"`
	Error string `json:"error,omitempty"`
}

// Resize is a terminal size change.
type Resize struct {
	Width  uint16 `json:"width"`
	Height uint16 `json:"height"`
}

// Stats is a snapshot of the VM's resource use.
type Stats struct {
	Time       time.Time        `json:"time"`
	CPU        CPUStats         `json:"cpu"`
	Memory     MemoryStats      `json:"memory"`
	Network    []InterfaceStats `json:"network"`
	Containers []ContainerStats `json:"containers"`
}

// CPUStats counts CPU time in nanoseconds since boot (the VM) or since the container's cgroup was made.
type CPUStats struct {
	UsageNanos uint64 `json:"usageNanos"`
}

// MemoryStats in bytes. WorkingSet is usage minus inactive file pages, as the kubelet computes it.
type MemoryStats struct {
	Usage      uint64 `json:"usage"`
	WorkingSet uint64 `json:"workingSet"`
	RSS        uint64 `json:"rss"`
	Available  uint64 `json:"available,omitempty"`
}

// InterfaceStats are a network interface's counters.
type InterfaceStats struct {
	Name     string `json:"name"`
	RxBytes  uint64 `json:"rxBytes"`
	TxBytes  uint64 `json:"txBytes"`
	RxErrors uint64 `json:"rxErrors"`
	TxErrors uint64 `json:"txErrors"`
}

// ContainerStats is one container's use.
type ContainerStats struct {
	Name      string      `json:"name"`
	StartedAt time.Time   `json:"startedAt"`
	CPU       CPUStats    `json:"cpu"`
	Memory    MemoryStats `json:"memory"`
	// RootfsUsed is the bytes written to the container's writable layer; LogsUsed its logs'.
	RootfsUsed uint64 `json:"rootfsUsed"`
	LogsUsed   uint64 `json:"logsUsed"`
}
