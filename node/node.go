// Package node runs an i2kit virtual node: it registers the Node, renews its Lease, serves the kubelet API with
// a kubelet's authentication and authorization, and hands the pods bound to it to the provider.
package node

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"strconv"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	vknode "github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/i2kit/i2kit/internal/version"
	"github.com/i2kit/i2kit/metrics"
	"github.com/i2kit/i2kit/netsync"
	"github.com/i2kit/i2kit/provider"
	"github.com/i2kit/i2kit/provider/vm"
)

// BackendFunc makes a backend from the node's configuration; notify receives every VM status change it observes,
// and m is the node's metrics, which a cloud backend tells of its API calls (aws.WithCallMetrics).
type BackendFunc func(ctx context.Context, c Config, notify func(vm.Status), m *metrics.Metrics) (vm.Backend, error)

// Wiring is what the composition root (cmd/i2kit) gives Run: the backends by name, and the constructor of the
// image builder, whose closer releases the image store when the node stops, and which tells m of its cache
// lookups and builds (vmimage.Builder.Metrics).
type Wiring struct {
	Backends map[string]BackendFunc
	Images   func(c ImagesConfig, m *metrics.Metrics) (provider.ImageBuilder, io.Closer, error)
	// Balancers make the load balancers of Services of type LoadBalancer, by backend name: the backend's cloud's,
	// or the node's own. A backend without one leaves those Services to another controller.
	Balancers map[string]BalancerFunc
	// LeaseLost is called, at once, when the replica leading the node loses the leader lease; it should end the
	// process, so that nothing the node started (controllers, the kubelet API, VM launches) runs beside the next
	// leader. nil means os.Exit(1), as kube-controller-manager does; if it returns, Run stops the node and returns
	// ErrLeaseLost.
	LeaseLost func()
}

// BalancerFunc makes the Balancer of a backend from the node's configuration and the backend the node runs, whose
// network (and cloud clients) it may share.
type BalancerFunc func(ctx context.Context, c Config, backend vm.Backend) (netsync.Balancer, error)

// The node's metrics are what the provider records.
var (
	_ provider.Metrics      = (*metrics.Metrics)(nil)
	_ metrics.PodSource     = (*provider.Provider)(nil)
	_ metrics.SessionSource = (*provider.Provider)(nil)
)

// TCPUDPMerger is a Balancer that takes one listener per port (an NLB): when MergeTCPUDP says so, the node builds
// its models with netsync.ModelOptions.MergeTCPUDP, a Service's TCP and UDP ports of one number becoming one TCP_UDP
// listener. A Balancer without the method takes a listener per port and protocol.
type TCPUDPMerger interface {
	MergeTCPUDP() bool
}

// NodeLocal is a Balancer that reaches only the pods of the node's own host (the qemu backend's): when NodeLocal
// says so, the node builds its models with netsync.ModelOptions.OnlyNode, the Service's endpoints on other nodes
// being no targets. A Balancer without the method reaches every endpoint (an NLB: any VPC address).
type NodeLocal interface {
	NodeLocal() bool
}

// modelOptions are the options the node builds b's models with.
func modelOptions(c Config, b netsync.Balancer) netsync.ModelOptions {
	o := netsync.ModelOptions{Cluster: c.LoadBalancers.Cluster, Node: c.NodeName}
	if m, ok := b.(TCPUDPMerger); ok {
		o.MergeTCPUDP = m.MergeTCPUDP()
	}
	if l, ok := b.(NodeLocal); ok && l.NodeLocal() {
		o.OnlyNode = c.NodeName
	}
	return o
}

// Run validates c, registers the node and serves until ctx ends, then stops every controller and server it
// started before returning. A configuration error names the field. With c.LeaderElection enabled it first
// campaigns for the leader lease and runs the node only while it holds it: a standby serves only HealthzAddress;
// losing the lease calls w.LeaseLost at once.
func Run(ctx context.Context, c Config, w Wiring) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	spec, err := Spec(c)
	if err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	restCfg, err := restConfig(c.Kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "i2kit-node/" + version.Version
	// A dialer of our own keeps client-go from sharing its cached transport with others, and lets the node close
	// every connection it opened when it stops.
	dial := newDialer()
	defer dial.CloseAll()
	restCfg.Dial = dial.DialContext
	httpClient, err := rest.HTTPClientFor(restCfg)
	if err != nil {
		return fmt.Errorf("creating API client, %w", err)
	}
	client, err := kubernetes.NewForConfigAndClient(restCfg, httpClient)
	if err != nil {
		return fmt.Errorf("creating clientset, %w", err)
	}
	// One registry per process: a standby serves its process's metrics, and its pods' once it leads.
	m := metrics.New(c.Backend, version.Version)
	if err := servePlain(ctx, c, m.Handler()); err != nil {
		return err
	}
	runNode := func(ctx context.Context) error { return run(ctx, c, w, spec, client, m) }
	if !c.LeaderElection.Enabled {
		return runNode(ctx)
	}
	lost := w.LeaseLost
	if lost == nil {
		lost = func() { os.Exit(1) }
	}
	return lead(ctx, client, c.LeaderElection, runNode, lost)
}

// run registers the node and serves until ctx ends; see Run.
func run(ctx context.Context, c Config, w Wiring, spec *corev1.Node, client kubernetes.Interface, m *metrics.Metrics) error {
	auth, err := kubeletAuth(ctx, c, client)
	if err != nil {
		return err
	}
	cert, err := servingCert(c)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events(corev1.NamespaceAll)})
	events := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: c.NodeName})

	if c.Kubeconfig != "" {
		// nodeutil.NewNode builds a default client from $KUBECONFIG before applying options, and warns when it
		// cannot; point it at the same kubeconfig so that it does not report a failure that is not one.
		os.Setenv("KUBECONFIG", c.Kubeconfig) //nolint:errcheck
	}
	mux := kubeletMux(m.Handler())
	capacity := corev1.ResourceList{} // Validate has parsed them
	if q, err := resource.ParseQuantity(c.Capacity.CPU); err == nil {
		capacity[corev1.ResourceCPU] = q
	}
	if q, err := resource.ParseQuantity(c.Capacity.Memory); err == nil {
		capacity[corev1.ResourceMemory] = q
	}
	p := provider.New(provider.Config{NodeName: c.NodeName, InternalIP: c.InternalIP, Events: events, Capacity: capacity,
		AllowedUnsafeSysctls: c.AllowedUnsafeSysctls,
		RemovePod: func(ctx context.Context, pod *corev1.Pod) error {
			zero := int64(0)
			err := client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
				GracePeriodSeconds: &zero, Preconditions: metav1.NewUIDPreconditions(string(pod.UID))})
			if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
				return nil
			}
			return err
		},
		Metrics: m,
	})
	defer p.Stop()
	m.WatchPods(p, p)
	backend, err := attachBackend(ctx, c, w, p, m)
	if err != nil {
		return fmt.Errorf("backend %s: %w", c.Backend, err)
	}
	newProvider := func(pc nodeutil.ProviderConfig) (nodeutil.Provider, vknode.NodeProvider, error) {
		p.UseCluster(pc.ConfigMaps, pc.Secrets, pc.Services, serviceAccountToken(client))
		return p, nodeProvider{}, nil
	}
	var services cache.SharedIndexInformer // virtual-kubelet's, shared with netsync: one Services watch per node
	n, err := nodeutil.NewNode(c.NodeName, newProvider,
		// Pod statuses are written as a kubelet writes them: a patch of the status only (statusWriter).
		nodeutil.WithClient(statusWriter(client)),
		shareServiceInformer(&services),
		watchRuntimeObjects(p.ObjectChanged),
		watchPodConditions(p.PodConditionsChanged),
		nodeutil.AttachProviderRoutes(mux),
		nodeutil.WithTLSConfig(func(t *tls.Config) error {
			t.Certificates = []tls.Certificate{cert}
			return nil
		}),
		func(nc *nodeutil.NodeConfig) error {
			nc.NodeSpec = *spec
			nc.HTTPListenAddr = net.JoinHostPort(c.ListenAddress, strconv.Itoa(c.Port))
			nc.Handler = handler(auth, mux)
			nc.EventRecorder = events
			nc.InformerResyncPeriod = time.Minute
			// virtual-kubelet's resolver refuses status.podIP and status.hostIP; the provider resolves env itself.
			nc.SkipDownwardAPIResolution = true
			return nil
		},
	)
	if err != nil {
		return fmt.Errorf("creating node, %w", err)
	}
	log.G(ctx).WithField("node", c.NodeName).WithField("kubelet-api", path.Join(c.InternalIP, strconv.Itoa(c.Port))).Info("starting i2kit node")
	var gc sync.WaitGroup
	gc.Add(2)
	go func() { defer gc.Done(); collectGarbage(ctx, n, p) }()
	// Pod VMs reach ClusterIPs (the API server's among them) through the service table their agents forward by.
	go func() {
		defer gc.Done()
		var lb func(services, slices cache.SharedIndexInformer) *netsync.LBController
		newBalancer, ok := w.Balancers[c.Backend]
		if !ok && c.LoadBalancers.Enabled && c.Backend != "none" {
			log.G(ctx).WithField("backend", c.Backend).Warn("Services of type LoadBalancer stay pending: the backend has no load balancer yet")
		}
		if ok && c.LoadBalancers.Enabled {
			b, err := newBalancer(ctx, c, backend)
			if err != nil {
				log.G(ctx).WithError(err).Error("Services of type LoadBalancer stay pending: no load balancer")
			} else {
				lb = func(services, slices cache.SharedIndexInformer) *netsync.LBController {
					return netsync.NewLBController(client, services, slices, b, netsync.LBControllerOptions{
						Class:          c.LoadBalancers.Class,
						ClaimUnclassed: c.LoadBalancers.ClaimUnclassed,
						Model:          modelOptions(c, b),
						Events:         broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "i2kit-service-controller", Host: c.NodeName}),
					})
				}
			}
		}
		if err := syncServices(ctx, client, services, p.SetServices, lb); err != nil {
			log.G(ctx).WithError(err).Error("keeping the pods' service table")
		}
	}()
	err = n.Run(ctx)
	requested := ctx.Err() != nil // a requested stop is not a failure
	cancel()
	gc.Wait()
	if requested {
		return nil
	}
	return err
}

// attachBackend gives the provider the configured backend and image builder, which it keeps until ctx ends, and
// returns the backend (nil for none); running VMs keep running when the node stops, to be adopted at the next start.
func attachBackend(ctx context.Context, c Config, w Wiring, p *provider.Provider, m *metrics.Metrics) (vm.Backend, error) {
	if c.Backend == "none" {
		return nil, nil
	}
	newBackend, ok := w.Backends[c.Backend]
	if !ok {
		return nil, fmt.Errorf("backend %q: not built into this binary", c.Backend)
	}
	images, closer, err := w.Images(c.Images, m)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { closer.Close() })
	b, err := newBackend(ctx, c, p.VMChanged, m)
	if err != nil {
		return nil, err
	}
	if c, ok := b.(io.Closer); ok { // a backend's own loops (a cloud listing) stop with the node; its VMs run on
		context.AfterFunc(ctx, func() { c.Close() })
	}
	p.UseBackend(b, images)
	vms, err := b.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing the VMs to adopt, %w", err)
	}
	log.G(ctx).WithField("backend", c.Backend).WithField("adopted", len(vms)).Info("backend ready")
	return b, nil
}

// serviceAccountToken requests tokens bound to a pod through the TokenRequest API, as a kubelet does for
// projected serviceAccountToken volumes.
func serviceAccountToken(client kubernetes.Interface) provider.TokenFunc {
	return func(ctx context.Context, pod *corev1.Pod, audience string, exp int64) (string, time.Time, error) {
		req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		}}
		if audience != "" {
			req.Spec.Audiences = []string{audience}
		}
		sa := pod.Spec.ServiceAccountName
		if sa == "" {
			sa = "default"
		}
		tr, err := client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
		if err != nil {
			return "", time.Time{}, err
		}
		return tr.Status.Token, tr.Status.ExpirationTimestamp.Time, nil
	}
}

// nodeProvider reports the node's health: the node is as healthy as this process is.
type nodeProvider struct{}

func (nodeProvider) Ping(ctx context.Context) error                       { return ctx.Err() }
func (nodeProvider) NotifyNodeStatus(context.Context, func(*corev1.Node)) {}

// The node's rate limits towards the API server: a kubelet's defaults (kubeAPIQPS, kubeAPIBurst). client-go's own
// (5 and 10) throttle a node with a few pods, whose every status write is a GET and a PATCH as a kubelet's.
const (
	apiQPS   = 50
	apiBurst = 100
)

func restConfig(kubeconfig string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("kubeconfig: not set and no in-cluster configuration, %w", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = apiQPS, apiBurst
	return cfg, nil
}

// collectGarbage runs the provider's garbage collection every 30 s, the first time 30 s after the node is ready:
// by then the pod controller has handed the provider every pod bound to the node, so that a VM adopted after a
// restart is never taken for an orphan.
func collectGarbage(ctx context.Context, n *nodeutil.Node, p *provider.Provider) {
	select {
	case <-ctx.Done():
		return
	case <-n.Ready():
	}
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.CollectGarbage(ctx, 30*time.Second)
	}
}
