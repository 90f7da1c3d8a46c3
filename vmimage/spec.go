// Package vmimage builds pod VM images in LinuxKit's shape — a kernel, i2kit's agent as init, and one read-only
// filesystem image per container image — from a strictly decoded spec, content-addressed and cached.
package vmimage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Spec is a pod VM image's definition, LinuxKit-shaped. It holds code only: per-pod runtime data (env values,
// Secret and ConfigMap contents, tokens) is sent to the agent after boot and never appears here.
type Spec struct {
	Kernel   Kernel      `yaml:"kernel" json:"kernel"`
	Init     []string    `yaml:"init,omitempty" json:"init,omitempty"`
	Onboot   []Container `yaml:"onboot,omitempty" json:"onboot,omitempty"`
	Services []Container `yaml:"services,omitempty" json:"services,omitempty"`
	Files    []File      `yaml:"files,omitempty" json:"files,omitempty"`
	// Volumes are image volumes: each image's filesystem becomes one more read-only disk of the VM, which the
	// pod's containers mount by the volume's name.
	Volumes []Volume `yaml:"volumes,omitempty" json:"volumes,omitempty"`
}

// Volume is an image volume: the image's filesystem, read-only, named as the pod's volume is.
type Volume struct {
	Name  string `yaml:"name" json:"name"`
	Image string `yaml:"image" json:"image"`
}

// Kernel selects the VM kernel and its command line.
type Kernel struct {
	// Image is "i2kit/podvm" (the kernel `make kernel` builds, the default), a LinuxKit kernel OCI image
	// reference, or "debian:<path of an extracted linux-image package>".
	Image   string `yaml:"image,omitempty" json:"image,omitempty"`
	Cmdline string `yaml:"cmdline,omitempty" json:"cmdline,omitempty"`
}

// Container is a container image the VM runs: onboot ones in order to completion, services for the VM's life.
type Container struct {
	Name       string   `yaml:"name" json:"name"`
	Image      string   `yaml:"image" json:"image"`
	Command    []string `yaml:"command,omitempty" json:"command,omitempty"`
	Args       []string `yaml:"args,omitempty" json:"args,omitempty"`
	Env        []string `yaml:"env,omitempty" json:"env,omitempty"`
	WorkingDir string   `yaml:"workingDir,omitempty" json:"workingDir,omitempty"`
}

// File is a file the image carries in the agent's initramfs.
type File struct {
	Path     string `yaml:"path" json:"path"`
	Contents string `yaml:"contents,omitempty" json:"contents,omitempty"`
	Mode     string `yaml:"mode,omitempty" json:"mode,omitempty"`
}

// DefaultKernel is the kernel `make kernel` builds from vmimage/kernel/podvm.config.
const DefaultKernel = "i2kit/podvm"

// DefaultCmdline is appended to by the backend (addresses, tsc_early_khz) at launch, never baked per pod.
const DefaultCmdline = "console=ttyS0 quiet panic=-1"

// Decode reads a spec strictly: unknown fields, duplicate keys and wrong types are errors naming the line.
func Decode(r io.Reader) (*Spec, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("reading spec, %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var s Spec
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("spec is empty")
		}
		return nil, fmt.Errorf("decoding spec: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("decoding spec: more than one YAML document")
	}
	s.SetDefaults()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// SetDefaults fills the kernel and its command line when they are not given.
func (s *Spec) SetDefaults() {
	if s.Kernel.Image == "" {
		s.Kernel.Image = DefaultKernel
	}
	if s.Kernel.Cmdline == "" {
		s.Kernel.Cmdline = DefaultCmdline
	}
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Validate checks a spec; an error names the offending field by its path.
func (s *Spec) Validate() error {
	if len(s.Services) == 0 && len(s.Onboot) == 0 {
		return errors.New("services: at least one container is required")
	}
	seen := map[string]string{}
	for _, list := range []struct {
		field string
		cs    []Container
	}{{"onboot", s.Onboot}, {"services", s.Services}} {
		for i, c := range list.cs {
			f := fmt.Sprintf("%s[%d]", list.field, i)
			if !nameRE.MatchString(c.Name) {
				return fmt.Errorf("%s.name %q: want a DNS label (lower case letters, digits, '-')", f, c.Name)
			}
			if prev, dup := seen[c.Name]; dup {
				return fmt.Errorf("%s.name %q: already used by %s", f, c.Name, prev)
			}
			seen[c.Name] = f
			if c.Image == "" {
				return fmt.Errorf("%s.image: required", f)
			}
			for j, e := range c.Env {
				if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
					return fmt.Errorf("%s.env[%d] %q: want NAME=value", f, j, e)
				}
			}
			if c.WorkingDir != "" && !path.IsAbs(c.WorkingDir) {
				return fmt.Errorf("%s.workingDir %q: must be absolute", f, c.WorkingDir)
			}
		}
	}
	vols := map[string]bool{}
	for i, v := range s.Volumes {
		f := fmt.Sprintf("volumes[%d]", i)
		if !nameRE.MatchString(v.Name) {
			return fmt.Errorf("%s.name %q: want a DNS label (lower case letters, digits, '-')", f, v.Name)
		}
		if vols[v.Name] {
			return fmt.Errorf("%s.name %q: already used by another volume", f, v.Name)
		}
		vols[v.Name] = true
		if v.Image == "" {
			return fmt.Errorf("%s.image: required", f)
		}
	}
	for i, f := range s.Files {
		p := path.Clean("/" + f.Path)
		if f.Path == "" || p == "/" || strings.Contains(f.Path, "..") {
			return fmt.Errorf("files[%d].path %q: want a path inside the image", i, f.Path)
		}
		if f.Mode != "" {
			if m, err := strconv.ParseUint(f.Mode, 8, 32); err != nil || m > 0o7777 {
				return fmt.Errorf("files[%d].mode %q: want an octal mode such as 0644", i, f.Mode)
			}
		}
	}
	if strings.ContainsAny(s.Kernel.Cmdline, "\n\x00") {
		return errors.New("kernel.cmdline: must be one line")
	}
	return nil
}
