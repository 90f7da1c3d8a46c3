package provider

import (
	"cmp"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

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
					r.warn(reasonOptionalConfigMapNotFound, "configmap %q not found", ef.ConfigMapRef.Name)
					continue
				}
				return nil, nil, fmt.Errorf("%w (envFrom of container %q)", missingRef(err, "ConfigMap", ef.ConfigMapRef.Name), c.Name)
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
					r.warn(reasonOptionalSecretNotFound, "secret %q not found", ef.SecretRef.Name)
					continue
				}
				return nil, nil, fmt.Errorf("%w (envFrom of container %q)", missingRef(err, "Secret", ef.SecretRef.Name), c.Name)
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
			v, skip, err := r.envSource(c, e.Name, e.ValueFrom)
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

// envSource resolves the valueFrom of env var name; skip is an optional reference to what does not exist.
func (r *runtimeResolver) envSource(c *corev1.Container, name string, src *corev1.EnvVarSource) (val string, skip bool, err error) {
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
			if skippable(err, ref.Optional) {
				r.warn(reasonOptionalConfigMapNotFound, "skipping optional envvar %q: configmap %q not found", name, ref.Name)
				return "", true, nil
			}
			return "", false, missingRef(err, "ConfigMap", ref.Name)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			if ref.Optional != nil && *ref.Optional {
				r.warn(reasonOptionalConfigMapKeyNotFound, "skipping optional envvar %q: key %q does not exist in configmap %q", name, ref.Key, ref.Name)
				return "", true, nil
			}
			return "", false, &refError{Reason: reasonMandatoryConfigMapKeyNotFound,
				Message: fmt.Sprintf("key %q does not exist in configmap %q", ref.Key, ref.Name), err: fmt.Errorf("couldn't find key %v in ConfigMap %v/%v", ref.Key, r.pod.Namespace, ref.Name)}
		}
		return v, false, nil
	case src.SecretKeyRef != nil:
		ref := src.SecretKeyRef
		s, err := r.secret(ref.Name)
		if err != nil {
			if skippable(err, ref.Optional) {
				r.warn(reasonOptionalSecretNotFound, "skipping optional envvar %q: secret %q not found", name, ref.Name)
				return "", true, nil
			}
			return "", false, missingRef(err, "Secret", ref.Name)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			if ref.Optional != nil && *ref.Optional {
				r.warn(reasonOptionalSecretKeyNotFound, "skipping optional envvar %q: key %q does not exist in secret %q", name, ref.Key, ref.Name)
				return "", true, nil
			}
			return "", false, &refError{Reason: reasonMandatorySecretKeyNotFound,
				Message: fmt.Sprintf("key %q does not exist in secret %q", ref.Key, ref.Name), err: fmt.Errorf("couldn't find key %v in Secret %v/%v", ref.Key, r.pod.Namespace, ref.Name)}
		}
		return string(v), false, nil
	case src.FileKeyRef != nil:
		return "", false, fmt.Errorf("fileKeyRef is not supported in a pod VM")
	}
	return "", false, nil
}

// The reasons of the Events virtual-kubelet's own environment resolution emits (internal/podutils/env.go); i2kit
// resolves the environment itself and emits them beside the kubelet's "Failed", so that tools and virtual-kubelet's
// e2e suite that wait on them see them.
const (
	reasonOptionalConfigMapNotFound     = "OptionalConfigMapNotFound"
	reasonOptionalConfigMapKeyNotFound  = "OptionalConfigMapKeyNotFound"
	reasonOptionalSecretNotFound        = "OptionalSecretNotFound"
	reasonOptionalSecretKeyNotFound     = "OptionalSecretKeyNotFound"
	reasonMandatoryConfigMapNotFound    = "MandatoryConfigMapNotFound"
	reasonMandatoryConfigMapKeyNotFound = "MandatoryConfigMapKeyNotFound"
	reasonMandatorySecretNotFound       = "MandatorySecretNotFound"
	reasonMandatorySecretKeyNotFound    = "MandatorySecretKeyNotFound"
)

// envEvent is a Warning Event the resolution of a pod's environment asks for.
type envEvent struct{ Reason, Message string }

// refError is a mandatory reference to a ConfigMap, a Secret or one of their keys that cannot be resolved; Reason
// and Message are virtual-kubelet's Event for it.
type refError struct {
	Reason, Message string
	err             error
}

func (e *refError) Error() string { return e.err.Error() }
func (e *refError) Unwrap() error { return e.err }

// missingRef wraps a failed lookup of a mandatory ConfigMap or Secret (kind) in a refError when the object does
// not exist; other errors (the cache not synced, a transport error) are returned as they are.
func missingRef(err error, kind, name string) error {
	if !apierrors.IsNotFound(err) {
		return err
	}
	if kind == "Secret" {
		return &refError{Reason: reasonMandatorySecretNotFound, Message: fmt.Sprintf("secret %q not found", name), err: err}
	}
	return &refError{Reason: reasonMandatoryConfigMapNotFound, Message: fmt.Sprintf("configmap %q not found", name), err: err}
}

// warn records an Event for an optional reference that was skipped, once per reason and message.
func (r *runtimeResolver) warn(reason, format string, args ...any) {
	ev := envEvent{Reason: reason, Message: fmt.Sprintf(format, args...)}
	if !slices.Contains(r.warnings, ev) {
		r.warnings = append(r.warnings, ev)
	}
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
