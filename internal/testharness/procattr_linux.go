//go:build linux

package testharness

import "syscall"

// SysProcAttr makes the kernel kill a process the test starts if the test
// binary dies (for example on a test timeout, or a cancelled CI job),
// before its cleanups run, so no orphan keeps ports or files. Set it as
// the cmd.SysProcAttr of every long-lived process a test starts.
func SysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
