package proxy

import (
	"sync/atomic"
	"time"
)

// This file keeps goroutines for reuse. A new goroutine starts on a small stack (2 KiB) and
// grows it by copying, each copy an unwinding of the whole stack. A session's goroutine
// needs about 8 KiB up to login, two copies per login: the session goroutines therefore run
// on workers, and a worker that has finished one session runs the next on the stack it has
// grown. A collection may halve the stack of a waiting worker (it uses little of it then),
// so a worker grows again once after a collection, not once per session. In
// `go test -bench Session/proxy -cpuprofile` the proxy's goroutines spent 26 µs per session
// in runtime.newstack before, 11 µs after (what is left is the flows').
//
// The flows' goroutines (splice.go) are not pooled. They would run on stacks grown for
// something else and wait on them until they go dormant, and with them pooled 2 000 idle
// sessions held 1.5–2 KiB more each at the end of the bench's hold
// (imapgate bench -scenarios idle).
//
// Why by hand: the pools that exist (ants, gopool) queue tasks, bound concurrency and catch
// panics; this needs none of that. An idle worker is a goroutine blocked on an unbuffered
// channel; a task is handed to one if one waits, else it gets a new goroutine. It never
// waits, so it cannot deadlock or delay a session.

// workerPool runs functions on reused goroutines.
type workerPool struct {
	tasks chan func() // unbuffered: a send succeeds only when a worker waits
	idle  atomic.Int32

	// idleFor is how long a worker waits for its next task before it ends.
	idleFor time.Duration
	// maxIdle bounds the workers waiting at once. Past it a worker ends when its task does:
	// after a burst of logins at most maxIdle stacks wait.
	maxIdle int32

	ended func() // if set (by tests), called as a worker's goroutine ends
}

func newWorkerPool(idleFor time.Duration, maxIdle int32) *workerPool {
	return &workerPool{tasks: make(chan func()), idleFor: idleFor, maxIdle: maxIdle}
}

// sessionWorkers runs the session goroutines of every Server of the process. 32 waiting
// workers are enough for a steady login rate on a machine of a few cores (a session needs a
// waiting worker only while another one ends), and bound what waiting workers hold: 256 KiB
// of stacks after plain logins.
var sessionWorkers = newWorkerPool(time.Second, 32)

// goRun runs f on a waiting worker, or on a new goroutine if none waits. It never blocks.
func (p *workerPool) goRun(f func()) {
	select {
	case p.tasks <- f:
	default:
		go p.work(f)
	}
}

// work is a worker's goroutine: it runs f, then the tasks handed to it, until it has waited
// idleFor for one or maxIdle workers wait already.
func (p *workerPool) work(f func()) {
	if p.ended != nil {
		defer p.ended()
	}
	f()
	var t *time.Timer
	for {
		if p.idle.Add(1) > p.maxIdle {
			p.idle.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(p.idleFor)
		} else {
			t.Reset(p.idleFor)
		}
		select {
		case f = <-p.tasks:
			p.idle.Add(-1)
			f()
		case <-t.C:
			p.idle.Add(-1)
			return
		}
	}
}
