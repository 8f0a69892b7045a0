//go:build linux

package bench

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/imapgate/imapgate/deploy/dovecot"
)

// TestPinBackend: with two CPUs or more, a process group standing in for the backend ends
// up on CPU 0 and every thread of this process on the others, until restore gives every
// thread its former set back.
func TestPinBackend(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs two CPUs")
	}
	var orig unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil || !orig.IsSet(0) || orig.Count() < 2 {
		t.Skipf("this process may not use CPU 0 and another: %v", err)
	}
	// A process group of two processes, both there once "ready" is read: the shell (then
	// sleep) and the sleep it started in the background.
	cmd := exec.Command("sh", "-c", "sleep 60 & echo ready; exec sleep 61")
	cmd.SysProcAttr = setGroupAttr(cmd.SysProcAttr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { killGroup(cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("child said %q, %v", line, err)
	}

	restore, err := pinBackend(cmd.Process.Pid, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(restore) // also if a check below stops the test
	procs, err := dovecot.GroupProcesses(cmd.Process.Pid)
	if err != nil || len(procs) != 2 {
		t.Fatalf("backend group: %v, %v; want 2 processes", procs, err)
	}
	for _, p := range procs {
		if got := allowedCPUs(t, p.Dir+"/status"); got != "0" {
			t.Errorf("backend process %d on CPUs %q, want 0", p.PID, got)
		}
	}
	eachThread(t, func(tid int, set unix.CPUSet) {
		if set.IsSet(0) {
			t.Errorf("thread %d may run on CPU 0: %v", tid, set)
		}
	})
	restore()
	eachThread(t, func(tid int, set unix.CPUSet) {
		if set != orig {
			t.Errorf("after restore, thread %d has %v; want %v", tid, set, orig)
		}
	})

	var all []int
	for c := range runtime.NumCPU() {
		if orig.IsSet(c) {
			all = append(all, c)
		}
	}
	if _, err := pinBackend(cmd.Process.Pid, all); err == nil {
		t.Error("pinning the backend to every CPU left none for the bench, and was accepted")
	}
}

// eachThread calls f with every thread of this process and its CPU set.
func eachThread(t *testing.T, f func(tid int, set unix.CPUSet)) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &set); err == nil {
			f(tid, set)
		}
	}
}

func allowedCPUs(t *testing.T, status string) string {
	t.Helper()
	data, err := os.ReadFile(status)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s has no Cpus_allowed_list", status)
	return ""
}
