// Package netnstest gives root tests a network namespace of their own to stand for a pod or a remote client: a
// link of the test's namespace is moved into it, and functions run there on a thread that never leaves it.
package netnstest

import (
	"os"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NS is a network namespace made by New; Run runs functions in it.
type NS struct{ do chan func() }

// New makes a network namespace and moves the test namespace's link nic into it. The namespace lives until the
// test ends: its thread ends with it, out of the test's namespace.
func New(t *testing.T, nic string) *NS {
	t.Helper()
	peer, err := netlink.LinkByName(nic)
	if err != nil {
		t.Fatal(err)
	}
	n := &NS{do: make(chan func())}
	nsc, moved := make(chan *os.File), make(chan bool)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine, out of the test's namespace
		var ns *os.File
		if err := unix.Unshare(unix.CLONE_NEWNET); err == nil {
			ns, _ = os.Open("/proc/thread-self/ns/net")
		}
		nsc <- ns
		if ns == nil || !<-moved {
			return
		}
		for f := range n.do {
			f()
		}
	}()
	ns := <-nsc
	if ns == nil {
		t.Fatal("making a network namespace failed")
	}
	defer ns.Close()
	// From the test's namespace, where the link is.
	if err := netlink.LinkSetNsFd(peer, int(ns.Fd())); err != nil {
		moved <- false
		t.Fatal(err)
	}
	moved <- true
	t.Cleanup(func() { close(n.do) })
	return n
}

// Do runs f in the namespace and returns its error.
func (n *NS) Do(f func() error) error {
	done := make(chan error, 1)
	n.do <- func() { done <- f() }
	return <-done
}

// Run runs f in the namespace and fails the test with its error.
func (n *NS) Run(t *testing.T, f func() error) {
	t.Helper()
	if err := n.Do(f); err != nil {
		t.Fatal(err)
	}
}

// childEnv marks the process Reexec runs a test in.
const childEnv = "I2KIT_TEST_NETNS"

// Reexec reports whether the test runs in a network namespace made for it; if not, it runs the test again in a
// fresh one (as root, with unshare(1)), logs its output and fails with it, or skips when it cannot, and the
// caller returns:
//
//	if !netnstest.Reexec(t) {
//		return
//	}
func Reexec(t *testing.T) bool {
	t.Helper()
	if os.Getenv(childEnv) != "" {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare(1)")
	}
	cmd := exec.Command("unshare", "-n", os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("in a network namespace:\n%s", out)
	if err != nil {
		t.Fatalf("the test in a network namespace failed: %v", err)
	}
	return false
}
