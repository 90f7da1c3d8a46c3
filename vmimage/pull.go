package vmimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// PullPolicy says when a container image is looked up in its registry, as a container's imagePullPolicy does.
type PullPolicy string

const (
	// PullAlways resolves the reference in the registry at every build (with the pod's credentials).
	PullAlways PullPolicy = "Always"
	// PullIfNotPresent uses what this node resolved the reference to before, when the image is still in the
	// store, without contacting the registry; otherwise it resolves it as PullAlways does.
	PullIfNotPresent PullPolicy = "IfNotPresent"
	// PullNever uses only what the store holds, else fails with a NeverPullError.
	PullNever PullPolicy = "Never"
)

// Pull is how one Ensure call gets its container images, as a kubelet pulls a pod's. The zero value resolves
// every reference in its registry with the Source's credentials.
//
// An image already on the node is used for a pod under IfNotPresent or Never (or when pinned by digest) only if
// it was resolved without credentials, or with the node's own, or with credentials among the pod's: an image
// pulled with another pod's pull secrets is private to whoever holds them. Under IfNotPresent (and for pinned
// digests) the pod's access is otherwise checked with the registry — a HEAD of the manifest with the pod's
// credentials, which pulls nothing — and under Never the image counts as not present, as a kubelet with
// KubeletEnsureSecretPulledImages does.
type Pull struct {
	// Keychains hold a pod's credentials (one per pull secret), tried in order before the Source's Keychain:
	// credentials a registry refuses make the next ones be tried.
	Keychains []authn.Keychain
	// Policies maps an image reference (as containers name it) to its pull policy; PullAlways when absent.
	Policies map[string]PullPolicy
}

func (p Pull) policy(ref string) PullPolicy {
	if pp, ok := p.Policies[ref]; ok && pp != "" {
		return pp
	}
	return PullAlways
}

// ErrNeverPull is matched (errors.Is) by a NeverPullError.
var ErrNeverPull = errors.New("image is not present with pull policy of Never")

// NeverPullError is the error for an image a pod may not use from the node's store while its pull policy is
// Never: the kubelet's ErrImageNeverPull.
type NeverPullError struct {
	Ref string
}

func (e *NeverPullError) Error() string {
	return fmt.Sprintf("Container image %q is not present with pull policy of Never", e.Ref)
}

// Is makes errors.Is(err, ErrNeverPull) true.
func (e *NeverPullError) Is(target error) bool { return target == ErrNeverPull }

// resolveFor pins ref for a pod under policy. See Pull for when the store's record is used without asking the
// registry.
func (b *Builder) resolveFor(ctx context.Context, ref string, policy PullPolicy, pod []authn.Keychain) (*Resolved, error) {
	if strings.HasPrefix(ref, "oci:") {
		return b.Source.Resolve(ctx, ref) // a layout on disk is present under every policy
	}
	r, err := name.ParseReference(ref, name.WeakValidation)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	platform := b.Source.platform().String()
	_, pinned := r.(name.Digest)
	if policy != PullAlways || pinned {
		if rec, ok := b.Store.pulled(platform, r); ok {
			return b.present(ctx, ref, r, rec, policy, pod)
		}
		if policy == PullNever {
			return nil, &NeverPullError{Ref: ref}
		}
	}
	res, err := b.Source.resolve(ctx, ref, pod)
	if err != nil {
		return nil, err
	}
	// A disk built before configurations were kept in the store: keep its configuration now, so that the image
	// counts as present for later pods (a build, which needs it, keeps it otherwise). It is best effort: this
	// pull needs it only if it builds, and then the build fetches it again.
	if disk, _ := diskBlob(res.repo, res.Digest.String()); b.Store.hasBlob(disk) && !b.Store.hasBlob(configBlob(res.Digest.String())) {
		b.imageConfig(ctx, res) //nolint:errcheck
	}
	b.Store.recordPull(platform, r, res.Digest.String(), res.pulledWith) //nolint:errcheck // a lost record costs a registry lookup later
	return res, nil
}

// present returns the image the store holds for ref, once the pod may use it (see Pull).
func (b *Builder) present(ctx context.Context, ref string, r name.Reference, rec pullRecord,
	policy PullPolicy, pod []authn.Keychain) (*Resolved, error) {
	ok, err := b.mayUse(rec, r, pod)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	if !ok {
		if policy == PullNever {
			return nil, &NeverPullError{Ref: ref}
		}
		c, err := b.Source.check(ctx, r, rec.Digest, pod)
		if err != nil {
			return nil, fmt.Errorf("checking access to image %q with the registry: %w", ref, err)
		}
		b.Store.recordPull(b.Source.platform().String(), r, rec.Digest, c) //nolint:errcheck // a lost record costs a registry lookup later
	}
	digest, err := v1.NewHash(rec.Digest)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	// The build reads the disk and the config from the store; open is only needed if they went meanwhile.
	open := func(ctx context.Context) (v1.Image, credential, error) {
		if policy == PullNever {
			return nil, credential{}, &NeverPullError{Ref: ref}
		}
		res, err := b.Source.resolve(ctx, r.Context().Digest(rec.Digest).String(), pod)
		if err != nil {
			return nil, credential{}, err
		}
		return res.open(ctx)
	}
	return newResolved(ref, r.Context().Name(), "store", digest, credential{}, open), nil
}

// mayUse reports whether a pod may use an image the store holds without asking the registry: it was resolved
// without credentials or with the node's, or with credentials among the pod's for r's registry or its mirrors.
func (b *Builder) mayUse(rec pullRecord, r name.Reference, pod []authn.Keychain) (bool, error) {
	if rec.Public {
		return true, nil
	}
	if len(pod) == 0 {
		return false, nil
	}
	for _, host := range b.Source.hosts(r) {
		repo, err := b.Source.at(r, host)
		if err != nil {
			return false, err
		}
		creds, err := b.Source.credentials(r.Context(), repo, pod)
		if err != nil {
			return false, err
		}
		for _, c := range creds {
			if c.pod && slices.Contains(rec.Credentials, b.Store.credentialHash(c.id)) {
				return true, nil
			}
		}
	}
	return false, nil
}

// imageConfig returns an image's configuration file from the store, fetching and keeping it on a miss.
func (b *Builder) imageConfig(ctx context.Context, r *Resolved) (*v1.ConfigFile, error) {
	blob := configBlob(r.Digest.String())
	if raw, err := b.Store.readBlob(blob); err == nil {
		return v1.ParseConfigFile(bytes.NewReader(raw))
	}
	img, err := r.Open(ctx)
	if err != nil {
		return nil, err
	}
	_, raw, cf, err := inspect(img)
	if err != nil {
		return nil, err
	}
	if err := b.Store.writeBlob(blob, raw); err != nil {
		return nil, fmt.Errorf("storing the image configuration, %w", err)
	}
	return cf, nil
}
