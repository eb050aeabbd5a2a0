//go:build !linux

package testharness

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
