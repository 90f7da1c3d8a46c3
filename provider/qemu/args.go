// Package qemu runs pod VMs as QEMU microVMs on this machine (`-M microvm`, PVH boot of the uncompressed kernel,
// virtio-mmio devices), with hardware KVM where the host has it and TCG otherwise.
package qemu

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/i2kit/i2kit/agent/protocol"
)

// VM is the plain-data description of one microVM's QEMU command line.
type VM struct {
	Kernel    string   // uncompressed vmlinux (PVH entry)
	Initramfs string   // the agent's initramfs
	Cmdline   string   // kernel command line
	Disks     []string // read-only raw disks, attached as virtio-blk in order
	MemoryMiB int
	CPUs      int
	// KVM selects hardware virtualisation; false means TCG software emulation.
	KVM bool
	// TSCkHz is passed as tsc_early_khz under TCG: microvm's PIT-based TSC calibration fails now and then under
	// TCG and the guest hangs forever; a given frequency avoids it. 0 leaves it out.
	TSCkHz int
	// Dir is the VM's runtime directory: the console's socket, the agent's channel socket and the pid file. "" runs
	// the VM on stdio with no agent channel (tests that boot an image by hand).
	Dir string
	// TAP and MAC attach the VM's one NIC to a host TAP; "" gives the VM no network.
	TAP, MAC string
}

// Args renders the QEMU arguments for vm (without the binary). It is a pure function: golden-tested.
func Args(vm VM) []string {
	accel, cpu := "tcg,tb-size=16", "max" // a 16 MiB translation cache boots as fast as 32 MiB and keeps 16 MiB less resident per VM
	if vm.KVM {
		accel, cpu = "kvm", "host"
	}
	cmdline := vm.Cmdline
	if !vm.KVM && vm.TSCkHz > 0 {
		cmdline += " tsc_early_khz=" + strconv.Itoa(vm.TSCkHz)
	}
	args := []string{
		"-M", "microvm,x-option-roms=off,pcie=off", // isa-serial, RTC and ACPI stay on: console, clock, poweroff
		"-accel", accel, "-cpu", cpu,
		"-m", strconv.Itoa(vm.MemoryMiB) + "M", "-smp", strconv.Itoa(vm.CPUs),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
	}
	if vm.Dir == "" {
		args = append(args, "-serial", "stdio")
	} else {
		// The console is served on a socket that the backend copies into a size-capped, rotated console.log
		// (recordConsole): a guest flooding its console cannot fill the host's /run. Output while no one reads is
		// dropped (wait=off): the console is a debug aid; nothing reads it to control the VM (readiness and
		// power-off go through the agent's protocol).
		args = append(args, "-chardev", "socket,id=console,path="+optEscape(filepath.Join(vm.Dir, "console.sock"))+",server=on,wait=off",
			"-serial", "chardev:console")
	}
	args = append(args,
		"-kernel", vm.Kernel, "-initrd", vm.Initramfs, "-append", strings.TrimSpace(cmdline))
	for i, d := range vm.Disks {
		id := fmt.Sprintf("disk%d", i)
		args = append(args,
			"-drive", fmt.Sprintf("id=%s,file=%s,format=raw,if=none,readonly=on,cache=unsafe", id, optEscape(d)),
			"-device", "virtio-blk-device,drive="+id)
	}
	if vm.Dir != "" {
		args = append(args,
			// the agent's channel (package agent/protocol): a virtio-serial port served on a unix socket
			"-device", "virtio-serial-device,max_ports=2",
			"-chardev", "socket,id=agent,path="+optEscape(filepath.Join(vm.Dir, "agent.sock"))+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name="+protocol.PortName,
			"-pidfile", filepath.Join(vm.Dir, "qemu.pid"))
	}
	if vm.TAP != "" {
		args = append(args,
			"-netdev", fmt.Sprintf("tap,id=net0,ifname=%s,script=no,downscript=no,vhost=off", optEscape(vm.TAP)),
			"-device", "virtio-net-device,netdev=net0,mac="+optEscape(vm.MAC))
	}
	return args
}

// optEscape escapes a value placed inside a QEMU option string (key=value,key=value): QEMU reads ",," as one
// literal comma, so a path with a comma stays one value instead of adding options (a disk path such as
// "/x/a,file=/etc/shadow" must not name a second file). -kernel, -initrd and -append take their whole argument
// as the value; node configuration refuses commas in paths anyway (node.Config.Validate).
func optEscape(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// HostHasKVM reports whether hardware KVM (Intel VT-x or AMD-V) is usable. /dev/kvm alone is not enough: some
// hosts offer a paravirtual KVM (PVM) that only runs specially patched guests.
func HostHasKVM() bool {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false
	}
	for _, m := range []string{"/sys/module/kvm_intel", "/sys/module/kvm_amd"} {
		if _, err := os.Stat(m); err == nil {
			return true
		}
	}
	return false
}

// HostTSCkHz reads the host's TSC frequency in kHz from /proc/cpuinfo ("cpu MHz"); 0 if unknown.
func HostTSCkHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}
