package vmimage

import (
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// cpioEntry is one file of an initramfs.
type cpioEntry struct {
	Path string // without leading slash
	Mode uint32 // type and permission bits, as in stat(2)
	Data []byte // file contents or symlink target
	Rdev [2]uint32
}

const (
	cpioDir  = 0o040000
	cpioReg  = 0o100000
	cpioChar = 0o020000
)

// writeInitramfs writes entries as a newc cpio archive, gzip-compressed when gz, with parent directories added,
// sorted by path and with zero timestamps so that equal inputs give equal bytes. It always provides /dev/console
// so that init has a console before devtmpfs is mounted.
func writeInitramfs(w io.Writer, entries []cpioEntry, gz bool) error {
	all := map[string]cpioEntry{"dev": {Path: "dev", Mode: cpioDir | 0o755},
		"dev/console": {Path: "dev/console", Mode: cpioChar | 0o600, Rdev: [2]uint32{5, 1}}}
	for _, e := range entries {
		e.Path = strings.TrimPrefix(path.Clean("/"+e.Path), "/")
		all[e.Path] = e
		for d := path.Dir(e.Path); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = cpioEntry{Path: d, Mode: cpioDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	out, closer := w, io.Closer(io.NopCloser(nil))
	if gz {
		zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
		if err != nil {
			return err
		}
		out, closer = zw, zw
	}
	ino := uint32(1)
	for _, n := range names {
		if err := writeCpioRecord(out, all[n], ino); err != nil {
			return err
		}
		ino++
	}
	if err := writeCpioRecord(out, cpioEntry{Path: "TRAILER!!!"}, 0); err != nil {
		return err
	}
	return closer.Close()
}

func writeCpioRecord(w io.Writer, e cpioEntry, ino uint32) error {
	name := e.Path + "\x00"
	nlink := 1
	if e.Mode&0o170000 == cpioDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0, e.Rdev[0], e.Rdev[1], len(name), 0)
	if _, err := io.WriteString(w, hdr+name+pad(len(hdr)+len(name))); err != nil {
		return err
	}
	if _, err := w.Write(e.Data); err != nil {
		return err
	}
	_, err := io.WriteString(w, pad(len(e.Data)))
	return err
}

func pad(n int) string { return strings.Repeat("\x00", (4-n%4)%4) }
