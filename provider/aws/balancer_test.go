package aws

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	"github.com/sivchari/kumo"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	devec2 "github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/netsync"
)

func TestOnePerZone(t *testing.T) {
	zones := map[string]string{"s1": "az-a", "s2": "az-a", "s3": "az-b", "s4": "az-c", "s5": "az-b"}
	for _, tc := range []struct {
		subnets, want []string
	}{
		{[]string{"s1"}, []string{"s1"}},
		{[]string{"s1", "s2", "s3"}, []string{"s1", "s3"}},
		{[]string{"s2", "s1", "s5", "s3", "s4"}, []string{"s2", "s5", "s4"}},
		// Subnets of no known zone (an emulator's) are each their own.
		{[]string{"x1", "x2", "s1"}, []string{"x1", "x2", "s1"}},
	} {
		if got := onePerZone(tc.subnets, zones); !slices.Equal(got, tc.want) {
			t.Errorf("onePerZone(%v) = %v, want %v", tc.subnets, got, tc.want)
		}
	}
}

// TestBackendBalancer: the backend's balancer has the subnets' VPC and one subnet per availability zone, its
// cluster defaults to the backend's, and a backend without an ELBv2 client has none.
func TestBackendBalancer(t *testing.T) {
	h := newHarness()
	for id, az := range map[string]string{"subnet-a": "us-east-1a", "subnet-b": "us-east-1a", "subnet-full": "us-east-1b"} {
		s := h.f.subnets[id]
		s.AvailabilityZone = sdkaws.String(az)
		h.f.subnets[id] = s
	}
	b := h.backend(t, func(c *Config) { c.Subnets = []string{"subnet-b", "subnet-a", "subnet-full"} })
	if _, err := b.Balancer(""); err == nil || !strings.Contains(err.Error(), "no ELBv2 client") {
		t.Errorf("Balancer of a backend made by New: %v", err)
	}
	b.elb = &elbv2.Client{}
	bal, err := b.Balancer("")
	if err != nil {
		t.Fatal(err)
	}
	if bal.vpcID != "vpc-1" || !slices.Equal(bal.subnets, []string{"subnet-b", "subnet-full"}) || bal.cluster != "c1" || bal.node != "n1" {
		t.Errorf("balancer in %s, subnets %v, cluster %s, node %s", bal.vpcID, bal.subnets, bal.cluster, bal.node)
	}
	if bal, _ := b.Balancer("lbs"); bal.cluster != "lbs" {
		t.Errorf("cluster %q, want the one given", bal.cluster)
	}

	// Subnets of their own, for the load balancers alone.
	b = h.backend(t, func(c *Config) { c.LoadBalancerSubnets = []string{"subnet-full", "subnet-b"} })
	b.elb = &elbv2.Client{}
	if bal, _ := b.Balancer(""); !slices.Equal(bal.subnets, []string{"subnet-full", "subnet-b"}) || !slices.Equal(b.subnets, []string{"subnet-a"}) {
		t.Errorf("with aws.loadBalancerSubnets: NLBs in %v, instances in %v", bal.subnets, b.subnets)
	}
}

// TestNLBThroughTheController is the aws load balancer as the node runs it, without a control plane: the netsync
// controller, over a fake clientset, drives the balancer the node makes (Open, then Backend.Balancer) through the
// real SDK; EC2 is devcloud's, ELBv2 kumo's behind an elbFront, both at aws.endpoint (devcloud hands what is not
// EC2 to its fallback), as with an emulator of every API. A Service of i2kit's class gets an NLB whose DNS name is
// its ingress, a TCP and a UDP port of one number share one TCP_UDP listener, the endpoints are the targets; the
// deleted Service leaves no load balancer nor target group.
func TestNLBThroughTheController(t *testing.T) {
	k := kumo.NewServer()
	t.Cleanup(k.Close)
	front := newELBFront(k.URL)
	hs := httptest.NewServer(devec2.New(devec2.Options{Fallback: front}))
	t.Cleanup(hs.Close)
	ctx := ctxT(t)

	subnets := devec2.DefaultSubnets()
	cfg := Config{Region: "us-east-1", Cluster: fmt.Sprintf("c%d-wired", nlbServices.Add(1)), Node: "node-1",
		Subnets: []string{subnets[0].ID, subnets[1].ID}, SecurityGroups: []string{devec2.DefaultSecurityGroups()[0].ID},
		InstanceTypes: []string{"t3"}, Endpoint: hs.URL, StateDir: t.TempDir(), SyncPeriod: metav1.Duration{Duration: time.Hour}}
	hc := &http.Client{Transport: devec2.BufferRequestBodies(http.DefaultTransport)}
	t.Setenv("AWS_CA_BUNDLE", "") // the SDK adds a CA bundle only to its own kind of HTTP client, not to hc
	creds := credentials.NewStaticCredentialsProvider("AKID", "SECRET", "")
	b, err := Open(ctx, cfg, nil, config.WithHTTPClient(hc), config.WithCredentialsProvider(creds))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	bal, err := b.Balancer("")
	if err != nil {
		t.Fatalf("Balancer: %v", err)
	}
	bal.healthPoll = time.Millisecond

	uid := fmt.Sprintf("uid-wired-%08d", nlbServices.Add(1))
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "dns", UID: types.UID(uid)},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: sdkaws.String(netsync.LoadBalancerClass),
			Ports: []corev1.ServicePort{
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
				{Name: "dns-udp", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP},
			}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "dns-1", Labels: map[string]string{discoveryv1.LabelServiceName: "dns"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: sdkaws.String("dns-tcp"), Port: sdkaws.Int32(5353), Protocol: ptrTo(corev1.ProtocolTCP)},
			{Name: sdkaws.String("dns-udp"), Port: sdkaws.Int32(5353), Protocol: ptrTo(corev1.ProtocolUDP)},
			{Name: sdkaws.String("http"), Port: sdkaws.Int32(8080), Protocol: ptrTo(corev1.ProtocolTCP)},
		},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.1.10"}}, {Addresses: []string{"10.0.2.20"}}},
	}
	client := fake.NewClientset(svc, slice)
	f := informers.NewSharedInformerFactory(client, 0)
	services, endpointSlices := f.Core().V1().Services().Informer(), f.Discovery().V1().EndpointSlices().Informer()
	cctx, cancel := context.WithCancel(ctx)
	f.Start(cctx.Done())
	c := netsync.NewLBController(client, services, endpointSlices, bal, netsync.LBControllerOptions{
		Model:     netsync.ModelOptions{Cluster: cfg.Cluster, Node: cfg.Node, MergeTCPUDP: bal.MergeTCPUDP()},
		RetryBase: time.Millisecond, RetryMax: 50 * time.Millisecond})
	done := make(chan error)
	go func() { done <- c.Run(cctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		f.Shutdown()
	})
	get := func() *corev1.Service {
		t.Helper()
		s, err := client.CoreV1().Services("default").Get(ctx, "dns", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	waitFor(t, "the ingress", func() bool { return len(get().Status.LoadBalancer.Ingress) > 0 })
	ing := get().Status.LoadBalancer.Ingress
	e := &nlbEnv{front: front, bal: bal, client: elbv2.New(elbv2.Options{Region: cfg.Region, BaseEndpoint: sdkaws.String(hs.URL),
		HTTPClient: hc, Credentials: creds})}
	lb, listeners := e.loadBalancerByDNS(t, ing[0].Hostname)
	if len(ing) != 1 || ing[0].IP != "" {
		t.Errorf("ingress %+v, want the NLB's DNS name alone", ing)
	}
	var lbSubnets []string
	for _, z := range lb.AvailabilityZones {
		lbSubnets = append(lbSubnets, sdkaws.ToString(z.SubnetId))
	}
	slices.Sort(lbSubnets)
	if lb.Type != elbtypes.LoadBalancerTypeEnumNetwork || lb.Scheme != elbtypes.LoadBalancerSchemeEnumInternal || !slices.Equal(lbSubnets, cfg.Subnets) {
		t.Errorf("load balancer of type %s, scheme %s, in %v: want an internal NLB in %v", lb.Type, lb.Scheme, lbSubnets, cfg.Subnets)
	}
	if tags := e.tags(t, sdkaws.ToString(lb.LoadBalancerArn)); tags[TagCluster] != cfg.Cluster || tags[TagNode] != "node-1" ||
		tags[netsync.TagServiceUID] != uid || tags[netsync.TagServiceName] != "dns" {
		t.Errorf("load balancer tags %v", tags)
	}
	want := []struct {
		port    int32
		proto   elbtypes.ProtocolEnum
		targets []target
	}{
		{53, elbtypes.ProtocolEnumTcpUdp, []target{{"10.0.1.10", 5353}, {"10.0.2.20", 5353}}},
		{80, elbtypes.ProtocolEnumTcp, []target{{"10.0.1.10", 8080}, {"10.0.2.20", 8080}}},
	}
	if len(listeners) != len(want) {
		t.Fatalf("listeners %+v, want %d", listeners, len(want))
	}
	for i, w := range want {
		l := listeners[i]
		if sdkaws.ToInt32(l.Port) != w.port || l.Protocol != w.proto {
			t.Errorf("listener %d: %s/%d, want %s/%d", i, l.Protocol, sdkaws.ToInt32(l.Port), w.proto, w.port)
			continue
		}
		tg := e.targetGroup(t, forwardsTo(l))
		if tg.Protocol != w.proto || tg.TargetType != elbtypes.TargetTypeEnumIp || sdkaws.ToString(tg.VpcId) != devec2.DefaultVpcID {
			t.Errorf("target group of port %d: %+v", w.port, tg)
		}
		if reg, _ := front.registered(sdkaws.ToString(tg.TargetGroupArn)); !slices.Equal(reg, w.targets) {
			t.Errorf("targets of port %d: %v, want %v", w.port, reg, w.targets)
		}
	}
	if left := e.tagged(t, uid); len(left) != 3 {
		t.Errorf("tagged with the Service: %v, want the load balancer and two target groups", left)
	}

	// What the API server does on a delete of a Service with finalizers.
	s := get()
	s.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	if _, err := client.CoreV1().Services("default").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the finalizer's removal", func() bool { return len(get().Finalizers) == 0 })
	if left := e.tagged(t, uid); len(left) != 0 {
		t.Errorf("after the Service's deletion, tagged with it: %v", left)
	}
}

// loadBalancerByDNS is the NLB whose DNS name is host, and its listeners by port.
func (e *nlbEnv) loadBalancerByDNS(t *testing.T, host string) (elbtypes.LoadBalancer, []elbtypes.Listener) {
	t.Helper()
	out, err := e.client.DescribeLoadBalancers(ctxT(t), &elbv2.DescribeLoadBalancersInput{})
	if err != nil {
		t.Fatal(err)
	}
	for _, lb := range out.LoadBalancers {
		if sdkaws.ToString(lb.DNSName) == host {
			return e.loadBalancer(t, sdkaws.ToString(lb.LoadBalancerName))
		}
	}
	t.Fatalf("no load balancer has the DNS name %q", host)
	return elbtypes.LoadBalancer{}, nil
}

func ptrTo[T any](v T) *T { return &v }

// waitFor waits until cond holds, failing the test after 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
