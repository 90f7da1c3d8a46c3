package main

import (
	"fmt"
	"sort"
	"strings"
)

// upstreamRegistries are the registries of k8s.io/kubernetes/test/utils/image (manifest.go, initRegistry) at the
// version the suite is built from, keyed by their KUBE_TEST_REPO_LIST field.
var upstreamRegistries = map[string]string{
	"promoterE2eRegistry":      "registry.k8s.io/e2e-test-images",
	"buildImageRegistry":       "registry.k8s.io/build-image",
	"invalidRegistry":          "invalid.registry.k8s.io/invalid",
	"gcEtcdRegistry":           "registry.k8s.io",
	"gcRegistry":               "registry.k8s.io",
	"sigStorageRegistry":       "registry.k8s.io/sig-storage",
	"privateRegistry":          "gcr.io/k8s-authenticated-test",
	"dockerLibraryRegistry":    "docker.io/library",
	"cloudProviderGcpRegistry": "registry.k8s.io/cloud-provider-gcp",
}

// keptRegistries stay upstream's: the specs that use them expect a pull to fail (invalid) or need credentials for
// a registry we cannot stand in for (private).
var keptRegistries = map[string]bool{"invalidRegistry": true, "privateRegistry": true}

// kind is what a stand-in image is made of.
type kind string

const (
	kindAgnhost    kind = "agnhost"    // the agnhost binary built from the suite's version, on busybox
	kindBusybox    kind = "busybox"    // a static busybox with every applet linked in /bin
	kindNginx      kind = "nginx"      // busybox httpd serving a page on port 80
	kindNonRoot    kind = "nonroot"    // busybox whose image user is 1234
	kindNoNewPrivs kind = "nonewprivs" // busybox with the setuid nnp binary, which prints its effective uid
	kindPause      kind = "pause"      // agnhost pause: sleeps until SIGTERM or SIGINT
	kindKitten     kind = "kitten"     // upstream's kitten files the ImageVolume spec reads: /data.json, /etc/os-release
)

// standIn is one image the node specs pull, as manifest.go names it (registry field, name, tag), and what we push
// in its place.
type standIn struct {
	ID       string // manifest.go's ImageID
	Registry string // the KUBE_TEST_REPO_LIST field of its registry
	Name     string
	Tag      string
	Kind     kind
}

// standIns are the images test/e2e/common/node and the framework code it calls reference (grep imageutils.),
// except those on kept registries. Kitten is the ImageVolume spec's volume image (a conformance spec since v1.36).
// NginxNew is not referenced by the node specs but costs nothing: it shares the nginx stand-in.
var standIns = []standIn{
	{"AgnhostPrev", "promoterE2eRegistry", "agnhost", "2.55", kindAgnhost},
	{"Agnhost", "promoterE2eRegistry", "agnhost", "2.66.1", kindAgnhost},
	{"BusyBox", "promoterE2eRegistry", "busybox", "1.37.0-2", kindBusybox},
	// The hostnameOverride specs run `sh -c 'echo $(hostname)";"$(hostname -f)";"'` in it.
	{"GlibcDnsTesting", "promoterE2eRegistry", "glibc-dns-testing", "2.1.1", kindBusybox},
	{"Nginx", "promoterE2eRegistry", "nginx", "1.27.0-2", kindNginx},
	{"NginxNew", "promoterE2eRegistry", "nginx", "1.28.0-2", kindNginx},
	{"NonRoot", "promoterE2eRegistry", "nonroot", "1.5", kindNonRoot},
	{"Nonewprivs", "promoterE2eRegistry", "nonewprivs", "1.4", kindNoNewPrivs},
	{"Pause", "gcRegistry", "pause", "3.10.2", kindPause},
	{"Kitten", "promoterE2eRegistry", "kitten", "1.8", kindKitten},
}

// repoList maps every KUBE_TEST_REPO_LIST field to its registry under host (host:port), which mirrors upstream's
// repository paths: registry.k8s.io/e2e-test-images becomes host/e2e-test-images, docker.io/library
// host/library. Kept registries keep upstream's value.
func repoList(host string) (map[string]string, error) {
	if host == "" || strings.ContainsAny(host, "/ \t\n\"'") {
		return nil, fmt.Errorf("registry %q: want host:port", host)
	}
	out := make(map[string]string, len(upstreamRegistries))
	for field, up := range upstreamRegistries {
		if keptRegistries[field] {
			out[field] = up
			continue
		}
		_, path, _ := strings.Cut(up, "/") // the first element is the registry host
		if path == "" {
			out[field] = host
		} else {
			out[field] = host + "/" + path
		}
	}
	return out, nil
}

// renderRepoList renders a repo list as the YAML file KUBE_TEST_REPO_LIST names, fields in a stable order.
func renderRepoList(list map[string]string) []byte {
	fields := make([]string, 0, len(list))
	for f := range list {
		fields = append(fields, f)
	}
	sort.Strings(fields)
	var b strings.Builder
	b.WriteString("# KUBE_TEST_REPO_LIST for the e2e suite: written by hack/conformance/images\n")
	for _, f := range fields {
		fmt.Fprintf(&b, "%s: %q\n", f, list[f])
	}
	return []byte(b.String())
}

// ref is the reference the suite pulls for s under a repo list, as manifest.go builds it (registry/name:tag).
func (s standIn) ref(list map[string]string) string {
	return list[s.Registry] + "/" + s.Name + ":" + s.Tag
}
