package qemu

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestRotatingLogKeepsTheTail(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "console.log")
	l, err := openRotatingLog(p, consoleLogMax)
	if err != nil {
		t.Fatal(err)
	}
	// 50 MiB in odd-sized writes, each line numbered so that the tail can be checked.
	const total = 50 << 20
	line := bytes.Repeat([]byte("x"), 4093)
	var last []byte
	for n := 0; n < total; n += len(line) {
		line[0] = byte('a' + n/len(line)%26)
		if _, err := l.Write(line); err != nil {
			t.Fatal(err)
		}
		last = append(last[:0], line...)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	cur, _ := os.ReadFile(p)
	old, _ := os.ReadFile(p + ".1")
	kept := len(cur) + len(old)
	t.Logf("wrote %d bytes through the console log: kept %d (console.log %d, console.log.1 %d)", total, kept, len(cur), len(old))
	if len(old) != consoleLogMax || len(cur) > consoleLogMax || kept > 2*consoleLogMax {
		t.Errorf("kept %d + %d bytes, want at most %d each", len(cur), len(old), consoleLogMax)
	}
	if all := append(old, cur...); !bytes.HasSuffix(all, last) {
		t.Error("the last write is not at the end of the log")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("%d files in the directory, want console.log and console.log.1", len(ents))
	}
}

func TestRotatingLogAppendsAfterRestart(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	for _, s := range []string{"abc", "defg"} {
		l, err := openRotatingLog(p, 5)
		if err != nil {
			t.Fatal(err)
		}
		l.Write([]byte(s)) //nolint:errcheck
		l.Close()
	}
	cur, _ := os.ReadFile(p)
	old, _ := os.ReadFile(p + ".1")
	if string(old) != "abcde" || string(cur) != "fg" {
		t.Errorf("console.log.1 %q, console.log %q; want abcde and fg", old, cur)
	}
}
