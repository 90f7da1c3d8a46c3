package vmrunner

import (
	"fmt"
	"strconv"
	"strings"
)

// machine is the plain-data description of one instance's QEMU command line.
type machine struct {
	// Firmware is the -bios file: OVMF for a UEFI image; "" keeps QEMU's SeaBIOS (legacy-bios images).
	Firmware  string
	MemoryMiB int64
	CPUs      int
	KVM       bool
	// Disks are the instance's EBS volumes, the root volume first (it gets the first boot index).
	Disks []nvmeDisk
	// TAP and MAC attach the one NIC; "" gives the instance no network.
	TAP, MAC string
	// PIDFile is where QEMU writes its process ID; "" writes none.
	PIDFile string
}

// nvmeDisk is one volume: a raw file attached as an NVMe controller with one namespace, as Nitro attaches EBS.
type nvmeDisk struct {
	Path string
	// Serial is the controller's serial number: the volume ID without its dash ("vol0123456789abcdef0"), which is
	// how an EC2 guest tells its volumes apart (/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol...).
	Serial string
}

// buildArgs renders the QEMU arguments for m (without the binary). It is a pure function: table-tested.
//
// The machine is q35 (PCIe, as Nitro) with no default devices. The serial console is QEMU's stdio: the runner
// copies it into the instance's console, which GetConsoleOutput serves. The NIC is virtio-net-pci rather than
// EC2's ENA, which QEMU does not emulate (the pod-VM kernel has both drivers built in); its option ROM is off: the
// firmware boots the root volume, never the network.
func buildArgs(m machine) []string {
	accel, cpu := "tcg", "max"
	if m.KVM {
		accel, cpu = "kvm", "host"
	}
	args := []string{
		"-M", "q35", "-accel", accel, "-cpu", cpu,
		"-m", strconv.FormatInt(m.MemoryMiB, 10) + "M", "-smp", strconv.Itoa(m.CPUs),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-serial", "stdio",
	}
	if m.Firmware != "" {
		args = append(args, "-bios", m.Firmware)
	}
	for i, d := range m.Disks {
		id := fmt.Sprintf("vol%d", i)
		args = append(args,
			"-drive", fmt.Sprintf("id=%s,file=%s,format=raw,if=none,cache=unsafe,discard=unmap", id, optEscape(d.Path)),
			"-device", fmt.Sprintf("nvme,serial=%s,drive=%s,bootindex=%d", optEscape(d.Serial), id, i))
	}
	if m.TAP != "" {
		args = append(args,
			"-netdev", fmt.Sprintf("tap,id=net0,ifname=%s,script=no,downscript=no", optEscape(m.TAP)),
			"-device", "virtio-net-pci,netdev=net0,romfile=,mac="+optEscape(m.MAC))
	}
	if m.PIDFile != "" {
		args = append(args, "-pidfile", m.PIDFile)
	}
	return args
}

// optEscape escapes a value inside a QEMU option string: QEMU reads ",," as one literal comma, so a value with a
// comma stays one value instead of adding options.
func optEscape(v string) string { return strings.ReplaceAll(v, ",", ",,") }
