package aws

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdkaws "github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	elbtypes "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	"github.com/sivchari/kumo"

	devec2 "github.com/i2kit/i2kit/devcloud/ec2"
	"github.com/i2kit/i2kit/netsync"
)

const elbNS = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"

// elbFront fronts kumo's ELBv2 with what it lacks and tests need: it counts every call by action; answers
// LoadBalancerNotFound for names that do not exist, as AWS does (kumo answers an empty list); keeps targets itself,
// keyed by address and port (kumo keys them by address only), with health that turns from initial to healthy after
// healthyAfter describes and draining that lasts drainFor describes; implements ModifyTargetGroup's health check
// (kumo has none); refuses DeleteTargetGroup with ResourceInUse inUse times after a DeleteLoadBalancer; fails actions
// on demand. It records, for every target group, whether its healthy targets ever fell to zero once it had one.
type elbFront struct {
	kumo http.Handler

	mu            sync.Mutex
	calls         map[string]int
	log           []string
	notFoundNames bool
	healthyAfter  int
	drainFor      int
	neverHealthy  map[string]bool
	inUse         int
	refusing      int
	fail          map[string]string
	targets       map[string]map[target]*frontTarget
	healthChecks  map[string]url.Values
	everHealthy   map[string]bool
	droppedToZero map[string]bool
}

type frontTarget struct {
	state     string
	describes int
}

func newELBFront(kumoURL string) *elbFront {
	u, _ := url.Parse(kumoURL)
	return &elbFront{kumo: httputil.NewSingleHostReverseProxy(u), calls: map[string]int{}, notFoundNames: true,
		healthyAfter: 2, neverHealthy: map[string]bool{}, fail: map[string]string{},
		targets: map[string]map[target]*frontTarget{}, healthChecks: map[string]url.Values{},
		everHealthy: map[string]bool{}, droppedToZero: map[string]bool{}}
}

func (f *elbFront) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	form, _ := url.ParseQuery(string(body))
	action := form.Get("Action")
	f.mu.Lock()
	f.calls[action]++
	f.log = append(f.log, action)
	code := f.fail[action]
	f.mu.Unlock()
	if code != "" {
		writeELBError(w, code, "refused by the test")
		return
	}
	forward := func() *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		req := r.Clone(r.Context())
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		f.kumo.ServeHTTP(rec, req)
		return rec
	}
	reply := func(rec *httptest.ResponseRecorder) {
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}

	switch action {
	case "DescribeLoadBalancers":
		rec := forward()
		names := members(form, "Names")
		if rec.Code == http.StatusOK && len(names) > 0 && f.notFound() {
			var out struct {
				Names []string `xml:"DescribeLoadBalancersResult>LoadBalancers>member>LoadBalancerName"`
			}
			_ = xml.Unmarshal(rec.Body.Bytes(), &out)
			for _, n := range names {
				if !slices.Contains(out.Names, n) {
					writeELBError(w, "LoadBalancerNotFound", "One or more load balancers not found")
					return
				}
			}
		}
		reply(rec)
	case "DeleteLoadBalancer":
		rec := forward()
		if rec.Code == http.StatusOK {
			f.mu.Lock()
			f.refusing = f.inUse
			f.mu.Unlock()
		}
		reply(rec)
	case "DeleteTargetGroup":
		f.mu.Lock()
		refuse := f.refusing > 0
		if refuse {
			f.refusing--
		}
		f.mu.Unlock()
		if refuse {
			writeELBError(w, "ResourceInUse", "Target group is currently in use by a listener or a rule")
			return
		}
		rec := forward()
		if rec.Code == http.StatusOK {
			f.mu.Lock()
			delete(f.targets, form.Get("TargetGroupArn"))
			f.mu.Unlock()
		}
		reply(rec)
	case "RegisterTargets", "DeregisterTargets":
		rec := forward() // kumo says whether the group exists
		if rec.Code == http.StatusOK {
			f.apply(action, form.Get("TargetGroupArn"), formTargets(form))
		}
		reply(rec)
	case "DescribeTargetHealth":
		rec := forward()
		if rec.Code != http.StatusOK {
			reply(rec)
			return
		}
		writeXML(w, f.describeHealth(form.Get("TargetGroupArn")))
	case "ModifyTargetGroup":
		arn := form.Get("TargetGroupArn")
		f.mu.Lock()
		f.healthChecks[arn] = form
		f.mu.Unlock()
		writeXML(w, fmt.Sprintf(`<ModifyTargetGroupResponse xmlns=%q><ModifyTargetGroupResult><TargetGroups><member><TargetGroupArn>%s</TargetGroupArn></member></TargetGroups></ModifyTargetGroupResult></ModifyTargetGroupResponse>`, elbNS, arn))
	case "DescribeTargetGroups":
		rec := forward()
		if rec.Code == http.StatusOK {
			f.patchHealthChecks(rec)
		}
		reply(rec)
	default:
		reply(forward())
	}
}

func (f *elbFront) notFound() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.notFoundNames
}

func members(form url.Values, prefix string) []string {
	var out []string
	for i := 1; form.Has(fmt.Sprintf("%s.member.%d", prefix, i)); i++ {
		out = append(out, form.Get(fmt.Sprintf("%s.member.%d", prefix, i)))
	}
	return out
}

func formTargets(form url.Values) []target {
	var out []target
	for i := 1; form.Has(fmt.Sprintf("Targets.member.%d.Id", i)); i++ {
		p, _ := strconv.Atoi(form.Get(fmt.Sprintf("Targets.member.%d.Port", i)))
		out = append(out, target{ip: form.Get(fmt.Sprintf("Targets.member.%d.Id", i)), port: int32(p)})
	}
	return out
}

func writeELBError(w http.ResponseWriter, code, msg string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, `<ErrorResponse xmlns=%q><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>test</RequestId></ErrorResponse>`, elbNS, code, msg)
}

func writeXML(w http.ResponseWriter, body string) {
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, xml.Header+body)
}

// apply registers or deregisters ts in the group arn, then records the group's health.
func (f *elbFront) apply(action, arn string, ts []target) {
	f.mu.Lock()
	defer f.mu.Unlock()
	group := f.targets[arn]
	if group == nil {
		group = map[target]*frontTarget{}
		f.targets[arn] = group
	}
	for _, t := range ts {
		switch {
		case action == "RegisterTargets" && (group[t] == nil || group[t].state == "draining"):
			group[t] = &frontTarget{state: "initial"}
		case action == "DeregisterTargets" && group[t] != nil && f.drainFor > 0:
			group[t] = &frontTarget{state: "draining"}
		case action == "DeregisterTargets":
			delete(group, t)
		}
	}
	f.record(arn)
}

// record notes the health of group arn; the caller holds mu.
func (f *elbFront) record(arn string) {
	healthy := 0
	for _, t := range f.targets[arn] {
		if t.state == "healthy" {
			healthy++
		}
	}
	if healthy > 0 {
		f.everHealthy[arn] = true
	} else if f.everHealthy[arn] {
		f.droppedToZero[arn] = true
	}
}

// describeHealth answers DescribeTargetHealth, then moves every target one describe on.
func (f *elbFront) describeHealth(arn string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, `<DescribeTargetHealthResponse xmlns=%q><DescribeTargetHealthResult><TargetHealthDescriptions>`, elbNS)
	for t, s := range f.targets[arn] {
		fmt.Fprintf(&b, `<member><Target><Id>%s</Id><Port>%d</Port></Target><TargetHealth><State>%s</State></TargetHealth></member>`, t.ip, t.port, s.state)
	}
	b.WriteString(`</TargetHealthDescriptions></DescribeTargetHealthResult><ResponseMetadata><RequestId>test</RequestId></ResponseMetadata></DescribeTargetHealthResponse>`)
	for t, s := range f.targets[arn] {
		s.describes++
		switch {
		case s.state == "initial" && s.describes >= f.healthyAfter && f.neverHealthy[t.ip]:
			s.state = "unhealthy"
		case s.state == "initial" && s.describes >= f.healthyAfter:
			s.state = "healthy"
		case s.state == "draining" && s.describes >= f.drainFor:
			delete(f.targets[arn], t)
		}
	}
	f.record(arn)
	return b.String()
}

// xmlTargetGroup mirrors kumo's target group on the wire, so that a ModifyTargetGroup can show in its describes.
type xmlTargetGroup struct {
	TargetGroupArn             string   `xml:"TargetGroupArn"`
	TargetGroupName            string   `xml:"TargetGroupName"`
	Protocol                   string   `xml:"Protocol,omitempty"`
	Port                       int      `xml:"Port,omitempty"`
	VpcID                      string   `xml:"VpcId,omitempty"`
	HealthCheckEnabled         bool     `xml:"HealthCheckEnabled"`
	HealthCheckIntervalSeconds int      `xml:"HealthCheckIntervalSeconds"`
	HealthCheckPath            string   `xml:"HealthCheckPath,omitempty"`
	HealthCheckPort            string   `xml:"HealthCheckPort"`
	HealthCheckProtocol        string   `xml:"HealthCheckProtocol"`
	HealthCheckTimeoutSeconds  int      `xml:"HealthCheckTimeoutSeconds"`
	HealthyThresholdCount      int      `xml:"HealthyThresholdCount"`
	UnhealthyThresholdCount    int      `xml:"UnhealthyThresholdCount"`
	TargetType                 string   `xml:"TargetType"`
	LoadBalancerArns           []string `xml:"LoadBalancerArns>member"`
}

func (f *elbFront) patchHealthChecks(rec *httptest.ResponseRecorder) {
	var out struct {
		XMLName xml.Name         `xml:"DescribeTargetGroupsResponse"`
		Xmlns   string           `xml:"xmlns,attr"`
		Groups  []xmlTargetGroup `xml:"DescribeTargetGroupsResult>TargetGroups>member"`
	}
	if err := xml.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		return
	}
	f.mu.Lock()
	for i, g := range out.Groups {
		m := f.healthChecks[g.TargetGroupArn]
		if m == nil {
			continue
		}
		set := func(dst *int, key string) {
			if m.Has(key) {
				*dst, _ = strconv.Atoi(m.Get(key))
			}
		}
		set(&out.Groups[i].HealthCheckIntervalSeconds, "HealthCheckIntervalSeconds")
		set(&out.Groups[i].HealthyThresholdCount, "HealthyThresholdCount")
		set(&out.Groups[i].UnhealthyThresholdCount, "UnhealthyThresholdCount")
		out.Groups[i].HealthCheckProtocol = m.Get("HealthCheckProtocol")
		out.Groups[i].HealthCheckPort = m.Get("HealthCheckPort")
		out.Groups[i].HealthCheckPath = m.Get("HealthCheckPath")
	}
	f.mu.Unlock()
	out.Xmlns = elbNS
	var b bytes.Buffer
	b.WriteString(xml.Header)
	_ = xml.NewEncoder(&b).Encode(out)
	rec.Body = &b
	rec.Header().Del("Content-Length")
}

// registered is the group's targets (draining ones aside) and how many are healthy.
func (f *elbFront) registered(arn string) (ts []target, healthy int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for t, s := range f.targets[arn] {
		if s.state == "draining" {
			continue
		}
		ts = append(ts, t)
		if s.state == "healthy" {
			healthy++
		}
	}
	slices.SortFunc(ts, compareTargets)
	return ts, healthy
}

// settle makes every target of the group healthy at once (a stable Service before a test's change).
func (f *elbFront) settle(arn string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.targets[arn] {
		if s.state == "initial" {
			s.state = "healthy"
		}
	}
	f.record(arn)
}

func (f *elbFront) reset() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls, f.log = map[string]int{}, nil
	return c
}

func (f *elbFront) set(fn func(f *elbFront)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// nlbEnv is a balancer of its own cluster over the SDK's ELBv2 client, talking to kumo through an elbFront. kumo's
// state is the process's: every test names its Services and clusters apart.
type nlbEnv struct {
	front  *elbFront
	client *elbv2.Client
	bal    *NLBBalancer
}

var nlbServices atomic.Int64

func newNLBEnv(tb testing.TB) *nlbEnv {
	srv := kumo.NewServer()
	tb.Cleanup(srv.Close)
	front := newELBFront(srv.URL)
	hs := httptest.NewServer(front)
	tb.Cleanup(hs.Close)
	client := elbv2.New(elbv2.Options{Region: "us-east-1", BaseEndpoint: sdkaws.String(hs.URL),
		HTTPClient: &http.Client{Transport: devec2.BufferRequestBodies(http.DefaultTransport)},
		Credentials: sdkaws.CredentialsProviderFunc(func(context.Context) (sdkaws.Credentials, error) {
			return sdkaws.Credentials{AccessKeyID: "AKID", SecretAccessKey: "SECRET", Source: "test"}, nil
		})})
	cluster := fmt.Sprintf("c%d-%s", nlbServices.Add(1), strings.ReplaceAll(tb.Name(), "/", "-"))
	bal := NewNLBBalancer(client, "vpc-0123", []string{"subnet-a", "subnet-b"}, cluster, "node-1")
	bal.healthPoll, bal.healthWait, bal.inUseWait = time.Millisecond, 20*time.Second, 20*time.Second
	return &nlbEnv{front: front, client: client, bal: bal}
}

// service is a new Service's key, named apart from every other in the process.
func service() netsync.ServiceKey {
	n := nlbServices.Add(1)
	return netsync.ServiceKey{Namespace: "default", Name: fmt.Sprintf("web%d", n), UID: fmt.Sprintf("uid-%08d", n)}
}

// model is the load balancer of svc with one TCP listener per port, every one forwarding to targets.
func model(svc netsync.ServiceKey, targets []netsync.Target, ports ...int32) netsync.LoadBalancer {
	lb := netsync.LoadBalancer{Service: svc, Name: "i2k-" + svc.UID, Internal: true, Tags: map[string]string{"team": "web"}}
	for _, p := range ports {
		lb.Listeners = append(lb.Listeners, netsync.Listener{Port: p, Protocol: netsync.TCP, Target: netsync.TargetGroup{
			Name: fmt.Sprintf("i2k-%s-%d", svc.UID, p), Protocol: netsync.TCP, Targets: targets,
			HealthCheck: netsync.HealthCheck{Protocol: "TCP", Port: "traffic-port", IntervalSeconds: 10, HealthyThreshold: 3, UnhealthyThreshold: 3}}})
	}
	return lb
}

// targets are n endpoints from base on port 8080.
func targets(base string, n int) []netsync.Target {
	ip := netip.MustParseAddr(base)
	out := make([]netsync.Target, n)
	for i := range out {
		out[i] = netsync.Target{IP: ip, Port: 8080}
		ip = ip.Next()
	}
	return out
}

func asTargets(ts []netsync.Target) []target {
	out := make([]target, len(ts))
	for i, t := range ts {
		out[i] = target{ip: t.IP.String(), port: t.Port}
	}
	slices.SortFunc(out, compareTargets)
	return out
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	tb.Cleanup(cancel)
	return ctx
}

// loadBalancer is the NLB named name and its listeners, described directly.
func (e *nlbEnv) loadBalancer(t *testing.T, name string) (elbtypes.LoadBalancer, []elbtypes.Listener) {
	t.Helper()
	ctx := ctxT(t)
	out, err := e.client.DescribeLoadBalancers(ctx, &elbv2.DescribeLoadBalancersInput{Names: []string{name}})
	if err != nil || len(out.LoadBalancers) != 1 {
		t.Fatalf("DescribeLoadBalancers(%s) = %+v, %v", name, out, err)
	}
	ls, err := e.client.DescribeListeners(ctx, &elbv2.DescribeListenersInput{LoadBalancerArn: out.LoadBalancers[0].LoadBalancerArn})
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(ls.Listeners, func(a, b elbtypes.Listener) int { return int(*a.Port - *b.Port) })
	return out.LoadBalancers[0], ls.Listeners
}

func (e *nlbEnv) targetGroup(t *testing.T, arn string) elbtypes.TargetGroup {
	t.Helper()
	out, err := e.client.DescribeTargetGroups(ctxT(t), &elbv2.DescribeTargetGroupsInput{TargetGroupArns: []string{arn}})
	if err != nil || len(out.TargetGroups) != 1 {
		t.Fatalf("DescribeTargetGroups(%s) = %+v, %v", arn, out, err)
	}
	return out.TargetGroups[0]
}

func (e *nlbEnv) tags(t *testing.T, arn string) map[string]string {
	t.Helper()
	out, err := e.client.DescribeTags(ctxT(t), &elbv2.DescribeTagsInput{ResourceArns: []string{arn}})
	if err != nil || len(out.TagDescriptions) != 1 {
		t.Fatalf("DescribeTags(%s) = %+v, %v", arn, out, err)
	}
	m := map[string]string{}
	for _, tag := range out.TagDescriptions[0].Tags {
		m[*tag.Key] = *tag.Value
	}
	return m
}

func (e *nlbEnv) ensure(t *testing.T, lb netsync.LoadBalancer) string {
	t.Helper()
	ing, err := e.bal.Ensure(ctxT(t), lb)
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if len(ing) != 1 || ing[0].Hostname == "" || ing[0].IP != "" {
		t.Fatalf("Ensure's ingress = %+v, want one hostname", ing)
	}
	return ing[0].Hostname
}

// steadyCalls are the calls of an Ensure that changes nothing, for a Service with one listener.
var steadyCalls = map[string]int{"DescribeLoadBalancers": 1, "DescribeListeners": 1, "DescribeTargetGroups": 1, "DescribeTargetHealth": 1}

func sameCalls(got, want map[string]int) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// TestNLBCreate makes a Service's NLB from nothing — whether the emulator answers an unknown name with
// LoadBalancerNotFound (as AWS) or an empty list (as kumo) — and checks what it made, then that Ensure again
// changes nothing.
func TestNLBCreate(t *testing.T) {
	for _, notFound := range []bool{true, false} {
		t.Run(fmt.Sprintf("notFound=%v", notFound), func(t *testing.T) {
			e := newNLBEnv(t)
			e.front.set(func(f *elbFront) { f.notFoundNames = notFound })
			svc := service()
			want := targets("10.0.1.10", 3)
			lb := model(svc, want, 80)
			host := e.ensure(t, lb)

			got, listeners := e.loadBalancer(t, lb.Name)
			if host != *got.DNSName || got.Type != elbtypes.LoadBalancerTypeEnumNetwork || got.Scheme != elbtypes.LoadBalancerSchemeEnumInternal ||
				got.IpAddressType != elbtypes.IpAddressTypeIpv4 || len(got.AvailabilityZones) != 2 {
				t.Errorf("load balancer %+v, ingress %s", got, host)
			}
			tags := e.tags(t, *got.LoadBalancerArn)
			if tags[TagCluster] != e.bal.cluster || tags[TagNode] != "node-1" || tags[netsync.TagServiceUID] != svc.UID ||
				tags[netsync.TagServiceNamespace] != "default" || tags[netsync.TagServiceName] != svc.Name || tags["team"] != "web" {
				t.Errorf("load balancer tags %v", tags)
			}
			if len(listeners) != 1 || *listeners[0].Port != 80 || listeners[0].Protocol != elbtypes.ProtocolEnumTcp {
				t.Fatalf("listeners %+v", listeners)
			}
			tg := e.targetGroup(t, forwardsTo(listeners[0]))
			if tg.TargetType != elbtypes.TargetTypeEnumIp || tg.Protocol != elbtypes.ProtocolEnumTcp || *tg.Port != 8080 ||
				*tg.VpcId != "vpc-0123" || tg.HealthCheckProtocol != elbtypes.ProtocolEnumTcp || *tg.HealthCheckPort != "traffic-port" ||
				*tg.HealthCheckIntervalSeconds != 10 || *tg.HealthyThresholdCount != 3 || *tg.UnhealthyThresholdCount != 3 ||
				len(*tg.TargetGroupName) > 32 || !strings.HasPrefix(*tg.TargetGroupName, "i2k-"+svc.UID) {
				t.Errorf("target group %+v", tg)
			}
			if e.tags(t, *tg.TargetGroupArn)[netsync.TagServiceUID] != svc.UID {
				t.Errorf("target group tags %v", e.tags(t, *tg.TargetGroupArn))
			}
			if reg, _ := e.front.registered(*tg.TargetGroupArn); !slices.Equal(reg, asTargets(want)) {
				t.Errorf("registered %v, want %v", reg, asTargets(want))
			}

			e.front.reset()
			if again := e.ensure(t, lb); again != host {
				t.Errorf("ingress %s, then %s", host, again)
			}
			if calls := e.front.reset(); !sameCalls(calls, steadyCalls) {
				t.Errorf("Ensure of an unchanged Service made %v, want %v", calls, steadyCalls)
			}
		})
	}
}

// TestNLBSteadyStateCalls: an Ensure that changes nothing makes the same few calls for 10 endpoints as for 100.
func TestNLBSteadyStateCalls(t *testing.T) {
	e := newNLBEnv(t)
	for _, n := range []int{10, 100} {
		lb := model(service(), targets("10.2.0.1", n), 443)
		e.ensure(t, lb)
		e.front.reset()
		e.ensure(t, lb)
		if calls := e.front.reset(); !sameCalls(calls, steadyCalls) {
			t.Errorf("%d endpoints: an unchanged Ensure made %v, want %v", n, calls, steadyCalls)
		}
	}
}

// TestNLBScale adds and removes targets (only the difference is registered or deregistered), including two
// targets on one address that differ only by port, and a target that comes back while it is still draining.
func TestNLBScale(t *testing.T) {
	e := newNLBEnv(t)
	e.front.set(func(f *elbFront) { f.drainFor = 3 })
	svc := service()
	three := targets("10.3.0.1", 3)
	lb := model(svc, three, 80)
	e.ensure(t, lb)
	_, ls := e.loadBalancer(t, lb.Name)
	arn := forwardsTo(ls[0])
	e.front.settle(arn)

	five := targets("10.3.0.1", 5)
	e.front.reset()
	e.ensure(t, model(svc, five, 80))
	if calls := e.front.reset(); calls["RegisterTargets"] != 1 || calls["DeregisterTargets"] != 0 {
		t.Errorf("scaling up made %v", calls)
	}
	if reg, _ := e.front.registered(arn); !slices.Equal(reg, asTargets(five)) {
		t.Errorf("after scaling up: %v, want %v", reg, asTargets(five))
	}

	e.front.settle(arn)
	e.ensure(t, model(svc, three[:2], 80))
	if reg, healthy := e.front.registered(arn); !slices.Equal(reg, asTargets(three[:2])) || healthy != 2 {
		t.Errorf("after scaling down: %v (%d healthy), want %v", reg, healthy, asTargets(three[:2]))
	}

	// Back to five while three of them still drain: they are registered again.
	e.ensure(t, model(svc, five, 80))
	if reg, _ := e.front.registered(arn); !slices.Equal(reg, asTargets(five)) {
		t.Errorf("re-adding draining targets: %v, want %v", reg, asTargets(five))
	}

	// One address, two ports: both are targets, and removing one leaves the other.
	ip := netip.MustParseAddr("10.3.1.1")
	twoPorts := []netsync.Target{{IP: ip, Port: 8080}, {IP: ip, Port: 8081}}
	e.ensure(t, model(svc, twoPorts, 80))
	e.front.settle(arn)
	if reg, _ := e.front.registered(arn); !slices.Equal(reg, asTargets(twoPorts)) {
		t.Errorf("same address, two ports: %v, want %v", reg, asTargets(twoPorts))
	}
	e.ensure(t, model(svc, twoPorts[1:], 80))
	if reg, _ := e.front.registered(arn); !slices.Equal(reg, asTargets(twoPorts[1:])) {
		t.Errorf("after removing port 8080: %v, want %v", reg, asTargets(twoPorts[1:]))
	}

	// To no endpoint at all: nothing is left to wait for, every target goes.
	e.ensure(t, model(svc, nil, 80))
	if reg, _ := e.front.registered(arn); len(reg) != 0 {
		t.Errorf("scaled to zero: %v registered", reg)
	}
}

// TestNLBRollingUpdate replaces every target of a serving Service: the new ones are registered and healthy before
// the old ones go, so that the group never has zero healthy targets; new targets that never turn healthy, or not
// within the wait, leave the old ones registered and say so.
func TestNLBRollingUpdate(t *testing.T) {
	e := newNLBEnv(t)
	e.front.set(func(f *elbFront) { f.healthyAfter = 3 })
	svc := service()
	old := targets("10.4.0.1", 10)
	e.ensure(t, model(svc, old, 80))
	_, ls := e.loadBalancer(t, "i2k-"+svc.UID)
	arn := forwardsTo(ls[0])
	e.front.settle(arn)

	next := targets("10.4.1.1", 10)
	e.front.reset()
	e.ensure(t, model(svc, next, 80))
	reg, healthy := e.front.registered(arn)
	if !slices.Equal(reg, asTargets(next)) || healthy != len(next) {
		t.Errorf("after the rollout: %v (%d healthy), want %v all healthy", reg, healthy, asTargets(next))
	}
	e.front.mu.Lock()
	dropped, log := e.front.droppedToZero[arn], slices.Clone(e.front.log)
	e.front.mu.Unlock()
	if dropped {
		t.Errorf("the target group had no healthy target during the rollout; calls %v", log)
	}
	if i, j := slices.Index(log, "RegisterTargets"), slices.Index(log, "DeregisterTargets"); i < 0 || j < i {
		t.Errorf("calls %v: want RegisterTargets before DeregisterTargets", log)
	}

	t.Run("never healthy", func(t *testing.T) {
		broken := targets("10.4.2.1", 2)
		e.front.set(func(f *elbFront) {
			for _, b := range broken {
				f.neverHealthy[b.IP.String()] = true
			}
		})
		ing, err := e.bal.Ensure(ctxT(t), model(svc, broken, 80))
		if !errors.Is(err, ErrTargetsNotHealthy) || len(ing) != 1 || ing[0].Hostname == "" {
			t.Fatalf("Ensure with targets that never turn healthy: %v, %v; want the ingress and ErrTargetsNotHealthy", ing, err)
		}
		if reg, healthy := e.front.registered(arn); len(reg) != 12 || healthy != 10 {
			t.Errorf("registered %v (%d healthy): want the 10 old kept beside the 2 broken", reg, healthy)
		}
	})
	t.Run("wait bounded", func(t *testing.T) {
		e.front.set(func(f *elbFront) { f.healthyAfter = 1 << 30 })
		e.bal.healthWait = 20 * time.Millisecond
		defer func() { e.bal.healthWait = 20 * time.Second }()
		_, err := e.bal.Ensure(ctxT(t), model(svc, targets("10.4.3.1", 2), 80))
		if !errors.Is(err, ErrTargetsNotHealthy) {
			t.Fatalf("Ensure with targets still coming up after the wait: %v, want ErrTargetsNotHealthy", err)
		}
		if _, healthy := e.front.registered(arn); healthy != 10 {
			t.Errorf("%d healthy targets left, want the 10 old", healthy)
		}
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		e.front.set(func(f *elbFront) { f.healthyAfter = 1 << 30 })
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := e.bal.Ensure(ctx, model(svc, targets("10.4.4.1", 2), 80))
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 10*time.Second {
			t.Errorf("Ensure whose context ends while it waits: %v after %s", err, time.Since(start))
		}
	})
}

// TestNLBListenerChanges moves a listener to another port (its target group is kept), then changes its protocol
// (its target group is replaced: made and filled first, switched to, then deleted), then its health check (changed
// in place, once).
func TestNLBListenerChanges(t *testing.T) {
	e := newNLBEnv(t)
	svc := service()
	ts := targets("10.5.0.1", 3)
	lb := model(svc, ts, 80)
	e.ensure(t, lb)
	_, ls := e.loadBalancer(t, lb.Name)
	tgARN := forwardsTo(ls[0])

	moved := lb
	moved.Listeners = slices.Clone(lb.Listeners)
	moved.Listeners[0].Port = 8443
	e.ensure(t, moved)
	_, ls = e.loadBalancer(t, lb.Name)
	if len(ls) != 1 || *ls[0].Port != 8443 || forwardsTo(ls[0]) != tgARN {
		t.Errorf("after moving port 80 to 8443: listeners %+v, want one on 8443 forwarding to %s", ls, tgARN)
	}

	both := moved
	both.Listeners = slices.Clone(moved.Listeners)
	both.Listeners[0].Protocol = netsync.TCPUDP
	both.Listeners[0].Target.Protocol = netsync.TCPUDP
	e.ensure(t, both)
	_, ls = e.loadBalancer(t, lb.Name)
	newARN := forwardsTo(ls[0])
	if len(ls) != 1 || ls[0].Protocol != elbtypes.ProtocolEnumTcpUdp || newARN == tgARN {
		t.Fatalf("after TCP → TCP_UDP: listeners %+v, want TCP_UDP on a new target group", ls)
	}
	if tg := e.targetGroup(t, newARN); tg.Protocol != elbtypes.ProtocolEnumTcpUdp {
		t.Errorf("new target group %+v", tg)
	}
	if reg, _ := e.front.registered(newARN); !slices.Equal(reg, asTargets(ts)) {
		t.Errorf("new target group has %v, want %v", reg, asTargets(ts))
	}
	if e.exists(t, tgARN) {
		t.Errorf("the replaced target group %s is still there", tgARN)
	}

	hc := both
	hc.Listeners = slices.Clone(both.Listeners)
	hc.Listeners[0].Target.HealthCheck = netsync.HealthCheck{Protocol: "HTTP", Port: "9000", Path: "/healthz", IntervalSeconds: 30, HealthyThreshold: 2, UnhealthyThreshold: 2}
	e.front.reset()
	e.ensure(t, hc)
	if calls := e.front.reset(); calls["ModifyTargetGroup"] != 1 || calls["CreateTargetGroup"] != 0 {
		t.Errorf("changing the health check made %v", calls)
	}
	if tg := e.targetGroup(t, newARN); tg.HealthCheckProtocol != "HTTP" || *tg.HealthCheckPort != "9000" || *tg.HealthCheckPath != "/healthz" || *tg.HealthCheckIntervalSeconds != 30 {
		t.Errorf("health check after the change: %+v", tg)
	}
	e.front.reset()
	e.ensure(t, hc)
	if calls := e.front.reset(); !sameCalls(calls, steadyCalls) {
		t.Errorf("after the change an unchanged Ensure made %v", calls)
	}
}

// TestNLBResumesAfterAFailure: an Ensure that stopped after making a target group and registering its targets,
// before a listener used it, is finished by the next one with that group — no second group, and a target left
// there from an older model is deregistered.
func TestNLBResumesAfterAFailure(t *testing.T) {
	e := newNLBEnv(t)
	svc := service()
	e.front.set(func(f *elbFront) { f.fail["CreateListener"] = "InternalFailure" })
	if _, err := e.bal.Ensure(ctxT(t), model(svc, targets("10.10.0.1", 3), 80)); err == nil {
		t.Fatal("Ensure with CreateListener failing succeeded")
	}
	e.front.set(func(f *elbFront) { delete(f.fail, "CreateListener") })
	want := targets("10.10.0.1", 2)
	e.ensure(t, model(svc, want, 80))
	_, ls := e.loadBalancer(t, "i2k-"+svc.UID)
	arn := forwardsTo(ls[0])
	if reg, _ := e.front.registered(arn); !slices.Equal(reg, asTargets(want)) {
		t.Errorf("registered %v, want %v", reg, asTargets(want))
	}
	if left := e.tagged(t, svc.UID); len(left) != 2 {
		t.Errorf("tagged with the Service: %v, want one load balancer and one target group", left)
	}
}

// TestNLBSchemeChange makes the NLB again when it changes between internal and internet-facing.
func TestNLBSchemeChange(t *testing.T) {
	e := newNLBEnv(t)
	lb := model(service(), targets("10.6.0.1", 2), 80)
	e.ensure(t, lb)
	lb.Internal = false
	e.ensure(t, lb)
	got, ls := e.loadBalancer(t, lb.Name)
	if got.Scheme != elbtypes.LoadBalancerSchemeEnumInternetFacing || len(ls) != 1 {
		t.Errorf("after the scheme change: %+v, listeners %+v", got, ls)
	}
}

// TestNLBDelete deletes one Service's load balancer and target groups — retrying while AWS still finds a target
// group in use — and nothing of another Service's; deleting again is a no-op.
func TestNLBDelete(t *testing.T) {
	e := newNLBEnv(t)
	gone, kept := service(), service()
	e.ensure(t, model(gone, targets("10.7.0.1", 3), 80, 443))
	e.ensure(t, model(kept, targets("10.7.1.1", 3), 80))
	e.front.set(func(f *elbFront) { f.inUse = 2 })

	if err := e.bal.Delete(ctxT(t), gone); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if left := e.tagged(t, gone.UID); len(left) != 0 {
		t.Errorf("after Delete, tagged with the Service: %v", left)
	}
	if left := e.tagged(t, kept.UID); len(left) != 2 {
		t.Errorf("the other Service's resources: %v, want its load balancer and target group", left)
	}
	calls := e.front.reset()
	if calls["DeleteTargetGroup"] != 2+2 || calls["DeleteListener"] != 2 || calls["DeleteLoadBalancer"] != 1 {
		t.Errorf("Delete made %v", calls)
	}
	if err := e.bal.Delete(ctxT(t), gone); err != nil {
		t.Errorf("Delete again: %v", err)
	}
	if calls := e.front.reset(); calls["DeleteTargetGroup"]+calls["DeleteLoadBalancer"]+calls["DeleteListener"] != 0 {
		t.Errorf("Delete of nothing made %v", calls)
	}

	t.Run("in use for too long", func(t *testing.T) {
		svc := service()
		e.ensure(t, model(svc, nil, 80))
		e.front.set(func(f *elbFront) { f.inUse = 1 << 30 })
		defer e.front.set(func(f *elbFront) { f.inUse, f.refusing = 0, 0 })
		e.bal.inUseWait = 10 * time.Millisecond
		err := e.bal.Delete(ctxT(t), svc)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Code != "ResourceInUse" || ae.Action != "elasticloadbalancing:DeleteTargetGroup" {
			t.Errorf("Delete of a target group in use for ever: %v", err)
		}
	})
}

// exists reports whether target group arn exists (kumo answers an empty list, not TargetGroupNotFound, for an
// unknown ARN).
func (e *nlbEnv) exists(t *testing.T, arn string) bool {
	t.Helper()
	out, err := e.client.DescribeTargetGroups(ctxT(t), &elbv2.DescribeTargetGroupsInput{TargetGroupArns: []string{arn}})
	if isELBCode(err, "TargetGroupNotFound") {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return len(out.TargetGroups) > 0
}

// tagged lists every load balancer and target group, in kumo, tagged with Service uid.
func (e *nlbEnv) tagged(t *testing.T, uid string) []string {
	t.Helper()
	ctx := ctxT(t)
	var arns []string
	lbs, err := e.client.DescribeLoadBalancers(ctx, &elbv2.DescribeLoadBalancersInput{})
	if err != nil {
		t.Fatal(err)
	}
	for _, lb := range lbs.LoadBalancers {
		arns = append(arns, *lb.LoadBalancerArn)
	}
	tgs, err := e.client.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range tgs.TargetGroups {
		arns = append(arns, *tg.TargetGroupArn)
	}
	var found []string
	for _, arn := range arns {
		if e.tags(t, arn)[netsync.TagServiceUID] == uid {
			found = append(found, arn)
		}
	}
	return found
}

// TestNLBList finds the Services of this cluster's NLBs, and not another cluster's.
func TestNLBList(t *testing.T) {
	e := newNLBEnv(t)
	other := NewNLBBalancer(e.client, "vpc-0123", []string{"subnet-a"}, e.bal.cluster+"-other", "node-2")
	var mine []netsync.ServiceKey
	for range 3 {
		svc := service()
		mine = append(mine, svc)
		e.ensure(t, model(svc, targets("10.8.0.1", 1), 80))
	}
	if _, err := other.Ensure(ctxT(t), model(service(), targets("10.8.1.1", 1), 80)); err != nil {
		t.Fatal(err)
	}
	got, err := e.bal.List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, mine) {
		t.Errorf("List = %v, want %v", got, mine)
	}
}

// TestNLBErrorsNameTheAction: an AWS refusal says which elasticloadbalancing action to allow.
func TestNLBErrorsNameTheAction(t *testing.T) {
	e := newNLBEnv(t)
	e.front.set(func(f *elbFront) { f.fail["CreateLoadBalancer"] = "AccessDenied" })
	_, err := e.bal.Ensure(ctxT(t), model(service(), nil, 80))
	if !IsUnauthorized(err) || !strings.Contains(err.Error(), "elasticloadbalancing:CreateLoadBalancer is not permitted") {
		t.Errorf("Ensure refused by AWS: %v", err)
	}
}

// BenchmarkNLBSync100Services reports the ELBv2 calls of one steady-state sync of 100 Services of 10 endpoints
// each, through the SDK against kumo.
func BenchmarkNLBSync100Services(b *testing.B) {
	e := newNLBEnv(b)
	ctx := context.Background()
	lbs := make([]netsync.LoadBalancer, 100)
	for i := range lbs {
		lbs[i] = model(service(), targets(fmt.Sprintf("10.9.%d.1", i), 10), 80)
		if _, err := e.bal.Ensure(ctx, lbs[i]); err != nil {
			b.Fatal(err)
		}
	}
	e.front.reset()
	b.ResetTimer()
	for b.Loop() {
		for _, lb := range lbs {
			if _, err := e.bal.Ensure(ctx, lb); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	total := 0
	for _, n := range e.front.reset() {
		total += n
	}
	b.ReportMetric(float64(total)/float64(b.N), "api-calls/sync")
	b.ReportMetric(float64(total)/float64(b.N*len(lbs)), "api-calls/service")
}
