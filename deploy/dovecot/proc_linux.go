//go:build linux

package dovecot

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
)

func platformSupported() error { return nil }

// setProcAttr puts the Dovecot master in its own process group (its children
// stay in it, so Close can find and kill them all) and has the kernel send it
// SIGTERM if the test process dies first; Dovecot's children exit when the
// master goes away.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

func signalProcess(pid int, sig syscall.Signal) error {
	err := syscall.Kill(pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

func signalGroup(pgid int, sig syscall.Signal) error {
	if pgid <= 1 {
		return nil
	}
	err := syscall.Kill(-pgid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// groupMembers lists the processes of process group pgid that have not exited.
func groupMembers(pgid int) ([]int, error) {
	procs, err := GroupProcesses(pgid)
	if err != nil {
		return nil, err
	}
	pids := make([]int, len(procs))
	for i, p := range procs {
		pids[i] = p.PID
	}
	return pids, nil
}

// GroupProcess is one process of a process group, as /proc/PID/stat shows it.
type GroupProcess struct {
	PID int
	Dir string // /proc/PID
	// CPU times in clock ticks (USER_HZ): the process's own, and those of its reaped
	// children.
	UTime, STime, CUTime, CSTime int64
}

// GroupProcesses lists the processes of process group pgid that have not exited (zombies
// are left out: an orphan whose new parent never reaps it is gone for our purposes). The
// benchmark uses it for CPU, memory and descriptor figures, Close to find Dovecot's children.
func GroupProcesses(pgid int) ([]GroupProcess, error) {
	paths, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		return nil, err
	}
	var procs []GroupProcess
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
		// utime stime cutime cstime ...; comm may contain spaces and ')'.
		i := bytes.LastIndexByte(data, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(data[i+1:])
		if len(f) < 15 || string(f[0]) == "Z" || string(f[0]) == "X" {
			continue
		}
		g, err := strconv.Atoi(string(f[2]))
		if err != nil || g != pgid {
			continue
		}
		dir := filepath.Dir(p)
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		gp := GroupProcess{PID: pid, Dir: dir}
		gp.UTime, _ = strconv.ParseInt(string(f[11]), 10, 64)
		gp.STime, _ = strconv.ParseInt(string(f[12]), 10, 64)
		gp.CUTime, _ = strconv.ParseInt(string(f[13]), 10, 64)
		gp.CSTime, _ = strconv.ParseInt(string(f[14]), 10, 64)
		procs = append(procs, gp)
	}
	return procs, nil
}
