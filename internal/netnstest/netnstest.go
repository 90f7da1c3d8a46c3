// Package netnstest gives root tests a network namespace of their own to stand for a pod or a remote client: a
// link of the test's namespace is moved into it, and functions run there on a thread that never leaves it.
package netnstest

import (
	"os"
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
