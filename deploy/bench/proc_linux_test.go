//go:build linux

package bench

import (
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPinBackend: with two CPUs or more, a process group standing in for the backend ends
// up on CPU 0 and every thread of this process on the others, until restore.
func TestPinBackend(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs two CPUs")
	}
	var orig unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil || !orig.IsSet(0) || orig.Count() < 2 {
		t.Skipf("this process may not use CPU 0 and another: %v", err)
	}
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = setGroupAttr(cmd.SysProcAttr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	restore, err := pinBackend(cmd.Process.Pid, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	if got := allowedCPUs(t, "/proc/"+strconv.Itoa(cmd.Process.Pid)+"/status"); got != "0" {
		t.Errorf("backend on CPUs %q, want 0", got)
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &set); err == nil && set.IsSet(0) {
			t.Errorf("thread %d may run on CPU 0: %v", tid, set)
		}
	}
	restore()
	var now unix.CPUSet
	if err := unix.SchedGetaffinity(0, &now); err != nil || now != orig {
		t.Errorf("after restore: %v, %v; want %v", now, err, orig)
	}

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
