package vmrunner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// copyChunk is the unit in which a snapshot is copied and zero runs are skipped: EBS's own block size.
const copyChunk = 512 << 10

// writeSparse copies the first size bytes of src into a new file at path, leaving chunks that read as zeros
// unwritten (holes) so that a mostly empty volume costs only its data. The file is exactly size bytes long
// whatever src holds past it: a snapshot is read no further than its volume. A src that ends early (io.EOF) leaves
// the rest of the file zero, as an EBS volume larger than its snapshot reads. The file is created, never reused:
// an existing path is an error. It gives up when ctx ends (an instance terminated while pending).
func writeSparse(ctx context.Context, path string, src io.ReaderAt, size int64) (err error) {
	if size <= 0 {
		return fmt.Errorf("writing disk %s, size %d is not positive", path, size)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing disk %s, %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("writing disk %s, %w", path, cerr)
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("writing disk %s, %w", path, err)
	}
	buf := make([]byte, copyChunk)
	zero := make([]byte, copyChunk)
	for off := int64(0); off < size; off += copyChunk {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("writing disk %s, %w", path, err)
		}
		p := buf[:min(copyChunk, size-off)]
		n, rerr := src.ReadAt(p, off)
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return fmt.Errorf("writing disk %s, reading at %d, %w", path, off, rerr)
		}
		if n > 0 && !bytes.Equal(p[:n], zero[:n]) {
			if _, err := f.WriteAt(p[:n], off); err != nil {
				return fmt.Errorf("writing disk %s, %w", path, err)
			}
		}
		if n < len(p) { // the source ended: the rest stays a hole
			break
		}
	}
	return nil
}
