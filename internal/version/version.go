// Package version names the i2kit build.
package version

// Version is i2kit's version, set at link time with -ldflags "-X github.com/i2kit/i2kit/internal/version.Version=...".
var Version = "v0.1.0-dev"

// KubeletVersion is the Kubernetes version whose kubelet API i2kit nodes implement and report.
const KubeletVersion = "v1.37.2"
