package provider

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/agent/protocol"
)

// volume resolves one of the pod's volumes: an emptyDir's size, the whole content of a files volume, or an image
// volume, which is the pod's VM image's (vmimage.FromPod) and carries nothing at run time.
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
		return protocol.Volume{Name: v.Name, EmptyDir: &protocol.EmptyDir{SizeLimit: size,
			Memory: v.EmptyDir.Medium == corev1.StorageMediumMemory}}, nil
	case v.Image != nil:
		return protocol.Volume{Name: v.Name, Image: true}, nil
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
// container's environment, and files and image volumes always read-only.
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
