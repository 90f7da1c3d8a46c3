package vmimage

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
)

func keychain(t *testing.T, host, user, pass string) authn.Keychain {
	t.Helper()
	kc, err := DockerConfigKeychain(dockerConfig(host, user, pass))
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// TestPodCredentialsComeFirst checks that a pod's keychains are tried before the node's, and that credentials a
// registry refuses make the next ones be tried, as a kubelet does with a pod's pull secrets.
func TestPodCredentialsComeFirst(t *testing.T) {
	reg := newRegistry(t, "alice", "s3cret")
	reg.push(t, "private/app:1", layer(t, file{"hello", "world"}))
	ref := reg.host() + "/private/app:1"
	right, wrong := keychain(t, reg.host(), "alice", "s3cret"), keychain(t, reg.host(), "alice", "nope")
	none := authn.NewMultiKeychain()
	for _, tc := range []struct {
		name    string
		node    authn.Keychain
		pod     []authn.Keychain
		wantErr string
	}{
		{"a pod secret, no node credentials", none, []authn.Keychain{right}, ""},
		{"the pod's second secret", none, []authn.Keychain{wrong, right}, ""},
		{"the pod's secret before the node's credentials", wrong, []authn.Keychain{right}, ""},
		{"the node's credentials after the pod's are refused", right, []authn.Keychain{wrong}, ""},
		{"every credential refused", wrong, []authn.Keychain{wrong}, "UNAUTHORIZED"},
		{"no credentials", keychain(t, "elsewhere.example", "x", "y"), nil, "UNAUTHORIZED"},
		{"a secret for another registry", none, []authn.Keychain{keychain(t, "elsewhere.example", "alice", "s3cret")}, "UNAUTHORIZED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBuilder(t, &Source{Keychain: tc.node, Insecure: []string{reg.host()}}, 10, 1<<30)
			img, err := b.EnsureWith(context.Background(), spec(ref), "direct", Pull{Keychains: tc.pod})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), ref) {
					t.Fatalf("error %v, want one naming %s and %s", err, ref, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if listDisk(t, img.Disks[0].Path)["hello"] != "world" {
				t.Error("image content missing")
			}
		})
	}
}

// TestPullPolicies checks what each pull policy asks of the registry, before and after the node has an image:
// Always resolves the tag every time, IfNotPresent and Never use the store's record, Never fails without one,
// and a digest the store holds is never resolved. The record outlives the process.
func TestPullPolicies(t *testing.T) {
	reg := newRegistry(t, "", "")
	v1 := reg.push(t, "app:1", layer(t, file{"v", "1"}))
	ref := reg.host() + "/app:1"
	b := newBuilder(t, &Source{Insecure: []string{reg.host()}}, 10, 1<<30)
	ctx := context.Background()
	ensure := func(ref string, p PullPolicy) (*Image, int64, error) {
		t.Helper()
		before := reg.requests.Load()
		img, err := b.EnsureWith(ctx, spec(ref), "direct", Pull{Policies: map[string]PullPolicy{ref: p}})
		return img, reg.requests.Load() - before, err
	}
	digestOf := func(img *Image) string { return img.Disks[0].Digest }

	_, n, err := ensure(ref, PullNever)
	if !errors.Is(err, ErrNeverPull) || err.Error() != `Container image "`+ref+`" is not present with pull policy of Never` || n != 0 {
		t.Fatalf("Never before any pull: %v after %d requests; want ErrNeverPull and no request", err, n)
	}
	var np *NeverPullError
	if !errors.As(err, &np) || np.Ref != ref {
		t.Errorf("error %#v, want a NeverPullError for %s", err, ref)
	}
	if img, n, err := ensure(ref, PullIfNotPresent); err != nil || n == 0 || digestOf(img) != v1.String() {
		t.Fatalf("IfNotPresent, first: %v after %d requests", err, n)
	}
	for _, p := range []PullPolicy{PullIfNotPresent, PullNever} {
		if img, n, err := ensure(ref, p); err != nil || n != 0 || digestOf(img) != v1.String() {
			t.Errorf("%s once present: %v after %d requests; want %s and no request", p, err, n, v1)
		}
	}
	// The tag moves: Always sees it, IfNotPresent keeps what the node has until Always records the new digest.
	v2 := reg.push(t, "app:1", layer(t, file{"v", "2"}))
	if img, _, err := ensure(ref, PullIfNotPresent); err != nil || digestOf(img) != v1.String() {
		t.Errorf("IfNotPresent after the tag moved: %v, want the node's %s", err, v1)
	}
	if img, n, err := ensure(ref, PullAlways); err != nil || n == 0 || digestOf(img) != v2.String() {
		t.Errorf("Always after the tag moved: %v after %d requests, want %s", err, n, v2)
	}
	if img, n, err := ensure(ref, PullNever); err != nil || n != 0 || digestOf(img) != v2.String() {
		t.Errorf("Never after Always saw the new digest: %v after %d requests", err, n)
	}
	// A digest the store holds needs no resolution, whatever the policy; one it does not hold is pulled.
	pinned := reg.host() + "/app@" + v1.String()
	if img, n, err := ensure(pinned, PullAlways); err != nil || n != 0 || digestOf(img) != v1.String() {
		t.Errorf("Always on a digest the store holds: %v after %d requests; want none", err, n)
	}
	v3 := reg.push(t, "app:3", layer(t, file{"v", "3"}))
	if _, _, err := ensure(reg.host()+"/app@"+v3.String(), PullNever); !errors.Is(err, ErrNeverPull) {
		t.Errorf("Never on a digest the store lacks: %v", err)
	}
	// Reopened, the store still knows what app:1 resolved to.
	b.Store.Close()
	st, err := OpenStore(b.Store.Dir(), 10, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	b.Store = st
	if img, n, err := ensure(ref, PullNever); err != nil || n != 0 || digestOf(img) != v2.String() {
		t.Errorf("Never after a restart: %v after %d requests", err, n)
	}
	// An image evicted from the store is no longer present.
	for _, img := range st.List() {
		if err := st.Remove(img.Key); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := ensure(ref, PullNever); !errors.Is(err, ErrNeverPull) {
		t.Errorf("Never once the image left the store: %v", err)
	}
}

// TestPresentPrivateImageNeedsThePodsCredentials checks the kubelet's secret-pulled-images rule: an image pulled
// with a pod's credentials is used from the store only by pods holding those credentials; under IfNotPresent other
// pods' access is checked with the registry (a manifest HEAD, nothing pulled), under Never it is not present. An
// image pulled anonymously is anyone's.
func TestPresentPrivateImageNeedsThePodsCredentials(t *testing.T) {
	reg := newRegistry(t, "alice", "s3cret", func(r *testRegistry) { r.users = map[string]string{"bob": "hunter2"} })
	reg.push(t, "private/app:1", layer(t, file{"hello", "world"}))
	ref := reg.host() + "/private/app:1"
	alice, bob := keychain(t, reg.host(), "alice", "s3cret"), keychain(t, reg.host(), "bob", "hunter2")
	mallory := keychain(t, reg.host(), "mallory", "guess")
	b := newBuilder(t, &Source{Keychain: authn.NewMultiKeychain(), Insecure: []string{reg.host()}}, 10, 1<<30)
	ensure := func(p PullPolicy, kcs ...authn.Keychain) (requests, heads int64, err error) {
		t.Helper()
		r0, h0 := reg.requests.Load(), reg.heads.Load()
		_, err = b.EnsureWith(context.Background(), spec(ref), "direct", Pull{Keychains: kcs, Policies: map[string]PullPolicy{ref: p}})
		return reg.requests.Load() - r0, reg.heads.Load() - h0, err
	}
	if _, _, err := ensure(PullIfNotPresent, alice); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		policy    PullPolicy
		kcs       []authn.Keychain
		wantHeads int64
		wantErr   string
		wantNever bool
	}{
		{"the same credentials", PullIfNotPresent, []authn.Keychain{alice}, 0, "", false},
		{"no credentials, IfNotPresent", PullIfNotPresent, nil, 1, "401", false},
		{"wrong credentials, IfNotPresent", PullIfNotPresent, []authn.Keychain{mallory}, 1, "401", false},
		{"no credentials, Never", PullNever, nil, 0, "", true},
		{"other valid credentials, IfNotPresent", PullIfNotPresent, []authn.Keychain{bob}, 1, "", false},
		{"those credentials again, Never", PullNever, []authn.Keychain{bob}, 0, "", false},
		{"the first credentials, Always", PullAlways, []authn.Keychain{alice}, 0, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, heads, err := ensure(tc.policy, tc.kcs...)
			switch {
			case tc.wantNever:
				if !errors.Is(err, ErrNeverPull) {
					t.Errorf("error %v, want ErrNeverPull", err)
				}
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), ref) {
					t.Errorf("error %v, want one naming %s and %s", err, ref, tc.wantErr)
				}
			case err != nil:
				t.Errorf("error %v", err)
			}
			if tc.policy == PullAlways {
				if n == 0 {
					t.Error("Always did not ask the registry")
				}
				return
			}
			if heads != tc.wantHeads || n != heads {
				t.Errorf("%d requests, %d manifest HEADs; want %d HEADs and nothing else", n, heads, tc.wantHeads)
			}
		})
	}

	// Pulled without credentials, an image is every pod's.
	pub := newRegistry(t, "", "")
	pub.push(t, "app:1", layer(t, file{"x", "y"}))
	pubRef := pub.host() + "/app:1"
	b.Source.Insecure = append(b.Source.Insecure, pub.host())
	if _, err := b.EnsureWith(context.Background(), spec(pubRef), "direct", Pull{}); err != nil {
		t.Fatal(err)
	}
	r0 := pub.requests.Load()
	_, err := b.EnsureWith(context.Background(), spec(pubRef), "direct", Pull{Keychains: []authn.Keychain{mallory},
		Policies: map[string]PullPolicy{pubRef: PullNever}})
	if err != nil || pub.requests.Load() != r0 {
		t.Errorf("a public image under Never: %v after %d requests", err, pub.requests.Load()-r0)
	}
}

// TestMirrorWithPullSecret checks that a pod's pull secret for the registry the user named is used when a mirror
// serves it, and that the node's credentials for the mirror itself come first.
func TestMirrorWithPullSecret(t *testing.T) {
	origin := "127.0.0.1:9" // does not answer: only the mirror serves
	ref := origin + "/private/app:1"
	for _, tc := range []struct {
		name       string
		mirrorUser string
		node       func(mirror string) authn.Keychain
		pod        func(mirror string) []authn.Keychain
		wantErr    string
	}{
		{"the pod's secret for the registry named", "alice",
			func(string) authn.Keychain { return authn.NewMultiKeychain() },
			func(string) []authn.Keychain { return []authn.Keychain{keychain(t, origin, "alice", "s3cret")} }, ""},
		{"the node's credentials for the mirror", "mirror",
			func(m string) authn.Keychain { return keychain(t, m, "mirror", "s3cret") },
			func(string) []authn.Keychain { return []authn.Keychain{keychain(t, origin, "alice", "nope")} }, ""},
		{"no credentials", "alice",
			func(string) authn.Keychain { return authn.NewMultiKeychain() },
			func(string) []authn.Keychain { return nil }, "UNAUTHORIZED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mirror := newRegistry(t, tc.mirrorUser, "s3cret")
			mirror.push(t, "private/app:1", layer(t, file{"from", "mirror"}))
			src := &Source{Keychain: tc.node(mirror.host()), Mirrors: map[string][]string{origin: {mirror.host()}},
				Insecure: []string{origin, mirror.host()}}
			b := newBuilder(t, src, 10, 1<<30)
			img, err := b.EnsureWith(context.Background(), spec(ref), "direct", Pull{Keychains: tc.pod(mirror.host())})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "from "+mirror.host()) {
					t.Fatalf("error %v, want one naming the mirror and %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if listDisk(t, img.Disks[0].Path)["from"] != "mirror" {
				t.Error("content not from the mirror")
			}
		})
	}
}
