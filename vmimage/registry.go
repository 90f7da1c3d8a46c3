package vmimage

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Source says where container images come from: registries (with credentials, mirrors and plain-HTTP hosts) or,
// when AllowLocalLayouts is set, OCI image layouts on disk ("oci:<dir>[:<tag>|@<digest>]"). Everything a source
// sends is bounded and checked (media types, sizes, digests) before it is used.
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
	// AllowLocalLayouts admits "oci:<dir>" references: paths on this machine, for `i2kit image build`. A node
	// leaves it false, so that a pod names registries and never the node's files.
	AllowLocalLayouts bool
	// MaxImageBytes bounds the uncompressed bytes of one container image's layers, as downloaded and as
	// extracted; DefaultMaxImageBytes when 0.
	MaxImageBytes int64
	// MaxLayerBytes bounds the uncompressed bytes of one layer; MaxImageBytes when 0.
	MaxLayerBytes int64
}

// DefaultMaxImageBytes is Source.MaxImageBytes when unset.
const DefaultMaxImageBytes = 16 << 30

// ErrLocalLayout is matched (errors.Is) by the error for an "oci:" reference a Source does not admit.
var ErrLocalLayout = errors.New(`"oci:" image references name local paths, which this builder does not read`)

func (s *Source) limits() (image, layer int64) {
	image = s.MaxImageBytes
	if image <= 0 {
		image = DefaultMaxImageBytes
	}
	layer = s.MaxLayerBytes
	if layer <= 0 || layer > image {
		layer = image
	}
	return image, layer
}

// Resolved is a container image pinned by digest.
type Resolved struct {
	Ref    string  // as the user wrote it
	Digest v1.Hash // manifest digest of the platform's image
	From   string  // where it was resolved: the registry, a mirror, or a layout
	// Open returns the image; its layers are fetched lazily within ctx.
	Open func(ctx context.Context) (v1.Image, error)

	// repo is the repository the user named ("oci:<dir>" for a layout): with the digest, it names the image's
	// disk, so that a digest one registry served is never reused for a pull from another without its content.
	repo string
	// open is Open that also says which credentials the registry took (zero for layouts).
	open       func(ctx context.Context) (v1.Image, credential, error)
	pulledWith credential // the credentials the registry took; zero for layouts and images already on the node
}

func newResolved(ref, repo, from string, digest v1.Hash, c credential, open func(ctx context.Context) (v1.Image, credential, error)) *Resolved {
	return &Resolved{Ref: ref, Digest: digest, From: from, repo: repo, pulledWith: c, open: open,
		Open: func(ctx context.Context) (v1.Image, error) {
			img, _, err := open(ctx)
			return img, err
		}}
}

func (s *Source) platform() v1.Platform {
	if s.Platform.OS == "" {
		return v1.Platform{OS: "linux", Architecture: "amd64"}
	}
	return s.Platform
}

// Resolve pins ref to a digest and returns the image for the source's platform, with the source's credentials.
// Mirrors are tried before the registry; an error from every place names each cause.
func (s *Source) Resolve(ctx context.Context, ref string) (*Resolved, error) {
	return s.resolve(ctx, ref, nil)
}

// resolve is Resolve with a pod's keychains tried before the source's, as a kubelet tries a pod's pull secrets
// before the node's credentials.
func (s *Source) resolve(ctx context.Context, ref string, pod []authn.Keychain) (*Resolved, error) {
	if dir, ok := strings.CutPrefix(ref, "oci:"); ok {
		if !s.AllowLocalLayouts {
			return nil, fmt.Errorf("image %q: %w", ref, ErrLocalLayout) // nothing is looked up: the path's existence stays private
		}
		return s.resolveLayout(ref, dir)
	}
	r, err := name.ParseReference(ref, name.WeakValidation)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	var errs []error
	for _, host := range s.hosts(r) {
		res, err := s.fetch(ctx, r, host, pod)
		if err == nil {
			res.Ref = ref
			res.repo = r.Context().Name()
			return res, nil
		}
		errs = append(errs, fmt.Errorf("from %s: %w", host, err))
	}
	return nil, fmt.Errorf("resolving image %q: %w", ref, errors.Join(errs...))
}

// hosts are where r is looked for, in order: its registry's mirrors, then the registry. Mirrors' keys name
// registries as users write them: Docker Hub's as docker.io as well as index.docker.io (see RegistryHost).
func (s *Source) hosts(r name.Reference) []string {
	reg := r.Context().RegistryStr()
	var out []string
	for _, k := range slices.Sorted(maps.Keys(s.Mirrors)) {
		if RegistryHost(k) == reg {
			out = append(out, s.Mirrors[k]...)
		}
	}
	return append(out, reg)
}

// dockerHubAliases are the names Docker Hub goes by; go-containerregistry keys its images by name.DefaultRegistry.
var dockerHubAliases = []string{"docker.io", "registry-1.docker.io", name.DefaultRegistry}

// RegistryHost is the registry host that image references name as host: Docker Hub's names (docker.io,
// registry-1.docker.io, index.docker.io) are one, index.docker.io, the registry "nginx:1" and "docker.io/nginx:1"
// resolve to; any other host is itself.
func RegistryHost(host string) string {
	if slices.Contains(dockerHubAliases, strings.ToLower(host)) {
		return name.DefaultRegistry
	}
	return host
}

// UnmatchableRegistry says why no image reference can name registry host (a mirror's key), or "" when one can:
// the first component of a reference is a registry only when it has a '.' or a ':' or is localhost; otherwise it is
// part of a Docker Hub repository ("dockerhub/nginx" is index.docker.io/dockerhub/nginx).
func UnmatchableRegistry(host string) string {
	if host == "localhost" || strings.ContainsAny(host, ".:") {
		return ""
	}
	return fmt.Sprintf("no image reference names registry %q: a registry host has a '.' or a ':' or is localhost (Docker Hub is docker.io)", host)
}

// at is r's repository on host (the registry or one of its mirrors).
func (s *Source) at(r name.Reference, host string) (name.Repository, error) {
	var nameOpts []name.Option
	for _, h := range s.Insecure {
		if h == host {
			nameOpts = append(nameOpts, name.Insecure)
		}
	}
	return name.NewRepository(host+"/"+r.Context().RepositoryStr(), nameOpts...)
}

func (s *Source) remoteOptions(ctx context.Context, auth authn.Authenticator) []remote.Option {
	tr := s.Transport
	if tr == nil {
		tr = http.DefaultTransport
	}
	return []remote.Option{remote.WithAuth(auth), remote.WithTransport(boundedManifests{tr}), remote.WithPlatform(s.platform()), remote.WithContext(ctx)}
}

func (s *Source) fetch(ctx context.Context, r name.Reference, host string, pod []authn.Keychain) (*Resolved, error) {
	repo, err := s.at(r, host)
	if err != nil {
		return nil, err
	}
	var at name.Reference = repo.Tag(r.Identifier())
	if d, ok := r.(name.Digest); ok {
		at = repo.Digest(d.DigestStr())
	}
	creds, err := s.credentials(r.Context(), repo, pod)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, c := range creds {
		img, err := remote.Image(at, s.remoteOptions(ctx, c.auth)...)
		if err != nil {
			errs = append(errs, err)
			if refused(err) {
				continue // a kubelet tries the next credentials the registry might take
			}
			break
		}
		if err := checkManifest(img); err != nil {
			return nil, err
		}
		digest, err := img.Digest()
		if err != nil {
			return nil, err
		}
		open := func(ctx context.Context) (v1.Image, credential, error) {
			img, err := remote.Image(repo.Digest(digest.String()), s.remoteOptions(ctx, c.auth)...)
			return img, c, err
		}
		return newResolved("", "", host, digest, c, open), nil
	}
	return nil, errors.Join(errs...)
}

// check asks r's registry (its mirrors first) whether a pod's credentials, else the source's, give access to the
// image of digest, with a HEAD of its manifest: it pulls nothing. It returns the credentials that did.
func (s *Source) check(ctx context.Context, r name.Reference, digest string, pod []authn.Keychain) (credential, error) {
	var errs []error
	for _, host := range s.hosts(r) {
		repo, err := s.at(r, host)
		if err != nil {
			return credential{}, err
		}
		creds, err := s.credentials(r.Context(), repo, pod)
		if err != nil {
			return credential{}, err
		}
		for _, c := range creds {
			if _, err := remote.Head(repo.Digest(digest), s.remoteOptions(ctx, c.auth)...); err != nil {
				errs = append(errs, fmt.Errorf("from %s: %w", host, err))
				continue
			}
			return c, nil
		}
	}
	return credential{}, errors.Join(errs...)
}

// refused reports whether a registry turned the credentials down (401, 403), as opposed to failing otherwise.
func refused(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden)
}

// credential is one set of registry credentials to try.
type credential struct {
	auth authn.Authenticator
	// pod is true for credentials from a pod's pull secrets, false for the node's (or none): what the node's
	// credentials or no credentials reach, every pod on the node may use.
	pod bool
	// id identifies the credentials (their canonical form, kept in memory only); "" for anonymous.
	id string
}

// credentials lists what to try, in order, to read named (the repository the user wrote) at repo (named's
// registry or one of its mirrors): the pod's keychains then the source's, first for a mirror's own host, then for
// the registry the user named, so that pull secrets are used also when a mirror serves their registry (as
// containerd passes a kubelet's credentials to mirrors). Duplicates are dropped. With no credentials at all, or
// at a mirror (which may serve anonymously what the registry does not), the list ends with anonymous.
func (s *Source) credentials(named, repo name.Repository, pod []authn.Keychain) ([]credential, error) {
	node := s.Keychain
	if node == nil {
		node = authn.DefaultKeychain
	}
	type source struct {
		kc  authn.Keychain
		pod bool
	}
	var sources []source
	for _, kc := range pod {
		sources = append(sources, source{kc, true})
	}
	sources = append(sources, source{node, false})
	var out []credential
	seen := map[string]bool{}
	add := func(res authn.Resource) error {
		for _, src := range sources {
			a, err := src.kc.Resolve(res)
			if err != nil {
				return fmt.Errorf("looking up credentials for %s, %w", res.RegistryStr(), err)
			}
			id, err := credentialID(a)
			if err != nil {
				return fmt.Errorf("reading credentials for %s, %w", res.RegistryStr(), err)
			}
			if id == "" || seen[id] {
				continue
			}
			seen[id] = true
			out = append(out, credential{auth: a, pod: src.pod, id: id})
		}
		return nil
	}
	mirror := repo.RegistryStr() != named.RegistryStr()
	if mirror {
		if err := add(repo); err != nil {
			return nil, err
		}
	}
	if err := add(named); err != nil {
		return nil, err
	}
	if len(out) == 0 || mirror {
		out = append(out, credential{auth: authn.Anonymous})
	}
	return out, nil
}

// credentialID is the canonical form of an authenticator's credentials, "" for none.
func credentialID(a authn.Authenticator) (string, error) {
	if a == authn.Anonymous {
		return "", nil
	}
	cfg, err := a.Authorization()
	if err != nil {
		return "", err
	}
	if *cfg == (authn.AuthConfig{}) {
		return "", nil
	}
	b, err := json.Marshal(cfg)
	return string(b), err
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
		return newResolved(ref, "oci:"+dir, dir, d.Digest, credential{},
			func(context.Context) (v1.Image, credential, error) { return img, credential{}, nil }), nil
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
