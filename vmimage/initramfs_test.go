package vmimage

import (
	"bytes"
	"compress/gzip"
	"io"
	"strconv"
	"testing"
)

// readNewc parses a newc cpio archive into path → (mode, data).
func readNewc(t *testing.T, b []byte) (names []string, modes map[string]uint32, data map[string]string) {
	t.Helper()
	modes, data = map[string]uint32{}, map[string]string{}
	field := func(h []byte, i int) int {
		v, err := strconv.ParseUint(string(h[6+8*i:6+8*i+8]), 16, 32)
		if err != nil {
			t.Fatal(err)
		}
		return int(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; ; {
		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		mode, size, nameLen := field(h, 1), field(h, 6), field(h, 11)
		name := string(b[off+110 : off+110+nameLen-1])
		off = align(off + 110 + nameLen)
		if name == "TRAILER!!!" {
			return
		}
		names = append(names, name)
		modes[name] = uint32(mode)
		data[name] = string(b[off : off+size])
		off = align(off + size)
	}
}

func TestInitramfsIsSortedNewcWithParentsAndConsole(t *testing.T) {
	var buf bytes.Buffer
	err := writeInitramfs(&buf, []cpioEntry{
		{Path: "init", Mode: cpioReg | 0o755, Data: []byte("#!agent")},
		{Path: "/etc/i2kit/image.json", Mode: cpioReg | 0o644, Data: []byte("{}")},
	}, true)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	// Uncompressed (direct boot) is the same archive.
	var plain bytes.Buffer
	writeInitramfs(&plain, []cpioEntry{{Path: "init", Mode: cpioReg | 0o755, Data: []byte("#!agent")}, //nolint:errcheck
		{Path: "/etc/i2kit/image.json", Mode: cpioReg | 0o644, Data: []byte("{}")}}, false)
	if !bytes.Equal(plain.Bytes(), raw) {
		t.Error("the uncompressed archive differs from the compressed one's content")
	}
	names, modes, data := readNewc(t, raw)
	want := []string{"dev", "dev/console", "etc", "etc/i2kit", "etc/i2kit/image.json", "init"}
	if len(names) != len(want) {
		t.Fatalf("entries %v, want %v", names, want)
	}
	for i := range want {
		if names[i] != want[i] {
			t.Fatalf("entries %v, want %v", names, want)
		}
	}
	if modes["dev/console"]&0o170000 != cpioChar || modes["etc"]&0o170000 != cpioDir || modes["init"] != cpioReg|0o755 {
		t.Errorf("modes %v", modes)
	}
	if data["init"] != "#!agent" || data["etc/i2kit/image.json"] != "{}" {
		t.Errorf("data %q", data)
	}
	// Equal inputs give equal bytes: images are content-addressed.
	var again bytes.Buffer
	writeInitramfs(&again, []cpioEntry{{Path: "/etc/i2kit/image.json", Mode: cpioReg | 0o644, Data: []byte("{}")}, //nolint:errcheck
		{Path: "init", Mode: cpioReg | 0o755, Data: []byte("#!agent")}}, true)
	var first bytes.Buffer
	writeInitramfs(&first, []cpioEntry{{Path: "init", Mode: cpioReg | 0o755, Data: []byte("#!agent")}, //nolint:errcheck
		{Path: "/etc/i2kit/image.json", Mode: cpioReg | 0o644, Data: []byte("{}")}}, true)
	if !bytes.Equal(first.Bytes(), again.Bytes()) {
		t.Error("initramfs bytes depend on input order")
	}
}
