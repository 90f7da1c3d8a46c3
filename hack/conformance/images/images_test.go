package main

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"sigs.k8s.io/yaml"

	"github.com/i2kit/i2kit/internal/controlplane"
	"github.com/i2kit/i2kit/internal/devregistry"
)

// registryList has the fields of test/utils/image.RegistryList (manifest.go), which reads KUBE_TEST_REPO_LIST.
type registryList struct {
	PromoterE2eRegistry      string `json:"promoterE2eRegistry"`
	BuildImageRegistry       string `json:"buildImageRegistry"`
	InvalidRegistry          string `json:"invalidRegistry"`
	GcEtcdRegistry           string `json:"gcEtcdRegistry"`
	GcRegistry               string `json:"gcRegistry"`
	SigStorageRegistry       string `json:"sigStorageRegistry"`
	PrivateRegistry          string `json:"privateRegistry"`
	DockerLibraryRegistry    string `json:"dockerLibraryRegistry"`
	CloudProviderGcpRegistry string `json:"cloudProviderGcpRegistry"`
}

func TestRepoList(t *testing.T) {
	list, err := repoList("127.0.0.1:5001")
	if err != nil {
		t.Fatal(err)
	}
	var got registryList
	if err := yaml.UnmarshalStrict(renderRepoList(list), &got); err != nil {
		t.Fatalf("the repo list does not decode as the suite's RegistryList: %v\n%s", err, renderRepoList(list))
	}
	want := registryList{
		PromoterE2eRegistry:      "127.0.0.1:5001/e2e-test-images",
		BuildImageRegistry:       "127.0.0.1:5001/build-image",
		InvalidRegistry:          "invalid.registry.k8s.io/invalid",
		GcEtcdRegistry:           "127.0.0.1:5001",
		GcRegistry:               "127.0.0.1:5001",
		SigStorageRegistry:       "127.0.0.1:5001/sig-storage",
		PrivateRegistry:          "gcr.io/k8s-authenticated-test",
		DockerLibraryRegistry:    "127.0.0.1:5001/library",
		CloudProviderGcpRegistry: "127.0.0.1:5001/cloud-provider-gcp",
	}
	if got != want {
		t.Errorf("repo list:\n got %+v\nwant %+v", got, want)
	}
}

func TestRepoListRejectsBadRegistry(t *testing.T) {
	for _, r := range []string{"", "127.0.0.1:5001/x", "a b:1", "x\"y:1"} {
		if _, err := repoList(r); err == nil {
			t.Errorf("repoList(%q): no error", r)
		}
	}
}

func TestRefs(t *testing.T) {
	list, err := repoList("127.0.0.1:5001")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"Agnhost":         "127.0.0.1:5001/e2e-test-images/agnhost:2.66.1",
		"AgnhostPrev":     "127.0.0.1:5001/e2e-test-images/agnhost:2.55",
		"BusyBox":         "127.0.0.1:5001/e2e-test-images/busybox:1.37.0-2",
		"GlibcDnsTesting": "127.0.0.1:5001/e2e-test-images/glibc-dns-testing:2.1.1",
		"Nginx":           "127.0.0.1:5001/e2e-test-images/nginx:1.27.0-2",
		"NginxNew":        "127.0.0.1:5001/e2e-test-images/nginx:1.28.0-2",
		"NonRoot":         "127.0.0.1:5001/e2e-test-images/nonroot:1.5",
		"Nonewprivs":      "127.0.0.1:5001/e2e-test-images/nonewprivs:1.4",
		"Pause":           "127.0.0.1:5001/pause:3.10.2",
		"Kitten":          "127.0.0.1:5001/e2e-test-images/kitten:1.8",
	}
	if len(standIns) != len(want) {
		t.Errorf("%d stand-ins, want %d", len(standIns), len(want))
	}
	for _, s := range standIns {
		if got := s.ref(list); got != want[s.ID] {
			t.Errorf("%s: ref %q, want %q", s.ID, got, want[s.ID])
		}
	}
}

// TestMatchesUpstreamManifest checks the registries and stand-ins against the suite's own manifest.go in the module
// cache, so that a version bump that renames a registry field or retags an image fails here, not in a 3-hour run.
func TestMatchesUpstreamManifest(t *testing.T) {
	mod, err := controlplane.KubernetesModuleDir(context.Background())
	if err != nil {
		t.Skip(err)
	}
	p := filepath.Join(mod, "test", "utils", "image", "manifest.go")
	src, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s is not in the module cache", p)
	}
	if err != nil {
		t.Fatal(err)
	}
	fields := regexp.MustCompile(`(\w+)\s+string\s+`+"`"+`yaml:"(\w+)"`).FindAllStringSubmatch(string(src), -1)
	if len(fields) != len(upstreamRegistries) {
		t.Errorf("manifest.go has %d registry fields, we know %d", len(fields), len(upstreamRegistries))
	}
	for _, f := range fields {
		def := regexp.MustCompile(`\n\s+` + f[1] + `:\s+"([^"]+)"`).FindStringSubmatch(string(src))
		if def == nil {
			t.Errorf("manifest.go: no default for %s", f[1])
			continue
		}
		if upstreamRegistries[f[2]] != def[1] {
			t.Errorf("registry %s: manifest.go %q, ours %q", f[2], def[1], upstreamRegistries[f[2]])
		}
	}
	byID := map[string][]string{}
	for _, m := range regexp.MustCompile(`configs\[(\w+)\] = Config\{list\.(\w+), "([^"]+)", "([^"]+)"\}`).FindAllStringSubmatch(string(src), -1) {
		byID[m[1]] = m[2:]
	}
	for _, s := range standIns {
		up, ok := byID[s.ID]
		if !ok {
			t.Errorf("%s: not in manifest.go", s.ID)
			continue
		}
		field := strings.ToLower(up[0][:1]) + up[0][1:]
		if field != s.Registry || up[1] != s.Name || up[2] != s.Tag {
			t.Errorf("%s: manifest.go %s/%s:%s, ours %s/%s:%s", s.ID, field, up[1], up[2], s.Registry, s.Name, s.Tag)
		}
	}
}

func TestParseApplets(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
		err      bool
	}{
		{"list", "sh\n[\n[[\nwget\n", []string{"sh", "[", "[[", "wget"}, false},
		{"blank lines", "\nsh\n\n", []string{"sh"}, false},
		{"empty", "", nil, true},
		{"slash", "sh\n../etc/passwd\n", nil, true},
		{"dotdot", "..\n", nil, true},
		{"too long", strings.Repeat("a\n", maxAppletList), nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseApplets(strings.NewReader(tc.in))
			if (err != nil) != tc.err {
				t.Fatalf("err %v, want error %v", err, tc.err)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestPush pushes the stand-ins, with fake agnhost and nnp, to an in-memory registry and reads two back.
func TestPush(t *testing.T) {
	const bb = "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		t.Skip("no static busybox (scripts/deps.sh installs busybox-static)")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"agnhost", "nonewprivs", "localhost.crt", "localhost.key"} {
		if err := os.WriteFile(filepath.Join(bin, f), []byte("fake "+f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := devregistry.Serve(l)
	defer srv.Close()
	host := l.Addr().String()
	rl := filepath.Join(dir, "repo-list.yaml")
	if err := run(context.Background(), host, rl, bb, bin); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(rl); err != nil {
		t.Errorf("no repo list: %v", err)
	}

	files := func(ref string) (map[string]*tar.Header, []string, string) {
		t.Helper()
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		img, err := remote.Image(r)
		if err != nil {
			t.Fatalf("pulling %s: %v", ref, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		rc := mutate.Extract(img)
		defer rc.Close()
		hs := map[string]*tar.Header{}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			hs[h.Name] = h
		}
		return hs, append(cf.Config.Entrypoint, cf.Config.Cmd...), cf.Config.User
	}

	hs, argv, _ := files(host + "/e2e-test-images/agnhost:2.66.1")
	if strings.Join(argv, " ") != "/agnhost pause" {
		t.Errorf("agnhost runs %q", argv)
	}
	for _, f := range []string{"agnhost", "agnhost-2", "bin/sh", "bin/sysctl", "bin/httpd", "bin/bash", "etc/group"} {
		if hs[f] == nil {
			t.Errorf("agnhost: no %s", f)
		}
	}
	hs, argv, _ = files(host + "/e2e-test-images/nonewprivs:1.4")
	if h := hs["usr/local/bin/nnp"]; h == nil || h.Mode&0o4000 == 0 {
		t.Errorf("nonewprivs: nnp is not setuid: %+v", h)
	}
	if strings.Join(argv, " ") != "nnp" {
		t.Errorf("nonewprivs runs %q", argv)
	}
	if _, _, user := files(host + "/e2e-test-images/nonroot:1.5"); user != "1234" {
		t.Errorf("nonroot: user %q, want 1234", user)
	}
	if _, argv, _ := files(host + "/pause:3.10.2"); strings.Join(argv, " ") != "/agnhost pause" {
		t.Errorf("pause runs %q", argv)
	}
}
