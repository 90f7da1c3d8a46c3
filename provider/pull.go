package provider

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"

	"github.com/i2kit/i2kit/vmimage"
)

// ImageBuilder makes a pod's VM image (vmimage.Builder).
type ImageBuilder interface {
	// EnsureWith returns the image for spec in format, pulling container images as pull says: with the pod's
	// credentials first and under its containers' pull policies. A NeverPullError (vmimage.ErrNeverPull) says an
	// image is not on the node under pull policy Never.
	EnsureWith(ctx context.Context, spec *vmimage.Spec, format string, pull vmimage.Pull) (*vmimage.Image, error)
}

var _ ImageBuilder = (*vmimage.Builder)(nil)

const (
	// pullBackoff and maxPullBackoff are the kubelet's image pull back-off: 10 s, doubling to 5 min.
	pullBackoff    = 10 * time.Second
	maxPullBackoff = 5 * time.Minute
	// pullTimeout bounds one attempt at building a pod's VM image.
	pullTimeout = 15 * time.Minute
)

// pullImage builds the pod's VM image as a kubelet pulls a pod's images: with the pod's imagePullSecrets before the
// node's credentials, under each container's imagePullPolicy. An image the node pulled with another pod's secrets is
// not lent to this pod under IfNotPresent or Never unless it holds those credentials or the registry lets it in
// (vmimage.Pull says how), as a kubelet with KubeletEnsureSecretPulledImages does: without that, a pod could run a
// private image it has no right to. A pull secret that cannot be read is left out with a Warning Event
// FailedToRetrieveImagePullSecret, as a kubelet does. pullImage makes one attempt. A failure leaves the containers
// waiting with ErrImagePull (ErrImageNeverPull for an image absent under policy Never), says why in a Warning Event,
// and schedules the next attempt with the kubelet's back-off on the work queue (see pullDue), for as long as the pod
// is on the node, so that a pull secret or an image that comes later lets the pod start. It returns false on
// failure.
func (p *Provider) pullImage(ctx context.Context, pod *corev1.Pod, v *podVM) (*vmimage.Image, bool) {
	pull, unread, err := p.pullFor(pod)
	v.mu.Lock()
	u := strings.Join(unread, ", ")
	newUnread := u != v.pullUnread
	v.pullUnread = u
	v.mu.Unlock()
	if newUnread && u != "" {
		p.cfg.Events.Eventf(pod, corev1.EventTypeWarning, "FailedToRetrieveImagePullSecret",
			"Unable to retrieve some image pull secrets (%s); attempting to pull the image may not succeed.", u)
	}
	var img *vmimage.Image
	if err == nil {
		t0 := time.Now()
		p.cfg.Events.Event(pod, corev1.EventTypeNormal, "Pulling", "Building the VM image (pulling "+images(pod)+")")
		actx, cancel := context.WithTimeout(ctx, pullTimeout)
		img, err = p.builder.EnsureWith(actx, vmimage.FromPod(pod), p.backend.Format(), pull)
		cancel()
		if err == nil {
			p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "Pulled", "VM image %s ready in %s", img.Key[:12], time.Since(t0).Round(time.Millisecond))
			return img, true
		}
	}
	if ctx.Err() != nil {
		return nil, false // the pod is gone
	}
	reason, msg := "ErrImagePull", "building the VM image: "+err.Error()
	var never *vmimage.NeverPullError
	if errors.As(err, &never) {
		reason, msg = "ErrImageNeverPull", never.Error()
	}
	now := time.Now()
	v.mu.Lock()
	newErr := msg != v.pullErr
	v.pullErr = msg
	if v.pullWait == 0 {
		v.pullWait = p.pullBackoff
	}
	wait := v.pullWait
	v.pullWait = min(2*wait, maxPullBackoff)
	v.pullRetry = now.Add(wait)
	v.pullBackoff = time.Time{}
	if reason == "ErrImagePull" {
		// As on a kubelet: ErrImagePull until the next look at the pod, then ImagePullBackOff until the next attempt.
		v.pullBackoff = now.Add(min(wait, time.Second))
	}
	v.mu.Unlock()
	if newErr {
		if reason == "ErrImageNeverPull" {
			p.cfg.Events.Event(pod, corev1.EventTypeWarning, reason, msg)
		} else {
			p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Failed", msg)
		}
		p.cfg.Events.Event(pod, corev1.EventTypeWarning, "Failed", "Error: "+reason)
	}
	if !p.storeIfCurrent(pod, pendingStatus(pod, p.cfg.InternalIP, reason, msg, now)) {
		return nil, false
	}
	if reason == "ErrImagePull" {
		p.cfg.Events.Eventf(pod, corev1.EventTypeNormal, "BackOff", "Back-off pulling image %q", images(pod))
	}
	p.queue.AddAfter(v.uid, min(wait, time.Second))
	return nil, false
}

// pullDue does what a failed pull's back-off has made due (sync calls it): ImagePullBackOff once the pod has shown
// ErrImagePull for a moment, a new attempt once the back-off is over. It returns how long until the next is due, 0
// for nothing.
func (p *Provider) pullDue(pod *corev1.Pod, v *podVM, now time.Time) time.Duration {
	v.mu.Lock()
	if v.pull != nil || v.pullRetry.IsZero() {
		v.mu.Unlock()
		return 0
	}
	showBackoff := !v.pullBackoff.IsZero() && !now.Before(v.pullBackoff)
	if showBackoff {
		v.pullBackoff = time.Time{}
	}
	retry := !now.Before(v.pullRetry)
	if retry {
		v.pullRetry = time.Time{}
	}
	msg, next := v.pullErr, v.pullRetry.Sub(now)
	v.mu.Unlock()
	if showBackoff {
		backoff := fmt.Sprintf("Back-off pulling image %q: %s", images(pod), msg)
		p.storeIfCurrent(pod, pendingStatus(pod, p.cfg.InternalIP, "ImagePullBackOff", backoff, now))
	}
	if retry {
		p.startPull(pod, v)
		return 0
	}
	return next
}

// pullFor is how the pod's images are pulled: a keychain per pull secret of the pod's namespace, in the order the
// pod lists them, and each image's pull policy. unread names the secrets that could not be read (missing, or not
// of a docker config type); a secret of a docker config type that does not decode is an error.
func (p *Provider) pullFor(pod *corev1.Pod) (pull vmimage.Pull, unread []string, err error) {
	pull.Policies = pullPolicies(pod)
	p.mu.Lock()
	c := p.cluster
	p.mu.Unlock()
	for _, ref := range pod.Spec.ImagePullSecrets {
		if c == nil || c.secrets == nil {
			unread = append(unread, ref.Name)
			continue
		}
		s, err := c.secrets.Secrets(pod.Namespace).Get(ref.Name)
		if err != nil {
			unread = append(unread, ref.Name)
			continue
		}
		kc, ok, err := secretKeychain(s)
		if err != nil {
			return vmimage.Pull{}, unread, fmt.Errorf("imagePullSecrets: %w", err)
		}
		if !ok {
			unread = append(unread, fmt.Sprintf("%s: type %s, want %s or %s", ref.Name, s.Type, corev1.SecretTypeDockerConfigJson, corev1.SecretTypeDockercfg))
			continue
		}
		pull.Keychains = append(pull.Keychains, kc)
	}
	return pull, unread, nil
}

// secretKeychain reads a pull secret: kubernetes.io/dockerconfigjson holds a docker config.json ({"auths": ...}),
// kubernetes.io/dockercfg the bare auths map of the older ~/.dockercfg. ok is false for other types, which a
// kubelet ignores.
func secretKeychain(s *corev1.Secret) (kc authn.Keychain, ok bool, err error) {
	var doc []byte
	switch s.Type {
	case corev1.SecretTypeDockerConfigJson:
		doc = s.Data[corev1.DockerConfigJsonKey]
	case corev1.SecretTypeDockercfg:
		auths := s.Data[corev1.DockerConfigKey]
		if !json.Valid(auths) {
			return nil, false, fmt.Errorf("secret %s: %s is not JSON", s.Name, corev1.DockerConfigKey)
		}
		doc, _ = json.Marshal(struct {
			Auths json.RawMessage `json:"auths"`
		}{auths})
	default:
		return nil, false, nil
	}
	kc, err = vmimage.DockerConfigKeychain(doc)
	if err != nil {
		return nil, false, fmt.Errorf("secret %s: %w", s.Name, err)
	}
	return kc, true, nil
}

// pullPolicies maps each image of the pod, its containers' and its image volumes', to its pull policy. Users of
// one image share its pull (the VM image resolves each reference once): the policy that asks the registry most
// wins — Always, then IfNotPresent, then Never.
func pullPolicies(pod *corev1.Pod) map[string]vmimage.PullPolicy {
	rank := map[vmimage.PullPolicy]int{vmimage.PullNever: 0, vmimage.PullIfNotPresent: 1, vmimage.PullAlways: 2}
	out := map[string]vmimage.PullPolicy{}
	add := func(image string, pp vmimage.PullPolicy) {
		if cur, ok := out[image]; !ok || rank[pp] > rank[cur] {
			out[image] = pp
		}
	}
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		add(c.Image, pullPolicy(c))
	}
	for _, v := range pod.Spec.Volumes {
		if v.Image != nil {
			add(v.Image.Reference, imagePullPolicy(v.Image.Reference, v.Image.PullPolicy))
		}
	}
	return out
}

// pullPolicy is a container's imagePullPolicy, defaulted as imagePullPolicy says.
func pullPolicy(c corev1.Container) vmimage.PullPolicy {
	return imagePullPolicy(c.Image, c.ImagePullPolicy)
}

// imagePullPolicy is an image's pull policy (a container's imagePullPolicy, an image volume's pullPolicy),
// defaulted as the API server does when it is empty: Always for an image tagged latest or not tagged, else
// IfNotPresent.
func imagePullPolicy(image string, policy corev1.PullPolicy) vmimage.PullPolicy {
	switch policy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
		return vmimage.PullPolicy(policy)
	}
	ref, err := name.ParseReference(image, name.WeakValidation)
	if err != nil {
		return vmimage.PullAlways
	}
	if t, ok := ref.(name.Tag); ok && t.TagStr() == "latest" {
		return vmimage.PullAlways
	}
	return vmimage.PullIfNotPresent
}
