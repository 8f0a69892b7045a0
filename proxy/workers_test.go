package proxy

import (
	"bytes"
	"runtime"
	"testing"
	"time"
)

// goid is the calling goroutine's number, from its stack header ("goroutine 12 [running]:").
func goid() string {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	return string(bytes.Fields(buf)[1])
}

// waitIdle waits (bounded) until p counts n idle workers: waiting for a task, or about to.
func waitIdle(t *testing.T, p *workerPool, n int32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.idle.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d workers wait, want %d", p.idle.Load(), n)
		}
		runtime.Gosched()
	}
}

// A finished task's goroutine runs the next one: its stack is reused.
func TestWorkerPoolReusesGoroutine(t *testing.T) {
	p := newWorkerPool(time.Minute, 4)
	ids := make(chan string, 1)
	p.goRun(func() { ids <- goid() })
	first := <-ids
	// Hand the second task to the waiting worker as goRun does, once it receives (it counts
	// itself idle just before).
	deadline := time.Now().Add(10 * time.Second)
	for handed := false; !handed; {
		select {
		case p.tasks <- func() { ids <- goid() }:
			handed = true
		default:
			if time.Now().After(deadline) {
				t.Fatal("the first task's worker never waited for another")
			}
			runtime.Gosched()
		}
	}
	if second := <-ids; second != first {
		t.Errorf("second task ran on goroutine %s, want the first's (%s)", second, first)
	}
	waitIdle(t, p, 1)
}

// goRun never waits for a worker: with every worker busy a task gets a goroutine of its own.
func TestWorkerPoolNeverWaits(t *testing.T) {
	p := newWorkerPool(time.Minute, 4)
	release := make(chan struct{})
	started := make(chan string, 3)
	for range 3 {
		p.goRun(func() { started <- goid(); <-release })
	}
	seen := map[string]bool{}
	for range 3 {
		seen[<-started] = true
	}
	if len(seen) != 3 {
		t.Errorf("3 blocked tasks ran on %d goroutines", len(seen))
	}
	close(release)
	waitIdle(t, p, 3)
}

// Past maxIdle a worker ends with its task; a waiting worker ends after idleFor.
func TestWorkerPoolBounds(t *testing.T) {
	p := newWorkerPool(time.Minute, 2)
	ended := make(chan struct{}, 5)
	p.ended = func() { ended <- struct{}{} }
	release := make(chan struct{})
	for range 5 {
		p.goRun(func() { <-release })
	}
	close(release)
	for range 3 {
		<-ended
	}
	waitIdle(t, p, 2)
	select {
	case <-ended:
		t.Error("a fourth worker ended: maxIdle is 2")
	default:
	}

	q := newWorkerPool(time.Millisecond, 2)
	q.ended = func() { ended <- struct{}{} }
	q.goRun(func() {})
	<-ended // it waited a millisecond for a task, then ended
	if n := q.idle.Load(); n != 0 {
		t.Errorf("%d workers wait after the only one ended", n)
	}
}
