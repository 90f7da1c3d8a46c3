package e2e

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/internal/devregistry"
)

// TestImages runs pods whose image is in a registry that demands basic auth, on one qemu-backed node, and checks
// with kubectl what a user would: a pod with a dockerconfigjson imagePullSecret (made by `kubectl create secret
// docker-registry`) runs; a pod without it waits with ErrImagePull naming the registry's 401, even though the node
// has the image (IfNotPresent does not lend one pod's private image to another); imagePullPolicy Never runs an
// image the node has and leaves one it never pulled waiting with ErrImageNeverPull; and a missing pull secret is
// a Warning Event, the pod pulling with the secrets it has.
func TestImages(t *testing.T) {
	ctx := context.Background()
	reg := privateRegistry(t, "alice", "s3cret", "1", "2")
	const nodeName = "i2kit-images"
	runDir := filepath.Join(t.TempDir(), "run")
	t.Cleanup(func() { killVMs(runDir) })
	n := env.StartNode(t, nodeName, 10255, "--backend", "qemu", "--insecure-registry", reg,
		"--qemu-runtime-dir", runDir, "--qemu-bridge", "i2kitimg", "--pod-cidr", "10.93.0.0/24",
		"--image-store", filepath.Join(t.TempDir(), "images"))
	if _, err := env.WaitNodeReady(ctx, nodeName, 10*time.Second); err != nil {
		t.Fatalf("node not ready: %v\n%s", err, n.Log())
	}
	pods := env.Client.CoreV1().Pods("default")
	names := []string{"with-secret", "no-secret", "never-pulled", "never-present", "missing-secret"}
	t.Cleanup(func() {
		for _, name := range names {
			pods.Delete(ctx, name, metav1.DeleteOptions{}) //nolint:errcheck
		}
		env.Client.CoreV1().Secrets("default").Delete(ctx, "regcred", metav1.DeleteOptions{}) //nolint:errcheck
	})
	kubectl(t, "create", "secret", "docker-registry", "regcred", "--docker-server="+reg,
		"--docker-username=alice", "--docker-password=s3cret")
	create := func(name, tag string, policy corev1.PullPolicy, secrets ...string) {
		t.Helper()
		no := false
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no,
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Containers:  []corev1.Container{{Name: "web", Image: reg + "/private/hello:" + tag, ImagePullPolicy: policy}}}}
		for _, s := range secrets {
			p.Spec.ImagePullSecrets = append(p.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: s})
		}
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The pull secret opens the registry.
	create("with-secret", "1", corev1.PullIfNotPresent, "regcred")
	waitRunning(t, "with-secret", n.Log)
	if id := kubectl(t, "get", "pod", "with-secret", "-o", "jsonpath={.status.containerStatuses[0].imageID}"); !strings.HasPrefix(id, reg+"/private/hello@sha256:") {
		t.Errorf("imageID = %q, want the image by digest", id)
	}

	// Without it, the image the node now has is not lent: the registry is asked, and says 401.
	create("no-secret", "1", corev1.PullIfNotPresent)
	// ErrImagePull, then ImagePullBackOff until the next attempt, as on a kubelet.
	msg := waitWaitingFor(t, "no-secret", "ImagePullBackOff", n.Log)
	if up := strings.ToUpper(msg); !strings.Contains(up, "401") && !strings.Contains(up, "UNAUTHORIZED") {
		t.Errorf("ImagePullBackOff message %q does not name the registry's 401", msg)
	}
	waitEvent(t, "no-secret", "Failed")
	if out := kubectl(t, "get", "events", "--field-selector", "involvedObject.name=no-secret,reason=Failed"); !strings.Contains(out, "Error: ErrImagePull") {
		t.Errorf("no Failed Event with ErrImagePull:\n%s", out)
	}
	if out := kubectl(t, "get", "pod", "no-secret"); !strings.Contains(out, "ImagePullBackOff") {
		t.Errorf("kubectl get pod shows no ImagePullBackOff:\n%s", out)
	}

	// Never: an image the node never pulled waits; one it pulled (with this pod's secret) runs.
	create("never-pulled", "2", corev1.PullNever, "regcred")
	msg = waitWaitingFor(t, "never-pulled", "ErrImageNeverPull", n.Log)
	if want := `Container image "` + reg + `/private/hello:2" is not present with pull policy of Never`; msg != want {
		t.Errorf("ErrImageNeverPull message %q, want %q", msg, want)
	}
	waitEvent(t, "never-pulled", "ErrImageNeverPull")
	create("never-present", "1", corev1.PullNever, "regcred")
	waitRunning(t, "never-present", n.Log)

	// A pull secret that does not exist is a Warning Event; the pod pulls with the one that does.
	create("missing-secret", "1", corev1.PullAlways, "no-such-secret", "regcred")
	waitRunning(t, "missing-secret", n.Log)
	waitEvent(t, "missing-secret", "FailedToRetrieveImagePullSecret")
	if out := kubectl(t, "get", "events", "--field-selector", "involvedObject.name=missing-secret,reason=FailedToRetrieveImagePullSecret"); !strings.Contains(out, "no-such-secret") {
		t.Errorf("the FailedToRetrieveImagePullSecret Event does not name the secret:\n%s", out)
	}
}

// waitWaitingFor waits, with kubectl, until the pod's container waits with reason, and returns its message.
func waitWaitingFor(t *testing.T, pod, reason string, nodeLog func() string) string {
	t.Helper()
	var got string
	err := wait.PollUntilContextTimeout(context.Background(), 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		out, err := env.KubectlRun(ctx, "get", "pod", pod, "-o",
			`jsonpath={.status.containerStatuses[0].state.waiting.reason}{"\n"}{.status.containerStatuses[0].state.waiting.message}`)
		if err != nil {
			return false, nil
		}
		r, msg, _ := strings.Cut(out, "\n")
		got = out
		if r == reason {
			got = msg
			return true, nil
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pod %s not waiting with %s: %v; last %q\n%s", pod, reason, err, got, nodeLog())
	}
	return got
}

// privateRegistry serves a registry that demands basic auth as user on a loopback port (the node shares the
// test's network namespace) and pushes the hello image to it as private/hello:<tag> for each tag.
func privateRegistry(t *testing.T, user, password string, tags ...string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := devregistry.Serve(l, devregistry.BasicAuth(user, password))
	t.Cleanup(func() { srv.Close() })
	bin := buildStatic(t, "github.com/i2kit/i2kit/examples/hello")
	addr := l.Addr().String()
	if err := devregistry.PushBinary(addr+"/private/hello:"+tags[0], bin, "/bin/busybox"); err == nil || !strings.Contains(strings.ToUpper(err.Error()), "UNAUTHORIZED") {
		t.Fatalf("an anonymous push to the private registry: %v, want UNAUTHORIZED", err)
	}
	for _, tag := range tags {
		if err := devregistry.PushBinary(addr+"/private/hello:"+tag, bin, "/bin/busybox",
			remote.WithAuth(&authn.Basic{Username: user, Password: password})); err != nil {
			t.Fatal(err)
		}
	}
	return addr
}
