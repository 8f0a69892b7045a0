//go:build !linux

package bench

import (
	"errors"
	"syscall"
)

func platformSupported() error {
	return errors.New("bench: needs Linux (/proc for memory and file descriptors)")
}

const clockTick = 100

func groupStats(int, bool) (procStats, error) { return procStats{}, errors.ErrUnsupported }

func selfCPU() float64 { return 0 }

func raiseFileLimit() (uint64, error) { return 0, errors.ErrUnsupported }

func setGroupAttr(attr *syscall.SysProcAttr) *syscall.SysProcAttr { return attr }

func killGroup(int, syscall.Signal) {}

func currentFileLimit() (uint64, error) { return 0, errors.ErrUnsupported }

func machineBusy() int64 { return 0 }

const maxCPU = 1024

func usableCPUs() int { return 0 }

func pinBackend(int, []int) (func(), error) { return nil, errors.ErrUnsupported }
