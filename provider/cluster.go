package provider

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	corev1listers "k8s.io/client-go/listers/core/v1"

	"github.com/i2kit/i2kit/agent/protocol"
	"github.com/i2kit/i2kit/provider/vm"
)

// TokenFunc requests a service account token bound to pod (the TokenRequest API), for audience ("" for the API
// server's) and lifetime; it returns the token and when it expires.
type TokenFunc func(ctx context.Context, pod *corev1.Pod, audience string, expirationSeconds int64) (string, time.Time, error)

// clusterDNS is the cluster DNS service's address (kube-system/kube-dns), or "" when the cluster has none.
func (p *Provider) clusterDNS() string {
	p.mu.Lock()
	c := p.cluster
	p.mu.Unlock()
	if c == nil || c.services == nil {
		return ""
	}
	svc, err := c.services.Services("kube-system").Get("kube-dns")
	if err != nil || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return ""
	}
	return svc.Spec.ClusterIP
}

// UseCluster gives the provider what it reads of the cluster for pods' runtime data: ConfigMaps, Secrets and
// Services (the node's informer caches: the cluster DNS address) and service account tokens. Call it before the node runs.
func (p *Provider) UseCluster(configMaps corev1listers.ConfigMapLister, secrets corev1listers.SecretLister,
	services corev1listers.ServiceLister, token TokenFunc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cluster = &cluster{configMaps: configMaps, secrets: secrets, services: services, token: token, tokens: map[string]cachedToken{}}
}

// cluster reads runtime data for pods and caches tokens until 80 % of their lifetime has passed, as a kubelet does.
type cluster struct {
	configMaps corev1listers.ConfigMapLister
	secrets    corev1listers.SecretLister
	services   corev1listers.ServiceLister
	token      TokenFunc

	mu     sync.Mutex
	tokens map[string]cachedToken
}

type cachedToken struct {
	token           string
	issued, refresh time.Time
}

// lookups reads the cluster for one resolution; refresh is set to the earliest renewal due of the tokens it hands
// out.
func (c *cluster) lookups(ctx context.Context, refresh *time.Time) lookups {
	due := func(t time.Time) {
		if refresh.IsZero() || t.Before(*refresh) {
			*refresh = t
		}
	}
	return lookups{
		ConfigMap: func(ns, name string) (*corev1.ConfigMap, error) { return c.configMaps.ConfigMaps(ns).Get(name) },
		Secret:    func(ns, name string) (*corev1.Secret, error) { return c.secrets.Secrets(ns).Get(name) },
		Services: func(ns string) ([]*corev1.Service, error) {
			if c.services == nil {
				return nil, nil
			}
			return c.services.Services(ns).List(labels.Everything())
		},
		Token: func(pod *corev1.Pod, audience string, exp int64) (string, error) {
			k := fmt.Sprintf("%s/%s/%d", pod.UID, audience, exp)
			c.mu.Lock()
			t, ok := c.tokens[k]
			c.mu.Unlock()
			if ok && time.Now().Before(t.refresh) {
				due(t.refresh)
				return t.token, nil
			}
			tok, expires, err := c.token(ctx, pod, audience, exp)
			if err != nil {
				return "", fmt.Errorf("requesting a service account token for pod %s/%s, %w", pod.Namespace, pod.Name, err)
			}
			now := time.Now()
			c.mu.Lock()
			c.tokens[k] = cachedToken{token: tok, issued: now, refresh: now.Add(expires.Sub(now) * 4 / 5)}
			c.mu.Unlock()
			due(now.Add(expires.Sub(now) * 4 / 5))
			return tok, nil
		},
	}
}

// noCluster serves pods that need nothing from the cluster when the provider was given no access to it.
var noCluster = lookups{
	ConfigMap: func(ns, name string) (*corev1.ConfigMap, error) {
		return nil, apierrors.NewNotFound(corev1.Resource("configmaps"), name)
	},
	Secret: func(ns, name string) (*corev1.Secret, error) {
		return nil, apierrors.NewNotFound(corev1.Resource("secrets"), name)
	},
	Token: func(*corev1.Pod, string, int64) (string, error) {
		return "", errors.New("this node requests no service account tokens")
	},
}

// forget drops a pod's cached tokens.
func (c *cluster) forget(uid string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.tokens {
		if len(k) > len(uid) && k[:len(uid)+1] == uid+"/" {
			delete(c.tokens, k)
		}
	}
}

// resolve is the pod's runtime data, given its VM.
func (p *Provider) resolve(ctx context.Context, pod *corev1.Pod, st vm.Status) (podRuntime, error) {
	p.mu.Lock()
	c := p.cluster
	p.mu.Unlock()
	var refresh time.Time
	l := noCluster
	if c != nil {
		l = c.lookups(ctx, &refresh)
	}
	mem, cpus := vmSize(pod)
	rt, err := resolveRuntime(pod, st.IP, p.cfg.InternalIP, cpus, int64(mem)<<20, l)
	rt.TokenRefresh = refresh
	return rt, err
}

// podConfig is the pod's runtime configuration for its agent.
func podConfig(pod *corev1.Pod, podIP string, rt podRuntime, resolv []byte) protocol.PodConfig {
	cfg := protocol.PodConfig{RestartPolicy: string(pod.Spec.RestartPolicy), Volumes: rt.Volumes, Hosts: hostsFile(pod, podIP),
		ResolvConf: resolv}
	hostname, fqdn := podHostname(pod)
	if pod.Spec.SetHostnameAsFQDN != nil && *pod.Spec.SetHostnameAsFQDN && fqdn != "" {
		hostname = fqdn
	}
	if hostname != pod.Name {
		cfg.Hostname = hostname
	}
	if sc := pod.Spec.SecurityContext; sc != nil {
		if sc.FSGroup != nil {
			g := *sc.FSGroup
			cfg.FSGroup = &g
		}
		for _, s := range sc.Sysctls {
			cfg.Sysctls = append(cfg.Sysctls, protocol.Sysctl{Name: normalizeSysctl(s.Name), Value: s.Value})
		}
	}
	cfg.ShareProcessNamespace = pod.Spec.ShareProcessNamespace != nil && *pod.Spec.ShareProcessNamespace
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace := *g
		cfg.TerminationGracePeriodSeconds = &grace
	}
	// The init containers come first, in the pod's order, marked Init: the agent starts the containers in this
	// order, as a kubelet does.
	for i, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		cc := protocol.ContainerConfig{Name: c.Name, Init: i < len(pod.Spec.InitContainers), Stdin: c.Stdin, StdinOnce: c.StdinOnce, TTY: c.TTY, Env: rt.Env[c.Name], Mounts: rt.Mounts[c.Name],
			Command: rt.Command[c.Name], Args: rt.Args[c.Name],
			Security: securityFor(pod, c), Liveness: probeFor(c, c.LivenessProbe),
			Readiness: probeFor(c, c.ReadinessProbe), Startup: probeFor(c, c.StartupProbe),
			TerminationMessagePath: c.TerminationMessagePath, TerminationMessagePolicy: string(c.TerminationMessagePolicy)}
		if c.RestartPolicy != nil {
			cc.RestartPolicy = string(*c.RestartPolicy)
			cc.RestartRules = restartRules(c)
		}
		if l := c.Lifecycle; l != nil {
			cc.PostStart, cc.PreStop = hookFor(c, l.PostStart), hookFor(c, l.PreStop)
		}
		r := containerResources(c)
		cc.MemoryLimit, cc.CPULimit, cc.CPURequest, cc.MemoryRequest = r.MemoryLimit, r.CPULimit, r.CPURequest, r.MemoryRequest
		cfg.Containers = append(cfg.Containers, cc)
	}
	return cfg
}
