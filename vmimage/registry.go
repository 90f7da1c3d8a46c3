package vmimage

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Source says where container images come from: registries (with credentials, mirrors and plain-HTTP hosts) or
// OCI image layouts on disk ("oci:<dir>[:<tag>|@<digest>]").
type Source struct {
	// Keychain supplies registry credentials; authn.DefaultKeychain (the docker config) when nil.
	Keychain authn.Keychain
	// Mirrors maps a registry host to mirror hosts tried in order before it, as containerd's hosts.toml does.
	Mirrors map[string][]string
	// Insecure lists registry hosts served over plain HTTP (local registries).
	Insecure []string
	// Platform picks a manifest from an index; linux/amd64 when empty.
	Platform v1.Platform
	// Transport carries registry requests; http.DefaultTransport when nil.
	Transport http.RoundTripper
}

// Resolved is a container image pinned by digest.
type Resolved struct {
	Ref    string  // as the user wrote it
	Digest v1.Hash // manifest digest of the platform's image
	From   string  // where it was resolved: the registry, a mirror, or a layout
	// Open returns the image; its layers are fetched lazily within ctx.
	Open func(ctx context.Context) (v1.Image, error)
}

func (s *Source) platform() v1.Platform {
	if s.Platform.OS == "" {
		return v1.Platform{OS: "linux", Architecture: "amd64"}
	}
	return s.Platform
}

// Resolve pins ref to a digest and returns the image for the source's platform. Mirrors are tried before the
// registry; an error from every place names each cause.
func (s *Source) Resolve(ctx context.Context, ref string) (*Resolved, error) {
	if dir, ok := strings.CutPrefix(ref, "oci:"); ok {
		return s.resolveLayout(ref, dir)
	}
	r, err := name.ParseReference(ref, name.WeakValidation)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	var errs []error
	for _, host := range append(append([]string(nil), s.Mirrors[r.Context().RegistryStr()]...), r.Context().RegistryStr()) {
		open, digest, err := s.fetch(ctx, r, host)
		if err == nil {
			return &Resolved{Ref: ref, Digest: digest, Open: open, From: host}, nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", host, err))
	}
	return nil, fmt.Errorf("resolving image %q: %w", ref, errors.Join(errs...))
}

func (s *Source) fetch(ctx context.Context, r name.Reference, host string) (func(context.Context) (v1.Image, error), v1.Hash, error) {
	var nameOpts []name.Option
	for _, h := range s.Insecure {
		if h == host {
			nameOpts = append(nameOpts, name.Insecure)
		}
	}
	repo, err := name.NewRepository(host+"/"+r.Context().RepositoryStr(), nameOpts...)
	if err != nil {
		return nil, v1.Hash{}, err
	}
	var at name.Reference = repo.Tag(r.Identifier())
	if d, ok := r.(name.Digest); ok {
		at = repo.Digest(d.DigestStr())
	}
	kc := s.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	tr := s.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	// Credentials are looked up for the registry the user named, also when a mirror serves it.
	auth, err := kc.Resolve(r.Context())
	if host != r.Context().RegistryStr() {
		auth, err = kc.Resolve(repo)
	}
	if err != nil {
		return nil, v1.Hash{}, fmt.Errorf("credentials: %w", err)
	}
	opts := []remote.Option{remote.WithAuth(auth), remote.WithTransport(tr), remote.WithPlatform(s.platform())}
	img, err := remote.Image(at, append(opts, remote.WithContext(ctx))...)
	if err != nil {
		return nil, v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, v1.Hash{}, err
	}
	open := func(ctx context.Context) (v1.Image, error) {
		return remote.Image(repo.Digest(digest.String()), append(opts, remote.WithContext(ctx))...)
	}
	return open, digest, nil
}

func (s *Source) resolveLayout(ref, spec string) (*Resolved, error) {
	dir, want := spec, ""
	if i := strings.LastIndexAny(spec, ":@"); i > 0 && !strings.Contains(spec[i:], "/") {
		dir, want = spec[:i], spec[i+1:]
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("image %q: reading OCI layout, %w", ref, err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	plat := s.platform()
	for _, d := range m.Manifests {
		if want != "" && d.Digest.String() != want && d.Annotations["org.opencontainers.image.ref.name"] != want {
			continue
		}
		if d.Platform != nil && !d.Platform.Satisfies(plat) {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			continue // an index within the index: not supported here
		}
		return &Resolved{Ref: ref, Digest: d.Digest, From: dir, Open: func(context.Context) (v1.Image, error) { return img, nil }}, nil
	}
	return nil, fmt.Errorf("image %q: no image for %s in OCI layout %s", ref, plat.String(), dir)
}

// DockerConfigKeychain reads credentials from docker config.json documents, such as the data of Kubernetes
// kubernetes.io/dockerconfigjson pull secrets, in order: the first document with the registry wins.
func DockerConfigKeychain(configs ...[]byte) (authn.Keychain, error) {
	k := dockerKeychain{}
	for i, b := range configs {
		var cfg struct {
			Auths map[string]struct {
				Auth     string `json:"auth"`
				Username string `json:"username"`
				Password string `json:"password"`
			} `json:"auths"`
		}
		if err := json.Unmarshal(b, &cfg); err != nil {
			return nil, fmt.Errorf("docker config %d: %w", i, err)
		}
		for host, a := range cfg.Auths {
			host = normalizeRegistry(host)
			if _, seen := k[host]; seen {
				continue
			}
			ac := authn.AuthConfig{Username: a.Username, Password: a.Password}
			if a.Auth != "" {
				dec, err := base64.StdEncoding.DecodeString(a.Auth)
				if err != nil {
					return nil, fmt.Errorf("docker config %d: auth for %s: %w", i, host, err)
				}
				u, p, ok := strings.Cut(string(dec), ":")
				if !ok {
					return nil, fmt.Errorf("docker config %d: auth for %s: want user:password", i, host)
				}
				ac.Username, ac.Password = u, p
			}
			k[host] = ac
		}
	}
	return k, nil
}

type dockerKeychain map[string]authn.AuthConfig

func (k dockerKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if a, ok := k[normalizeRegistry(r.RegistryStr())]; ok {
		return authn.FromConfig(a), nil
	}
	return authn.Anonymous, nil
}

func normalizeRegistry(h string) string {
	h = strings.TrimPrefix(strings.TrimPrefix(h, "https://"), "http://")
	h, _, _ = strings.Cut(h, "/")
	if h == "docker.io" || h == "registry-1.docker.io" {
		return "index.docker.io"
	}
	return h
}
