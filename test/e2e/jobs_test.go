package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// testJobs runs batch Jobs through the real job controller and scheduler onto the node: one whose pods succeed
// completes with its completions counted; one whose pods exit 3 fails with BackoffLimitExceeded, its pods Failed
// with the exit code.
func testJobs(t *testing.T, nodeName, reg string, nodeLog func() string) {
	ctx := context.Background()
	jobs := env.Client.BatchV1().Jobs("default")
	bg := metav1.DeletePropagationBackground
	t.Cleanup(func() {
		for _, j := range []string{"completes", "fails"} {
			jobs.Delete(ctx, j, metav1.DeleteOptions{PropagationPolicy: &bg}) //nolint:errcheck
		}
	})
	job := func(name, script string, completions, backoff int32) *batchv1.Job {
		return &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: batchv1.JobSpec{Completions: &completions, Parallelism: new(int32(1)), BackoffLimit: &backoff,
				Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever,
					AutomountServiceAccountToken: new(false),
					NodeSelector:                 map[string]string{"kubernetes.io/hostname": nodeName},
					Tolerations:                  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers: []corev1.Container{{Name: "work", Image: reg + "/hello:1",
						Command: []string{"/bin/sh", "-c", script}}}}}}}
	}
	for _, j := range []*batchv1.Job{job("completes", "echo done", 2, 0), job("fails", "echo failing; exit 3", 1, 1)} {
		if _, err := jobs.Create(ctx, j, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitJob := func(name string, cond batchv1.JobConditionType) *batchv1.Job {
		t.Helper()
		var j *batchv1.Job
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			var err error
			if j, err = jobs.Get(ctx, name, metav1.GetOptions{}); err != nil {
				return false, nil
			}
			for _, c := range j.Status.Conditions {
				if c.Type == cond && c.Status == corev1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("job %s not %s: %v; status %+v\n%s", name, cond, err, j.Status, nodeLog())
		}
		return j
	}
	if j := waitJob("completes", batchv1.JobComplete); j.Status.Succeeded != 2 {
		t.Errorf("job completes: %d succeeded, want 2", j.Status.Succeeded)
	}
	if out := kubectl(t, "logs", "job/completes"); strings.TrimSpace(out) != "done" {
		t.Errorf("kubectl logs job/completes = %q", out)
	}
	j := waitJob("fails", batchv1.JobFailed)
	if j.Status.Failed != 2 {
		t.Errorf("job fails: %d pods failed, want 2 (backoffLimit 1)", j.Status.Failed)
	}
	for _, c := range j.Status.Conditions {
		if c.Type == batchv1.JobFailed && c.Reason != "BackoffLimitExceeded" {
			t.Errorf("job fails: reason %q, want BackoffLimitExceeded", c.Reason)
		}
	}
	pods, err := env.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "job-name=fails"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("the failed job's pods: %v", err)
	}
	for _, p := range pods.Items {
		cs := p.Status.ContainerStatuses
		if p.Status.Phase != corev1.PodFailed || len(cs) != 1 || cs[0].State.Terminated == nil || cs[0].State.Terminated.ExitCode != 3 {
			t.Errorf("pod %s of the failed job: phase %s, containers %+v; want Failed with exit code 3", p.Name, p.Status.Phase, cs)
		}
	}
}
