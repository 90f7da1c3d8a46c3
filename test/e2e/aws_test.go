package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awsec2 "github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/devcloud/ec2/vmrunner"
	"github.com/i2kit/i2kit/provider/aws"
	"github.com/i2kit/i2kit/test/harness"
	"github.com/i2kit/i2kit/vmimage/kernel"
)

// awsCloud is the local EC2 of TestAWSBackend: the server, the URL it answers at, and an SDK client of it.
type awsCloud struct {
	srv *ec2.Server
	url string
	c   *awsec2.Client
}

// TestAWSBackend runs pods through `i2kit node` with the aws backend against the local EC2 whose instances are
// QEMU VMs (devcloud/ec2 with vmrunner), in-process in the test's network namespace: the node reaches the
// instances' private addresses through the subnets' bridges. One image serves every pod, so only the first
// publishes the AMI; three instances boot in all. It checks, in order: a Deployment becomes instances whose private
// IPs are the pod IPs; kubectl logs, exec and port-forward; a Secret's value is in no instance's user-data or tags;
// a container cannot reach the instance metadata service; a restarted node adopts its instances (none terminated,
// none launched); an instance terminated from outside fails its pod; deleting a pod terminates its instance; an
// instance whose pod was deleted while the node was down is ended by the garbage collector.
func TestAWSBackend(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skipf("qemu-system-x86_64 is required (make deps installs it): %v", err)
	}
	if _, err := os.Stat("/usr/share/ovmf/OVMF.fd"); err != nil {
		t.Skipf("OVMF is required: %v", err)
	}
	if _, err := kernel.BzImage(); err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	t0 := time.Now()
	since := func() string { return time.Since(t0).Round(time.Second).String() }
	reg := localRegistry(t)
	dir := t.TempDir()
	cloud := startCloud(t, dir)

	const nodeName = "i2kit-aws"
	// gcMinAge takes any positive duration; the node's own bound (30 s, two sweeps 30 s apart) is then the one.
	cfg := cloud.nodeConfig(t, "e2e", reg, dir, "  syncPeriod: 2s\n  gcMinAge: 1s\n")
	startNode := func() *harness.Node {
		n := env.StartNode(t, nodeName, 10256, "--config", cfg)
		if _, err := env.WaitNodeReady(ctx, nodeName, 30*time.Second); err != nil {
			t.Fatalf("node not ready: %v\n%s", err, n.Log())
		}
		return n
	}
	n := startNode()
	nodeLog := func() string { return n.Log() }

	const secretValue = "s3cr3t-e2e-7f1d0c9a"
	if _, err := env.Client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "aws-e2e"},
		StringData: map[string]string{"token": secretValue}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		env.Client.CoreV1().Secrets("default").Delete(context.Background(), "aws-e2e", metav1.DeleteOptions{}) //nolint:errcheck
	})
	d := deployment("hello-aws", true)
	replicas := int32(2)
	d.Spec.Replicas = &replicas
	no := false
	spec := &d.Spec.Template.Spec
	spec.AutomountServiceAccountToken = &no
	spec.NodeSelector = map[string]string{"kubernetes.io/hostname": nodeName}
	spec.Containers[0].Image = reg + "/hello:1"
	spec.Containers[0].Env = []corev1.EnvVar{{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{
		SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "aws-e2e"}, Key: "token"}}}}
	createDeployment(t, d)

	// (a) Two replicas become two instances, the pods Ready with the instances' private IPs.
	ps := waitReadyPods(t, "hello-aws", 2, 8*time.Minute, nil, nodeLog)
	ids := map[string]string{} // pod name → instance ID
	for _, p := range ps {
		in := cloud.instanceOf(t, p.UID)
		if in.State != "running" || in.PrivateIP != p.Status.PodIP || !strings.HasPrefix(in.InstanceType, "t3.") {
			t.Errorf("pod %s (IP %s) runs on instance %s: %s, %s, IP %s", p.Name, p.Status.PodIP, in.ID, in.State,
				in.InstanceType, in.PrivateIP)
		}
		ids[p.Name] = in.ID
	}
	if ids[ps[0].Name] == ids[ps[1].Name] {
		t.Fatalf("both pods on instance %s", ids[ps[0].Name])
	}
	if n := cloud.srv.Calls("RegisterImage"); n != 1 {
		t.Errorf("%d RegisterImage calls for one image, want 1", n)
	}
	t.Logf("(a) 2 pods Ready on 2 instances %s after the Deployment was created (the image built and published)", since())

	// (c) The Secret reached the container, and is in no instance's user-data or tags.
	if out := kubectl(t, "exec", ps[0].Name, "--", "sh", "-c", "echo $TOKEN"); strings.TrimSpace(out) != secretValue {
		t.Errorf("the container's TOKEN is %q, want the Secret's value", out)
	}
	for _, id := range ids {
		in, _ := cloud.srv.Instance(id)
		if strings.Contains(string(in.UserData), secretValue) ||
			strings.Contains(string(in.UserData), base64.StdEncoding.EncodeToString([]byte(secretValue))) {
			t.Errorf("instance %s: the Secret's value is in its user-data:\n%s", id, in.UserData)
		}
		for _, tag := range in.Tags {
			if strings.Contains(tag.Key+"="+tag.Value, secretValue) {
				t.Errorf("instance %s: the Secret's value is in tag %s", id, tag.Key)
			}
		}
	}
	t.Logf("(c) the Secret is in the container, not in user-data or tags: %s", since())

	// (d) The agent read its user-data from the metadata service at boot (its console says which instance it is),
	// then shut the service off from the VM; the node turned the endpoint off once the agent connected.
	pod0, id0 := ps[0], ids[ps[0].Name]
	console := cloud.console(t, id0)
	if want := "instance " + id0 + ", serving the protocol with TLS on " + pod0.Status.PodIP; !strings.Contains(console, want) ||
		!strings.Contains(console, "metadata service kept: false") {
		t.Errorf("the console of %s does not say %q with the metadata service not kept:\n%s", id0, want, console)
	}
	// The hello binary fetches a URL from inside the pod (busybox's static wget cannot be trusted to fail for the
	// right reason): the pod's own server answers it; the metadata service gives no HTTP answer at all (IMDSv2
	// answers a GET without a token with 401, which would mean it was reached).
	if out := kubectl(t, "exec", pod0.Name, "--", "/app", "-get", "http://127.0.0.1:8080/"); !strings.HasPrefix(out, "200 OK hello from") {
		t.Errorf("the pod's own server through /app -get: %q", out)
	}
	out, err := env.KubectlRun(ctx, "exec", pod0.Name, "--", "/app", "-get", "http://169.254.169.254/latest/meta-data/instance-id")
	if err == nil || out != "" || !strings.Contains(err.Error(), "dial tcp 169.254.169.254:80") {
		t.Errorf("a container reached the instance metadata service: %q, %v", out, err)
	} else {
		t.Logf("the metadata service from a container: %v", err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		in, _ := cloud.srv.Instance(id0)
		return in.Metadata.HttpEndpoint == "disabled", nil
	})
	if err != nil {
		in, _ := cloud.srv.Instance(id0)
		t.Errorf("instance %s metadata endpoint %q, want disabled by the node", id0, in.Metadata.HttpEndpoint)
	}
	t.Logf("(d) the metadata service is unreachable from the container: %s", since())

	// (b) kubectl logs, attach, exec and port-forward reach the agent over TLS on the instance's address.
	testKubectl(t, pod0)
	t.Logf("(b) kubectl logs, attach, exec, port-forward and stats: %s", since())

	// (f) A restarted node adopts its instances: none terminated, none launched. While it is down the Deployment
	// shrinks to 1 and the pod it ends is force-deleted: that pod's instance is left for the garbage collector (h).
	runs, terms := cloud.srv.Calls("RunInstances"), cloud.srv.Calls("TerminateInstances")
	if err := n.Stop(t, 30*time.Second); err != nil {
		t.Fatalf("stopping the node: %v", err)
	}
	scale(t, "hello-aws", 1)
	var gone corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		for _, p := range pods(t, "hello-aws") {
			if p.DeletionTimestamp != nil {
				gone = p
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no pod deleted when the Deployment shrank: %v%s", err, summarize(pods(t, "hello-aws")))
	}
	kubectl(t, "delete", "pod", gone.Name, "--force", "--grace-period=0")
	orphan := ids[gone.Name]
	var kept corev1.Pod
	for _, p := range ps {
		if p.Name != gone.Name {
			kept = p
		}
	}
	tRestart := time.Now()
	n = startNode()
	p := waitRunning(t, kept.Name, nodeLog)
	if p.UID != kept.UID || p.Status.PodIP != kept.Status.PodIP {
		t.Errorf("pod %s after the restart: UID %s IP %s, before %s %s", kept.Name, p.UID, p.Status.PodIP, kept.UID, kept.Status.PodIP)
	}
	// The Node object says Ready before the new process has synced its pods: wait for the agent to answer.
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := env.KubectlRun(ctx, "logs", kept.Name, "--tail=1")
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("kubectl logs after the node restarted: %v\n%s", err, n.Log())
	}
	if r, tm := cloud.srv.Calls("RunInstances"), cloud.srv.Calls("TerminateInstances"); r != runs || tm != terms {
		t.Errorf("across the restart: %d RunInstances and %d TerminateInstances calls, want none", r-runs, tm-terms)
	}
	for _, id := range ids {
		if in, _ := cloud.srv.Instance(id); in.State != "running" {
			t.Errorf("instance %s is %s after the restart, want running", id, in.State)
		}
	}
	t.Logf("(f) the restarted node adopted its instances, pod %s Ready and answering %s after the restart: %s",
		kept.Name, time.Since(tRestart).Round(time.Millisecond), since())

	// (g) An instance terminated from outside fails its pod within one sync (syncPeriod 2s); the Deployment
	// replaces it, from the same AMI.
	keptID := ids[kept.Name]
	if err := cloud.srv.TerminateOutside(keptID); err != nil {
		t.Fatal(err)
	}
	tOut := time.Now()
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err = env.Client.CoreV1().Pods("default").Get(ctx, kept.Name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodFailed && p.Status.Reason == "InstanceTerminated", nil
	})
	if err != nil {
		t.Fatalf("pod %s after its instance %s was terminated from outside: %v; status %+v\n%s", kept.Name, keptID, err, p.Status, n.Log())
	}
	t.Logf("(g) an instance terminated from outside failed its pod after %s: %s", time.Since(tOut).Round(time.Millisecond), since())

	// (e) The replacement pod runs from the published AMI; deleting it (the Deployment scaled to 0, its
	// ReplicaSet deletes the pod) terminates its instance within the pod's grace period.
	var repl corev1.Pod
	for _, p := range waitReadyPods(t, "hello-aws", 1, 5*time.Minute, map[types.UID]bool{kept.UID: true}, nodeLog) {
		repl = p
	}
	if n := cloud.srv.Calls("RegisterImage"); n != 1 {
		t.Errorf("%d RegisterImage calls for one image, want 1", n)
	}
	replID := cloud.instanceOf(t, repl.UID).ID
	scale(t, "hello-aws", 0)
	tDel := time.Now()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := cloud.srv.WaitState(wctx, replID, "terminated"); err != nil {
		t.Fatalf("the instance of deleted pod %s: %v\n%s", repl.Name, err, n.Log())
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := env.Client.CoreV1().Pods("default").Get(ctx, repl.Name, metav1.GetOptions{})
		return err != nil, nil
	})
	if err != nil {
		t.Errorf("pod %s still there after its instance was terminated", repl.Name)
	}
	if took := time.Since(tDel); took > 30*time.Second {
		t.Errorf("deleting pod %s took %s to terminate its instance, more than the grace period", repl.Name, took)
	}
	t.Logf("(e) deleting pod %s terminated its instance in %s: %s", repl.Name, time.Since(tDel).Round(time.Millisecond), since())

	// (h) The instance whose pod was force-deleted while the node was down is ended by the garbage collector: seen
	// without a pod on two sweeps 30 s apart, the first 30 s after the node is ready.
	wctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := cloud.srv.WaitState(wctx, orphan, "terminated"); err != nil {
		t.Errorf("the instance of force-deleted pod %s: %v\n%s", gone.Name, err, n.Log())
	} else if !strings.Contains(n.Log(), "ending a VM whose pod is gone") {
		t.Errorf("instance %s of force-deleted pod %s ended, but not by the garbage collector:\n%s", orphan, gone.Name, n.Log())
	} else {
		t.Logf("(h) the garbage collector ended instance %s %s after the node restarted: %s", orphan,
			time.Since(tRestart).Round(time.Second), since())
	}

	// Nothing is left running.
	out2, err := cloud.c.DescribeInstances(ctx, &awsec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: sdkaws.String("instance-state-name"), Values: []string{"pending", "running", "shutting-down"}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range out2.Reservations {
		for _, in := range r.Instances {
			t.Errorf("instance %s still %s", sdkaws.ToString(in.InstanceId), in.State.Name)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(dir, "instances")); err != nil || len(ents) != 0 {
		t.Errorf("the VM runner still holds %d instance directories: %v", len(ents), err)
	}
}

// nodeConfig writes the configuration file of a node with backend aws on the cloud (cluster, the cloud's default
// subnets and security group, t3 instances, its image store and state in dir, reg an insecure registry) with extra
// lines of the aws section, and gives the node its credentials through the SDK's default chain: the environment,
// as on a machine with keys.
func (c *awsCloud) nodeConfig(t testing.TB, cluster, reg, dir, extra string) string {
	t.Helper()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKID"+strings.ToUpper(cluster))
	t.Setenv("AWS_SECRET_ACCESS_KEY", cluster+"-secret-key")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true") // the namespace's 169.254.169.254 is the instances', not the node's
	var subnets, groups []string
	for _, s := range ec2.DefaultSubnets() {
		subnets = append(subnets, s.ID)
	}
	for _, g := range ec2.DefaultSecurityGroups() {
		groups = append(groups, g.ID)
	}
	return env.WriteFile(t, cluster+"-aws.yaml", fmt.Sprintf(`backend: aws
loadBalancers: {enabled: false}
images:
  store: %s
  insecureRegistries: [%q]
aws:
  region: us-east-1
  cluster: %s
  endpoint: %s
  subnets: [%s]
  securityGroups: [%s]
  instanceTypes: [t3]
  stateDir: %s
%s`, filepath.Join(dir, cluster+"-images"), reg, cluster, c.url, strings.Join(subnets, ", "), strings.Join(groups, ", "),
		filepath.Join(dir, "aws"), extra))
}

// startCloud runs the local EC2 with QEMU instances for the test; it is closed (every VM ended) when the test
// ends, after the node has stopped.
func startCloud(t testing.TB, dir string) *awsCloud {
	return startCloudOn(t, dir, "i2kaws")
}

// startCloudOn is startCloud with the subnets' bridges named from bridgePrefix (vmrunner.Config.BridgePrefix), so
// that two clouds can share the test's network namespace.
func startCloudOn(t testing.TB, dir, bridgePrefix string) *awsCloud {
	t.Helper()
	r, err := vmrunner.New(vmrunner.Config{StateDir: filepath.Join(dir, "instances"), MaxMemoryMiB: 384, BridgePrefix: bridgePrefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("closing the VM runner: %v", err)
		}
	})
	srv := ec2.New(ec2.Options{Runner: r, BlockDir: filepath.Join(dir, "blocks")})
	r.Attach(srv)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	cfg := sdkaws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("AKIDE2E", "e2e-secret-key", ""),
		HTTPClient: &http.Client{Transport: ec2.BufferRequestBodies(http.DefaultTransport)}}
	c := awsec2.NewFromConfig(cfg, func(o *awsec2.Options) { o.BaseEndpoint = sdkaws.String(hs.URL) })
	return &awsCloud{srv: srv, url: hs.URL, c: c}
}

// instanceOf is the live instance of a pod, found by its pod-UID tag as the node finds it.
func (c *awsCloud) instanceOf(t *testing.T, uid types.UID) ec2.InstanceInfo {
	t.Helper()
	out, err := c.c.DescribeInstances(context.Background(), &awsec2.DescribeInstancesInput{Filters: []ec2types.Filter{
		{Name: sdkaws.String("tag:" + aws.TagPodUID), Values: []string{string(uid)}},
		{Name: sdkaws.String("instance-state-name"), Values: []string{"pending", "running"}}}})
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			found = append(found, sdkaws.ToString(in.InstanceId))
		}
	}
	if len(found) != 1 {
		t.Fatalf("pod %s has instances %v, want one", uid, found)
	}
	in, _ := c.srv.Instance(found[0])
	return in
}

// console is an instance's serial console, as GetConsoleOutput serves it.
func (c *awsCloud) console(t *testing.T, id string) string {
	t.Helper()
	out, err := c.c.GetConsoleOutput(context.Background(), &awsec2.GetConsoleOutputInput{InstanceId: sdkaws.String(id)})
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(sdkaws.ToString(out.Output))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitReadyPods waits until the Deployment's pods are exactly n, each Running and Ready; a pod failing, other
// than those of failed, ends the wait.
func waitReadyPods(t *testing.T, app string, n int, timeout time.Duration, failed map[types.UID]bool, nodeLog func() string) []corev1.Pod {
	t.Helper()
	var ready, all []corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		ready, all = nil, pods(t, app)
		live := 0
		for _, p := range all {
			if p.Status.Phase == corev1.PodFailed && !failed[p.UID] {
				return false, fmt.Errorf("pod %s failed: %s: %s", p.Name, p.Status.Reason, p.Status.Message)
			}
			if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
				continue
			}
			live++
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && podReady(p) && p.DeletionTimestamp == nil {
				ready = append(ready, p)
			}
		}
		return live == n && len(ready) == n, nil
	})
	if err != nil {
		t.Fatalf("%d pods of %s Running and Ready: %v%s\n%s", n, app, err, summarize(all), nodeLog())
	}
	return ready
}

// scale sets a Deployment's replicas.
func scale(t *testing.T, name string, replicas int32) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"replicas":%d}}`, replicas)
	if _, err := env.Client.AppsV1().Deployments("default").Patch(context.Background(), name, types.MergePatchType, []byte(patch),
		metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}
