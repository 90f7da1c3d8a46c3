package netsync

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// lbResult is one Service's entry in a testdata/lb/*.golden file: its model, or the error building it.
type lbResult struct {
	Service      string        `json:"service"`
	LoadBalancer *LoadBalancer `json:"loadBalancer,omitempty"`
	Error        string        `json:"error,omitempty"`
}

// TestBuildLoadBalancerGolden builds the model of every Service of each testdata/lb/*.yaml (Services and
// EndpointSlices) with the case's options and compares them with the case's .golden file; go test -run
// TestBuildLoadBalancerGolden -update rewrites them. The model must not depend on the order of the slices.
func TestBuildLoadBalancerGolden(t *testing.T) {
	o := ModelOptions{Cluster: "test-cluster", Node: "node-1"}
	merged := o
	merged.MergeTCPUDP = true
	local := o
	local.OnlyNode = "node-1"
	type lbCase struct {
		input, golden string
		o             ModelOptions
	}
	cases := []lbCase{
		{"ports", "ports", o},
		{"namedports", "namedports", o},
		{"noready", "noready", o},
		{"annotations", "annotations", o},
		{"longnames", "longnames", o},
		{"tcpudp", "tcpudp", o},
		{"tcpudp", "tcpudp-merged", merged},
		{"nodes", "nodes", o},
		{"nodes", "nodes-only-node-1", local},
	}
	inputs, _ := filepath.Glob("testdata/lb/*.yaml")
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		if !slices.ContainsFunc(cases, func(c lbCase) bool { return c.input == name }) {
			t.Errorf("%s has no case", in)
		}
	}
	for _, c := range cases {
		t.Run(c.golden, func(t *testing.T) {
			services, endpointSlices := readObjects(t, filepath.Join("testdata/lb", c.input+".yaml"))
			build := func() []byte {
				var results []lbResult
				for _, svc := range services {
					r := lbResult{Service: svc.Namespace + "/" + svc.Name}
					if lb, err := BuildLoadBalancer(svc, endpointSlices, c.o); err != nil {
						r.Error = err.Error()
					} else {
						r.LoadBalancer = &lb
					}
					results = append(results, r)
				}
				got, err := json.MarshalIndent(results, "", "  ")
				if err != nil {
					t.Fatal(err)
				}
				return append(got, '\n')
			}
			got := build()
			golden := filepath.Join("testdata/lb", c.golden+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("models differ from %s (run with -update if the change is intended):\n%s", golden, got)
			}
			slices.Reverse(endpointSlices)
			for _, s := range endpointSlices {
				slices.Reverse(s.Endpoints)
			}
			if again := build(); !bytes.Equal(again, got) {
				t.Errorf("the models depend on the order of the inputs; reversed:\n%s", again)
			}
		})
	}
}

var validName = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,30}[a-zA-Z0-9])?$`)

// TestBuildLoadBalancerNames checks the names' contract over awkward inputs: at most 32 characters of
// [a-zA-Z0-9-] that neither start nor end with '-', the same for the same inputs, different for different UIDs,
// schemes, clusters and listeners.
func TestBuildLoadBalancerNames(t *testing.T) {
	svc := func(ns, name, uid string, annotations map[string]string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid), Annotations: annotations},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{
				{Name: "a", Port: 53, Protocol: corev1.ProtocolTCP}, {Name: "b", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "c", Port: 5300, Protocol: corev1.ProtocolTCP}}}}
	}
	o := ModelOptions{Cluster: "c1", Node: "n1"}
	seen := map[string]string{}
	for i, s := range []*corev1.Service{
		svc("default", "web", "u1", nil),
		svc("default", "web", "u2", nil),
		svc("default", "web", "u1", map[string]string{AnnotationScheme: "internet-facing"}),
		svc("-", "-", "u3", nil),
		svc("", "", "u4", nil),
		svc("ns.with.dots", "name-ending-in-dash-", "u5", nil),
		svc(strings.Repeat("n", 63), strings.Repeat("s", 253), "u6", nil),
		svc("ünïcode", "名前", "u7", nil),
	} {
		for _, opts := range []ModelOptions{o, {Cluster: "c2", Node: "n1"}} {
			lb, err := BuildLoadBalancer(s, nil, opts)
			if err != nil {
				t.Fatalf("%d: %v", i, err)
			}
			again, _ := BuildLoadBalancer(s, nil, opts)
			names := []string{lb.Name}
			for _, l := range lb.Listeners {
				names = append(names, l.Target.Name)
			}
			for j, n := range names {
				if !validName.MatchString(n) {
					t.Errorf("%d: name %q is not at most 32 characters of [a-zA-Z0-9-] without a '-' at either end", i, n)
				}
				what := fmt.Sprintf("%d %s %v", i, opts.Cluster, j)
				if other, dup := seen[n]; dup {
					t.Errorf("%s: name %q is also %s's", what, n, other)
				}
				seen[n] = what
			}
			if again.Name != lb.Name || again.Listeners[0].Target.Name != lb.Listeners[0].Target.Name {
				t.Errorf("%d: names differ between two builds", i)
			}
		}
	}
}

// TestBuildLoadBalancerSliceErrors: an error comes from the Service alone, never from its endpoints, so that the
// controller can wait for the Service to change instead of retrying.
func TestBuildLoadBalancerSliceErrors(t *testing.T) {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web", UID: "u1"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	weird := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-x",
		Labels: map[string]string{discoveryv1.LabelServiceName: "web"}}, AddressType: discoveryv1.AddressTypeFQDN,
		Ports:     []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(-1)), Protocol: ptr(corev1.ProtocolSCTP)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"not-an-ip", "10.0.0.1"}}}}
	lb, err := BuildLoadBalancer(s, []*discoveryv1.EndpointSlice{weird}, ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(lb.Listeners) != 1 || len(lb.Listeners[0].Target.Targets) != 0 {
		t.Errorf("listeners from a slice of no usable endpoint: %+v", lb.Listeners)
	}
}
