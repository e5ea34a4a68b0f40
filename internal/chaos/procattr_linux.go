package chaos

import "syscall"

// childAttr puts a runner in its own process group (a Ctrl-C reaches the
// chaos run, which stops its runners in order) and has the kernel kill it if
// the chaos run dies without doing so.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
