package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// entry is one file of a layer: a regular file (Body), a directory (Dir) or a symlink (Link).
type entry struct {
	Name string
	Mode int64
	Dir  bool
	Link string
	Body []byte
}

// epoch is every entry's modification time, so that a layer's digest depends on its content only and the
// registry (and the node's image store) dedupes a layer shared by several stand-ins.
var epoch = time.Unix(0, 0)

// layer makes an uncompressed-tar layer of entries, in their order, owned by root.
func layer(entries []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Mode: e.Mode, ModTime: epoch}
		switch {
		case e.Dir:
			h.Typeflag, h.Name = tar.TypeDir, strings.TrimSuffix(e.Name, "/")+"/"
		case e.Link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.Link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("writing %s, %w", e.Name, err)
		}
		if _, err := tw.Write(e.Body); err != nil {
			return nil, fmt.Errorf("writing %s, %w", e.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("closing layer, %w", err)
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// passwd and group are the base images' accounts, as Docker's busybox image has them (those the specs may name).
const (
	passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
	group  = "root:x:0:\nnobody:x:65534:\n"
)

// busyboxLayer is a minimal root filesystem with busybox at /bin/busybox and a /bin/<applet> link for every applet.
func busyboxLayer(busybox []byte, applets []string) (v1.Layer, error) {
	es := []entry{}
	for _, d := range []string{"bin", "dev", "etc", "home", "proc", "root", "sys", "usr", "usr/bin", "usr/sbin", "var"} {
		es = append(es, entry{Name: d, Mode: 0o755, Dir: true})
	}
	es = append(es, entry{Name: "tmp", Mode: 0o1777, Dir: true},
		entry{Name: "etc/passwd", Mode: 0o644, Body: []byte(passwd)},
		entry{Name: "etc/group", Mode: 0o644, Body: []byte(group)},
		entry{Name: "bin/busybox", Mode: 0o755, Body: busybox})
	for _, a := range applets {
		if a != "busybox" {
			es = append(es, entry{Name: "bin/" + a, Mode: 0o777, Link: "busybox"})
		}
	}
	return layer(es)
}

// maxAppletList bounds what `busybox --list` may print (about 2 KiB for Debian's 269 applets).
const maxAppletList = 64 << 10

// applets runs `busybox --list` and returns the applet names it prints, each checked to be a plain file name.
func applets(busybox string) ([]string, error) {
	cmd := exec.Command(busybox, "--list")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("listing busybox applets, %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("listing busybox applets, %w", err)
	}
	out, err := parseApplets(io.LimitReader(stdout, maxAppletList+1))
	io.Copy(io.Discard, stdout) //nolint:errcheck // let busybox exit
	if werr := cmd.Wait(); werr != nil && err == nil {
		err = fmt.Errorf("listing busybox applets, %w", werr)
	}
	return out, err
}

// parseApplets reads one applet name a line (at most maxAppletList bytes in all); a name must be a plain file
// name, since it becomes /bin/<name>.
func parseApplets(r io.Reader) ([]string, error) {
	var out []string
	n := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		n += len(sc.Bytes()) + 1
		if n > maxAppletList {
			return nil, fmt.Errorf("busybox --list: more than %d bytes", maxAppletList)
		}
		a := strings.TrimSpace(sc.Text())
		if a == "" {
			continue
		}
		if a == "." || a == ".." || strings.ContainsAny(a, "/\x00") || len(a) > 64 {
			return nil, fmt.Errorf("busybox --list: applet %q is not a file name", a)
		}
		out = append(out, a)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading busybox --list, %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("busybox --list printed no applet")
	}
	return out, nil
}

// image stacks layers into a linux/amd64 image with the given process configuration.
func image(cfg v1.Config, layers ...v1.Layer) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, fmt.Errorf("stacking layers, %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading image config, %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}
