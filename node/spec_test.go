package node

import (
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/i2kit/i2kit/internal/version"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestSpecGolden(t *testing.T) {
	c := validConfig()
	c.Labels = map[string]string{"topology.kubernetes.io/zone": "lab-1"}
	c.Taints = []string{DefaultTaint, "dedicated=sensitive:NoExecute"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	n, err := Spec(c)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n.Status.Conditions { // times are the only input that is not c
		n.Status.Conditions[i].LastHeartbeatTime = metav1.Time{}
		n.Status.Conditions[i].LastTransitionTime = metav1.Time{}
	}
	got, err := yaml.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(got), version.Version, "VERSION")
	s = strings.ReplaceAll(s, "arch: "+runtime.GOARCH, "arch: ARCH")
	s = strings.ReplaceAll(s, "architecture: "+runtime.GOARCH, "architecture: ARCH")
	golden := filepath.Join("testdata", "node.golden.yaml")
	if *update {
		os.WriteFile(golden, []byte(s), 0o644) //nolint:errcheck
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if s != string(want) {
		t.Errorf("Spec() differs from %s (go test ./node -update to accept):\n%s", golden, s)
	}
}
