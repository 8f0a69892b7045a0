//go:build !linux

package dovecot

import (
	"errors"
	"os/exec"
	"syscall"
)

func platformSupported() error {
	return errors.New("dovecot: running a test Dovecot is only supported on Linux")
}

func setProcAttr(*exec.Cmd)                   {}
func signalProcess(int, syscall.Signal) error { return errors.ErrUnsupported }
func signalGroup(int, syscall.Signal) error   { return errors.ErrUnsupported }
func groupMembers(int) ([]int, error)         { return nil, errors.ErrUnsupported }

// GroupProcess is one process of a process group (Linux only).
type GroupProcess struct {
	PID                          int
	Dir                          string
	UTime, STime, CUTime, CSTime int64
}

// GroupProcesses is only supported on Linux.
func GroupProcesses(int) ([]GroupProcess, error) { return nil, errors.ErrUnsupported }
