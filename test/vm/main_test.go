package vm

import (
	"testing"

	"github.com/i2kit/i2kit/test/harness"
)

// TestMain runs the package in a network namespace of its own: the backend tests make a bridge and TAPs.
func TestMain(m *testing.M) { harness.NetnsMain(m) }
