package vmrunner

import (
	"slices"
	"strings"
	"testing"
)

func TestBuildArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    machine
		want string
	}{
		{
			name: "uefi, two volumes, network, TCG",
			m: machine{Firmware: "/fw/OVMF.fd", MemoryMiB: 256, CPUs: 1, PIDFile: "/s/i-1/qemu.pid", TAP: "ec2tabc", MAC: "02:00:00:00:00:01",
				Disks: []nvmeDisk{{Path: "/s/i-1/vol0.img", Serial: "vol0123456789abcdef0"}, {Path: "/s/i-1/vol1.img", Serial: "vol1"}}},
			want: "-M q35 -accel tcg -cpu max -m 256M -smp 1 -nodefaults -no-user-config -nographic -no-reboot -serial stdio " +
				"-bios /fw/OVMF.fd " +
				"-drive id=vol0,file=/s/i-1/vol0.img,format=raw,if=none,cache=unsafe,discard=unmap -device nvme,serial=vol0123456789abcdef0,drive=vol0,bootindex=0 " +
				"-drive id=vol1,file=/s/i-1/vol1.img,format=raw,if=none,cache=unsafe,discard=unmap -device nvme,serial=vol1,drive=vol1,bootindex=1 " +
				"-netdev tap,id=net0,ifname=ec2tabc,script=no,downscript=no -device virtio-net-pci,netdev=net0,romfile=,mac=02:00:00:00:00:01 " +
				"-pidfile /s/i-1/qemu.pid",
		},
		{
			name: "legacy BIOS (SeaBIOS), KVM, no network",
			m:    machine{MemoryMiB: 512, CPUs: 2, KVM: true, Disks: []nvmeDisk{{Path: "/d.img", Serial: "vol2"}}},
			want: "-M q35 -accel kvm -cpu host -m 512M -smp 2 -nodefaults -no-user-config -nographic -no-reboot -serial stdio " +
				"-drive id=vol0,file=/d.img,format=raw,if=none,cache=unsafe,discard=unmap -device nvme,serial=vol2,drive=vol0,bootindex=0",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(buildArgs(tc.m), " "); got != tc.want {
				t.Errorf("buildArgs:\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// A path with a comma stays one value: it cannot add a drive option (file=, or a second file).
func TestBuildArgsEscapesCommas(t *testing.T) {
	args := buildArgs(machine{MemoryMiB: 256, CPUs: 1, Disks: []nvmeDisk{{Path: "/x/a,file=/etc/shadow", Serial: "vol1"}}})
	i := slices.Index(args, "-drive")
	if i < 0 || args[i+1] != "id=vol0,file=/x/a,,file=/etc/shadow,format=raw,if=none,cache=unsafe,discard=unmap" {
		t.Errorf("drive option %q", args[i+1])
	}
}

func TestNames(t *testing.T) {
	for _, n := range []string{bridgeName("i2kec2", "10.0.1.0/24"), bridgeName("12345678", "10.0.2.0/24"), tapName("i-0123456789abcdef0")} {
		if len(n) > 15 {
			t.Errorf("interface name %q is longer than IFNAMSIZ-1", n)
		}
	}
	if bridgeName("p", "10.0.1.0/24") == bridgeName("p", "10.0.2.0/24") {
		t.Error("two subnets share a bridge name")
	}
	s := volumeSerial("i-0123456789abcdef0", "/dev/xvda")
	if len(s) != 20 || !strings.HasPrefix(s, "vol") || s == volumeSerial("i-0123456789abcdef0", "/dev/xvdb") {
		t.Errorf("volume serial %q: want vol and 17 hex digits, distinct per device", s)
	}
	mac := macFor("i-0123456789abcdef0")
	if mac[0]&0x02 == 0 || mac[0]&0x01 != 0 || mac.String() == macFor("i-1").String() {
		t.Errorf("MAC %s is not a stable locally administered unicast address of the instance", mac)
	}
}
