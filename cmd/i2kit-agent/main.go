// Command i2kit-agent is PID 1 of every pod VM (static, no cgo). See package agent.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/i2kit/i2kit/agent"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == agent.SupervisorArg {
		err := agent.Supervise()
		fmt.Fprintf(os.Stderr, "i2kit-agent: %v\n", err)
		os.Exit(127)
	}
	if len(os.Args) > 1 && os.Args[1] == agent.PauseArg {
		agent.Pause() // never returns
	}
	// PID 1 must outlive the host side of its console going away (a node restart): without O_NOCTTY the console
	// becomes the agent's controlling terminal, whose hangup sends SIGHUP, and Go exits on SIGHUP by default;
	// init exiting panics the guest and ends the VM.
	signal.Ignore(syscall.SIGHUP)
	console, err := os.OpenFile("/dev/console", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		console = os.Stdout
	}
	if err := agent.Init(console); err != nil {
		fmt.Fprintf(console, "i2kit-agent: %v\n", err)
		time.Sleep(time.Second) // let the console drain before the kernel panics on init's exit
		syscall.Sync()
		syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF) //nolint:errcheck
		os.Exit(1)
	}
}
