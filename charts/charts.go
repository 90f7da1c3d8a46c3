// Package charts renders, lints and packages i2kit's Helm chart (charts/i2kit) with the Helm v4 library, from the
// chart's files embedded at build time, for tests and tools: the unit tests of the chart, the e2e test that
// applies it to a real control plane, and `make chart`. Nothing here talks to a cluster. cmd/i2kit never links it
// (nor Helm): `make lint` checks that.
package charts

import (
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	release "helm.sh/helm/v4/pkg/release/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/i2kit/i2kit/internal/version"
)

// files holds charts/i2kit, dot and underscore files (.helmignore, _helpers.tpl) included.
//
//go:embed all:i2kit
var files embed.FS

// chartDir is the chart's directory within files.
const chartDir = "i2kit"

// KubeVersion is the Kubernetes version the chart is rendered and linted for (.Capabilities.KubeVersion): the
// one whose kubelet the node implements.
var KubeVersion = version.KubeletVersion

// Load returns the chart as embedded.
func Load() (*chart.Chart, error) {
	var bufs []*archive.BufferedFile
	err := fs.WalkDir(files, chartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		bufs = append(bufs, &archive.BufferedFile{Name: strings.TrimPrefix(p, chartDir+"/"), Data: b})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the embedded chart, %w", err)
	}
	c, err := loader.LoadFiles(bufs)
	if err != nil {
		return nil, fmt.Errorf("loading the chart, %w", err)
	}
	return c, nil
}

// Release names one installation of the chart.
type Release struct {
	Name      string
	Namespace string
}

// Rendered is the chart rendered as `helm template` renders it.
type Rendered struct {
	// Manifest is the YAML stream of every object, each document headed by "# Source: i2kit/templates/<file>", in
	// Helm's install order (ServiceAccounts and RBAC before the workloads that use them).
	Manifest string
	// Notes is templates/NOTES.txt rendered.
	Notes string
}

// Render renders the chart for rel with values over its defaults (values.yaml), once values.schema.json has
// accepted them: an unknown key, a wrong type or a missing required setting is an error naming it.
func Render(rel Release, values map[string]any) (Rendered, error) {
	c, err := Load()
	if err != nil {
		return Rendered{}, err
	}
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		return Rendered{}, fmt.Errorf("parsing KubeVersion, %w", err)
	}
	install := action.NewInstall(action.NewConfiguration(action.ConfigurationSetLogger(slog.DiscardHandler)))
	install.DryRunStrategy = action.DryRunClient // `helm template`: no cluster
	install.ReleaseName = rel.Name
	install.Namespace = rel.Namespace
	install.Replace = true
	install.KubeVersion = kv
	if values == nil {
		values = map[string]any{}
	}
	r, err := install.Run(c, values)
	if err != nil {
		return Rendered{}, fmt.Errorf("rendering the chart, %w", err)
	}
	rr, ok := r.(*release.Release)
	if !ok {
		return Rendered{}, fmt.Errorf("rendering the chart: Helm returned a %T, want a *release.Release", r)
	}
	if len(rr.Hooks) > 0 {
		return Rendered{}, errors.New("rendering the chart: it has hooks, which Render does not return")
	}
	return Rendered{Manifest: strings.TrimSpace(rr.Manifest) + "\n", Notes: rr.Info.Notes}, nil
}

// Objects decodes the manifest into one object per document, in the manifest's order.
func (r Rendered) Objects() ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(r.Manifest), 4096)
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("decoding the manifest, %w", err)
		}
		if len(m) == 0 { // an empty document
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}

// Lint runs `helm lint --strict`'s checks on the chart with values over its defaults, in namespace: an error or a
// warning fails it; informational messages do not.
func Lint(namespace string, values map[string]any) error {
	dir, err := os.MkdirTemp("", "i2kit-chart-")
	if err != nil {
		return fmt.Errorf("linting the chart, %w", err)
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, chartDir)
	if err := writeFiles(root); err != nil {
		return fmt.Errorf("linting the chart, %w", err)
	}
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		return fmt.Errorf("parsing KubeVersion, %w", err)
	}
	if values == nil {
		values = map[string]any{}
	}
	res := lint.RunAll(root, values, namespace, lint.WithKubeVersion(kv))
	var errs []error
	for _, m := range res.Messages {
		if m.Severity >= support.WarningSev {
			errs = append(errs, errors.New(strings.ReplaceAll(m.Error(), root, chartDir)))
		}
	}
	return errors.Join(errs...)
}

// writeFiles writes the embedded chart into dir (a new directory), as on disk.
func writeFiles(dir string) error {
	return fs.WalkDir(files, chartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(strings.TrimPrefix(p, chartDir), "/")))
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
}

// ChartVersion is the chart version of a release version: the release's SemVer without its "v", or, for a build
// that is not a release (`git describe` of an untagged commit: "fbce8f1-dirty"), 0.0.0-dev with the build as
// SemVer build metadata.
func ChartVersion(release string) string {
	v := strings.TrimPrefix(release, "v")
	if err := (&chart.Metadata{APIVersion: chart.APIVersionV2, Name: "x", Version: v}).Validate(); err == nil {
		return v
	}
	var meta []string
	for _, id := range strings.FieldsFunc(release, func(r rune) bool {
		return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-')
	}) {
		meta = append(meta, id)
	}
	if len(meta) == 0 {
		return "0.0.0-dev"
	}
	return "0.0.0-dev+" + strings.Join(meta, ".")
}

// Package writes the chart, stamped with the release version (ChartVersion) and the release as its appVersion
// (the node image's tag), as a .tgz archive into outDir, and returns the archive's path.
func Package(outDir, releaseVersion string) (string, error) {
	c, err := Load()
	if err != nil {
		return "", err
	}
	c.Metadata.Version = ChartVersion(releaseVersion)
	c.Metadata.AppVersion = releaseVersion
	if err := c.Validate(); err != nil {
		return "", fmt.Errorf("stamping the chart with version %s, %w", releaseVersion, err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return "", fmt.Errorf("packaging the chart, %w", err)
	}
	p, err := chartutil.Save(c, outDir)
	if err != nil {
		return "", fmt.Errorf("packaging the chart, %w", err)
	}
	return p, nil
}
