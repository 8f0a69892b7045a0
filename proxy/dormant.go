package proxy

import (
	"errors"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// This file lets a quiet spliced session hold no goroutine at all.
//
// A running flow (one direction of a session) is a goroutine parked in the runtime's poller
// while its source is silent, and a parked goroutine keeps its stack: 4 KiB or more, so two
// per session were most of an idle session's memory (the idle benchmark measured 8 of
// 19 KiB). IMAP fleets are mostly sessions in IDLE that stay silent for minutes, so after
// DormantAfter without bytes a flow hands its wait to the server's dormancy loops and its
// goroutine ends. The dormancy loops, one per core, are epoll instances of the proxy's own
// holding the sources of dormant flows (EPOLLONESHOT; inline flows, inline.go, stay
// registered edge-triggered), each watched by one goroutine through the runtime's poller (an
// epoll descriptor is itself pollable). When bytes, an EOF or an error arrive, the loop
// starts a new goroutine for the flow, which reads them as if it had never left.
//
// How a flow goes dormant: a sweeper goroutine looks at every running flow (a registry of
// its own, sharded: it never takes the server's lock) each DormantAfter/2. A flow that
// moved no chunk of bytes between three looks in a row gets sleepReq and a read deadline in
// the past on its source, which ends its wait in the poller with os.ErrDeadlineExceeded. Its
// goroutine clears the deadline, registers the source with the dormancy epoll and ends
// (dormancy.sleep). Nothing is lost: the wait only starts after a read said EAGAIN, and
// crypto/tls keeps a partial record across it. The sweeper costs nothing per message (one
// atomic store per chunk moved), unlike a deadline set before every wait. Flows whose source
// is not a socket (a wrapping listener's connections) never go dormant.
//
// Races are settled by a compare-and-swap on flow.state: whoever moves a flow from dormant
// to running (a loop on an event, or closeAll when the session ends) starts its
// goroutine, exactly once, or, where the loop's own flow's end closed the session, ends it
// in the loop (pollLoop.end). A flow takes its table entry before its state says dormant (only
// its own goroutine can touch it then), and checks spliceState.closed again after arming, so
// a close that came in between is not missed; an ended flow is marked forgotten and never
// armed again. If a loop's goroutine fails, it wakes every dormant flow of that loop, and the
// loop takes no more.
//
// Linux only, as the splice path is: EPOLLONESHOT and nested epoll.

// defaultDormantAfter is Options.DormantAfter's zero value.
const defaultDormantAfter = 2 * time.Second

func (s *Server) dormantAfter() time.Duration {
	if s.opts.DormantAfter != 0 {
		return s.opts.DormantAfter
	}
	return defaultDormantAfter
}

// testHookDormant, if set (by tests), is called each time a flow has gone dormant. Atomic:
// a flow of one test's proxy may still be going dormant while the next test sets it.
var testHookDormant atomic.Pointer[func(*flow)]

// testHookRun, if set (by tests), is called as a flow's goroutine starts.
var testHookRun atomic.Pointer[func(*flow)]

// testHookBlocked, if set (by tests), is called by the loop each time an inline flow finds
// its destination full, with the flow's source ("client" or "backend").
var testHookBlocked atomic.Pointer[func(from string)]

// dormancy is the server's pollers for dormant flows, and the registry of running ones for
// the sweeper. A nil *dormancy keeps every flow running.
type dormancy struct {
	// loops are the epoll instances, one per core (GOMAXPROCS when the server started),
	// each waited on by a goroutine of its own: the inline copies (inline.go) of a busy
	// proxy are spread over the cores. A flow stays with the loop it was first given.
	loops []*pollLoop
	next  atomic.Uint32 // round robin over loops

	// runningFlows is the registry of running flows, for the sweeper: a dormant flow needs no look.
	runningFlows [runShards]runShard

	slept   atomic.Int64 // flows that went dormant, ever; the sweeper's reclaim trigger
	now     atomic.Int64 // flows dormant now
	metrics Metrics
}

// pollLoop is one epoll instance of the dormancy and the goroutine that waits on it.
type pollLoop struct {
	d    *dormancy
	file *os.File // the epoll instance, in the runtime's poller
	rc   syscall.RawConn
	epfd int // file's descriptor (File.Fd would make it blocking); used under mu, while open

	mu     sync.Mutex
	flows  map[uint64]*flow // dormant or once dormant flows of live sessions, by id (an ended one while its registration serves the other: forget)
	nextID uint64
	closed bool

	stopped atomic.Bool  // closed or failed: its inline flows park in the runtime's poller
	bp      *[]byte      // the buffer of inline copies, loopBufSize (inline.go); the loop goroutine's only
	cp      inlineCopy   // the inline copy being made; the loop goroutine's only
	again   []*flow      // inline flows that had their share and read on next turn; the loop goroutine's only
	spare   []*flow      // again's other slice (turn swaps them); the loop goroutine's only
	ending  []*flow      // inline flows of sessions the loop closed, to end (pollLoop.end); the loop goroutine's only
	ctl     epollCtlCall // under mu
}

var errDormancyClosed = errors.New("dormancy poller closed")

func newDormancy(m Metrics) (*dormancy, error) {
	d := newDormancyOn(m)
	for range runtime.GOMAXPROCS(0) {
		l, err := newPollLoop(d)
		if err != nil {
			d.close()
			return nil, err
		}
		d.loops = append(d.loops, l)
	}
	return d, nil
}

func newPollLoop(d *dormancy) (*pollLoop, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	f := os.NewFile(uintptr(fd), "dormancy-epoll") // non-blocking: goes into the poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	l := &pollLoop{d: d, file: f, rc: rc, epfd: fd, flows: make(map[uint64]*flow)}
	l.cp.readFn, l.cp.writeFn, l.cp.share = l.cp.read, l.cp.write, inlineShare
	l.ctl.epfd, l.ctl.fn = fd, l.ctl.call
	return l, nil
}

// newDormancyOn is a dormancy without loops yet (tests: no flow can go dormant).
func newDormancyOn(m Metrics) *dormancy {
	d := &dormancy{metrics: m}
	for i := range d.runningFlows {
		d.runningFlows[i].flows = make(map[*flow]struct{})
	}
	return d
}

// allStopped reports whether every loop has stopped (or there are none).
func (d *dormancy) allStopped() bool {
	for _, l := range d.loops {
		if !l.stopped.Load() {
			return false
		}
	}
	return true
}

// start starts the loops' goroutines.
func (d *dormancy) start() {
	for _, l := range d.loops {
		go l.run()
	}
}

// sleep makes f dormant when its goroutine has been quiet for DormantAfter: watched by its
// loop for one event (EPOLLONESHOT), or, if it is an inline flow (inline.go), given back to
// its loop. It returns false if f must go on running in the calling goroutine (the session
// is closing, or the loop stopped), true if the goroutine must end.
func (d *dormancy) sleep(f *flow) bool {
	if d == nil || f.src.rc == nil || f.sp.closed.Load() || !d.register(f) {
		return false
	}
	events := uint32(syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT)
	if f.inline {
		events = inlineEvents
	}
	if !d.park(f, events) {
		return false
	}
	d.slept.Add(1)
	return true
}

// park makes f, registered, dormant with its source watched by its loop for events: a level
// one-shot or an edge-triggered registration fires at once for bytes already there (epoll_ctl
// looks at the socket's readiness). It returns false if the caller must run f itself (the
// registration failed, the session is closing or the loop has stopped), true if the caller
// must not touch f any more. The state and the registration change under the loop's lock:
// the loop muting f for a goroutine it hands f to cannot come between (inline.go).
func (d *dormancy) park(f *flow, events uint32) bool {
	// Counted before the state changes: whoever wakes the flow counts it out.
	d.count(1)
	err := d.epollCtl(f, flowDormant, events)
	// Checked after the state says dormant: a close or a stop that came before then found
	// f running and did not wake it.
	if (err != nil || f.sp.closed.Load() || f.loop.stopped.Load()) &&
		f.state.CompareAndSwap(flowDormant, flowRunning) {
		d.count(-1)
		return false
	}
	slept(f)
	return true
}

// count adds delta to the flows dormant now, and to the metrics' gauge.
func (d *dormancy) count(delta int) {
	d.now.Add(int64(delta))
	d.metrics.Dormant(delta)
}

// pick chooses a loop for a session's flows, round robin; nil if there is none.
func (d *dormancy) pick() *pollLoop {
	if d == nil || len(d.loops) == 0 {
		return nil
	}
	return d.loops[d.next.Add(1)%uint32(len(d.loops))]
}

// register gives f its loop, id and table entry the first time, while f's owner is the only
// one that can touch it (before its state says dormant). It fails once the loop is closed.
func (d *dormancy) register(f *flow) bool {
	if f.loop == nil {
		if f.loop = d.pick(); f.loop == nil {
			return false
		}
	}
	l := f.loop
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	if f.id == 0 {
		l.nextID++
		f.id = l.nextID
		l.flows[f.id] = f
	}
	return true
}

// epollCtl sets f's state and registers f's source with its loop's epoll for events (or
// changes its registration to them), both under the loop's lock: of two such changes for f
// (a goroutine giving f back, the loop muting f for a goroutine it hands f to), neither's
// registration can end up with the other's state.
func (d *dormancy) epollCtl(f *flow, state int32, events uint32) error {
	l := f.loop
	l.mu.Lock()
	defer l.mu.Unlock()
	f.state.Store(state)
	if l.closed || f.forgotten {
		return errDormancyClosed
	}
	return l.ctlLocked(f, events)
}

// ctlLocked registers f's source for events, or changes its registration to them; under
// f.loop's mu.
func (l *pollLoop) ctlLocked(f *flow, events uint32) error {
	c := &l.ctl
	c.ev = syscall.EpollEvent{Events: events, Fd: int32(uint32(f.id)), Pad: int32(uint32(f.id >> 32))}
	c.op, c.err = syscall.EPOLL_CTL_MOD, nil
	if !f.watched {
		c.op = syscall.EPOLL_CTL_ADD
	}
	// Control holds the descriptor open while it runs: a concurrent close cannot make this
	// arm another connection's reused descriptor number.
	if err := f.src.rc.Control(c.fn); err != nil {
		return err
	}
	if c.err != nil {
		return os.NewSyscallError("epoll_ctl", c.err)
	}
	f.watched, f.events = true, events
	return nil
}

// wantOut makes x's registration ask EPOLLOUT as well, for the other flow of x's session,
// whose destination is x's source and is full (inline.go). Edge-triggered, the socket then
// raises an event whenever it has room again after a write that found it full; asking it
// raises one at once if it has room already. false if x's registration cannot: it is muted
// (x has a goroutine), or the loop is closed. If x has ended (the client half-closed after
// LOGOUT, and the backend's answer fills its socket), its table entry comes back, so the
// events find the other flow; the other flow's forget drops it again.
func (d *dormancy) wantOut(x *flow) bool {
	l := x.loop
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.closed || !x.watched || x.events&syscall.EPOLLIN == 0:
		return false
	case x.events&syscall.EPOLLOUT != 0:
		return true
	}
	if err := l.ctlLocked(x, x.events|syscall.EPOLLOUT); err != nil {
		return false
	}
	if x.forgotten {
		l.flows[x.id] = x
	}
	return true
}

// epollCtlCall is a loop's epoll_ctl(2) call, made under its mu, with its Control callback
// bound once: arming a flow (twice a session) allocates nothing.
type epollCtlCall struct {
	epfd int
	op   int
	ev   syscall.EpollEvent
	err  error
	fn   func(fd uintptr)
}

func (c *epollCtlCall) call(fd uintptr) { c.err = syscall.EpollCtl(c.epfd, c.op, int(fd), &c.ev) }

// forget drops an ended flow from the table, unless its registration asks EPOLLOUT for the
// other flow, still live. The kernel drops its registration when the socket is closed.
func (d *dormancy) forget(f *flow) {
	l := f.loop
	if d == nil || l == nil {
		return
	}
	l.mu.Lock()
	f.forgotten = true
	// The entry of an ended flow whose registration asks EPOLLOUT for the other flow stays
	// until that one ends too: its destination's room is announced there.
	r := f.reverse()
	if f.id != 0 && (r.loop != l || r.forgotten || f.events&syscall.EPOLLOUT == 0) {
		delete(l.flows, f.id)
	}
	if r.loop == l && r.forgotten && r.id != 0 {
		delete(l.flows, r.id)
	}
	l.mu.Unlock()
}

// run is a loop's goroutine: it waits for events on its epoll instance in the runtime's
// poller and handles them (wakes their flows, or copies inline ones), until close.
//
// The events are handled inside the RawConn.Read callback, which then returns false to
// wait: Read clears the descriptor's readiness only when it starts, so an event that comes
// while others are handled ends the wait at once, and a wait that has none parks without
// another epoll_pwait(2) that would find nothing. Nothing in the handling waits (see
// closer's comment: a callback must not), and the table's lock is never held around close.
func (l *pollLoop) run() {
	if l.bp == nil {
		l.bp = loopBufPool.get()
	}
	events := make([]syscall.EpollEvent, 128)
	var werr syscall.Errno
	err := l.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, fd,
				uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
			switch e {
			case 0:
			case syscall.EINTR:
				continue
			default:
				werr = e
				return true
			}
			n := int(r)
			for _, ev := range events[:n] {
				l.dispatch(ev)
			}
			if len(l.again) > 0 {
				l.turn()
			}
			if n < len(events) && len(l.again) == 0 {
				return false // all taken: wait for the next
			}
		}
	})
	if err != nil || werr != 0 {
		// Closed, or the poller failed: no flow may stay dormant without it.
		l.shutdown()
	}
	loopBufPool.put(l.bp)
	l.bp = nil
}

// dispatch handles one event: an inline flow is copied, any other woken.
func (l *pollLoop) dispatch(ev syscall.EpollEvent) {
	id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
	l.mu.Lock()
	f := l.flows[id]
	l.mu.Unlock()
	switch {
	case f == nil:
	case f.inline:
		// EPOLLOUT is asked for the other flow, whose destination this socket is.
		if ev.Events&syscall.EPOLLOUT != 0 {
			l.onWritable(f.reverse())
		}
		if ev.Events&^syscall.EPOLLOUT != 0 {
			l.onEvent(f, ev.Events)
		}
	default:
		f.wake()
	}
}

func (d *dormancy) close() {
	for _, l := range d.loops {
		l.stopped.Store(true)
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		// Outside mu: Close waits for the loop's callback, which takes mu.
		_ = l.file.Close()
	}
}

// shutdown stops the loop and wakes every dormant flow; flows then keep their goroutines.
func (l *pollLoop) shutdown() {
	l.stopped.Store(true)
	l.mu.Lock()
	l.closed = true
	flows := make([]*flow, 0, len(l.flows))
	for _, f := range l.flows {
		flows = append(flows, f)
	}
	l.mu.Unlock()
	for _, f := range flows {
		f.wake()
	}
}

// sweep is the sweeper's look at one flow.
func (f *flow) sweep() {
	if l := f.loop; l != nil && l.stopped.Load() {
		return // its loop is gone: asking it to go dormant would only wake it
	}
	// Only running flows with a socket are in the registry: bytes moved is all to check.
	if f.busy.Swap(false) {
		f.quiet = 0
		return
	}
	f.quiet++
	if f.quiet < 2 || f.sleepReq.Load() {
		return
	}
	f.sleepReq.Store(true)
	_ = f.srcRaw.SetReadDeadline(time.Unix(1, 0))
}

// reclaimAfter is how many flows must have gone dormant since the last reclaim before the
// sweeper hands their stacks back to the operating system: 1024 goroutine stacks of at least
// 4 KiB, or a quarter of the flows dormant now if that is more (so that steady churn among
// many sessions does not force a collection every interval).
const reclaimAfter = 1024

// sweepLoop is the sweeper's goroutine, until stop is closed.
//
// It walks the running flows only (dormancy.runningFlows), a shard at a time, and never takes
// the server's lock: walking every session under that lock held up accepting connections
// for 31 ms a second at 100 000 sessions (BenchmarkSweep).
//
// It also returns memory: the stacks of goroutines that ended stay with the runtime until a
// garbage collection, which an idle proxy (allocating nothing) may not have for minutes.
// When reclaimAfter flows have gone dormant since the last time, at most once an interval,
// it runs debug.FreeOSMemory: a collection, then every free page back to the system.
func (s *Server) sweepLoop(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var reclaimed int64
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		d := s.dormancy
		if n := d.slept.Load(); n-reclaimed >= max(reclaimAfter, d.now.Load()/4) {
			reclaimed = n
			debug.FreeOSMemory()
		}
		s.sweepOnce()
	}
}

// sweepOnce looks at every running flow once.
func (s *Server) sweepOnce() {
	d := s.dormancy
	if d == nil {
		return
	}
	if d.allStopped() {
		return // the loops are gone: no flow can go dormant, asking them would only wake them
	}
	for i := range d.runningFlows {
		sh := &d.runningFlows[i]
		sh.mu.Lock()
		for f := range sh.flows {
			f.sweep()
		}
		sh.mu.Unlock()
	}
}

// runShards is how many shards the running-flow registry has: a flow starting or stopping
// contends with the sweeper on one shard, for as long as it takes to sweep that shard.
const runShards = 64

// runShard is one shard of the running-flow registry.
type runShard struct {
	mu    sync.Mutex
	flows map[*flow]struct{}
	_     [40]byte // keep shards' locks on separate cache lines
}

// flowShards hands out shards round robin as flows are made.
var flowShards atomic.Uint32

// running records that f's goroutine starts (on) or stops (off) running it. Only flows that
// can go dormant (whose source is a socket) are recorded. A goroutine calls it with off
// before the flow's state can say dormant, and a new goroutine with on after it says
// running again, so a flow is recorded once while a goroutine runs it.
func (d *dormancy) running(f *flow, on bool) {
	if d == nil || f.src.rc == nil {
		return
	}
	sh := &d.runningFlows[f.shard]
	sh.mu.Lock()
	if on {
		// A woken flow starts its count of quiet looks afresh (the sweeper does not see
		// dormant flows, so nothing else resets it): DormantAfter holds after every wake.
		f.quiet = 0
		sh.flows[f] = struct{}{}
	} else {
		delete(sh.flows, f)
		// A sweep between the flow's answer to a request (sleepReq cleared, deadline
		// cleared) and this call may have made a new one: drop it here, under the lock
		// sweeps take, or the flow would carry it into its next goroutine and go back at
		// its first read.
		if f.sleepReq.Swap(false) {
			_ = f.srcRaw.SetReadDeadline(time.Time{})
		}
	}
	sh.mu.Unlock()
}
