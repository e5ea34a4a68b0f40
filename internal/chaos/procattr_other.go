//go:build !linux

package chaos

import "syscall"

// childAttr puts a runner in its own process group, so that a Ctrl-C reaches
// the chaos run, which stops its runners in order.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
