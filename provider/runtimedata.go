package provider

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/i2kit/i2kit/agent/protocol"
)

// lookups gives the resolver what it reads from the cluster; the node wires listers and the TokenRequest API.
type lookups struct {
	ConfigMap func(namespace, name string) (*corev1.ConfigMap, error) // a NotFound error (apierrors) when missing
	Secret    func(namespace, name string) (*corev1.Secret, error)
	// Services lists the Services of a namespace, for the service environment variables.
	Services func(namespace string) ([]*corev1.Service, error)
	// Token returns a service account token for the pod, bound to it, with the audience ("" for the API server's)
	// and lifetime.
	Token func(pod *corev1.Pod, audience string, expirationSeconds int64) (string, error)
}

// podRuntime is what a pod's agent receives: per container env, command, args and mounts, and the volumes.
type podRuntime struct {
	Env    map[string][]string         // container name → NAME=value, in the order a kubelet builds them
	Mounts map[string][]protocol.Mount // container name → mounts
	// Command and Args are the containers' command and args with $(VAR) references expanded against their
	// environment; a container without them is absent.
	Command, Args map[string][]string
	Volumes       []protocol.Volume
	// TokenRefresh is when the earliest service account token in Volumes is due for renewal; zero for none.
	TokenRefresh time.Time
	// Warnings are the Events for optional references that were skipped (virtual-kubelet's reasons).
	Warnings []envEvent
}

// Defaults the API server fills in; a pod that did not come through it may lack them.
const (
	defaultFilesMode       int32 = 0o644
	defaultTokenExpiration int64 = 3600
)

// resolveRuntime resolves what a kubelet resolves for a pod's containers before it starts them: each container's
// environment (env and envFrom, with $(VAR) expansion), its volume mounts, and the content of the pod's volumes.
// podIP and hostIP are the pod's and the node's addresses; vmCPUs and vmMemBytes the VM's size, which stands in
// for node allocatable where a kubelet would use it (resourceFieldRef of a container without a limit).
//
// The environment of a container is ordered as envFrom then env declare it (keys of one source sorted), each
// name once at its first place with its last value; a kubelet builds the same set, in map order.
func resolveRuntime(pod *corev1.Pod, podIP, hostIP string, vmCPUs int, vmMemBytes int64, l lookups) (podRuntime, error) {
	r := &runtimeResolver{
		pod: pod, podIP: podIP, hostIP: hostIP, vmCPUs: vmCPUs, vmMem: vmMemBytes, l: l,
		configMaps: map[string]lookupResult[*corev1.ConfigMap]{},
		secrets:    map[string]lookupResult[*corev1.Secret]{},
	}
	rt := podRuntime{Env: map[string][]string{}, Mounts: map[string][]protocol.Mount{}, Command: map[string][]string{},
		Args: map[string][]string{}}

	filesVolume := map[string]bool{} // volume name → whether it is a files or image (read-only) volume
	for _, v := range pod.Spec.Volumes {
		pv, err := r.volume(v)
		if err != nil {
			return podRuntime{}, err
		}
		filesVolume[v.Name] = pv.EmptyDir == nil
		rt.Volumes = append(rt.Volumes, pv)
	}

	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			c := &cs[i]
			env, vals, err := r.env(c)
			if err != nil {
				return podRuntime{}, err
			}
			mounts, err := containerMounts(c, filesVolume, vals)
			if err != nil {
				return podRuntime{}, err
			}
			rt.Env[c.Name] = env
			rt.Mounts[c.Name] = mounts
			if len(c.Command) > 0 {
				rt.Command[c.Name] = expandAll(c.Command, vals)
			}
			if len(c.Args) > 0 {
				rt.Args[c.Name] = expandAll(c.Args, vals)
			}
		}
	}
	rt.Warnings = r.warnings
	return rt, nil
}

type lookupResult[T any] struct {
	obj T
	err error
}

// runtimeResolver resolves one pod's runtime data, reading each ConfigMap and Secret once.
type runtimeResolver struct {
	pod           *corev1.Pod
	podIP, hostIP string
	vmCPUs        int
	vmMem         int64
	l             lookups

	configMaps map[string]lookupResult[*corev1.ConfigMap]
	secrets    map[string]lookupResult[*corev1.Secret]
	serviceEnv map[string]string // nil until first needed
	warnings   []envEvent
}

func (r *runtimeResolver) configMap(name string) (*corev1.ConfigMap, error) {
	if res, ok := r.configMaps[name]; ok {
		return res.obj, res.err
	}
	var res lookupResult[*corev1.ConfigMap]
	if r.l.ConfigMap == nil {
		res.err = fmt.Errorf("couldn't get configMap %v/%v, the node reads no ConfigMaps", r.pod.Namespace, name)
	} else {
		res.obj, res.err = r.l.ConfigMap(r.pod.Namespace, name)
		if res.err == nil && res.obj == nil {
			res.err = fmt.Errorf("couldn't get configMap %v/%v", r.pod.Namespace, name)
		}
	}
	r.configMaps[name] = res
	return res.obj, res.err
}

func (r *runtimeResolver) secret(name string) (*corev1.Secret, error) {
	if res, ok := r.secrets[name]; ok {
		return res.obj, res.err
	}
	var res lookupResult[*corev1.Secret]
	if r.l.Secret == nil {
		res.err = fmt.Errorf("couldn't get secret %v/%v, the node reads no Secrets", r.pod.Namespace, name)
	} else {
		res.obj, res.err = r.l.Secret(r.pod.Namespace, name)
		if res.err == nil && res.obj == nil {
			res.err = fmt.Errorf("couldn't get secret %v/%v", r.pod.Namespace, name)
		}
	}
	r.secrets[name] = res
	return res.obj, res.err
}

// skippable is whether a lookup error lets an optional reference be skipped: only the object's absence does.
func skippable(err error, optional *bool) bool {
	return apierrors.IsNotFound(err) && optional != nil && *optional
}

// expandAll expands $(VAR) references in each of a container's command or args against its environment, as a
// kubelet's ExpandContainerCommandAndArgs does: an unknown name stays as written.
func expandAll(in []string, env map[string]string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = expandVars(s, func(k string) string {
			if v, ok := env[k]; ok {
				return v
			}
			return "$(" + k + ")"
		})
	}
	return out
}

// expandVars replaces $(VAR) references in input using mapping, as a kubelet's expansion.Expand does: "$$" is a
// literal "$", and a "$" not starting a complete reference is kept.
func expandVars(input string, mapping func(string) string) string {
	var b strings.Builder
	checkpoint := 0
	for cursor := 0; cursor < len(input); cursor++ {
		if input[cursor] != '$' || cursor+1 >= len(input) {
			continue
		}
		b.WriteString(input[checkpoint:cursor])
		rest := input[cursor+1:]
		var advance int
		switch rest[0] {
		case '$':
			b.WriteByte('$')
			advance = 1
		case '(':
			if end := strings.IndexByte(rest[1:], ')'); end >= 0 {
				b.WriteString(mapping(rest[1 : end+1]))
				advance = end + 2
			} else {
				b.WriteString("$(")
				advance = 1
			}
		default:
			// Not a reference: keep the operator and the rune after it.
			r, size := utf8.DecodeRuneInString(rest)
			b.WriteByte('$')
			b.WriteRune(r)
			advance = size
		}
		cursor += advance
		checkpoint = cursor + 1
	}
	return b.String() + input[checkpoint:]
}
