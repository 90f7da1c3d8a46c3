package proc

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAliveAndExe(t *testing.T) {
	if !Alive(os.Getpid()) {
		t.Error("this process is not alive")
	}
	if Alive(1<<30) || Alive(0) {
		t.Error("a pid beyond pid_max, or 0, is alive")
	}
	exe, _ := os.Executable()
	if got := Exe(os.Getpid()); got != filepath.Base(exe) {
		t.Errorf("Exe = %q, want %q", got, filepath.Base(exe))
	}
	if Exe(1<<30) != "" {
		t.Error("a missing process has an executable")
	}
}
