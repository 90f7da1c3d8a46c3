package netsync

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the code")

// TestBuildTableGolden builds the table of each testdata/*.yaml (Services and EndpointSlices) and compares it with
// the .golden file beside it; go test -run TestBuildTableGolden -update rewrites them.
func TestBuildTableGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(inputs) == 0 {
		t.Fatalf("no inputs: %v", err)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			services, endpointSlices := readObjects(t, in)
			got, err := json.MarshalIndent(BuildTable(services, endpointSlices), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := strings.TrimSuffix(in, ".yaml") + ".golden"
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
				t.Errorf("table differs from %s (run with -update if the change is intended):\n%s", golden, got)
			}
			slices.Reverse(services)
			slices.Reverse(endpointSlices)
			again, _ := json.MarshalIndent(BuildTable(services, endpointSlices), "", "  ")
			if !bytes.Equal(append(again, '\n'), got) {
				t.Errorf("the table depends on the order of the inputs; reversed:\n%s", again)
			}
		})
	}
}

// readObjects decodes a multi-document YAML file of Services and EndpointSlices.
func readObjects(t *testing.T, path string) ([]*corev1.Service, []*discoveryv1.EndpointSlice) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var services []*corev1.Service
	var endpointSlices []*discoveryv1.EndpointSlice
	r := yaml.NewYAMLReader(bufio.NewReader(f))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		switch o := obj.(type) {
		case *corev1.Service:
			services = append(services, o)
		case *discoveryv1.EndpointSlice:
			endpointSlices = append(endpointSlices, o)
		default:
			t.Fatalf("%s: unexpected %T", path, obj)
		}
	}
	return services, endpointSlices
}
