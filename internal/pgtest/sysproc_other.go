//go:build !linux

package pgtest

import "syscall"

// setParentDeathSignal does nothing: only Linux has a parent-death signal.
// A server whose test process died keeps running until it is stopped.
func setParentDeathSignal(*syscall.SysProcAttr) {}
