// Package cachedir locates i2kit's build cache: built control planes, kernels, image layers and images.
package cachedir

import (
	"os"
	"path/filepath"
)

// Root is $I2KIT_CACHE, else $XDG_CACHE_HOME/i2kit, else ~/.cache/i2kit.
func Root() string {
	if d := os.Getenv("I2KIT_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "i2kit")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "i2kit")
	}
	return filepath.Join(os.TempDir(), "i2kit-cache")
}
