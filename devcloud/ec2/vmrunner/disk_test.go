package vmrunner

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// pattern is n bytes of data in chunks 0 and 3 and zeros elsewhere.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range copyChunk {
		b[i] = byte(i%251 + 1)
		if 3*copyChunk+i < n {
			b[3*copyChunk+i] = byte(i%241 + 1)
		}
	}
	return b
}

func TestWriteSparse(t *testing.T) {
	src := pattern(8 * copyChunk)
	for _, tc := range []struct {
		name string
		src  []byte
		size int64
	}{
		{"the volume is the snapshot", src, int64(len(src))},
		{"bounded: the source reads past the volume", src, 3*copyChunk + 1000},
		{"the volume is larger than the snapshot", src[:4*copyChunk], 16 * copyChunk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "vol.img")
			if err := writeSparse(context.Background(), p, bytes.NewReader(tc.src), tc.size); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, tc.size)
			copy(want, tc.src)
			if !bytes.Equal(got, want) {
				t.Fatalf("the disk (%d bytes) is not the source's first %d bytes", len(got), tc.size)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(p, &st); err != nil {
				t.Fatal(err)
			}
			// Two data chunks at most are written; the zeros are holes.
			if used := st.Blocks * 512; used > 2*copyChunk+64<<10 {
				t.Errorf("the disk uses %d bytes, want at most the two data chunks (%d)", used, 2*copyChunk)
			}
		})
	}
}

func TestWriteSparseRefuses(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "exists.img")
	if err := os.WriteFile(existing, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeSparse(context.Background(), existing, zeroReader{}, copyChunk); err == nil {
		t.Error("an existing file was overwritten")
	}
	if err := writeSparse(context.Background(), filepath.Join(dir, "empty.img"), zeroReader{}, 0); err == nil {
		t.Error("a volume of size 0 was written")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := filepath.Join(dir, "cancelled.img")
	if err := writeSparse(ctx, p, zeroReader{}, copyChunk); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled copy returned %v", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed copy left its file: %v", err)
	}
	if err := writeSparse(context.Background(), filepath.Join(dir, "bad.img"), failingReader{}, copyChunk); err == nil {
		t.Error("a read error was ignored")
	}
}

type failingReader struct{}

func (failingReader) ReadAt([]byte, int64) (int, error) { return 0, errors.New("snapshot deleted") }
