// Package e2e tests i2kit against a real control plane, inside a network namespace of its own.
package e2e

import (
	"testing"

	"github.com/i2kit/i2kit/test/harness"
)

var env *harness.Env

func TestMain(m *testing.M) { harness.Main(m, 26443, &env) }
