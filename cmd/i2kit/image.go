package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/i2kit/i2kit/node"
	"github.com/i2kit/i2kit/vmimage"
)

type imageFlags struct {
	node.ImagesConfig
	bzImage string
}

func (f *imageFlags) openStore() (*vmimage.Store, error) { return openStore(f.ImagesConfig) }

func (f *imageFlags) builder(progress vmimage.Progress) (*vmimage.Builder, error) {
	b, err := newBuilder(f.ImagesConfig, progress)
	if err != nil {
		return nil, err
	}
	if f.bzImage != "" {
		b.BzImage = f.bzImage
	}
	b.Source.AllowLocalLayouts = true // the user names their own files; pods never do
	return b, nil
}

func imageCmd() *cobra.Command {
	f := &imageFlags{}
	cmd := &cobra.Command{Use: "image", Short: "Build, list, inspect and remove pod VM images"}
	pf := cmd.PersistentFlags()
	def := node.DefaultConfig().Images
	pf.StringVar(&f.Store, "store", def.Store, "image store directory")
	pf.IntVar(&f.MaxImages, "max-images", def.MaxImages, "images kept in the store (least recently used go first; images in use never)")
	pf.StringVar(&f.MaxBytes, "max-bytes", def.MaxBytes, "bytes kept in the store")

	var specFile, podFile, format, outDir string
	build := &cobra.Command{
		Use:   "build (-f spec.yml | --pod pod.yaml)",
		Short: "Build a pod VM image from a LinuxKit-shaped spec or a Pod manifest (cached by content)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := readSpec(specFile, podFile)
			if err != nil {
				return err
			}
			prog := newProgress(os.Stderr)
			b, err := f.builder(prog)
			if err != nil {
				return err
			}
			t0 := time.Now()
			img, err := b.Ensure(cmd.Context(), spec, format)
			prog.finish()
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "image %s (%s, %s) in %s\n", img.Key[:12], img.Format, human(img.Size), time.Since(t0).Round(time.Millisecond))
			if outDir != "" {
				if err := export(img, outDir); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "exported to %s\n", outDir)
			}
			fmt.Println(img.Key)
			return nil
		},
	}
	build.Flags().StringVarP(&specFile, "file", "f", "", "spec file (YAML)")
	build.Flags().StringVar(&podFile, "pod", "", "Pod manifest (YAML): its containers become the image's")
	build.Flags().StringVar(&format, "format", "direct", "output format: "+strings.Join(vmimage.FormatNames(), ", "))
	build.Flags().StringVarP(&outDir, "output", "o", "", "also copy the image's files into this directory")
	build.Flags().StringVar(&f.Kernel, "kernel", "", "uncompressed kernel (vmlinux) for direct images (default: the one `make kernel` built)")
	build.Flags().StringVar(&f.bzImage, "bzimage", "", "compressed kernel (bzImage) for raw images (default: the one `make kernel` built)")
	build.Flags().StringVar(&f.Agent, "agent", "", "i2kit-agent binary (default: beside this binary)")
	build.Flags().StringSliceVar(&f.InsecureRegistries, "insecure-registry", nil, "registry hosts served over plain HTTP")
	build.Flags().StringSliceVar(&f.Mirrors, "registry-mirror", nil, "registry=mirror, tried before the registry (repeatable)")
	build.Flags().StringSliceVar(&f.DockerConfigs, "docker-config", nil, "docker config.json files with registry credentials (default: ~/.docker/config.json)")

	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the images in the store, most recently used last",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			st, err := f.openStore()
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "KEY\tFORMAT\tSIZE\tCREATED\tCONTAINERS")
			for _, img := range st.List() {
				var cs []string
				for _, c := range append(append([]vmimage.Container(nil), img.Spec.Onboot...), img.Spec.Services...) {
					cs = append(cs, c.Name+"="+c.Image)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", img.Key[:12], img.Format, human(img.Size),
					img.Created.Local().Format(time.DateTime), strings.Join(cs, " "))
			}
			return w.Flush()
		},
	}
	inspect := &cobra.Command{
		Use:   "inspect KEY",
		Short: "Print an image's manifest (JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			st, err := f.openStore()
			if err != nil {
				return err
			}
			img, err := st.Find(args[0])
			if err != nil {
				return err
			}
			b, _ := json.MarshalIndent(img, "", "  ")
			fmt.Println(string(b))
			return nil
		},
	}
	rm := &cobra.Command{
		Use:   "rm KEY...",
		Short: "Remove images (never one a VM uses)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			st, err := f.openStore()
			if err != nil {
				return err
			}
			for _, a := range args {
				img, err := st.Find(a)
				if err != nil {
					return err
				}
				if err := st.Remove(img.Key); err != nil {
					return err
				}
				fmt.Println("removed", img.Key)
			}
			return nil
		},
	}
	cmd.AddCommand(build, ls, inspect, rm)
	return cmd
}

func readSpec(specFile, podFile string) (*vmimage.Spec, error) {
	switch {
	case specFile != "" && podFile != "":
		return nil, fmt.Errorf("give -f or --pod, not both")
	case specFile != "":
		r, err := os.Open(specFile)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		s, err := vmimage.Decode(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", specFile, err)
		}
		return s, nil
	case podFile != "":
		b, err := os.ReadFile(podFile)
		if err != nil {
			return nil, err
		}
		var pod corev1.Pod
		if err := yaml.UnmarshalStrict(b, &pod); err != nil {
			return nil, fmt.Errorf("%s: %w", podFile, err)
		}
		if pod.Kind != "Pod" {
			return nil, fmt.Errorf("%s: kind %q, want Pod", podFile, pod.Kind)
		}
		return vmimage.FromPod(&pod), nil
	default:
		return nil, fmt.Errorf("give a spec (-f spec.yml) or a Pod (--pod pod.yaml)")
	}
}

// export copies (hard-links where it can) an image's files into dir.
func export(img *vmimage.Image, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	files := map[string]string{img.Kernel: "vmlinux", img.Initramfs: filepath.Base(img.Initramfs)}
	for i, d := range img.Disks {
		files[d.Path] = fmt.Sprintf("disk%d.erofs", i)
	}
	if img.Raw != "" {
		files = map[string]string{img.Raw: "disk.raw"}
	}
	for src, name := range files {
		dst := filepath.Join(dir, name)
		os.Remove(dst)
		if err := os.Link(src, dst); err != nil {
			b, err := os.ReadFile(src)
			if err != nil {
				return err
			}
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				return err
			}
		}
	}
	b, _ := json.MarshalIndent(img, "", "  ")
	return os.WriteFile(filepath.Join(dir, "image.json"), b, 0o644)
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
