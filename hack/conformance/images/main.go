// Command images pushes stand-ins for the test images of Kubernetes' node conformance specs to a plain-HTTP
// registry, under the repository paths and tags the e2e suite pulls, and writes the KUBE_TEST_REPO_LIST file that
// points the suite at that registry. The machine needs no internet: agnhost and nnp are built from the module
// cache's k8s.io/kubernetes, busybox is the host's static one.
//
//	go run ./hack/conformance/images --registry 127.0.0.1:5001 --repo-list repo-list.yaml
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/i2kit/i2kit/internal/controlplane"
)

func main() {
	registry := flag.String("registry", "", "host:port of the plain-HTTP registry to push to (required)")
	repoListPath := flag.String("repo-list", "", "write the KUBE_TEST_REPO_LIST YAML file here")
	busybox := flag.String("busybox", "/bin/busybox", "a static busybox (Debian's busybox-static)")
	binDir := flag.String("bin-dir", filepath.Join(filepath.Dir(controlplane.DefaultE2ETestPath()), "bin"),
		"where agnhost and nonewprivs are built once (versioned like e2e.test)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *registry, *repoListPath, *busybox, *binDir); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, registry, repoListPath, busybox, binDir string) error {
	list, err := repoList(registry)
	if err != nil {
		return err
	}
	if repoListPath != "" {
		if err := os.WriteFile(repoListPath, renderRepoList(list), 0o644); err != nil {
			return fmt.Errorf("writing repo list, %w", err)
		}
	}
	bins, err := buildBinaries(ctx, binDir)
	if err != nil {
		return err
	}
	imgs, err := standInImages(busybox, bins)
	if err != nil {
		return err
	}
	for _, s := range standIns {
		ref, err := name.ParseReference(s.ref(list), name.Insecure)
		if err != nil {
			return fmt.Errorf("parsing %s, %w", s.ref(list), err)
		}
		if err := remote.Write(ref, imgs[s.Kind], remote.WithContext(ctx)); err != nil {
			return fmt.Errorf("pushing %s, %w", ref, err)
		}
		fmt.Printf("pushed %-10s %s\n", s.Kind, ref)
	}
	return nil
}

// binaries are the files of the stand-ins that are not the host's busybox: the agnhost and nnp binaries, and the
// TLS key pair upstream's agnhost image has at /localhost.crt and /localhost.key (from the module's
// test/images/agnhost/porter, which its Dockerfile adds; the https lifecycle-hook specs serve with it).
type binaries struct{ agnhost, nnp, localhostCrt, localhostKey []byte }

// buildBinaries builds agnhost and nonewprivs (nnp) of KubernetesVersion into binDir, with agnhost's TLS key pair
// beside them (copied from the module they were built from), unless they are all there, and reads them.
func buildBinaries(ctx context.Context, binDir string) (binaries, error) {
	files := []string{"agnhost", "nonewprivs", "localhost.crt", "localhost.key"}
	if slices.ContainsFunc(files, func(f string) bool { return !regular(filepath.Join(binDir, f)) }) {
		fmt.Printf("building agnhost and nonewprivs (kubernetes v%s) into %s\n", controlplane.KubernetesVersion, binDir)
		tmp := binDir + ".tmp"
		if err := os.RemoveAll(tmp); err != nil {
			return binaries{}, fmt.Errorf("cleaning %s, %w", tmp, err)
		}
		if err := controlplane.BuildKubeCommands(ctx, binDir+".work", tmp, os.Stdout, "test/images/agnhost", "test/images/nonewprivs"); err != nil {
			return binaries{}, err
		}
		if err := copyKeyPair(ctx, tmp); err != nil {
			return binaries{}, err
		}
		if err := os.RemoveAll(binDir); err != nil {
			return binaries{}, fmt.Errorf("replacing %s, %w", binDir, err)
		}
		if err := os.Rename(tmp, binDir); err != nil {
			return binaries{}, fmt.Errorf("installing %s, %w", binDir, err)
		}
	}
	var b binaries
	for i, dst := range []*[]byte{&b.agnhost, &b.nnp, &b.localhostCrt, &b.localhostKey} {
		var err error
		if *dst, err = os.ReadFile(filepath.Join(binDir, files[i])); err != nil {
			return binaries{}, fmt.Errorf("reading %s, %w", files[i], err)
		}
	}
	return b, nil
}

// copyKeyPair copies test/images/agnhost/porter's localhost.crt and localhost.key from the module cache (where
// BuildKubeCommands has just fetched k8s.io/kubernetes) into dir.
func copyKeyPair(ctx context.Context, dir string) error {
	mod, err := controlplane.KubernetesModuleDir(ctx)
	if err != nil {
		return err
	}
	porter := filepath.Join(mod, "test", "images", "agnhost", "porter")
	for _, f := range []string{"localhost.crt", "localhost.key"} {
		b, err := os.ReadFile(filepath.Join(porter, f))
		if err != nil {
			return fmt.Errorf("reading agnhost's TLS key pair, %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// curlShim stands in for curl in the agnhost image (upstream's is alpine with curl): the exec lifecycle hooks run
// `sh -c "curl http://…"`. It fetches the last argument that is not a flag with busybox wget.
const curlShim = `#!/bin/sh
url=
for a; do case "$a" in -*) ;; *) url=$a ;; esac; done
exec wget -q -O - "$url"
`

func regular(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// path is the PATH of every stand-in, Docker's default.
const path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// standInImages makes one image of each kind. They share their layers: busybox's root filesystem under all but
// pause, agnhost's binary under agnhost and pause.
func standInImages(busyboxPath string, bins binaries) (map[kind]v1.Image, error) {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("reading busybox, %w", err)
	}
	names, err := applets(busyboxPath)
	if err != nil {
		return nil, err
	}
	base, err := busyboxLayer(bb, names)
	if err != nil {
		return nil, err
	}
	// agnhost-2: the entrypoint specs override agnhost's entrypoint with it.
	agn, err := layer([]entry{{Name: "agnhost", Mode: 0o755, Body: bins.agnhost}, {Name: "agnhost-2", Mode: 0o777, Link: "agnhost"}})
	if err != nil {
		return nil, err
	}
	// Upstream's agnhost is alpine with bash; a few probe specs run /bin/bash -c with POSIX scripts, which
	// busybox sh runs. The accounts are those upstream's Dockerfile adds for the supplemental-groups specs.
	agnExtra, err := layer([]entry{
		{Name: "bin/bash", Mode: 0o755, Body: []byte("#!/bin/sh\nexec /bin/sh \"$@\"\n")},
		{Name: "bin/curl", Mode: 0o755, Body: []byte(curlShim)},
		{Name: "localhost.crt", Mode: 0o644, Body: bins.localhostCrt},
		{Name: "localhost.key", Mode: 0o644, Body: bins.localhostKey},
		{Name: "uploads", Mode: 0o755, Dir: true},
		{Name: "etc/passwd", Mode: 0o644, Body: []byte(passwd + "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n")},
		{Name: "etc/group", Mode: 0o644, Body: []byte(group + "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n")},
	})
	if err != nil {
		return nil, err
	}
	html, err := layer([]entry{
		{Name: "usr/share/nginx/html", Mode: 0o755, Dir: true},
		{Name: "usr/share/nginx/html/index.html", Mode: 0o644, Body: []byte("<html><body>nginx stand-in (i2kit conformance)</body></html>\n")},
	})
	if err != nil {
		return nil, err
	}
	// Upstream sets the setuid bit with chmod +s: run as a non-root user, nnp reports uid 0 unless no_new_privs.
	nnp, err := layer([]entry{{Name: "usr/local", Mode: 0o755, Dir: true}, {Name: "usr/local/bin", Mode: 0o755, Dir: true},
		{Name: "usr/local/bin/nnp", Mode: 0o6755, Body: bins.nnp}})
	if err != nil {
		return nil, err
	}

	// What the ImageVolume spec reads of upstream's kitten image (an alpine with a picture and its index).
	kitten, err := layer([]entry{
		{Name: "data.json", Mode: 0o644, Body: []byte(`{"file": "kitten.jpg"}` + "\n")},
		{Name: "etc", Mode: 0o755, Dir: true},
		{Name: "etc/os-release", Mode: 0o644, Body: []byte("NAME=\"Alpine Linux\"\nID=alpine\n")},
	})
	if err != nil {
		return nil, err
	}

	type recipe struct {
		cfg    v1.Config
		layers []v1.Layer
	}
	recipes := map[kind]recipe{
		kindAgnhost:    {v1.Config{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Env: []string{path}}, []v1.Layer{base, agn, agnExtra}},
		kindBusybox:    {v1.Config{Cmd: []string{"sh"}, Env: []string{path}}, []v1.Layer{base}},
		kindNginx:      {v1.Config{Cmd: []string{"httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"}, Env: []string{path}}, []v1.Layer{base, html}},
		kindNonRoot:    {v1.Config{Cmd: []string{"sh"}, Env: []string{path}, User: "1234"}, []v1.Layer{base}},
		kindNoNewPrivs: {v1.Config{Cmd: []string{"nnp"}, Env: []string{path}}, []v1.Layer{base, nnp}},
		kindPause:      {v1.Config{Entrypoint: []string{"/agnhost", "pause"}, Env: []string{path}}, []v1.Layer{agn}},
		kindKitten:     {v1.Config{Env: []string{path}}, []v1.Layer{kitten}},
	}
	out := make(map[kind]v1.Image, len(recipes))
	for k, r := range recipes {
		if out[k], err = image(r.cfg, r.layers...); err != nil {
			return nil, fmt.Errorf("making the %s image, %w", k, err)
		}
	}
	return out, nil
}
