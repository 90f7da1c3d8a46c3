package provider

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/i2kit/i2kit/internal/devregistry"
	"github.com/i2kit/i2kit/provider/vm"
	"github.com/i2kit/i2kit/vmimage"
)

func TestPullPolicies(t *testing.T) {
	for _, tc := range []struct {
		name       string
		containers []corev1.Container
		want       map[string]vmimage.PullPolicy
	}{
		{"explicit", []corev1.Container{
			{Image: "a:1", ImagePullPolicy: corev1.PullNever},
			{Image: "b:1", ImagePullPolicy: corev1.PullAlways},
			{Image: "c", ImagePullPolicy: corev1.PullIfNotPresent},
		}, map[string]vmimage.PullPolicy{"a:1": vmimage.PullNever, "b:1": vmimage.PullAlways, "c": vmimage.PullIfNotPresent}},
		{"defaulted as the API server does", []corev1.Container{
			{Image: "nginx"}, {Image: "nginx:latest"}, {Image: "nginx:1.27"},
			{Image: "registry.example:5000/app@sha256:" + strings.Repeat("a", 64)},
		}, map[string]vmimage.PullPolicy{"nginx": vmimage.PullAlways, "nginx:latest": vmimage.PullAlways,
			"nginx:1.27": vmimage.PullIfNotPresent, "registry.example:5000/app@sha256:" + strings.Repeat("a", 64): vmimage.PullIfNotPresent}},
		{"one image, the policy asking the registry most", []corev1.Container{
			{Image: "x:1", ImagePullPolicy: corev1.PullNever}, {Image: "x:1", ImagePullPolicy: corev1.PullIfNotPresent},
			{Image: "y:1", ImagePullPolicy: corev1.PullAlways}, {Image: "y:1", ImagePullPolicy: corev1.PullNever},
		}, map[string]vmimage.PullPolicy{"x:1": vmimage.PullIfNotPresent, "y:1": vmimage.PullAlways}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{InitContainers: tc.containers[:1], Containers: tc.containers[1:]}}
			got := pullPolicies(pod)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("policies = %v, want %v", got, tc.want)
			}
		})
	}
}

func dockerAuth(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}

func TestSecretKeychain(t *testing.T) {
	auths := fmt.Sprintf(`{"reg.example:5000":{"auth":%q}}`, dockerAuth("alice", "s3cret"))
	for _, tc := range []struct {
		name    string
		secret  corev1.Secret
		wantOK  bool
		wantErr string
	}{
		{"dockerconfigjson", corev1.Secret{Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":` + auths + `}`)}}, true, ""},
		{"dockercfg, the bare auths map", corev1.Secret{Type: corev1.SecretTypeDockercfg,
			Data: map[string][]byte{corev1.DockerConfigKey: []byte(auths)}}, true, ""},
		{"opaque", corev1.Secret{Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"x": []byte("y")}}, false, ""},
		{"dockercfg that is not JSON", corev1.Secret{Type: corev1.SecretTypeDockercfg,
			Data: map[string][]byte{corev1.DockerConfigKey: []byte("{")}}, false, "not JSON"},
		{"dockerconfigjson with a bad auth", corev1.Secret{Type: corev1.SecretTypeDockerConfigJson,
			Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"r":{"auth":"!!"}}}`)}}, false, "auth for r"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.secret.Name = "regcred"
			kc, ok, err := secretKeychain(&tc.secret)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "regcred") {
					t.Fatalf("error %v, want one naming regcred and %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || ok != tc.wantOK {
				t.Fatalf("ok %v, error %v; want ok %v", ok, err, tc.wantOK)
			}
			if !ok {
				return
			}
			repo, _ := name.NewRepository("reg.example:5000/app")
			a, err := kc.Resolve(repo)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := a.Authorization()
			if err != nil || cfg.Username != "alice" || cfg.Password != "s3cret" {
				t.Errorf("credentials for the registry = %+v, %v", cfg, err)
			}
		})
	}
}

// recordingImages is an ImageBuilder that records the pulls it is given and fails with errs, in turn, first.
type recordingImages struct {
	mu    sync.Mutex
	pulls []vmimage.Pull
	errs  []error
}

func (r *recordingImages) EnsureWith(_ context.Context, _ *vmimage.Spec, _ string, pull vmimage.Pull) (*vmimage.Image, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pulls = append(r.pulls, pull)
	if len(r.errs) > 0 {
		err := r.errs[0]
		r.errs = r.errs[1:]
		return nil, err
	}
	return &vmimage.Image{Key: strings.Repeat("a", 64), Kernel: "/k", Initramfs: "/i"}, nil
}

func (r *recordingImages) calls() []vmimage.Pull {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]vmimage.Pull(nil), r.pulls...)
}

// newPullProvider is a provider with a fake backend, images, the given Secrets, an Event recorder that does not
// block, and a short pull back-off.
func newPullProvider(t *testing.T, images ImageBuilder, secrets ...*corev1.Secret) (*Provider, *eventLog) {
	t.Helper()
	events := &eventLog{}
	p := New(Config{NodeName: "i2kit", InternalIP: "198.18.0.10", Events: events})
	p.pullBackoff = 20 * time.Millisecond
	b := &fakeBackend{vms: map[string]vm.Status{}, notify: p.VMChanged}
	p.UseBackend(b, images)
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, s := range secrets {
		if err := idx.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	p.UseCluster(corev1listers.NewConfigMapLister(cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})),
		corev1listers.NewSecretLister(idx), nil, nil)
	t.Cleanup(func() { p.DeletePod(context.Background(), plainPod("a")) }) //nolint:errcheck // ends the retries
	return p, events
}

// eventLog is a record.EventRecorder that keeps "type reason message" lines.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

var _ record.EventRecorder = (*eventLog)(nil)

func (l *eventLog) Event(_ runtime.Object, typ, reason, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, typ+" "+reason+" "+msg)
}

func (l *eventLog) Eventf(o runtime.Object, typ, reason, format string, args ...any) {
	l.Event(o, typ, reason, fmt.Sprintf(format, args...))
}

func (l *eventLog) AnnotatedEventf(o runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	l.Eventf(o, typ, reason, format, args...)
}

// has reports whether an Event starts with prefix.
func (l *eventLog) has(prefix string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.events {
		if strings.HasPrefix(e, prefix) {
			return true
		}
	}
	return false
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.events, "\n")
}

func pullSecret(name, host, user, pass string) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}, Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, host, dockerAuth(user, pass)))}}
}

// waitWaiting waits until the pod's first container waits with reason and a message containing msg.
func waitWaiting(t *testing.T, p *Provider, reason, msg string) *corev1.Pod {
	t.Helper()
	var got *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 5*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		got, _ = p.GetPod(ctx, "default", "a")
		if got == nil || len(got.Status.ContainerStatuses) == 0 {
			return false, nil
		}
		w := got.Status.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == reason && strings.Contains(w.Message, msg), nil
	})
	if err != nil {
		t.Fatalf("pod not waiting with %s %q: %+v", reason, msg, got)
	}
	return got
}

// TestPodPullsWithItsSecrets checks that a pod's pull secrets reach the builder as keychains, in order, with the
// containers' policies; and that a missing one is left out with the kubelet's Warning Event.
func TestPodPullsWithItsSecrets(t *testing.T) {
	images := &recordingImages{}
	other := pullSecret("other", "elsewhere.example", "x", "y")
	other.Namespace = "another"
	p, events := newPullProvider(t, images, pullSecret("regcred", "reg.example", "alice", "s3cret"), other)
	pod := plainPod("a")
	pod.Spec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: "missing"}, {Name: "regcred"}, {Name: "other"}}
	pod.Spec.Containers[0].ImagePullPolicy = corev1.PullNever
	if err := p.CreatePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, p, "a", corev1.PodRunning)
	calls := images.calls()
	if len(calls) != 1 {
		t.Fatalf("%d builds, want 1", len(calls))
	}
	pull := calls[0]
	if len(pull.Keychains) != 1 {
		t.Fatalf("%d keychains, want regcred's only (other is another namespace's)", len(pull.Keychains))
	}
	repo, _ := name.NewRepository("reg.example/app")
	a, _ := pull.Keychains[0].Resolve(repo)
	if cfg, err := a.Authorization(); err != nil || cfg.Username != "alice" {
		t.Errorf("keychain credentials %+v, %v", cfg, err)
	}
	if pull.Policies[pod.Spec.Containers[0].Image] != vmimage.PullNever {
		t.Errorf("policies %v, want %s Never", pull.Policies, pod.Spec.Containers[0].Image)
	}
	if !events.has("Warning FailedToRetrieveImagePullSecret Unable to retrieve some image pull secrets (missing, other);") {
		t.Errorf("no FailedToRetrieveImagePullSecret Event naming missing and other:\n%s", events)
	}
	for _, s := range []string{"Unenforced", "Warning Failed"} {
		if events.has("Warning " + s) {
			t.Errorf("a pod with pull secrets got a %s Event:\n%s", s, events)
		}
	}
}

// TestPullFailuresAreReportedAndRetried checks the kubelet's waiting reasons and Events for a failed pull and for
// an image absent under Never, and that the pull is tried again until it succeeds.
func TestPullFailuresAreReportedAndRetried(t *testing.T) {
	for _, tc := range []struct {
		name, reason, msg, event string
		err                      error
	}{
		{"pull refused", "ErrImagePull", "UNAUTHORIZED", "Warning Failed building the VM image: ",
			errors.New(`resolving image "reg.example/app:1": from reg.example: GET ...: UNAUTHORIZED: authentication required`)},
		{"never pulled", "ErrImageNeverPull", `Container image "reg.example/app:1" is not present with pull policy of Never`,
			"Warning ErrImageNeverPull Container image", fmt.Errorf("wrapped: %w", &vmimage.NeverPullError{Ref: "reg.example/app:1"})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			images := &recordingImages{errs: []error{tc.err, tc.err}}
			p, events := newPullProvider(t, images)
			var mu sync.Mutex
			var waiting []corev1.ContainerStateWaiting // every waiting state reported, in order
			p.NotifyPods(context.Background(), func(pod *corev1.Pod) {
				if cs := pod.Status.ContainerStatuses; len(cs) > 0 && cs[0].State.Waiting != nil {
					mu.Lock()
					waiting = append(waiting, *cs[0].State.Waiting)
					mu.Unlock()
				}
			})
			if err := p.CreatePod(context.Background(), plainPod("a")); err != nil {
				t.Fatal(err)
			}
			waitPhase(t, p, "a", corev1.PodRunning)
			mu.Lock()
			var reasons []string
			for _, w := range waiting {
				if w.Reason == tc.reason && !strings.Contains(w.Message, tc.msg) || tc.reason == "ErrImageNeverPull" && w.Reason == tc.reason && w.Message != tc.msg {
					t.Errorf("%s message %q, want %q", w.Reason, w.Message, tc.msg)
				}
				if len(reasons) == 0 || reasons[len(reasons)-1] != w.Reason {
					reasons = append(reasons, w.Reason)
				}
			}
			mu.Unlock()
			want := []string{"ContainerCreating", tc.reason} // until the attempt that succeeds
			if tc.reason == "ErrImagePull" {                 // then ImagePullBackOff until the next attempt, as on a kubelet
				want = []string{"ContainerCreating", "ErrImagePull", "ImagePullBackOff", "ErrImagePull", "ImagePullBackOff"}
			}
			if !slices.Equal(reasons, want) {
				t.Errorf("waiting reasons %q, want %q", reasons, want)
			}
			for _, e := range []string{tc.event, "Warning Failed Error: " + tc.reason} {
				if !events.has(e) {
					t.Errorf("no Event %q:\n%s", e, events)
				}
			}
			if n := len(images.calls()); n != 3 {
				t.Errorf("%d attempts, want 3", n)
			}
		})
	}
}

// TestDeletedPodStopsRetrying checks that deleting a pod ends the retries of its failing pull, back-off or not.
func TestDeletedPodStopsRetrying(t *testing.T) {
	images := &recordingImages{errs: []error{errors.New("manifest unknown")}}
	p, _ := newPullProvider(t, images)
	p.pullBackoff = time.Hour
	if err := p.CreatePod(context.Background(), plainPod("a")); err != nil {
		t.Fatal(err)
	}
	waitWaiting(t, p, "ErrImagePull", "manifest unknown")
	v := p.vmFor("uid-a")
	if v == nil {
		t.Fatal("no pull under way")
	}
	v.mu.Lock()
	pullDone := v.pullDone
	v.mu.Unlock()
	if err := p.DeletePod(context.Background(), plainPod("a")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pullDone:
	case <-time.After(5 * time.Second):
		t.Fatal("the pull still waits to be tried again after the pod was deleted")
	}
	if n := len(images.calls()); n != 1 {
		t.Errorf("%d attempts, want 1", n)
	}
}

// authRegistry is an in-process registry that demands basic auth, holding one image at repo:tag.
func authRegistry(t *testing.T, user, pass, repoTag string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := devregistry.Serve(l, devregistry.BasicAuth(user, pass))
	t.Cleanup(func() { srv.Close() })
	file := filepath.Join(t.TempDir(), "hello")
	if err := os.WriteFile(file, []byte("world"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := devregistry.PushBinary(l.Addr().String()+"/"+repoTag, file, "", remote.WithAuth(&authn.Basic{Username: user, Password: pass})); err != nil {
		t.Fatal(err)
	}
	return l.Addr().String()
}

// TestPullSecretsWithARegistry runs pods through the real image builder against a registry that demands basic
// auth: with the pod's dockerconfigjson secret the pod runs; without it the pod waits with ErrImagePull naming
// the registry's 401.
func TestPullSecretsWithARegistry(t *testing.T) {
	if _, err := os.Stat("/usr/bin/mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs is required (make deps installs erofs-utils)")
	}
	host := authRegistry(t, "alice", "s3cret", "private/app:1")
	dir := t.TempDir()
	for _, f := range []string{"vmlinux", "agent"} {
		os.WriteFile(filepath.Join(dir, f), []byte("test "+f), 0o755) //nolint:errcheck
	}
	st, err := vmimage.OpenStore(filepath.Join(dir, "store"), 10, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	builder := &vmimage.Builder{Store: st, Kernel: filepath.Join(dir, "vmlinux"), Agent: filepath.Join(dir, "agent"),
		Source: &vmimage.Source{Keychain: authn.NewMultiKeychain(), Insecure: []string{host}}}
	for _, tc := range []struct {
		name    string
		secrets []corev1.LocalObjectReference
		policy  corev1.PullPolicy
		reason  string
	}{
		{"with the pull secret", []corev1.LocalObjectReference{{Name: "regcred"}}, corev1.PullAlways, ""},
		{"without it, IfNotPresent on the image the node has", nil, corev1.PullIfNotPresent, "ErrImagePull"},
		{"without it, Never", nil, corev1.PullNever, "ErrImageNeverPull"},
		{"with it, Never", []corev1.LocalObjectReference{{Name: "regcred"}}, corev1.PullNever, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, events := newPullProvider(t, builder, pullSecret("regcred", host, "alice", "s3cret"))
			p.pullBackoff = time.Hour
			pod := plainPod("a")
			pod.Spec.Containers = pod.Spec.Containers[:1]
			pod.Spec.Containers[0].Image, pod.Spec.Containers[0].ImagePullPolicy = host+"/private/app:1", tc.policy
			pod.Spec.ImagePullSecrets = tc.secrets
			if err := p.CreatePod(context.Background(), pod); err != nil {
				t.Fatal(err)
			}
			switch tc.reason {
			case "":
				waitPhase(t, p, "a", corev1.PodRunning)
			case "ErrImagePull":
				waitWaiting(t, p, tc.reason, "401")
			default:
				waitWaiting(t, p, tc.reason, "is not present with pull policy of Never")
			}
			if t.Failed() {
				t.Log(events)
			}
		})
	}
}
