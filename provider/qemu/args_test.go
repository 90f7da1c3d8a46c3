package qemu

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestArgsGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		vm   VM
	}{
		{"tcg-two-disks", VM{Kernel: "/k/vmlinux", Initramfs: "/i/initramfs.cpio.gz", Cmdline: "console=ttyS0 quiet",
			Disks: []string{"/b/disk-a.erofs", "/b/disk-b.erofs"}, MemoryMiB: 128, CPUs: 1, TSCkHz: 2100000}},
		{"kvm", VM{Kernel: "/k/vmlinux", Initramfs: "/i/initramfs.cpio.gz", Cmdline: "console=ttyS0",
			MemoryMiB: 256, CPUs: 2, KVM: true, TSCkHz: 2100000}},
		{"pod", VM{Kernel: "/k/vmlinux", Initramfs: "/i/initramfs.cpio", Cmdline: "console=ttyS0 i2kit.config=channel",
			Disks: []string{"/b/disk-a.erofs"}, MemoryMiB: 192, CPUs: 1, TSCkHz: 2100000,
			Dir: "/run/i2kit/qemu/uid-1", TAP: "i2k0123456789ab", MAC: "52:54:00:11:22:33"}},
		{"comma-paths", VM{Kernel: "/k/vmlinux", Initramfs: "/i/initramfs.cpio", Cmdline: "console=ttyS0",
			Disks: []string{"/x/a,file=/etc/shadow"}, MemoryMiB: 192, CPUs: 1,
			Dir: "/run/i,path=/tmp/evil", TAP: "i2k,x", MAC: "52:54:00:11:22:33"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(Args(tc.vm), "\n") + "\n"
			p := "testdata/" + tc.name + ".args"
			if *update {
				os.WriteFile(p, []byte(got), 0o644) //nolint:errcheck
			}
			want, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("Args differs from %s (-update to accept):\n%s", p, got)
			}
		})
	}
}

// parseOpts splits a QEMU option string as QEMU does: "," separates key=value pairs, ",," is a literal comma.
func parseOpts(s string) map[string][]string {
	out := map[string][]string{}
	var cur strings.Builder
	flush := func() {
		k, v, _ := strings.Cut(cur.String(), "=")
		out[k] = append(out[k], v)
		cur.Reset()
	}
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			flush()
			continue
		}
		cur.WriteByte(s[i])
	}
	flush()
	return out
}

// TestArgsCommaInjection checks that a comma in a path stays inside its option's value: a configured path such as
// "/x/a,file=/etc/shadow" must not add a second file= (or any other option) to the drive.
func TestArgsCommaInjection(t *testing.T) {
	vm := VM{Kernel: "/k/vmlinux", Initramfs: "/i/initramfs", Disks: []string{"/x/a,file=/etc/shadow,format=qcow2"},
		MemoryMiB: 128, CPUs: 1, Dir: "/run/a,path=/etc/passwd", TAP: "t,ifname=eth0", MAC: "52:54:00:11:22:33"}
	args := Args(vm)
	want := map[string]struct{ key, val string }{
		"-drive":  {"file", vm.Disks[0]},
		"-netdev": {"ifname", vm.TAP},
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(args); i++ {
		opts := parseOpts(args[i+1])
		if w, ok := want[args[i]]; ok {
			seen[args[i]] = true
			if got := opts[w.key]; len(got) != 1 || got[0] != w.val {
				t.Errorf("%s %s: %s=%q, want exactly [%q]", args[i], args[i+1], w.key, got, w.val)
			}
			if len(opts["format"]) > 1 {
				t.Errorf("%s %s: format given twice", args[i], args[i+1])
			}
		}
		if args[i] == "-chardev" {
			if got := opts["path"]; len(got) != 1 || !strings.HasPrefix(got[0], vm.Dir+"/") {
				t.Errorf("-chardev %s: path=%q, want one path under %q", args[i+1], got, vm.Dir)
			}
		}
	}
	if len(seen) != len(want) {
		t.Errorf("saw %v of %v", seen, want)
	}
}
