package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/provider"
)

// TestPodSpec runs pods that use what ordinary workloads use of the PodSpec on one qemu-backed node, a group per
// subtest, and checks with kubectl what a user would.
func TestPodSpec(t *testing.T) {
	ctx := context.Background()
	reg := localRegistry(t)
	const nodeName = "i2kit-spec"
	runDir := filepath.Join(t.TempDir(), "run")
	t.Cleanup(func() { killVMs(runDir) })
	n := env.StartNode(t, nodeName, 10254, "--config", env.WriteFile(t, "spec.yaml", specLBConfig), "--backend", "qemu", "--insecure-registry", reg,
		"--qemu-runtime-dir", runDir, "--qemu-bridge", "i2kitspec", "--pod-cidr", "10.92.0.0/24", "--allowed-unsafe-sysctls", "net.core.*",
		"--image-store", filepath.Join(t.TempDir(), "images"))
	if _, err := env.WaitNodeReady(ctx, nodeName, 10*time.Second); err != nil {
		t.Fatalf("node not ready: %v\n%s", err, n.Log())
	}
	t.Run("runtime data", func(t *testing.T) { testRuntimeData(t, nodeName, reg, n.Log) })
	t.Run("updates to a running pod", func(t *testing.T) { testPodUpdates(t, nodeName, reg, n.Log) })
	t.Run("security context", func(t *testing.T) { testSecurityContext(t, nodeName, reg, n.Log) })
	t.Run("probes", func(t *testing.T) { testProbes(t, nodeName, reg, n.Log) })
	t.Run("init containers, lifecycle, hosts", func(t *testing.T) { testLifecycle(t, nodeName, reg, n.Log) })
	t.Run("termination messages", func(t *testing.T) { testTerminationMessages(t, nodeName, reg, n.Log) })
	t.Run("readiness while terminating", func(t *testing.T) { testReadinessWhileTerminating(t, nodeName, reg, n.Log) })
	t.Run("shortened grace period", func(t *testing.T) { testShortenedGrace(t, nodeName, reg, n.Log) })
	t.Run("sidecars", func(t *testing.T) { testSidecars(t, nodeName, reg, n.Log) })
	t.Run("init container statuses", func(t *testing.T) { testInitContainerStatuses(t, nodeName, reg, n.Log) })
	t.Run("services", func(t *testing.T) { testServices(t, nodeName, reg, n.Log) })
	t.Run("load balancer", func(t *testing.T) { testLoadBalancer(t, nodeName, reg, n.Log) })
	t.Run("jobs", func(t *testing.T) { testJobs(t, nodeName, reg, n.Log) })
	t.Run("terminal", func(t *testing.T) { testTerminal(t, nodeName, reg, n.Log) })
	t.Run("kubectl top", func(t *testing.T) { testKubectlTop(t, nodeName, reg, n.Log) })
	t.Run("shared process namespace", func(t *testing.T) { testSharedProcessNamespace(t, nodeName, reg, n.Log) })
	t.Run("host port", func(t *testing.T) { testHostPort(t, nodeName, reg, n.Log) })
	t.Run("host fields", func(t *testing.T) { testHostFields(t, nodeName, reg, n.Log) })
	t.Run("resize", func(t *testing.T) { testResize(t, nodeName, reg, n.Log) })
	t.Run("ephemeral containers", func(t *testing.T) { testEphemeralContainers(t, nodeName, reg, n.Log) })
	t.Run("kubelet details", func(t *testing.T) { testKubeletDetails(t, nodeName, reg, n.Log) })
	t.Run("image volumes", func(t *testing.T) { testImageVolumes(t, nodeName, reg, n.Log) })
}

// testHostPort runs a pod whose container port 8080 has hostPort 18080: the node forwards its port 18080 to the
// pod VM, as a kubelet's portmap plugin does. The test process shares the node's network namespace (the harness's),
// so it is where the node's own clients are: it reaches the pod at 127.0.0.1:18080 (as the node's image builder
// reaches a registry pod at localhost:5000 in Kubernetes' specs) and at the node's InternalIP:18080. Once the pod
// is deleted the port is the node's again: connections are refused.
func testHostPort(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() { pods.Delete(ctx, "hostport", metav1.DeleteOptions{}) }) //nolint:errcheck
	const hostPort = 18080
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hostport"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false),
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
				Ports: []corev1.ContainerPort{{ContainerPort: 8080, HostPort: hostPort, Protocol: corev1.ProtocolTCP}}}}}}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "hostport", nodeLog)
	node, err := env.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var nodeIP string
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			nodeIP = a.Address
		}
	}
	if nodeIP == "" {
		t.Fatalf("node %s has no InternalIP: %v", nodeName, node.Status.Addresses)
	}
	for _, host := range []string{"127.0.0.1", nodeIP} {
		url := fmt.Sprintf("http://%s:%d/", host, hostPort)
		if err := answeredBy(ctx, url, []string{"hostport"}, 2*time.Minute); err != nil {
			t.Fatalf("the pod's hostPort: %v\n%s", err, nodeLog())
		}
	}
	// A second pod bound to the node with the same host port (no scheduler to keep it away) is rejected at
	// admission, as a kubelet rejects it.
	clash := pod.DeepCopy()
	clash.Name = "hostport-clash"
	t.Cleanup(func() { pods.Delete(ctx, clash.Name, metav1.DeleteOptions{}) }) //nolint:errcheck
	if _, err := pods.Create(ctx, clash, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, clash.Name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodFailed && p.Status.Reason == "NodePorts" &&
			strings.HasPrefix(p.Status.Message, "Pod was rejected: Predicate NodePorts failed"), nil
	})
	if err != nil {
		t.Errorf("a second pod with host port %d was not rejected with NodePorts: %v\n%s", hostPort, err, nodeLog())
	}
	if err := pods.Delete(ctx, "hostport", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, []string{"hostport"}, nodeLog)
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		return refused("127.0.0.1", hostPort) && refused(nodeIP, hostPort), nil
	})
	if err != nil {
		t.Fatalf("port %d still answers after the pod was deleted: %v\n%s", hostPort, err, nodeLog())
	}
}

// testRuntimeData runs a pod that uses the runtime data ordinary workloads use — env in every form, ConfigMap,
// Secret, emptyDir and downwardAPI volumes, and the service account token that is mounted by default — and
// checks what the container sees, with kubectl exec, as on any node; then that a ConfigMap update reaches the
// mounted file, and that a pod waiting for a missing ConfigMap starts once it exists.
func testRuntimeData(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	cms := env.Client.CoreV1().ConfigMaps("default")
	if _, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "app-cfg"},
		Data: map[string]string{"greeting": "hi", "mode": "prod"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "app-secret"},
		Data: map[string][]byte{"password": []byte("s3cret")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cms.Delete(ctx, "app-cfg", metav1.DeleteOptions{})                                       //nolint:errcheck
		cms.Delete(ctx, "late-cfg", metav1.DeleteOptions{})                                      //nolint:errcheck
		env.Client.CoreV1().Secrets("default").Delete(ctx, "app-secret", metav1.DeleteOptions{}) //nolint:errcheck
		env.Client.CoreV1().Pods("default").Delete(ctx, "runtime-data", metav1.DeleteOptions{})  //nolint:errcheck
		env.Client.CoreV1().Pods("default").Delete(ctx, "waits-for-cfg", metav1.DeleteOptions{}) //nolint:errcheck
	})
	yes := true
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "runtime-data", Labels: map[string]string{"app": "runtime-data", "tier": "web"}},
		Spec: corev1.PodSpec{NodeName: nodeName,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
				Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}},
				Env: []corev1.EnvVar{
					{Name: "PLAIN", Value: "a"},
					{Name: "EXPANDED", Value: "$(PLAIN)-b-$$(PLAIN)"},
					{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
						LocalObjectReference: corev1.LocalObjectReference{Name: "app-cfg"}, Key: "greeting"}}},
					{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
						LocalObjectReference: corev1.LocalObjectReference{Name: "app-secret"}, Key: "password"}}},
					{Name: "OPTIONAL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
						LocalObjectReference: corev1.LocalObjectReference{Name: "no-such-cfg"}, Key: "k", Optional: &yes}}},
					{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
					{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
					{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{
						Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
				},
				EnvFrom: []corev1.EnvFromSource{{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: "app-cfg"}}}},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "cfg", MountPath: "/etc/cfg"},
					{Name: "secret", MountPath: "/etc/secret"},
					{Name: "scratch", MountPath: "/scratch"},
					{Name: "podinfo", MountPath: "/etc/podinfo"},
					{Name: "cfg", MountPath: "/etc/mode", SubPath: "mode"},
					{Name: "opt-cfg", MountPath: "/etc/opt-cfg"},
					{Name: "opt-secret", MountPath: "/etc/opt-secret"},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: "app-cfg"}}}},
				{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "app-secret"}}},
				{Name: "opt-cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: "no-such-cfg"}, Optional: &yes}}},
				{Name: "opt-secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "no-such-secret", Optional: &yes}}},
				{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory,
					SizeLimit: new(resource.MustParse("8Mi"))}}},
				{Name: "podinfo", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{Items: []corev1.DownwardAPIVolumeFile{
					{Path: "labels", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels"}}}}}},
			},
		},
	}
	if _, err := env.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := waitRunning(t, "runtime-data", nodeLog)

	envOut := kubectl(t, "exec", "runtime-data", "--", "env")
	for _, want := range []string{"PLAIN=a", "EXPANDED=a-b-$(PLAIN)", "GREETING=hi", "PASSWORD=s3cret",
		"POD_IP=" + p.Status.PodIP, "POD_NAME=runtime-data", "NODE=" + nodeName, "MEM_MI=64", "CFG_greeting=hi", "CFG_mode=prod"} {
		if !containsLine(envOut, want) {
			t.Errorf("env lacks %q:\n%s", want, envOut)
		}
	}
	if strings.Contains(envOut, "OPTIONAL=") {
		t.Errorf("an optional variable from a missing ConfigMap is set; a kubelet leaves it out:\n%s", envOut)
	}
	for _, c := range []struct{ file, want string }{
		{"/etc/cfg/greeting", "hi"}, {"/etc/secret/password", "s3cret"}, {"/etc/mode", "prod"},
		{"/etc/podinfo/labels", "app=\"runtime-data\"\ntier=\"web\""},
		{"/var/run/secrets/kubernetes.io/serviceaccount/namespace", "default"},
	} {
		if got := kubectl(t, "exec", "runtime-data", "--", "cat", c.file); strings.TrimSpace(got) != c.want {
			t.Errorf("%s = %q, want %q", c.file, got, c.want)
		}
	}
	// Optional volumes of a ConfigMap and a Secret that do not exist are mounted empty, as on a kubelet.
	if got := kubectl(t, "exec", "runtime-data", "--", "ls", "/etc/opt-cfg", "/etc/opt-secret"); got != "/etc/opt-cfg:\n\n/etc/opt-secret:\n" {
		t.Errorf("optional volumes of missing objects: ls = %q, want two empty directories", got)
	}
	// The emptyDir is its own tmpfs of its sizeLimit (the volume's mount reached the container's namespace).
	if got := kubectl(t, "exec", "runtime-data", "--", "stat", "-f", "-c", "%T %S %b", "/scratch"); strings.TrimSpace(got) != "tmpfs 4096 2048" {
		t.Errorf("stat -f /scratch = %q, want a tmpfs of 8 MiB (4096-byte blocks)", got)
	}
	if got := kubectl(t, "exec", "runtime-data", "--", "sh", "-c", "echo kept > /scratch/f && cat /scratch/f"); strings.TrimSpace(got) != "kept" {
		t.Errorf("emptyDir write/read = %q", got)
	}
	if _, err := env.KubectlRun(ctx, "exec", "runtime-data", "--", "sh", "-c", "echo x > /etc/cfg/new"); err == nil {
		t.Error("a configMap volume is writable; a kubelet mounts it read-only")
	}
	// The mounted token is a real one, bound to the pod.
	token := kubectl(t, "exec", "runtime-data", "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token")
	tr, err := env.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: strings.TrimSpace(token)}}, metav1.CreateOptions{})
	if err != nil || !tr.Status.Authenticated || tr.Status.User.Username != "system:serviceaccount:default:default" {
		t.Errorf("the mounted token does not authenticate as the pod's service account: %v %+v", err, tr.Status)
	}
	if ca := kubectl(t, "exec", "runtime-data", "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"); !strings.Contains(ca, "BEGIN CERTIFICATE") {
		t.Errorf("ca.crt = %q", ca)
	}

	// A ConfigMap update reaches the mounted file (not the subPath mount nor env, as on a kubelet).
	cm, err := cms.Get(ctx, "app-cfg", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["greeting"] = "hello again"
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got string
	err = wait.PollUntilContextTimeout(ctx, time.Second, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		got, _ = env.KubectlRun(ctx, "exec", "runtime-data", "--", "cat", "/etc/cfg/greeting")
		return strings.TrimSpace(got) == "hello again", nil
	})
	if err != nil {
		t.Errorf("after the ConfigMap update /etc/cfg/greeting = %q: %v", got, err)
	}

	// A pod whose ConfigMap does not exist yet waits, saying why, and starts once it does.
	late := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "waits-for-cfg"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false),
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1", Env: []corev1.EnvVar{{Name: "X",
				ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "late-cfg"}, Key: "x"}}},
				{Name: "Y", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "never-secret"}, Key: "y", Optional: new(true)}}}}}}}}
	if _, err := env.Client.CoreV1().Pods("default").Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := env.Client.CoreV1().Pods("default").Get(ctx, "waits-for-cfg", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Waiting == nil {
			return false, nil
		}
		w := p.Status.ContainerStatuses[0].State.Waiting
		return w.Reason == "CreateContainerConfigError" && strings.Contains(w.Message, "late-cfg"), nil
	})
	if err != nil {
		t.Fatalf("pod with a missing ConfigMap: no CreateContainerConfigError naming it: %v", err)
	}
	// virtual-kubelet's own Events for env references come beside the kubelet's (its e2e suite waits on them).
	waitEvent(t, "waits-for-cfg", "MandatoryConfigMapNotFound")
	if _, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "late-cfg"}, Data: map[string]string{"x": "1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "waits-for-cfg", nodeLog)
	waitEvent(t, "waits-for-cfg", "OptionalSecretNotFound")
	if out := kubectl(t, "exec", "waits-for-cfg", "--", "sh", "-c", "echo $X"); strings.TrimSpace(out) != "1" {
		t.Errorf("X = %q once the ConfigMap exists", out)
	}

	// command and args come at run time, their $(VAR) references expanded against the container's env.
	expand := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "expands-args"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false), RestartPolicy: corev1.RestartPolicyNever,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "echo", Image: reg + "/hello:1",
				Command: []string{"/bin/busybox", "echo"}, Args: []string{"$(GREETING)-$(POD_NAME)", "$$(KEEP)", "$(UNSET)"},
				Env: []corev1.EnvVar{
					{Name: "GREETING", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
						LocalObjectReference: corev1.LocalObjectReference{Name: "late-cfg"}, Key: "x"}}},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
				}}}}}
	if _, err := env.Client.CoreV1().Pods("default").Create(ctx, expand, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Client.CoreV1().Pods("default").Delete(ctx, "expands-args", metav1.DeleteOptions{}) }) //nolint:errcheck
	waitPhase(t, "expands-args", corev1.PodSucceeded, nodeLog)
	if out := kubectl(t, "logs", "expands-args"); strings.TrimSpace(out) != "1-expands-args $(KEEP) $(UNSET)" {
		t.Errorf("echo with expanded args printed %q, want %q", out, "1-expands-args $(KEEP) $(UNSET)")
	}
}

// waitPhase waits for pod name to reach phase.
func waitPhase(t *testing.T, name string, phase corev1.PodPhase, nodeLog func() string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		p, err = env.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == phase, nil
	})
	if err != nil {
		t.Fatalf("pod %s not %s: %v; status %+v\n%s", name, phase, err, p.Status, nodeLog())
	}
	return p
}

// testSecurityContext checks that a container runs as the user and group its security context says, with its
// capability bounding set, no_new_privs and a read-only root; and that runAsNonRoot refuses an image's root user.
func testSecurityContext(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	uid, gid, fsGroup := int64(1000), int64(3000), int64(2000)
	no, yes := false, true
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() {
		pods.Delete(ctx, "restricted", metav1.DeleteOptions{}) //nolint:errcheck
		pods.Delete(ctx, "nonroot", metav1.DeleteOptions{})    //nolint:errcheck
	})
	restricted := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "restricted"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no,
			Tolerations:     []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: &uid, FSGroup: &fsGroup},
			Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1",
				VolumeMounts: []corev1.VolumeMount{{Name: "tmp", MountPath: "/tmp"}, {Name: "secret", MountPath: "/etc/secret"}},
				SecurityContext: &corev1.SecurityContext{RunAsGroup: &gid, ReadOnlyRootFilesystem: &yes, AllowPrivilegeEscalation: &no,
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}},
			Volumes: []corev1.Volume{{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sc-secret", DefaultMode: new(int32(0o400))}}}}}}
	if _, err := env.Client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sc-secret"},
		Data: map[string][]byte{"key": []byte("k")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Client.CoreV1().Secrets("default").Delete(ctx, "sc-secret", metav1.DeleteOptions{}) }) //nolint:errcheck
	if _, err := pods.Create(ctx, restricted, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "restricted", nodeLog)
	if out := kubectl(t, "exec", "restricted", "--", "id"); !strings.HasPrefix(strings.TrimSpace(out), "uid=1000 gid=3000") || !strings.Contains(out, "2000") {
		t.Errorf("id = %q, want uid=1000 gid=3000 with group 2000", out)
	}
	status := kubectl(t, "exec", "restricted", "--", "cat", "/proc/self/status")
	for _, want := range []string{"CapBnd:\t0000000000000000", "NoNewPrivs:\t1"} {
		if !strings.Contains(status, want) {
			t.Errorf("/proc/self/status lacks %q:\n%s", want, status)
		}
	}
	if _, err := env.KubectlRun(ctx, "exec", "restricted", "--", "sh", "-c", "echo x > /x"); err == nil {
		t.Error("the root filesystem is writable under readOnlyRootFilesystem")
	}
	if out := kubectl(t, "exec", "restricted", "--", "sh", "-c", "echo ok > /tmp/f && cat /tmp/f"); strings.TrimSpace(out) != "ok" {
		t.Errorf("a volume under a read-only root: %q", out)
	}
	// /dev/shm is a tmpfs any user may write, as on a node (64 MiB, the container runtimes' size).
	if out := kubectl(t, "exec", "restricted", "--", "sh", "-c", "echo ok > /dev/shm/f && cat /dev/shm/f && grep ' /dev/shm ' /proc/mounts"); !strings.HasPrefix(out, "ok\nshm /dev/shm tmpfs rw,nosuid,nodev,noexec") || !strings.Contains(out, "size=65536k") {
		t.Errorf("/dev/shm for user 1000: %q, want a 64 MiB tmpfs it writes", out)
	}
	// fsGroup owns the volumes: the emptyDir is the group's (setgid), and a secret of mode 0400 is readable by the
	// non-root user through the group.
	if out := kubectl(t, "exec", "restricted", "--", "stat", "-c", "%g %A", "/tmp", "/etc/secret/..data/key"); out != "2000 drwxrwsrwx\n2000 -r--r-----\n" {
		t.Errorf("fsGroup: stat of the emptyDir and the secret file = %q, want group 2000, drwxrwsrwx and -r--r-----", out)
	}
	if out := kubectl(t, "exec", "restricted", "--", "cat", "/etc/secret/key"); out != "k" {
		t.Errorf("the secret file read as user 1000 through fsGroup = %q", out)
	}

	// The hello image runs as root: runAsNonRoot refuses to start it.
	nonroot := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "nonroot"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no, RestartPolicy: corev1.RestartPolicyNever,
			Tolerations:     []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: &yes},
			Containers:      []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}}}
	if _, err := pods.Create(ctx, nonroot, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// As on a kubelet, the container is never created: it waits with CreateContainerConfigError and the reason,
	// and a Failed Event says it.
	const why = "container has runAsNonRoot and image will run as root"
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, "nonroot", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) == 0 || p.Status.ContainerStatuses[0].State.Waiting == nil {
			return false, nil
		}
		w := p.Status.ContainerStatuses[0].State.Waiting
		return w.Reason == "CreateContainerConfigError" && w.Message == why, nil
	})
	if err != nil {
		t.Fatalf("a root image under runAsNonRoot: no CreateContainerConfigError %q: %v\n%s", why, err, nodeLog())
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=nonroot,reason=Failed"})
		return err == nil && len(evs.Items) > 0 && strings.Contains(evs.Items[0].Message, why), nil
	})
	if err != nil {
		t.Errorf("no Failed Event for the refused container: %v", err)
	}
}

// testProbes checks that readiness drives the Ready condition (an httpGet that passes, a tcpSocket that fails) and
// that a failing liveness probe restarts the container, with Unhealthy and Killing Events.
func testProbes(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no := false
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() {
		pods.Delete(ctx, "probed", metav1.DeleteOptions{})    //nolint:errcheck
		pods.Delete(ctx, "not-ready", metav1.DeleteOptions{}) //nolint:errcheck
	})
	mk := func(name string, c corev1.Container) {
		c.Name, c.Image = "web", reg+"/hello:1"
		c.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no,
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}, Containers: []corev1.Container{c}}}
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mk("probed", corev1.Container{
		ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("http")}}},
		LivenessProbe: &corev1.Probe{PeriodSeconds: 1, FailureThreshold: 2, InitialDelaySeconds: 2,
			ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "/tmp/healthy"}}}},
	})
	mk("not-ready", corev1.Container{
		ReadinessProbe: &corev1.Probe{PeriodSeconds: 1, ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(81)}}},
	})
	// /tmp/healthy never exists: the liveness probe fails and the container restarts.
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, "probed", metav1.GetOptions{})
		return err == nil && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1, nil
	})
	if err != nil {
		t.Fatalf("a container failing its liveness probe was not restarted: %v\n%s", err, nodeLog())
	}
	waitEvent(t, "probed", "Unhealthy")
	waitEvent(t, "probed", "Killing")
	// Between liveness kills the readiness probe passes: the pod becomes Ready.
	waitRunning(t, "probed", nodeLog)

	// A readiness probe that fails leaves the pod Running but not Ready.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, "not-ready", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning && len(p.Status.ContainerStatuses) == 1 &&
			p.Status.ContainerStatuses[0].State.Running != nil, nil
	})
	if err != nil {
		t.Fatalf("pod not-ready not Running: %v", err)
	}
	waitEvent(t, "not-ready", "Unhealthy")
	p, err := pods.Get(ctx, "not-ready", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if podReady(*p) || p.Status.ContainerStatuses[0].Ready {
		t.Errorf("a pod whose readiness probe fails is Ready: %+v", p.Status)
	}
	waitEvent(t, "not-ready", "Unhealthy")
}

// testLifecycle checks init containers (run first, in order, their output seen by the app), postStart and
// preStop hooks, /etc/hosts with hostAliases, and termination messages (file and FallbackToLogsOnError).
func testLifecycle(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no := false
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() {
		for _, n := range []string{"hooks", "says-why", "logs-why", "deadline"} {
			pods.Delete(ctx, n, metav1.DeleteOptions{}) //nolint:errcheck
		}
	})
	base := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no,
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}}}}
	}
	hooks := base("hooks")
	hooks.Spec.Hostname, hooks.Spec.Subdomain = "web-0", "web"
	hooks.Spec.DNSPolicy = corev1.DNSNone
	hooks.Spec.DNSConfig = &corev1.PodDNSConfig{Nameservers: []string{"192.0.2.53"}, Searches: []string{"corp.example"}}
	hooks.Spec.HostAliases = []corev1.HostAlias{{IP: "10.1.2.3", Hostnames: []string{"foo.local", "bar.local"}}}
	hooks.Spec.Volumes = []corev1.Volume{{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	mount := []corev1.VolumeMount{{Name: "work", MountPath: "/work"}}
	hooks.Spec.InitContainers = []corev1.Container{
		{Name: "first", Image: reg + "/hello:1", Command: []string{"sh", "-c", "echo one > /work/order"}, VolumeMounts: mount},
		{Name: "second", Image: reg + "/hello:1", Command: []string{"sh", "-c", "echo two >> /work/order"}, VolumeMounts: mount},
	}
	hooks.Spec.Containers = []corev1.Container{{Name: "web", Image: reg + "/hello:1", VolumeMounts: mount,
		Lifecycle: &corev1.Lifecycle{
			PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "echo started > /work/poststart"}}},
			PreStop:   &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/prestop", Port: intstr.FromInt32(8080)}},
		}}}
	if _, err := pods.Create(ctx, hooks, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := waitRunning(t, "hooks", nodeLog)
	if out := kubectl(t, "exec", "hooks", "--", "cat", "/work/order"); out != "one\ntwo\n" {
		t.Errorf("what the init containers wrote = %q, want one and two in order", out)
	}
	for _, ic := range p.Status.InitContainerStatuses {
		if ic.State.Terminated == nil || ic.State.Terminated.Reason != "Completed" {
			t.Errorf("init container %s: %+v", ic.Name, ic.State)
		}
	}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		out, _ := env.KubectlRun(ctx, "exec", "hooks", "--", "cat", "/work/poststart")
		return strings.TrimSpace(out) == "started", nil
	})
	if err != nil {
		t.Errorf("the postStart hook did not run: %v", err)
	}
	hostsOut := kubectl(t, "exec", "hooks", "--", "cat", "/etc/hosts")
	for _, want := range []string{"10.1.2.3\tfoo.local\tbar.local", p.Status.PodIP + "\tweb-0.web.default.svc.cluster.local\tweb-0", "127.0.0.1\tlocalhost"} {
		if !strings.Contains(hostsOut, want) {
			t.Errorf("/etc/hosts lacks %q:\n%s", want, hostsOut)
		}
	}
	if out := kubectl(t, "exec", "hooks", "--", "cat", "/etc/resolv.conf"); out != "search corp.example\nnameserver 192.0.2.53\n" {
		t.Errorf("/etc/resolv.conf for dnsPolicy None = %q", out)
	}
	if out := kubectl(t, "exec", "hooks", "--", "hostname"); strings.TrimSpace(out) != "web-0" {
		t.Errorf("hostname = %q, want spec.hostname web-0", out)
	}
	// The preStop hook reaches the server before it is stopped: its request shows in the followed log.
	follow := startKubectl(t, "logs", "-f", "hooks")
	follow.waitFor(t, "listening on :8080", 30*time.Second)
	if err := pods.Delete(ctx, "hooks", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	follow.waitFor(t, "GET /prestop", 30*time.Second)

	deadline := base("deadline") // its deadline is set once it runs, as the API allows
	deadline.Spec.Containers = []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}
	if _, err := pods.Create(ctx, deadline, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	says := base("says-why")
	says.Spec.RestartPolicy = corev1.RestartPolicyNever
	says.Spec.Containers = []corev1.Container{{Name: "job", Image: reg + "/hello:1",
		Command: []string{"sh", "-c", "echo 'disk full' > /dev/termination-log; exit 2"}}}
	logs := base("logs-why")
	logs.Spec.RestartPolicy = corev1.RestartPolicyNever
	logs.Spec.Containers = []corev1.Container{{Name: "job", Image: reg + "/hello:1", TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		Command: []string{"sh", "-c", "echo 'oops: no config'; exit 1"}}}
	for _, p := range []*corev1.Pod{says, logs} {
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for name, want := range map[string]string{"says-why": "disk full", "logs-why": "oops: no config"} {
		var p *corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			var err error
			p, err = pods.Get(ctx, name, metav1.GetOptions{})
			return err == nil && p.Status.Phase == corev1.PodFailed, nil
		})
		if err != nil {
			t.Fatalf("pod %s did not fail: %v", name, err)
		}
		if term := p.Status.ContainerStatuses[0].State.Terminated; term == nil || strings.TrimSpace(term.Message) != want {
			t.Errorf("pod %s termination = %+v, want message %q", name, p.Status.ContainerStatuses[0].State, want)
		}
	}
	waitRunning(t, "deadline", nodeLog)
	if _, err := pods.Patch(ctx, "deadline", types.MergePatchType, []byte(`{"spec":{"activeDeadlineSeconds":3}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := pods.Get(ctx, "deadline", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodFailed && p.Status.Reason == "DeadlineExceeded", nil
	})
	if err != nil {
		t.Errorf("a pod past its activeDeadlineSeconds did not fail with DeadlineExceeded: %v", err)
	}
}

// testSharedProcessNamespace runs a pod with shareProcessNamespace and one without, each with a web container and a
// sleeping one: with it, ps in either container shows the other's processes and the pause process as PID 1 (an
// init container's too), and a signal from one container ends the other's process, whose exit and restart are
// reported; without it, a container sees only its own.
func testSharedProcessNamespace(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no, yes := false, true
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() {
		pods.Delete(ctx, "shared-pid", metav1.DeleteOptions{}) //nolint:errcheck
		pods.Delete(ctx, "own-pid", metav1.DeleteOptions{})    //nolint:errcheck
	})
	mk := func(name string, share bool) {
		mount := []corev1.VolumeMount{{Name: "work", MountPath: "/work"}}
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no, ShareProcessNamespace: &share,
				Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
				Volumes:     []corev1.Volume{{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
				InitContainers: []corev1.Container{{Name: "init", Image: reg + "/hello:1", VolumeMounts: mount,
					Command: []string{"sh", "-c", "ps > /work/init-ps"}}},
				Containers: []corev1.Container{{Name: "web", Image: reg + "/hello:1", VolumeMounts: mount},
					{Name: "sleeper", Image: reg + "/hello:1", Command: []string{"sleep", "3600"}}}}}
		if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mk("shared-pid", yes)
	mk("own-pid", no)
	waitRunning(t, "shared-pid", nodeLog)
	waitRunning(t, "own-pid", nodeLog)

	ps := kubectl(t, "exec", "shared-pid", "-c", "web", "--", "ps")
	if !strings.Contains(ps, "sleep 3600") || !strings.Contains(ps, "/pause") {
		t.Errorf("ps in web of a pod sharing its process namespace shows no sleep 3600 of sleeper, or no /pause:\n%s", ps)
	}
	if ps := kubectl(t, "exec", "shared-pid", "-c", "sleeper", "--", "ps"); !strings.Contains(ps, "/app") {
		t.Errorf("ps in sleeper of a pod sharing its process namespace shows no /app of web:\n%s", ps)
	}
	if ps := kubectl(t, "exec", "shared-pid", "-c", "web", "--", "cat", "/work/init-ps"); !strings.Contains(ps, "/pause") {
		t.Errorf("ps in the init container of a pod sharing its process namespace shows no /pause:\n%s", ps)
	}
	if ps := kubectl(t, "exec", "own-pid", "-c", "web", "--", "ps"); strings.Contains(ps, "sleep 3600") || strings.Contains(ps, "/pause") {
		t.Errorf("ps in web of a pod without shareProcessNamespace shows another container's processes:\n%s", ps)
	}

	// web ends sleeper's sleep with SIGTERM: sleeper exits with 143 and restarts (restartPolicy Always).
	kubectl(t, "exec", "shared-pid", "-c", "web", "--", "sh", "-c", "ps | grep '[s]leep 3600' | while read pid rest; do kill $pid; done")
	waitRestarted := func(restarts int32, code int32) {
		t.Helper()
		var p *corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			var err error
			p, err = pods.Get(ctx, "shared-pid", metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			for _, cs := range p.Status.ContainerStatuses {
				if cs.Name == "sleeper" {
					return cs.RestartCount == restarts && cs.State.Running != nil, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("sleeper, killed from web, is not running after %d restarts: %v; status %+v\n%s", restarts, err, p.Status, nodeLog())
		}
		for _, cs := range p.Status.ContainerStatuses {
			switch last := cs.LastTerminationState.Terminated; {
			case cs.Name == "web" && cs.RestartCount != 0:
				t.Errorf("web restarted %d times", cs.RestartCount)
			case cs.Name == "sleeper" && (last == nil || last.ExitCode != code || last.Reason != "Error"):
				t.Errorf("sleeper's last termination = %+v, want exit code %d, reason Error", last, code)
			}
		}
		if ps := kubectl(t, "exec", "shared-pid", "-c", "web", "--", "ps"); strings.Count(ps, "sleep 3600") != 1 {
			t.Errorf("ps in web after sleeper's restart shows not one sleep 3600:\n%s", ps)
		}
	}
	waitRestarted(1, 143) // 128+SIGTERM

	// web kills sleeper's supervisor (its sleep's parent) with SIGKILL: sleeper ends with 137 and its orphaned
	// sleep with it, killed by its cgroup rather than left to the pause process.
	kubectl(t, "exec", "shared-pid", "-c", "web", "--", "sh", "-c",
		"ps | grep '[s]leep 3600' | while read pid rest; do read p comm state ppid rest < /proc/$pid/stat; kill -9 $ppid; done")
	waitRestarted(2, 137)
}

// waitRunning waits for a pod to be Running and Ready.
func waitRunning(t *testing.T, name string, nodeLog func() string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		p, err = env.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning && podReady(*p), nil
	})
	if err != nil {
		t.Fatalf("pod %s not Running and Ready: %v; status %+v\n%s", name, err, p.Status, nodeLog())
	}
	return p
}

func containsLine(out, line string) bool {
	for _, l := range strings.Split(out, "\n") {
		if l == line {
			return true
		}
	}
	return false
}

// testTerminal runs a pod whose container has a terminal (tty and stdin, as kubectl run -it makes): kubectl attach
// -it drives its shell from a pseudo-terminal, the shell sees a terminal, and its exit code ends the pod.
func testTerminal(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	pods := env.Client.CoreV1().Pods("default")
	t.Cleanup(func() { pods.Delete(ctx, "term", metav1.DeleteOptions{}) }) //nolint:errcheck
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "term"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false), RestartPolicy: corev1.RestartPolicyNever,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "shell", Image: reg + "/hello:1", Command: []string{"sh"},
				Stdin: true, TTY: true}}}}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, "term", nodeLog)
	got, err := driveTTY(t, "echo $((6*7))-tty; tty; exit 3\n", "attach", "-it", "term")
	if !strings.Contains(got, "42-tty") || !strings.Contains(got, "/dev/pts/") {
		t.Errorf("kubectl attach -it to a shell with a terminal: %v; the terminal showed %q", err, got)
	}
	p := waitPhase(t, "term", corev1.PodFailed, nodeLog)
	if term := p.Status.ContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 3 {
		t.Errorf("the shell's container ended %+v, want exit code 3", p.Status.ContainerStatuses[0].State)
	}
	if out := kubectl(t, "logs", "term"); !strings.Contains(out, "42-tty") {
		t.Errorf("kubectl logs of the terminal = %q, want what the shell printed", out)
	}

	// stdinOnce: the first attach's end closes the main process's stdin, which reads EOF.
	once := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "stdin-once"},
		Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: new(false), RestartPolicy: corev1.RestartPolicyNever,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{Name: "reader", Image: reg + "/hello:1", Command: []string{"sh", "-c", "cat; echo got-eof"},
				Stdin: true, StdinOnce: true}}}}
	if _, err := pods.Create(ctx, once, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pods.Delete(ctx, "stdin-once", metav1.DeleteOptions{}) }) //nolint:errcheck
	waitRunning(t, "stdin-once", nodeLog)
	attach := exec.Command(env.Kubectl, "--kubeconfig", env.Plane.KubeconfigPath(), "attach", "-i", "stdin-once")
	attach.Stdin = strings.NewReader("typed\n")
	if out, err := attach.CombinedOutput(); err != nil {
		t.Errorf("kubectl attach -i: %v: %s", err, out)
	}
	waitPhase(t, "stdin-once", corev1.PodSucceeded, nodeLog)
	if out := kubectl(t, "logs", "stdin-once"); out != "typed\ngot-eof\n" {
		t.Errorf("logs of a stdinOnce container after one attach = %q, want %q", out, "typed\ngot-eof\n")
	}
}

// testHostFields runs what a kubelet honours or refuses of a pod's host-facing fields, and reads back from inside
// the VM what a container sees: hostnameOverride as the hostname and in /etc/hosts; a privileged container with
// every capability, able to mount, beside an unprivileged one that is not; sysctls set in the pod's kernel, a safe
// one and one the node allows (--allowed-unsafe-sysctls net.core.*); and the kubelet's refusals, with their reasons
// and Events, of an unsafe sysctl the node does not allow (SysctlForbidden) and of a Windows pod (PodOSNotSupported).
func testHostFields(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	no, yes := false, true
	override := "override.example.host"
	pods := env.Client.CoreV1().Pods("default")
	names := []string{"host-override", "privileged", "sysctls", "unsafe-sysctl", "windows-pod"}
	t.Cleanup(func() {
		for _, n := range names {
			pods.Delete(ctx, n, metav1.DeleteOptions{}) //nolint:errcheck
		}
	})
	sleeper := func(name string) corev1.Container {
		return corev1.Container{Name: name, Image: reg + "/hello:1", Command: []string{"sleep", "3600"}}
	}
	pod := func(name string, spec corev1.PodSpec) {
		spec.NodeName, spec.AutomountServiceAccountToken = nodeName, &no
		spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
		if spec.Containers == nil {
			spec.Containers = []corev1.Container{sleeper("main")}
		}
		if _, err := pods.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod("host-override", corev1.PodSpec{Hostname: "custom-host", Subdomain: "t", HostnameOverride: &override})
	priv := sleeper("priv")
	priv.SecurityContext = &corev1.SecurityContext{Privileged: &yes}
	pod("privileged", corev1.PodSpec{Containers: []corev1.Container{priv, sleeper("plain")}})
	pod("sysctls", corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{
		{Name: "kernel.shm_rmid_forced", Value: "1"}, {Name: "net/core/somaxconn", Value: "1234"}}}})
	pod("unsafe-sysctl", corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{Sysctls: []corev1.Sysctl{
		{Name: "kernel.msgmax", Value: "10000000000"}}}})
	pod("windows-pod", corev1.PodSpec{OS: &corev1.PodOS{Name: corev1.Windows}})

	// Refusals come at once, before any image is built.
	for _, r := range []struct{ pod, reason, msg string }{
		{"unsafe-sysctl", provider.ReasonSysctlForbidden, `Pod was rejected: forbidden sysctl: "kernel.msgmax" not allowlisted`},
		{"windows-pod", provider.ReasonPodOSNotSupported, "Pod was rejected: Failed to admit pod as the OS field doesn't match node OS"},
	} {
		var p *corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			var err error
			p, err = pods.Get(ctx, r.pod, metav1.GetOptions{})
			return err == nil && p.Status.Phase == corev1.PodFailed, nil
		})
		if err != nil || p.Status.Reason != r.reason || p.Status.Message != r.msg {
			t.Errorf("pod %s: %v; status %s/%s %q, want Failed/%s %q\n%s", r.pod, err, p.Status.Phase, p.Status.Reason, p.Status.Message,
				r.reason, r.msg, nodeLog())
			continue
		}
		waitEvent(t, r.pod, r.reason)
	}

	// hostnameOverride wins over hostname and subdomain: the hostname, /etc/hostname and the pod IP's only name in
	// /etc/hosts are the override, as a kubelet's GeneratePodHostNameAndDomain and hosts file make them.
	p := waitRunning(t, "host-override", nodeLog)
	if got := strings.TrimSpace(kubectl(t, "exec", "host-override", "--", "hostname")); got != override {
		t.Errorf("hostname = %q, want %q", got, override)
	}
	if got := strings.TrimSpace(kubectl(t, "exec", "host-override", "--", "cat", "/etc/hostname")); got != override {
		t.Errorf("/etc/hostname = %q, want %q", got, override)
	}
	hosts := kubectl(t, "exec", "host-override", "--", "cat", "/etc/hosts")
	if !containsLine(hosts, p.Status.PodIP+"\t"+override) || strings.Contains(hosts, "custom-host") {
		t.Errorf("/etc/hosts has no line %q alone, or names custom-host:\n%s", p.Status.PodIP+"\t"+override, hosts)
	}

	// A privileged container has every capability (CapEff covers at least CAP_CHOWN..CAP_CHECKPOINT_RESTORE, 41
	// bits), mounts a tmpfs and has /sys read-write; its unprivileged sibling has none of that.
	waitRunning(t, "privileged", nodeLog)
	capEff := func(c string) uint64 {
		out := kubectl(t, "exec", "privileged", "-c", c, "--", "grep", "CapEff", "/proc/self/status")
		v, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "CapEff:")), 16, 64)
		if err != nil {
			t.Fatalf("container %s: CapEff %q: %v", c, out, err)
		}
		return v
	}
	const allCaps = 1<<41 - 1
	if got := capEff("priv"); got&allCaps != allCaps {
		t.Errorf("privileged container's CapEff = %x, want every capability (%x)", got, uint64(allCaps))
	}
	if got := capEff("plain"); got&(1<<21) != 0 { // CAP_SYS_ADMIN
		t.Errorf("unprivileged container's CapEff = %x has CAP_SYS_ADMIN", got)
	}
	if out := kubectl(t, "exec", "privileged", "-c", "priv", "--", "sh", "-c", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && grep ' /mnt/t ' /proc/mounts"); !strings.Contains(out, "tmpfs") {
		t.Errorf("privileged container mounted no tmpfs: %q", out)
	}
	if out := kubectl(t, "exec", "privileged", "-c", "priv", "--", "sh", "-c", "grep ' /sys ' /proc/mounts"); !strings.Contains(out, " rw,") {
		t.Errorf("privileged container's /sys is not read-write: %q", out)
	}
	kctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if out, err := env.KubectlRun(kctx, "exec", "privileged", "-c", "plain", "--", "sh", "-c", "mkdir -p /mnt/t && mount -t tmpfs none /mnt/t"); err == nil {
		t.Errorf("unprivileged container mounted a tmpfs: %s", out)
	}
	if out := kubectl(t, "exec", "privileged", "-c", "plain", "--", "sh", "-c", "grep ' /sys ' /proc/mounts"); !strings.Contains(out, " ro,") {
		t.Errorf("unprivileged container's /sys is not read-only: %q", out)
	}
	// The unprivileged container's /dev holds what a container runtime gives (and its termination log), none of
	// the VM's disks; a device node it makes (it has CAP_MKNOD) opens nothing, in /dev or in its root. The
	// privileged one has the VM's devices. Both share the pod's /dev/shm.
	wantDev := "core fd full mqueue null ptmx pts random shm stderr stdin stdout termination-log tty urandom zero"
	if out := kubectl(t, "exec", "privileged", "-c", "plain", "--", "ls", "-A", "/dev"); strings.Join(strings.Fields(out), " ") != wantDev {
		t.Errorf("unprivileged container's /dev holds %q, want %q", strings.Fields(out), wantDev)
	}
	for _, path := range []string{"/made", "/dev/made"} {
		out, err := env.KubectlRun(kctx, "exec", "privileged", "-c", "plain", "--", "sh", "-c",
			"busybox mknod "+path+" c 1 3 && echo x > "+path)
		if err == nil || !strings.Contains(out+err.Error(), "Permission denied") {
			t.Errorf("unprivileged container made a device node at %s and opened it: %v: %s", path, err, out)
		}
	}
	if _, err := env.KubectlRun(kctx, "exec", "privileged", "-c", "priv", "--", "sh", "-c", "[ -b /dev/vda ]"); err != nil {
		t.Errorf("privileged container has no /dev/vda: %v", err)
	}
	kubectl(t, "exec", "privileged", "-c", "plain", "--", "sh", "-c", "echo shared > /dev/shm/s")
	if out := kubectl(t, "exec", "privileged", "-c", "priv", "--", "cat", "/dev/shm/s"); out != "shared\n" {
		t.Errorf("/dev/shm/s written by one container reads %q in the other, want shared", out)
	}

	// Sysctls are the pod's kernel's: a safe one of the IPC namespace (the container's own) and a network one the
	// node allows, given with slashes.
	waitRunning(t, "sysctls", nodeLog)
	for file, want := range map[string]string{"/proc/sys/kernel/shm_rmid_forced": "1", "/proc/sys/net/core/somaxconn": "1234"} {
		if got := strings.TrimSpace(kubectl(t, "exec", "sysctls", "--", "cat", file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
}
