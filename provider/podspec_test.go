package provider

import (
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

func TestSecurityFor(t *testing.T) {
	i := func(v int64) *int64 { return &v }
	yes, no := true, false
	for _, tc := range []struct {
		name string
		pod  *corev1.PodSecurityContext
		ctr  *corev1.SecurityContext
		want protocol.Security
	}{
		{"defaults", nil, nil, protocol.Security{Capabilities: defaultCapabilities}},
		{"pod user, container group", &corev1.PodSecurityContext{RunAsUser: i(1000), RunAsNonRoot: &yes, FSGroup: i(2000), SupplementalGroups: []int64{5}},
			&corev1.SecurityContext{RunAsGroup: i(3000)},
			protocol.Security{RunAsUser: i(1000), RunAsGroup: i(3000), RunAsNonRoot: true, SupplementalGroups: []int64{5, 2000}, Capabilities: defaultCapabilities}},
		{"container over pod", &corev1.PodSecurityContext{RunAsUser: i(1000), RunAsNonRoot: &yes},
			&corev1.SecurityContext{RunAsUser: i(0), RunAsNonRoot: &no, ReadOnlyRootFilesystem: &yes, AllowPrivilegeEscalation: &no},
			protocol.Security{RunAsUser: i(0), ReadOnlyRootFilesystem: true, NoNewPrivileges: true, Capabilities: defaultCapabilities}},
		{"drop all, add one", nil, &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}}},
			protocol.Security{Capabilities: []string{"NET_BIND_SERVICE"}}},
		{"drop all", nil, &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"all"}}},
			protocol.Security{Capabilities: []string{}}},
		{"add outside the default, drop one", nil, &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW"}, Add: []corev1.Capability{"CAP_NET_ADMIN"}}},
			protocol.Security{Capabilities: []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "SETGID", "SETUID", "SETFCAP",
				"SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE", "NET_ADMIN"}}},
		{"privileged: every capability", nil, &corev1.SecurityContext{Privileged: &yes},
			protocol.Security{Privileged: true}},
		{"privileged ignores adds and drops, keeps the user", &corev1.PodSecurityContext{RunAsUser: i(1000)},
			&corev1.SecurityContext{Privileged: &yes, ReadOnlyRootFilesystem: &yes, AllowPrivilegeEscalation: &yes,
				Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"}}},
			protocol.Security{RunAsUser: i(1000), ReadOnlyRootFilesystem: true, Privileged: true}},
		{"privileged false", nil, &corev1.SecurityContext{Privileged: &no}, protocol.Security{Capabilities: defaultCapabilities}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: tc.pod}}
			got := securityFor(pod, corev1.Container{Name: "c", SecurityContext: tc.ctr})
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("securityFor = %+v\nwant %+v", *got, tc.want)
			}
		})
	}
}

func TestProbeForResolvesNamedPorts(t *testing.T) {
	c := corev1.Container{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}
	p := probeFor(c, &corev1.Probe{PeriodSeconds: 2, ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
		Path: "/healthz", Port: intstr.FromString("http"), HTTPHeaders: []corev1.HTTPHeader{{Name: "X", Value: "y"}}}}})
	if p.HTTPGet == nil || p.HTTPGet.Port != 8080 || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Headers["X"] != "y" || p.PeriodSeconds != 2 {
		t.Errorf("probe = %+v %+v", p, p.HTTPGet)
	}
	if p := probeFor(c, &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("nope")}}}); p.TCPSocket.Port != 0 {
		t.Errorf("an undeclared port name resolved to %d", p.TCPSocket.Port)
	}
	if probeFor(c, nil) != nil {
		t.Error("no probe became one")
	}
}

func TestRunningButNotReady(t *testing.T) {
	pod := plainPod("p")
	pod.Spec.Containers = pod.Spec.Containers[:1]
	st := protocol.PodStatus{Containers: []protocol.ContainerStatus{{Name: "web", Started: true,
		State: protocol.ContainerState{State: protocol.Running, StartedAt: time.Now()}}}}
	got := podStatus(pod, "h", vm.Status{IP: "10.0.0.2"}, st, nil).Status
	if got.Phase != corev1.PodRunning || got.ContainerStatuses[0].Ready || !*got.ContainerStatuses[0].Started {
		t.Errorf("status = %+v", got)
	}
	for _, c := range got.Conditions {
		if c.Type == corev1.PodReady && c.Status != corev1.ConditionFalse {
			t.Errorf("Ready condition %s for a container its readiness probe fails", c.Status)
		}
	}
}

func TestResolvConf(t *testing.T) {
	node := []byte("# generated\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n")
	two := "2"
	for _, tc := range []struct {
		name   string
		policy corev1.DNSPolicy
		dns    string
		config *corev1.PodDNSConfig
		want   string
	}{
		{"cluster first", "", "10.96.0.10", nil,
			"search ns1.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"},
		{"cluster first without cluster DNS", corev1.DNSClusterFirst, "", nil,
			"search corp.example\nnameserver 192.0.2.53\noptions edns0\n"},
		{"default", corev1.DNSDefault, "10.96.0.10", nil, "search corp.example\nnameserver 192.0.2.53\noptions edns0\n"},
		{"none with config", corev1.DNSNone, "10.96.0.10", &corev1.PodDNSConfig{Nameservers: []string{"1.1.1.1"},
			Searches: []string{"a.example"}, Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}, {Name: "rotate"}}},
			"search a.example\nnameserver 1.1.1.1\noptions ndots:2 rotate\n"},
		{"cluster first, config merged", "", "10.96.0.10", &corev1.PodDNSConfig{Searches: []string{"cluster.local", "x.example"},
			Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: &two}}},
			"search ns1.svc.cluster.local svc.cluster.local cluster.local x.example\nnameserver 10.96.0.10\noptions ndots:2\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{DNSPolicy: tc.policy, DNSConfig: tc.config}}
			pod.Namespace = "ns1"
			if got := string(resolvConf(pod, tc.dns, node)); got != tc.want {
				t.Errorf("resolv.conf =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestHostsFile(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Hostname: "web-0", Subdomain: "web",
		HostAliases: []corev1.HostAlias{{IP: "10.1.2.3", Hostnames: []string{"a", "b"}}}}}
	pod.Name, pod.Namespace = "web-0-xyz", "ns1"
	got := string(hostsFile(pod, "10.0.0.5"))
	for _, want := range []string{"127.0.0.1\tlocalhost\n", "10.0.0.5\tweb-0.web.ns1.svc.cluster.local\tweb-0\n", "10.1.2.3\ta\tb\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("hosts lacks %q:\n%s", want, got)
		}
	}
}

// TestPodHostname checks the hostname, /etc/hosts entry and hostname sent to the agent against a kubelet's
// GeneratePodHostNameAndDomain and managedHostsFileContent.
func TestPodHostname(t *testing.T) {
	str := func(s string) *string { return &s }
	yes := true
	long := strings.Repeat("a", 62) + "-b" + strings.Repeat("c", 10) // cut at 63: "aaa…a-", then "-" trimmed
	for _, tc := range []struct {
		name         string
		spec         corev1.PodSpec
		podName      string
		wantHostname string // in PodConfig ("" keeps the pod's name, which the kernel command line gives)
		wantHosts    string // the pod IP's line in /etc/hosts
	}{
		{"pod name", corev1.PodSpec{}, "web-1", "", "10.0.0.5\tweb-1\n"},
		{"hostname", corev1.PodSpec{Hostname: "custom-host"}, "web-1", "custom-host", "10.0.0.5\tcustom-host\n"},
		{"hostname and subdomain", corev1.PodSpec{Hostname: "h", Subdomain: "t"}, "web-1", "h",
			"10.0.0.5\th.t.ns1.svc.cluster.local\th\n"},
		{"subdomain and setHostnameAsFQDN", corev1.PodSpec{Subdomain: "t", SetHostnameAsFQDN: &yes}, "web-1",
			"web-1.t.ns1.svc.cluster.local", "10.0.0.5\tweb-1.t.ns1.svc.cluster.local\tweb-1\n"},
		{"hostnameOverride, a DNS subdomain", corev1.PodSpec{HostnameOverride: str("override.example.host")}, "web-1",
			"override.example.host", "10.0.0.5\toverride.example.host\n"},
		{"hostnameOverride wins over hostname", corev1.PodSpec{Hostname: "custom-host", HostnameOverride: str("override-host")},
			"web-1", "override-host", "10.0.0.5\toverride-host\n"},
		{"hostnameOverride drops the subdomain", corev1.PodSpec{Subdomain: "t", HostnameOverride: str("override-host")},
			"web-1", "override-host", "10.0.0.5\toverride-host\n"},
		{"hostnameOverride the pod's name", corev1.PodSpec{HostnameOverride: str("web-1")}, "web-1", "", "10.0.0.5\tweb-1\n"},
		{"long pod name cut", corev1.PodSpec{}, long, strings.Repeat("a", 62), "10.0.0.5\t" + strings.Repeat("a", 62) + "\n"},
		{"long hostnameOverride cut", corev1.PodSpec{HostnameOverride: str(strings.Repeat("x", 62) + ".y")}, "web-1",
			strings.Repeat("x", 62), "10.0.0.5\t" + strings.Repeat("x", 62) + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: tc.spec}
			pod.Name, pod.Namespace = tc.podName, "ns1"
			if got := podConfig(pod, "10.0.0.5", podRuntime{}, nil).Hostname; got != tc.wantHostname {
				t.Errorf("PodConfig.Hostname = %q, want %q", got, tc.wantHostname)
			}
			hosts := string(hostsFile(pod, "10.0.0.5"))
			if !strings.Contains(hosts, tc.wantHosts) {
				t.Errorf("hosts lacks %q:\n%s", tc.wantHosts, hosts)
			}
			if n := strings.Count(hosts, "10.0.0.5"); n != 1 {
				t.Errorf("hosts has %d lines of the pod's IP:\n%s", n, hosts)
			}
		})
	}
}

func TestReadinessGatesHoldReady(t *testing.T) {
	pod := plainPod("p")
	pod.Spec.Containers = pod.Spec.Containers[:1]
	pod.Spec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: "example.com/lb"}}
	st := protocol.PodStatus{Containers: []protocol.ContainerStatus{{Name: "web", Started: true, Ready: true,
		State: protocol.ContainerState{State: protocol.Running, StartedAt: time.Now()}}}}
	ready := func(p *corev1.Pod) corev1.ConditionStatus {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				return c.Status
			}
		}
		return ""
	}
	if got := podStatus(pod, "h", vm.Status{IP: "10.0.0.2"}, st, nil); ready(got) != corev1.ConditionFalse {
		t.Errorf("Ready %s with its readiness gate unset", ready(got))
	}
	pod.Status.Conditions = []corev1.PodCondition{{Type: "example.com/lb", Status: corev1.ConditionTrue}}
	got := podStatus(pod, "h", vm.Status{IP: "10.0.0.2"}, st, nil)
	if ready(got) != corev1.ConditionTrue {
		t.Errorf("Ready %s with its readiness gate True", ready(got))
	}
	kept := false
	for _, c := range got.Status.Conditions {
		kept = kept || c.Type == "example.com/lb"
	}
	if !kept {
		t.Error("the readiness gate's condition was dropped")
	}
}
