//go:build linux

package testharness

import "syscall"

// sysProcAttr makes the kernel kill the server if the test binary dies
// (for example on a test timeout), so no orphan keeps ports or files.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
