package provider

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/i2kit/i2kit/agent/protocol"
)

// defaultCapabilities is the capability set container runtimes give a container by default (containerd's and
// Docker's); a security context adds to it and drops from it.
var defaultCapabilities = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
	"SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

// securityFor is a container's effective security context: the container's fields over the pod's, as a kubelet
// merges them. A privileged container keeps every capability, whatever its adds and drops, and no_new_privs unset,
// as containerd makes it (the API refuses allowPrivilegeEscalation: false with it); its power stops at the VM,
// which is the pod's own. It is a pure function.
func securityFor(pod *corev1.Pod, c corev1.Container) *protocol.Security {
	s := &protocol.Security{Capabilities: append([]string(nil), defaultCapabilities...)}
	if ps := pod.Spec.SecurityContext; ps != nil {
		s.RunAsUser, s.RunAsGroup = ps.RunAsUser, ps.RunAsGroup
		s.RunAsNonRoot = ps.RunAsNonRoot != nil && *ps.RunAsNonRoot
		s.SupplementalGroups = append(s.SupplementalGroups, ps.SupplementalGroups...)
		if ps.FSGroup != nil {
			s.SupplementalGroups = append(s.SupplementalGroups, *ps.FSGroup)
		}
	}
	cs := c.SecurityContext
	if cs == nil {
		return s
	}
	if cs.RunAsUser != nil {
		s.RunAsUser = cs.RunAsUser
	}
	if cs.RunAsGroup != nil {
		s.RunAsGroup = cs.RunAsGroup
	}
	if cs.RunAsNonRoot != nil {
		s.RunAsNonRoot = *cs.RunAsNonRoot
	}
	s.ReadOnlyRootFilesystem = cs.ReadOnlyRootFilesystem != nil && *cs.ReadOnlyRootFilesystem
	if cs.Privileged != nil && *cs.Privileged {
		s.Privileged, s.Capabilities = true, nil
		return s
	}
	s.NoNewPrivileges = cs.AllowPrivilegeEscalation != nil && !*cs.AllowPrivilegeEscalation
	if caps := cs.Capabilities; caps != nil {
		set := map[string]bool{}
		for _, c := range s.Capabilities {
			set[c] = true
		}
		for _, d := range caps.Drop {
			if name := capName(d); name == "ALL" {
				set = map[string]bool{}
			} else {
				delete(set, name)
			}
		}
		for _, a := range caps.Add {
			set[capName(a)] = true
		}
		s.Capabilities = s.Capabilities[:0]
		for _, name := range append(append([]string(nil), defaultCapabilities...), addedOnly(caps.Add)...) {
			if set[name] {
				s.Capabilities = append(s.Capabilities, name)
				delete(set, name)
			}
		}
		if s.Capabilities == nil {
			s.Capabilities = []string{} // none: not "all"
		}
	}
	return s
}

func capName(c corev1.Capability) string {
	return strings.TrimPrefix(strings.ToUpper(string(c)), "CAP_")
}

func addedOnly(add []corev1.Capability) []string {
	var out []string
	for _, a := range add {
		out = append(out, capName(a))
	}
	return out
}

// probeFor converts a container's probe, resolving named ports from the container's ports (0 when the name is
// not declared: the probe then fails, as on a kubelet).
func probeFor(c corev1.Container, p *corev1.Probe) *protocol.Probe {
	if p == nil {
		return nil
	}
	port := func(v intstr.IntOrString) int {
		if v.Type == intstr.Int {
			return v.IntValue()
		}
		for _, cp := range c.Ports {
			if cp.Name == v.StrVal {
				return int(cp.ContainerPort)
			}
		}
		return 0
	}
	out := &protocol.Probe{InitialDelaySeconds: p.InitialDelaySeconds, TimeoutSeconds: p.TimeoutSeconds,
		PeriodSeconds: p.PeriodSeconds, SuccessThreshold: p.SuccessThreshold, FailureThreshold: p.FailureThreshold,
		TerminationGracePeriodSeconds: p.TerminationGracePeriodSeconds}
	switch h := p.ProbeHandler; {
	case h.Exec != nil:
		out.Exec = append([]string(nil), h.Exec.Command...)
	case h.HTTPGet != nil:
		a := &protocol.HTTPGetAction{Scheme: string(h.HTTPGet.Scheme), Host: h.HTTPGet.Host, Port: port(h.HTTPGet.Port), Path: h.HTTPGet.Path}
		for _, hd := range h.HTTPGet.HTTPHeaders {
			if a.Headers == nil {
				a.Headers = map[string]string{}
			}
			a.Headers[hd.Name] = hd.Value
		}
		out.HTTPGet = a
	case h.TCPSocket != nil:
		out.TCPSocket = &protocol.TCPAction{Host: h.TCPSocket.Host, Port: port(h.TCPSocket.Port)}
	case h.GRPC != nil:
		g := &protocol.GRPCAction{Port: int(h.GRPC.Port)}
		if h.GRPC.Service != nil {
			g.Service = *h.GRPC.Service
		}
		out.GRPC = g
	}
	return out
}

// hookFor converts a lifecycle handler; named ports resolve as for probes.
func hookFor(c corev1.Container, h *corev1.LifecycleHandler) *protocol.Hook {
	if h == nil {
		return nil
	}
	switch {
	case h.Exec != nil:
		return &protocol.Hook{Exec: append([]string(nil), h.Exec.Command...)}
	case h.HTTPGet != nil:
		p := probeFor(c, &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: h.HTTPGet}})
		return &protocol.Hook{HTTPGet: p.HTTPGet}
	case h.Sleep != nil:
		return &protocol.Hook{SleepSeconds: h.Sleep.Seconds}
	}
	return nil
}

// hostsFile renders a pod's /etc/hosts as a kubelet does: localhost entries, the pod's IP with its name, then
// its hostAliases.
func hostsFile(pod *corev1.Pod, podIP string) []byte {
	var b strings.Builder
	b.WriteString("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
	if podIP != "" {
		hostname, fqdn := podHostname(pod)
		if fqdn != "" {
			b.WriteString(podIP + "\t" + fqdn + "\t" + hostname + "\n")
		} else {
			b.WriteString(podIP + "\t" + hostname + "\n")
		}
	}
	if len(pod.Spec.HostAliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, a := range pod.Spec.HostAliases {
			b.WriteString(a.IP + "\t" + strings.Join(a.Hostnames, "\t") + "\n")
		}
	}
	return []byte(b.String())
}

// clusterDomain is the cluster's DNS domain, as a kubelet's default --cluster-domain.
const clusterDomain = "cluster.local"

// hostnameMax is the longest hostname the kernel takes (HOST_NAME_MAX 64, less the terminating NUL, as a kubelet
// counts it).
const hostnameMax = 63

// podHostname is a pod's hostname and, with a subdomain, its fully qualified name, as a kubelet's
// GeneratePodHostNameAndDomain derives them: spec.hostnameOverride wins over the pod's name and spec.hostname and
// makes no fully qualified name (a subdomain is then ignored; the API refuses it with setHostnameAsFQDN); either is
// cut to 63 characters with no trailing "-" or ".". (The API has validated the names.)
func podHostname(pod *corev1.Pod) (hostname, fqdn string) {
	if o := pod.Spec.HostnameOverride; o != nil && *o != "" {
		return truncateHostname(*o), ""
	}
	hostname = pod.Name
	if pod.Spec.Hostname != "" {
		hostname = pod.Spec.Hostname
	}
	hostname = truncateHostname(hostname)
	if pod.Spec.Subdomain != "" {
		fqdn = hostname + "." + pod.Spec.Subdomain + "." + pod.Namespace + ".svc." + clusterDomain
	}
	return hostname, fqdn
}

// truncateHostname cuts a hostname to hostnameMax characters, then its trailing dashes and dots, as a kubelet does.
func truncateHostname(h string) string {
	if len(h) <= hostnameMax {
		return h
	}
	return strings.TrimRight(h[:hostnameMax], "-.")
}

// resolvConf renders a pod's /etc/resolv.conf for its dnsPolicy and dnsConfig, as a kubelet does: ClusterFirst
// points at the cluster DNS service with the cluster's search path (falling back to the node's configuration
// when the cluster has no DNS service), Default is the node's, None is dnsConfig alone; dnsConfig's nameservers,
// searches and options are merged in. It is a pure function.
func resolvConf(pod *corev1.Pod, clusterDNS string, node []byte) []byte {
	var servers, search []string
	options := map[string]string{}
	var order []string
	setOpt := func(name, value string) {
		if _, ok := options[name]; !ok {
			order = append(order, name)
		}
		options[name] = value
	}
	parseNode := func() {
		for _, l := range strings.Split(string(node), "\n") {
			f := strings.Fields(l)
			if len(f) < 2 || strings.HasPrefix(f[0], "#") {
				continue
			}
			switch f[0] {
			case "nameserver":
				servers = append(servers, f[1])
			case "search":
				search = append(search, f[1:]...)
			case "options":
				for _, o := range f[1:] {
					n, v, _ := strings.Cut(o, ":")
					setOpt(n, v)
				}
			}
		}
	}
	switch pod.Spec.DNSPolicy {
	case corev1.DNSNone:
	case corev1.DNSDefault:
		parseNode()
	default: // ClusterFirst, ClusterFirstWithHostNet
		if clusterDNS == "" {
			parseNode()
			break
		}
		servers = []string{clusterDNS}
		search = []string{pod.Namespace + ".svc." + clusterDomain, "svc." + clusterDomain, clusterDomain}
		setOpt("ndots", "5")
	}
	if c := pod.Spec.DNSConfig; c != nil {
		servers = append(servers, c.Nameservers...)
		search = append(search, c.Searches...)
		for _, o := range c.Options {
			v := ""
			if o.Value != nil {
				v = *o.Value
			}
			setOpt(o.Name, v)
		}
	}
	var b strings.Builder
	seen := map[string]bool{}
	var uniq []string
	for _, s := range search {
		if !seen[s] {
			seen[s] = true
			uniq = append(uniq, s)
		}
	}
	if len(uniq) > 0 {
		b.WriteString("search " + strings.Join(uniq, " ") + "\n")
	}
	for i, s := range servers {
		if i == 3 { // the resolver reads three
			break
		}
		b.WriteString("nameserver " + s + "\n")
	}
	if len(order) > 0 {
		var opts []string
		for _, n := range order {
			if v := options[n]; v != "" {
				opts = append(opts, n+":"+v)
			} else {
				opts = append(opts, n)
			}
		}
		b.WriteString("options " + strings.Join(opts, " ") + "\n")
	}
	return []byte(b.String())
}
