//go:build linux

package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/imapgate/imapgate/deploy/dovecot"
)

func platformSupported() error { return nil }

// clockTick is USER_HZ, the unit of the CPU times in /proc/PID/stat: 100 on every Linux
// architecture Go supports.
const clockTick = 100

// groupStats sums, over the live processes of process group pgid (zombies left out): the
// processes, user+system CPU time from /proc/PID/stat, and with full also VmRSS from
// /proc/PID/status and the entries of /proc/PID/fd. The leader's cutime+cstime (its
// reaped children) is added to CPU so that processes that came and went (Dovecot's imap
// processes) are counted.
func groupStats(pgid int, full bool) (procStats, error) {
	var st procStats
	if pgid <= 0 {
		return st, nil
	}
	procs, err := dovecot.GroupProcesses(pgid)
	if err != nil {
		return st, err
	}
	for _, p := range procs {
		st.CPUTicks += p.UTime + p.STime
		if p.PID == pgid {
			st.CPUTicks += p.CUTime + p.CSTime
		}
		st.Procs++
		if !full {
			continue
		}
		if rss, ok := vmRSS(filepath.Join(p.Dir, "status")); ok {
			st.RSS += rss
		}
		if ents, err := os.ReadDir(filepath.Join(p.Dir, "fd")); err == nil {
			st.FDs += len(ents)
		}
	}
	return st, nil
}

// vmRSS reads VmRSS (bytes) from a /proc/PID/status file.
func vmRSS(path string) (int64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	i := bytes.Index(data, []byte("\nVmRSS:"))
	if i < 0 {
		return 0, false // a kernel thread or a process on its way out
	}
	rest := data[i+len("\nVmRSS:"):]
	if j := bytes.IndexByte(rest, '\n'); j >= 0 {
		rest = rest[:j]
	}
	f := bytes.Fields(rest) // "1234 kB"
	if len(f) < 1 {
		return 0, false
	}
	kb, err := strconv.ParseInt(string(f[0]), 10, 64)
	if err != nil {
		return 0, false
	}
	return kb << 10, true
}

// selfCPU is the CPU time (user+system) of this process so far, in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// raiseFileLimit sets the soft RLIMIT_NOFILE to the hard limit and returns the new soft
// limit. The Go runtime raises it for this process by itself but restores the old soft
// limit in child processes unless the program sets it: setting it here lets Dovecot and
// nginx inherit it.
func raiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	return rl.Cur, nil
}

// setGroupAttr puts a child in its own process group, so that its processes can be found,
// measured and killed together, and has the kernel send it SIGTERM should the bench die.
func setGroupAttr(attr *syscall.SysProcAttr) *syscall.SysProcAttr {
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	attr.Setpgid = true
	attr.Pdeathsig = syscall.SIGTERM
	return attr
}

func killGroup(pgid int, sig syscall.Signal) {
	if pgid > 1 {
		_ = syscall.Kill(-pgid, sig)
	}
}

func currentFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	return rl.Cur, err
}

// machineBusy is the CPU time all CPUs spent busy (anything but idle and iowait) since
// boot, in 1/clockTick seconds, from the first line of /proc/stat.
func machineBusy() int64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(data, []byte("\n"))
	f := bytes.Fields(line) // cpu user nice system idle iowait irq softirq steal guest guest_nice
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(string(v), 10, 64)
		busy += n
	}
	return busy
}

// maxCPU bounds the CPU numbers a CPU set holds (CPU_SETSIZE).
const maxCPU = 1024

// usableCPUs is the number of CPUs this process may use now, 0 if unknown.
func usableCPUs() int {
	var set unix.CPUSet
	if unix.SchedGetaffinity(0, &set) != nil {
		return 0
	}
	return set.Count()
}

// pinBackend runs the backend on cpus and the bench on the other CPUs it may use: every
// thread of every process of the backend's process group pgid, and every thread of this
// process. Threads and processes made later copy the set of the one that makes them, so
// once all are set the Go runtime's new threads, the processes Dovecot forks and the
// proxies the bench starts stay where they belong. The returned function gives this
// process's threads their former CPUs back; the backend keeps its own until it stops.
//
// It makes the machine look like a backend with a host of its own (as in production), so
// that a proxy's figures are not moved by the scheduler putting the proxy or the load
// generator on the backend's core.
func pinBackend(pgid int, cpus []int) (restore func(), err error) {
	var orig, backend, rest unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		return nil, fmt.Errorf("backend CPUs: %w", err)
	}
	rest = orig
	for _, c := range cpus {
		if !orig.IsSet(c) {
			return nil, fmt.Errorf("backend CPUs: CPU %d is not one this process may use", c)
		}
		backend.Set(c)
		rest.Clear(c)
	}
	if rest.Count() == 0 {
		return nil, errors.New("backend CPUs: no CPU left for the load generator and the proxies")
	}
	err = settle(func() (int, error) {
		procs, err := dovecot.GroupProcesses(pgid)
		if err != nil {
			return 0, err
		}
		changed := 0
		for _, p := range procs {
			n, err := setThreadsAffinity(p.Dir, &backend)
			if err != nil {
				return 0, fmt.Errorf("process %d: %w", p.PID, err)
			}
			changed += n
		}
		return changed, nil
	})
	if err != nil {
		return nil, fmt.Errorf("backend CPUs: the backend: %w", err)
	}
	self := func(set *unix.CPUSet) error {
		return settle(func() (int, error) { return setThreadsAffinity("/proc/self", set) })
	}
	if err := self(&rest); err != nil {
		_ = self(&orig)
		return nil, fmt.Errorf("backend CPUs: the bench's threads: %w", err)
	}
	return func() { _ = self(&orig) }, nil
}

// settle runs pass until it changes nothing: a thread or process made during a pass may
// have copied the old set from one the pass had not reached yet.
func settle(pass func() (changed int, err error)) error {
	for range 20 {
		n, err := pass()
		if err != nil || n == 0 {
			return err
		}
	}
	return errors.New("threads kept appearing with the old CPU set")
}

// setThreadsAffinity gives every thread of the process at dir (/proc/PID) the CPUs of set
// and returns how many had other ones. A thread or process that ended meanwhile is skipped.
func setThreadsAffinity(dir string, set *unix.CPUSet) (changed int, err error) {
	ents, err := os.ReadDir(filepath.Join(dir, "task"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var cur unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &cur); err == nil && cur == *set {
			continue
		}
		err = unix.SchedSetaffinity(tid, set)
		if errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			return changed, err
		}
		changed++
	}
	return changed, nil
}
