package provider

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

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

	filesVolume := map[string]bool{} // volume name → whether it is a files (read-only) volume
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

// env builds a container's environment as a kubelet's makeEnvironmentVariables does: envFrom first, then env
// overriding it, each env value expanded against the variables defined before it. It returns NAME=value entries
// and the final map (for subPathExpr).
func (r *runtimeResolver) env(c *corev1.Container) ([]string, map[string]string, error) {
	vals := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}

	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm, err := r.configMap(ef.ConfigMapRef.Name)
			if err != nil {
				if skippable(err, ef.ConfigMapRef.Optional) {
					continue
				}
				return nil, nil, fmt.Errorf("%w (envFrom of container %q)", err, c.Name)
			}
			for _, k := range sortedMapKeys(cm.Data) {
				if name := ef.Prefix + k; validEnvName(name) {
					set(name, cm.Data[k])
				}
			}
		case ef.SecretRef != nil:
			s, err := r.secret(ef.SecretRef.Name)
			if err != nil {
				if skippable(err, ef.SecretRef.Optional) {
					continue
				}
				return nil, nil, fmt.Errorf("%w (envFrom of container %q)", err, c.Name)
			}
			for _, k := range sortedMapKeys(s.Data) {
				if name := ef.Prefix + k; validEnvName(name) {
					set(name, string(s.Data[k]))
				}
			}
		}
	}

	svcEnv, err := r.servicesEnv()
	if err != nil {
		return nil, nil, err
	}
	mapping := func(name string) string {
		if v, ok := vals[name]; ok {
			return v
		}
		if v, ok := svcEnv[name]; ok {
			return v
		}
		return "$(" + name + ")"
	}
	for _, e := range c.Env {
		val := e.Value
		if val != "" {
			val = expandVars(val, mapping)
		} else if e.ValueFrom != nil {
			v, skip, err := r.envSource(c, e.ValueFrom)
			if err != nil {
				return nil, nil, fmt.Errorf("%w (env %s of container %q)", err, e.Name, c.Name)
			}
			if skip {
				continue
			}
			val = v
		}
		set(e.Name, val)
	}

	// The service variables come last and never replace the container's own.
	for _, k := range sortedMapKeys(svcEnv) {
		if _, ok := vals[k]; !ok {
			set(k, svcEnv[k])
		}
	}
	env := make([]string, 0, len(order))
	for _, k := range order {
		env = append(env, k+"="+vals[k])
	}
	return env, vals, nil
}

// servicesEnv is the pod's service environment, as a kubelet's getServiceEnvVarMap builds it: the variables of
// the master service (default/kubernetes) always, and, unless enableServiceLinks is false, those of every Service
// of the pod's namespace; only Services with a ClusterIP count.
func (r *runtimeResolver) servicesEnv() (map[string]string, error) {
	if r.serviceEnv != nil {
		return r.serviceEnv, nil
	}
	r.serviceEnv = map[string]string{}
	if r.l.Services == nil {
		return r.serviceEnv, nil
	}
	byName := map[string]*corev1.Service{}
	add := func(ns string, keep func(*corev1.Service) bool) error {
		svcs, err := r.l.Services(ns)
		if err != nil {
			return fmt.Errorf("listing the services of namespace %s for the service environment, %w", ns, err)
		}
		for _, s := range svcs {
			if keep(s) {
				byName[s.Name] = s
			}
		}
		return nil
	}
	// The master service first: with links, a Service of the pod's namespace of the same name replaces it.
	if err := add(metav1.NamespaceDefault, func(s *corev1.Service) bool { return s.Name == "kubernetes" }); err != nil {
		return nil, err
	}
	if links := r.pod.Spec.EnableServiceLinks; links == nil || *links {
		if err := add(r.pod.Namespace, func(*corev1.Service) bool { return true }); err != nil {
			return nil, err
		}
	}
	for _, s := range byName {
		for _, kv := range serviceEnvVars(s) {
			r.serviceEnv[kv[0]] = kv[1]
		}
	}
	return r.serviceEnv, nil
}

// serviceEnvVars are a Service's environment variables, as a kubelet's envvars.FromServices makes them: the
// {SVC}_SERVICE_HOST/_PORT pair, one {SVC}_SERVICE_PORT_{NAME} per named port, and the Docker link variables.
// A Service without a ClusterIP has none.
func serviceEnvVars(s *corev1.Service) [][2]string {
	ip := s.Spec.ClusterIP
	if ip == "" || ip == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
		return nil
	}
	prefix := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
	out := [][2]string{{prefix + "_SERVICE_HOST", ip}, {prefix + "_SERVICE_PORT", strconv.Itoa(int(s.Spec.Ports[0].Port))}}
	for _, sp := range s.Spec.Ports {
		if sp.Name != "" {
			out = append(out, [2]string{prefix + "_SERVICE_PORT_" + strings.ToUpper(strings.ReplaceAll(sp.Name, "-", "_")), strconv.Itoa(int(sp.Port))})
		}
	}
	for i, sp := range s.Spec.Ports {
		proto := strings.ToLower(string(cmp.Or(sp.Protocol, corev1.ProtocolTCP)))
		url := proto + "://" + net.JoinHostPort(ip, strconv.Itoa(int(sp.Port)))
		if i == 0 {
			out = append(out, [2]string{prefix + "_PORT", url})
		}
		pp := fmt.Sprintf("%s_PORT_%d_%s", prefix, sp.Port, strings.ToUpper(proto))
		out = append(out, [2]string{pp, url}, [2]string{pp + "_PROTO", proto},
			[2]string{pp + "_PORT", strconv.Itoa(int(sp.Port))}, [2]string{pp + "_ADDR", ip})
	}
	return out
}

// envSource resolves an env var's valueFrom; skip is an optional reference to what does not exist.
func (r *runtimeResolver) envSource(c *corev1.Container, src *corev1.EnvVarSource) (val string, skip bool, err error) {
	switch {
	case src.FieldRef != nil:
		v, err := r.fieldRef(src.FieldRef)
		return v, false, err
	case src.ResourceFieldRef != nil:
		v, err := r.resourceRef(src.ResourceFieldRef, c)
		return v, false, err
	case src.ConfigMapKeyRef != nil:
		ref := src.ConfigMapKeyRef
		cm, err := r.configMap(ref.Name)
		if err != nil {
			return "", skippable(err, ref.Optional), nilIf(skippable(err, ref.Optional), err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			if ref.Optional != nil && *ref.Optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("couldn't find key %v in ConfigMap %v/%v", ref.Key, r.pod.Namespace, ref.Name)
		}
		return v, false, nil
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		s, err := r.secret(ref.Name)
		if err != nil {
			return "", skippable(err, ref.Optional), nilIf(skippable(err, ref.Optional), err)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			if ref.Optional != nil && *ref.Optional {
				return "", true, nil
			}
			return "", false, fmt.Errorf("couldn't find key %v in Secret %v/%v", ref.Key, r.pod.Namespace, ref.Name)
		}
		return string(v), false, nil
	case src.FileKeyRef != nil:
		return "", false, fmt.Errorf("fileKeyRef is not supported in a pod VM")
	}
	return "", false, nil
}

func nilIf(cond bool, err error) error {
	if cond {
		return nil
	}
	return err
}

// validEnvName is whether an envFrom key (with its prefix) can be a variable. A kubelet of this API version
// passes every key (the relaxed validation it shares with the API server); what could not be written as
// NAME=value (empty, non-printable or non-ASCII, '=') is skipped.
func validEnvName(name string) bool {
	return len(validation.IsRelaxedEnvVarName(name)) == 0
}

// fieldRef resolves a pod field as a kubelet's podFieldSelectorRuntimeValue and fieldpath.ExtractFieldPathAsString do.
func (r *runtimeResolver) fieldRef(fs *corev1.ObjectFieldSelector) (string, error) {
	if fs.APIVersion != "" && fs.APIVersion != "v1" {
		return "", fmt.Errorf("unsupported pod version: %s", fs.APIVersion)
	}
	p := r.pod
	if field, sub, ok := splitSubscriptedPath(fs.FieldPath); ok {
		switch field {
		case "metadata.annotations":
			if errs := validation.IsQualifiedName(strings.ToLower(sub)); len(errs) != 0 {
				return "", fmt.Errorf("invalid key subscript in %s: %s", fs.FieldPath, strings.Join(errs, ";"))
			}
			return p.Annotations[sub], nil
		case "metadata.labels":
			if errs := validation.IsQualifiedName(sub); len(errs) != 0 {
				return "", fmt.Errorf("invalid key subscript in %s: %s", fs.FieldPath, strings.Join(errs, ";"))
			}
			return p.Labels[sub], nil
		}
		return "", fmt.Errorf("field label does not support subscript: %s", fs.FieldPath)
	}
	switch fs.FieldPath {
	case "metadata.name":
		return p.Name, nil
	case "metadata.namespace":
		return p.Namespace, nil
	case "metadata.uid":
		return string(p.UID), nil
	case "metadata.labels":
		return formatMap(p.Labels), nil
	case "metadata.annotations":
		return formatMap(p.Annotations), nil
	case "spec.nodeName", "spec.host":
		return p.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return p.Spec.ServiceAccountName, nil
	case "status.podIP":
		if ips := r.podIPs(); len(ips) > 0 {
			return ips[0], nil
		}
		return "", nil
	case "status.podIPs":
		return strings.Join(r.podIPs(), ","), nil
	case "status.hostIP":
		if ips := r.hostIPs(); len(ips) > 0 {
			return ips[0], nil
		}
		return "", nil
	case "status.hostIPs":
		return strings.Join(r.hostIPs(), ","), nil
	}
	return "", fmt.Errorf("unsupported fieldPath: %v", fs.FieldPath)
}

// podIPs is the VM's address, or what the pod's status has when the caller knows none.
func (r *runtimeResolver) podIPs() []string {
	if r.podIP != "" {
		return []string{r.podIP}
	}
	var ips []string
	for _, ip := range r.pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && r.pod.Status.PodIP != "" {
		ips = []string{r.pod.Status.PodIP}
	}
	return ips
}

func (r *runtimeResolver) hostIPs() []string {
	if r.hostIP != "" {
		return []string{r.hostIP}
	}
	var ips []string
	for _, ip := range r.pod.Status.HostIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && r.pod.Status.HostIP != "" {
		ips = []string{r.pod.Status.HostIP}
	}
	return ips
}

// splitSubscriptedPath splits "metadata.labels['key']" into its path and key, as fieldpath.SplitMaybeSubscriptedPath.
func splitSubscriptedPath(fieldPath string) (string, string, bool) {
	if !strings.HasSuffix(fieldPath, "']") {
		return fieldPath, "", false
	}
	field, sub, ok := strings.Cut(strings.TrimSuffix(fieldPath, "']"), "['")
	if !ok || field == "" {
		return fieldPath, "", false
	}
	return field, sub, true
}

// formatMap renders labels or annotations as a kubelet does in a downward API file or env var: one key="value"
// line per key, sorted, values quoted and escaped as Go strings.
func formatMap(m map[string]string) string {
	var b []byte
	for _, k := range sortedMapKeys(m) {
		if len(b) > 0 {
			b = append(b, '\n')
		}
		b = append(b, k...)
		b = append(b, '=')
		b = strconv.AppendQuote(b, m[k])
	}
	return string(b)
}

// resourceRef resolves a resourceFieldRef for container c (or the container it names) as a kubelet does: a limit
// the container does not set is the pod's limit, else the VM's size (a kubelet's node allocatable).
func (r *runtimeResolver) resourceRef(fs *corev1.ResourceFieldSelector, c *corev1.Container) (string, error) {
	if fs.ContainerName != "" || c == nil {
		c = r.container(fs.ContainerName)
		if c == nil {
			return "", fmt.Errorf("container %s not found", fs.ContainerName)
		}
	}
	divisor := resource.MustParse("1")
	if !fs.Divisor.IsZero() {
		divisor = fs.Divisor
	}
	limits := r.defaultedLimits(c)
	requests := c.Resources.Requests
	kind, name, _ := strings.Cut(fs.Resource, ".")
	var list corev1.ResourceList
	switch kind {
	case "limits":
		list = limits
	case "requests":
		list = requests
	default:
		return "", fmt.Errorf("unsupported container resource : %v", fs.Resource)
	}
	q := list[corev1.ResourceName(name)]
	switch {
	case name == string(corev1.ResourceCPU):
		if divisor.MilliValue() == 0 {
			return "", fmt.Errorf("invalid divisor %s for %s", fs.Divisor.String(), fs.Resource)
		}
		return strconv.FormatInt(int64(math.Ceil(float64(q.MilliValue())/float64(divisor.MilliValue()))), 10), nil
	case name == string(corev1.ResourceMemory), name == string(corev1.ResourceEphemeralStorage),
		strings.HasPrefix(name, corev1.ResourceHugePagesPrefix):
		if divisor.Value() == 0 {
			return "", fmt.Errorf("invalid divisor %s for %s", fs.Divisor.String(), fs.Resource)
		}
		return strconv.FormatInt(int64(math.Ceil(float64(q.Value())/float64(divisor.Value()))), 10), nil
	}
	return "", fmt.Errorf("unsupported container resource : %v", fs.Resource)
}

// defaultedLimits is c's limits with cpu, memory and ephemeral-storage defaulted as a kubelet's
// defaultPodLimitsForDownwardAPI does, the VM's size standing for node allocatable.
func (r *runtimeResolver) defaultedLimits(c *corev1.Container) corev1.ResourceList {
	alloc := corev1.ResourceList{}
	if r.vmCPUs > 0 {
		alloc[corev1.ResourceCPU] = *resource.NewQuantity(int64(r.vmCPUs), resource.DecimalSI)
	}
	if r.vmMem > 0 {
		alloc[corev1.ResourceMemory] = *resource.NewQuantity(r.vmMem, resource.BinarySI)
	}
	if r.pod.Spec.Resources != nil {
		for _, n := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if q, ok := r.pod.Spec.Resources.Limits[n]; ok && !q.IsZero() {
				alloc[n] = q.DeepCopy()
			}
		}
	}
	limits := corev1.ResourceList{}
	for n, q := range c.Resources.Limits {
		limits[n] = q.DeepCopy()
	}
	for _, n := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage} {
		if q, ok := limits[n]; !ok || q.IsZero() {
			if a, ok := alloc[n]; ok {
				limits[n] = a
			}
		}
	}
	return limits
}

func (r *runtimeResolver) container(name string) *corev1.Container {
	for _, cs := range [][]corev1.Container{r.pod.Spec.Containers, r.pod.Spec.InitContainers} {
		for i := range cs {
			if cs[i].Name == name {
				return &cs[i]
			}
		}
	}
	return nil
}

// volume resolves one of the pod's volumes: an emptyDir's size, or the whole content of a files volume.
func (r *runtimeResolver) volume(v corev1.Volume) (protocol.Volume, error) {
	fail := func(err error) (protocol.Volume, error) {
		return protocol.Volume{}, fmt.Errorf("MountVolume.SetUp failed for volume %q : %w", v.Name, err)
	}
	payload := map[string]protocol.File{}
	var err error
	switch {
	case v.EmptyDir != nil:
		switch v.EmptyDir.Medium {
		case corev1.StorageMediumDefault, corev1.StorageMediumMemory:
		default:
			return fail(fmt.Errorf("emptyDir medium %s is not supported in a pod VM", v.EmptyDir.Medium))
		}
		var size int64
		if v.EmptyDir.SizeLimit != nil && v.EmptyDir.SizeLimit.Sign() > 0 {
			size = v.EmptyDir.SizeLimit.Value()
			if r.vmMem > 0 && size > r.vmMem {
				size = r.vmMem // as a kubelet caps a memory emptyDir at what the pod may use
			}
		}
		return protocol.Volume{Name: v.Name, EmptyDir: &protocol.EmptyDir{SizeLimit: size}}, nil
	case v.ConfigMap != nil:
		err = r.configMapFiles(payload, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, defaultModeOr(v.ConfigMap.DefaultMode))
	case v.Secret != nil:
		err = r.secretFiles(payload, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, defaultModeOr(v.Secret.DefaultMode))
	case v.DownwardAPI != nil:
		err = r.downwardAPIFiles(payload, v.DownwardAPI.Items, defaultModeOr(v.DownwardAPI.DefaultMode))
	case v.Projected != nil:
		err = r.projectedFiles(payload, v.Projected)
	default:
		return fail(fmt.Errorf("%s volumes are not supported in a pod VM", volumeType(v)))
	}
	if err != nil {
		return fail(err)
	}
	files := make([]protocol.File, 0, len(payload))
	for _, p := range sortedMapKeys(payload) {
		if err := validFilePath(p); err != nil {
			return fail(err)
		}
		f := payload[p]
		f.Path = p
		files = append(files, f)
	}
	return protocol.Volume{Name: v.Name, Files: files}, nil
}

func defaultModeOr(m *int32) int32 {
	if m == nil {
		return defaultFilesMode
	}
	return *m
}

func fileMode(m *int32, def int32) uint32 {
	if m != nil {
		def = *m
	}
	return uint32(def) & 0o7777
}

// configMapFiles adds a ConfigMap's keys (all, or items) as a kubelet's configmap.MakePayload does; a missing
// optional ConfigMap adds nothing.
func (r *runtimeResolver) configMapFiles(payload map[string]protocol.File, name string, items []corev1.KeyToPath, optional *bool, defMode int32) error {
	cm, err := r.configMap(name)
	if err != nil {
		if skippable(err, optional) {
			return nil
		}
		return err
	}
	if len(items) == 0 {
		for k, d := range cm.Data {
			payload[k] = protocol.File{Data: []byte(d), Mode: fileMode(nil, defMode)}
		}
		for k, d := range cm.BinaryData {
			payload[k] = protocol.File{Data: slices.Clone(d), Mode: fileMode(nil, defMode)}
		}
		return nil
	}
	for _, it := range items {
		var data []byte
		if d, ok := cm.Data[it.Key]; ok {
			data = []byte(d)
		} else if d, ok := cm.BinaryData[it.Key]; ok {
			data = slices.Clone(d)
		} else {
			if optional != nil && *optional {
				continue
			}
			return fmt.Errorf("configmap references non-existent config key: %s", it.Key)
		}
		payload[it.Path] = protocol.File{Data: data, Mode: fileMode(it.Mode, defMode)}
	}
	return nil
}

// secretFiles adds a Secret's keys as a kubelet's secret.MakePayload does.
func (r *runtimeResolver) secretFiles(payload map[string]protocol.File, name string, items []corev1.KeyToPath, optional *bool, defMode int32) error {
	s, err := r.secret(name)
	if err != nil {
		if skippable(err, optional) {
			return nil
		}
		return err
	}
	if len(items) == 0 {
		for k, d := range s.Data {
			payload[k] = protocol.File{Data: slices.Clone(d), Mode: fileMode(nil, defMode)}
		}
		return nil
	}
	for _, it := range items {
		d, ok := s.Data[it.Key]
		if !ok {
			if optional != nil && *optional {
				continue
			}
			return fmt.Errorf("references non-existent secret key: %s", it.Key)
		}
		payload[it.Path] = protocol.File{Data: slices.Clone(d), Mode: fileMode(it.Mode, defMode)}
	}
	return nil
}

// downwardAPIFiles adds downward API items as a kubelet's downwardapi.CollectData does.
func (r *runtimeResolver) downwardAPIFiles(payload map[string]protocol.File, items []corev1.DownwardAPIVolumeFile, defMode int32) error {
	for _, it := range items {
		var (
			v   string
			err error
		)
		switch {
		case it.FieldRef != nil:
			v, err = r.fieldRef(it.FieldRef)
		case it.ResourceFieldRef != nil:
			v, err = r.resourceRef(it.ResourceFieldRef, nil)
		}
		if err != nil {
			return err
		}
		payload[path.Clean(it.Path)] = protocol.File{Data: []byte(v), Mode: fileMode(it.Mode, defMode)}
	}
	return nil
}

// projectedFiles adds a projected volume's sources in order, later ones overwriting a path, as a kubelet does.
func (r *runtimeResolver) projectedFiles(payload map[string]protocol.File, p *corev1.ProjectedVolumeSource) error {
	defMode := defaultModeOr(p.DefaultMode)
	for _, src := range p.Sources {
		var err error
		switch {
		case src.Secret != nil:
			err = r.secretFiles(payload, src.Secret.Name, src.Secret.Items, src.Secret.Optional, defMode)
		case src.ConfigMap != nil:
			err = r.configMapFiles(payload, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, defMode)
		case src.DownwardAPI != nil:
			err = r.downwardAPIFiles(payload, src.DownwardAPI.Items, defMode)
		case src.ServiceAccountToken != nil:
			tp := src.ServiceAccountToken
			exp := defaultTokenExpiration
			if tp.ExpirationSeconds != nil {
				exp = *tp.ExpirationSeconds
			}
			if r.l.Token == nil {
				return fmt.Errorf("the node requests no service account tokens")
			}
			var tok string
			tok, err = r.l.Token(r.pod, tp.Audience, exp)
			if err == nil {
				payload[tp.Path] = protocol.File{Data: []byte(tok), Mode: fileMode(nil, defMode)}
			}
		case src.ClusterTrustBundle != nil:
			err = fmt.Errorf("projected clusterTrustBundle sources are not supported in a pod VM")
		case src.PodCertificate != nil:
			err = fmt.Errorf("projected podCertificate sources are not supported in a pod VM")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// validFilePath refuses what a kubelet's atomic writer refuses: absolute paths and paths with '..' elements or
// starting with '..'.
func validFilePath(p string) error {
	switch {
	case p == "" || p == ".":
		return fmt.Errorf("invalid path: must not be empty")
	case path.IsAbs(p):
		return fmt.Errorf("invalid path %q: must be relative path", p)
	case strings.HasPrefix(p, ".."):
		return fmt.Errorf("invalid path %q: must not start with '..'", p)
	case slices.Contains(strings.Split(p, "/"), ".."):
		return fmt.Errorf("invalid path %q: must not contain '..'", p)
	}
	return nil
}

// containerMounts maps a container's volumeMounts as a kubelet's makeMounts does: subPathExpr expanded with the
// container's environment, and files volumes always read-only.
func containerMounts(c *corev1.Container, filesVolume map[string]bool, env map[string]string) ([]protocol.Mount, error) {
	var mounts []protocol.Mount
	for _, m := range c.VolumeMounts {
		files, ok := filesVolume[m.Name]
		if !ok {
			return nil, fmt.Errorf("cannot find volume %q to mount into container %q", m.Name, c.Name)
		}
		sub := m.SubPath
		if m.SubPathExpr != "" {
			var missing []string
			sub = expandVars(m.SubPathExpr, func(k string) string {
				v := env[k]
				if v == "" && !slices.Contains(missing, k) {
					missing = append(missing, k)
				}
				return v
			})
			if len(missing) > 0 {
				slices.Sort(missing)
				return nil, fmt.Errorf("missing value for %s (subPathExpr of volume mount %q in container %q)",
					strings.Join(missing, ", "), m.Name, c.Name)
			}
		}
		if sub != "" {
			if path.IsAbs(sub) {
				return nil, fmt.Errorf("error SubPath `%s` must not be an absolute path (container %q)", sub, c.Name)
			}
			if slices.Contains(strings.Split(sub, "/"), "..") {
				return nil, fmt.Errorf("unable to provision SubPath `%s`: must not contain '..' (container %q)", sub, c.Name)
			}
		}
		mounts = append(mounts, protocol.Mount{Volume: m.Name, Path: m.MountPath, SubPath: sub, ReadOnly: m.ReadOnly || files})
	}
	return mounts, nil
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

// volumeFilesHash identifies a files volume's content: a sha256 over its files' paths, modes and data, in path
// order, so that a change of any is seen.
func volumeFilesHash(v protocol.Volume) string {
	files := slices.Clone(v.Files)
	slices.SortFunc(files, func(a, b protocol.File) int { return strings.Compare(a.Path, b.Path) })
	h := sha256.New()
	var n [8]byte
	for _, f := range files {
		binary.BigEndian.PutUint64(n[:], uint64(len(f.Path)))
		h.Write(n[:])
		h.Write([]byte(f.Path))
		binary.BigEndian.PutUint64(n[:], uint64(f.Mode))
		h.Write(n[:])
		binary.BigEndian.PutUint64(n[:], uint64(len(f.Data)))
		h.Write(n[:])
		h.Write(f.Data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sortedMapKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
