package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/i2kit/i2kit/node"
)

// TestBuilderTakesTheImageBounds: the configuration's images.maxImageBytes and maxLayerBytes bound the builder's
// registry source (a node that sets them gets them, not the builder's 16 GiB default).
func TestBuilderTakesTheImageBounds(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "i2kit-agent")
	if err := os.WriteFile(agent, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	c := node.ImagesConfig{Store: filepath.Join(dir, "store"), MaxImages: 1, MaxBytes: "1Gi",
		Kernel: filepath.Join(dir, "vmlinux"), Agent: agent, MaxImageBytes: "2Gi", MaxLayerBytes: "512Mi"}
	b, err := newBuilder(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Store.Close()
	if b.Source.MaxImageBytes != 2<<30 || b.Source.MaxLayerBytes != 512<<20 {
		t.Errorf("source bounds %d and %d bytes, want 2Gi and 512Mi", b.Source.MaxImageBytes, b.Source.MaxLayerBytes)
	}
	c.MaxLayerBytes = "4Gi"
	if _, err := newBuilder(c, nil); err == nil {
		t.Error("a layer bound above the image's built a builder")
	}
}
