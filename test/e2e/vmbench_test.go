package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/i2kit/i2kit/agent/boot"
	"github.com/i2kit/i2kit/provider/qemu"
	"github.com/i2kit/i2kit/vmimage"
)

// BenchmarkPodVMs measures, on the qemu backend: pod create → Ready for one pod at a time (median of b.N) and for
// 10 at once (median and p95); the raw QEMU boot-to-agent time of the same image (median of 5); their ratio, the
// provider's overhead; and the host PSS of an idle pod VM (median of the 10).
func BenchmarkPodVMs(b *testing.B) {
	ctx := context.Background()
	reg := localRegistry(b)
	runDir := filepath.Join(b.TempDir(), "run")
	images := filepath.Join(b.TempDir(), "images")
	const nodeName = "i2kit-bench-vm"
	n := env.StartNode(b, nodeName, 10253, "--backend", "qemu", "--insecure-registry", reg,
		"--qemu-runtime-dir", runDir, "--qemu-bridge", "i2kitb", "--pod-cidr", "10.91.0.0/24", "--image-store", images)
	if _, err := env.WaitNodeReady(ctx, nodeName, 10*time.Second); err != nil {
		b.Fatalf("node not ready: %v\n%s", err, n.Log())
	}
	// Warm the image cache: the figures are for pods whose image is built.
	createAndWait(b, []string{"warm"}, nodeName, reg)
	deletePods(b, []string{"warm"})

	var single []time.Duration
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("one-%d", i)
		single = append(single, createAndWait(b, []string{name}, nodeName, reg)[0])
		deletePods(b, []string{name})
	}
	raw := rawBoots(b, images, 5) // while no other VM runs, as the single pods did
	var ten []string
	for i := 0; i < 10; i++ {
		ten = append(ten, fmt.Sprintf("ten-%d", i))
	}
	concurrent := createAndWait(b, ten, nodeName, reg)
	pss := idlePSS(b, runDir)
	deletePods(b, ten)

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(pct(single, 50)), "ms-create-to-ready-1pod(median)")
	b.ReportMetric(ms(pct(concurrent, 50)), "ms-create-to-ready-10pods(median)")
	b.ReportMetric(ms(pct(concurrent, 95)), "ms-create-to-ready-10pods(p95)")
	b.ReportMetric(ms(pct(raw, 50)), "ms-raw-boot-to-agent(median)")
	b.ReportMetric(float64(pct(single, 50)-pct(raw, 50))/float64(pct(raw, 50))*100, "%-provider-overhead")
	b.ReportMetric(pss, "MiB-PSS-per-idle-VM(median)")
}

func pct(ds []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i]
}

// createAndWait creates pods at once and returns each one's time from create to Ready.
func createAndWait(b *testing.B, names []string, nodeName, reg string) []time.Duration {
	ctx := context.Background()
	no := false
	out := make([]time.Duration, len(names))
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bench": "vm"}},
				Spec: corev1.PodSpec{NodeName: nodeName, AutomountServiceAccountToken: &no,
					Tolerations: []corev1.Toleration{{Key: "virtual-kubelet.io/provider", Operator: corev1.TolerationOpExists}},
					Containers:  []corev1.Container{{Name: "web", Image: reg + "/hello:1"}}}}
			t0 := time.Now()
			if _, err := env.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			err := wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
				p, err := env.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
				return err == nil && podReady(*p), nil
			})
			if err != nil {
				errs <- fmt.Errorf("pod %s not Ready: %w", name, err)
				return
			}
			out[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return out
}

func deletePods(b *testing.B, names []string) {
	ctx := context.Background()
	for _, name := range names {
		env.Client.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}) //nolint:errcheck
	}
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := env.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "bench=vm"})
		return err == nil && len(l.Items) == 0, nil
	})
	if err != nil {
		b.Fatalf("pods not deleted: %v", err)
	}
}

// idlePSS returns the median PSS (MiB) of the QEMU processes of the VMs under runDir, once they idle.
func idlePSS(b *testing.B, runDir string) float64 {
	files, _ := filepath.Glob(filepath.Join(runDir, "*", "qemu.pid"))
	var mibs []float64
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		pid := strings.TrimSpace(string(raw))
		sm, err := os.Open("/proc/" + pid + "/smaps_rollup")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(sm)
		for sc.Scan() {
			if fs := strings.Fields(sc.Text()); len(fs) >= 2 && fs[0] == "Pss:" {
				kb, _ := strconv.ParseFloat(fs[1], 64)
				mibs = append(mibs, kb/1024)
			}
		}
		sm.Close()
	}
	if len(mibs) == 0 {
		b.Fatal("no QEMU process to measure")
	}
	sort.Float64s(mibs)
	return mibs[len(mibs)/2]
}

// rawBoots boots the node's pod image with QEMU directly (no provider, no network) n times and returns the times
// from exec to the agent's ready marker.
func rawBoots(b *testing.B, store string, n int) []time.Duration {
	mans, _ := filepath.Glob(filepath.Join(store, "images", "*", "image.json"))
	if len(mans) == 0 {
		b.Fatal("no image in the node's store")
	}
	raw, _ := os.ReadFile(mans[0])
	var img vmimage.Image
	if err := json.Unmarshal(raw, &img); err != nil {
		b.Fatal(err)
	}
	disks := img.DiskPaths()
	args := qemu.Args(qemu.VM{Kernel: img.Kernel, Initramfs: img.Initramfs, Cmdline: img.Spec.Kernel.Cmdline,
		Disks: disks, MemoryMiB: 128, CPUs: 1, KVM: qemu.HostHasKVM(), TSCkHz: qemu.HostTSCkHz()})
	var out []time.Duration
	for i := 0; i < n; i++ {
		cmd := exec.Command("qemu-system-x86_64", args...)
		stdout, _ := cmd.StdoutPipe()
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), boot.ReadyMarker) {
				out = append(out, time.Since(t0))
				break
			}
		}
		cmd.Process.Kill() //nolint:errcheck
		cmd.Wait()         //nolint:errcheck
	}
	if len(out) != n {
		b.Fatalf("%d of %d raw boots reached the agent", len(out), n)
	}
	return out
}
