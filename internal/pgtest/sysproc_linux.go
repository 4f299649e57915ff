package pgtest

import "syscall"

// setParentDeathSignal makes the kernel kill the child if this process
// dies, so that a killed test process leaves no server behind.
func setParentDeathSignal(a *syscall.SysProcAttr) {
	a.Pdeathsig = syscall.SIGKILL
}
