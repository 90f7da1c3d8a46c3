package agent

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/i2kit/i2kit/agent/crilog"
)

// TestPrepareTerminationLog: the file a container writes its termination message to is emptied for each run and
// writable by any user whatever the umask, as a kubelet makes it: a container running as uid 10000 must be able to
// write it.
func TestPrepareTerminationLog(t *testing.T) {
	old := syscall.Umask(0o022) // the usual umask, which a plain create with 0666 turns into 0644
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "termination-log")
	for run := range 2 {
		if err := prepareTerminationLog(path); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o666 || fi.Size() != 0 {
			t.Errorf("run %d: the termination log is %v with %d bytes, want -rw-rw-rw- and empty", run, fi.Mode(), fi.Size())
		}
		if err := os.WriteFile(path, []byte("DONE"), 0); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeLogs returns a container log directory whose one run wrote out on stdout, then ended.
func fakeLogs(t *testing.T, out string) *crilog.Dir {
	t.Helper()
	d, err := crilog.Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	run, err := d.NewRun(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := run.Stream("stdout").Write([]byte(out)); err != nil {
		t.Fatal(err)
	}
	if err := run.Close(); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestReadTerminationMessage checks the termination message against what a kubelet reports, which the node
// conformance specs compare for equality: the file's content as written (its last 4096 bytes), else with
// FallbackToLogsOnError and a failure the log's end as written (no newline added to `echo -n DONE`), bounded to
// the last 2048 bytes of the last 80 lines.
func TestReadTerminationMessage(t *testing.T) {
	var manyLines strings.Builder
	for i := range 100 {
		manyLines.WriteString(strings.Repeat("x", 39) + string(rune('a'+i%26)) + "\n") // 41 bytes a line
	}
	var shortLines strings.Builder
	for i := range 100 {
		shortLines.WriteString(strings.Repeat("y", 9) + string(rune('a'+i%26)) + "\n") // 11 bytes a line
	}
	long := bytes.Repeat([]byte("0123456789"), 500) // 5000 bytes
	for _, tc := range []struct {
		name     string
		file     []byte // nil: no file
		fallback bool
		log      string
		want     string
	}{
		{"file", []byte("DONE"), false, "", "DONE"},
		{"file kept as written", []byte("disk full\n"), false, "", "disk full\n"},
		{"file preferred over the log", []byte("OK"), true, "DONE\n", "OK"},
		{"empty file, no fallback", []byte{}, false, "DONE", ""},
		{"no file", nil, false, "DONE", ""},
		{"fallback: the log as written", []byte{}, true, "DONE", "DONE"},
		{"fallback without a file", nil, true, "oops: no config\n", "oops: no config\n"},
		{"fallback: the last 80 lines", []byte{}, true, shortLines.String(), shortLines.String()[20*11:]},
		{"fallback: the last 2048 bytes", []byte{}, true, manyLines.String(), manyLines.String()[100*41-2048:]},
		{"the file's last 4096 bytes", long, false, "", string(long[len(long)-4096:])},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "termination-log")
			if tc.file != nil {
				if err := os.WriteFile(path, tc.file, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			if got := readTerminationMessage(path, tc.fallback, fakeLogs(t, tc.log)); got != tc.want {
				t.Errorf("message %.120q, want %.120q", got, tc.want)
			}
		})
	}
	if got := readTerminationMessage(filepath.Join(t.TempDir(), "none"), true, nil); got != "" {
		t.Errorf("no file and no log: %q", got)
	}
}

func TestLastBytes(t *testing.T) {
	w := &lastBytes{max: 5}
	for _, p := range []string{"ab", "cd", "efg", "", "0123456789", "x"} {
		w.Write([]byte(p)) //nolint:errcheck
	}
	if got := string(w.bytes()); got != "6789x" {
		t.Errorf("last 5 bytes %q, want 6789x", got)
	}
}
