package proxy

import (
	"os"
	"syscall"
)

// This file lets the dormancy loops copy a plain session's messages themselves: an event
// loop for the splice phase, with goroutines only for what a loop must not do (wait).
//
// A flow between two plain sockets, with no traffic observer, is "inline": at the handoff it
// starts dormant instead of with a goroutine, its source registered with one of the dormancy
// loops' epoll instances, edge-triggered (EPOLLET|EPOLLRDHUP), for the session's life. When
// the source becomes readable the loop's goroutine reads it into the loop's 16 KiB buffer
// and writes the bytes to the other socket, both without blocking, and goes on to the next
// event. A goroutine is started for the flow only when the loop would have to wait or to
// move bulk data:
//   - the destination's send buffer is full: the goroutine writes what is left (the loop's
//     buffer goes with it, the loop takes another) and waits for it in the runtime's poller;
//   - a read filled the buffer: bulk data is flowing (a FETCH body, an APPEND), and the
//     goroutine moves the rest of the burst with splice(2), as copyConn always has.
//
// That goroutine is an ordinary flow's (splice.go): it waits in the runtime's poller between
// bursts, and when it has been quiet for DormantAfter the sweeper sends the flow back to the
// loop (sleep), as it sends another to sleep. A flow that ends in the loop (EOF, an
// error) ends there: spliceState.ended waits for nothing. (If the session ends with it, its
// end line is logged from the loop. imapgate serve's log writer appends the line to a batch;
// a log destination that blocks would hold the loop when a batch is full, as it would hold
// every login.)
//
// Why: a goroutine per direction cost two goroutine starts per session, a wake-up and a
// park per message, and a read that says EAGAIN after every message (the runtime's poller
// clears readiness when a wait starts, and a FIN that came with the last bytes raises no new
// edge, so only a read can tell the socket is drained). In the loop, the event's EPOLLRDHUP
// says whether the peer's FIN came: a short read without it means drained (a FIN or bytes
// arriving after the event raise a new edge). What it saves is in the README (Performance).
//
// Ownership: flow.state says who may touch the flow. Dormant: nobody; the loop takes it on
// an event (flowInline) and gives it back, or hands it to a goroutine (flowRunning) after
// muting its registration, so no event comes for it while the goroutine runs. sleep says
// dormant first and then turns the registration on again: an event that follows finds the
// flow the loop's. Closing the session (closeAll) wakes a dormant flow as before; a flow in
// the loop's hands sees spliceState.closed when the loop gives it back. The descriptors are
// used only inside their RawConn's Control callback, which holds them open: a session closed
// meanwhile cannot make the loop read or write another connection's reused descriptor
// number.

// inlineResult is what one inline copy ended with.
type inlineResult int8

const (
	inlineDrained inlineResult = iota // the source is empty: the flow stays the loop's
	inlineHandoff                     // a goroutine goes on: bulk, or bytes wait to be written
	inlineEnd                         // EOF or an error (inlineCopy.err): the flow ends
)

// inlineCopy is a loop's state for the copy it is making: the flow, and what the read and
// write callbacks found. One per loop (only its goroutine copies), so a flow holds none of
// it, and its callbacks are bound once per loop: a copy allocates nothing.
type inlineCopy struct {
	readFn, writeFn func(fd uintptr)

	f     *flow
	buf   []byte // the loop's buffer
	rdhup bool   // the event said the peer's FIN (or an error) came
	w     rawWriter
	res   inlineResult
	err   error // the end's (nil at EOF)
}

// write writes w.b to the destination without waiting (rawWriter's callback: at EAGAIN
// what is left stays in w.b).
func (c *inlineCopy) write(fd uintptr) { c.w.writeSome(fd) }

// canInline reports whether f can be copied by the loop: plain sockets both ways, nothing
// to show the observer.
func (f *flow) canInline() bool {
	return f.src.rc != nil && f.dst.rc != nil && !f.src.tls && !f.dst.tls && f.acc.tap == nil
}

// arm makes f, a flow that has not run yet, an inline one: dormant and watched by its loop
// for the session's life. It returns false if the flow must run with a goroutine.
func (d *dormancy) arm(f *flow) bool {
	if d == nil || !f.canInline() || !d.register(f) {
		return false
	}
	f.inline = true
	return d.park(f, inlineEvents)
}

// recheck runs f again if the session was closed, or the loop stopped, while f was
// becoming dormant: whoever closed may have found it in the loop's hands and not woken it.
func (d *dormancy) recheck(f *flow) {
	if (f.sp.closed.Load() || f.loop.stopped.Load()) && f.state.CompareAndSwap(flowDormant, flowRunning) {
		d.count(-1)
		go f.run()
	}
}

// inlineEvents is an inline flow's registration while the loop copies it.
const inlineEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | epollET

// epollET is EPOLLET as the unsigned event mask (syscall's constant is a negative int).
const epollET = 1 << 31

// epollMuted is an inline flow's registration while a goroutine runs it: no event asked.
const epollMuted = epollET | syscall.EPOLLONESHOT

// slept calls testHookDormant, if set, for a flow that has become dormant.
func slept(f *flow) {
	if h := testHookDormant.Load(); h != nil {
		(*h)(f)
	}
}

// onEvent is the loop's turn for an inline flow whose source raised an event.
func (l *pollLoop) onEvent(f *flow, events uint32) {
	d := l.d
	if !f.state.CompareAndSwap(flowDormant, flowInline) {
		return // closeAll has woken it: its goroutine reads what came
	}
	c := &l.cp
	c.f, c.buf, c.res = f, *l.bp, inlineHandoff
	c.rdhup = events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0
	if err := f.src.rc.Control(c.readFn); err != nil {
		c.res, c.err = inlineEnd, err // closed under us: the session is ending
	}
	res, err := c.res, c.err
	c.f, c.buf, c.err = nil, nil, nil
	switch res {
	case inlineDrained:
		f.state.Store(flowDormant)
		d.recheck(f)
		slept(f)
	case inlineEnd:
		d.count(-1)
		f.end(err)
	default:
		if f.carryB != nil {
			f.carry, l.bp = l.bp, copyBufPool.get() // the goroutine takes the loop's buffer
		}
		// The goroutine waits in the runtime's poller from now on; the loop's registration
		// is muted meanwhile (no event per arriving segment of a bulk transfer) until sleep
		// turns it on again. One-shot and edge-triggered: EPOLLHUP and EPOLLERR, which
		// epoll reports whatever the mask, come once at most.
		_ = d.epollCtl(f, flowRunning, epollMuted)
		d.count(-1)
		go f.run()
	}
}

// read is the loop's copy, inside the source's Control callback: read, write, until the
// source is drained (a short read, and no FIN said), a read fills the buffer, or the
// destination is full.
func (c *inlineCopy) read(fd uintptr) {
	f := c.f
	for {
		n, e := sysRead(fd, c.buf)
		switch {
		case e == syscall.EAGAIN:
			c.res = inlineDrained
			return
		case e != 0:
			c.res, c.err = inlineEnd, os.NewSyscallError("read", e)
			return
		case n == 0:
			c.res, c.err = inlineEnd, nil
			return
		}
		c.w.b, c.w.err = c.buf[:n], nil
		if err := f.dst.rc.Control(c.writeFn); err != nil {
			c.w.err = err
		}
		left := c.w.b
		c.w.b = nil
		if c.w.err != nil {
			f.acc.add(n - len(left)) // what went out before the error
			c.res, c.err, c.w.err = inlineEnd, c.w.err, nil
			return
		}
		if len(left) > 0 {
			// The destination is full: a goroutine writes the rest, waiting as long as it
			// takes, with the loop's buffer (onEvent hands it over).
			f.acc.add(n - len(left))
			f.carryB = left
			c.res = inlineHandoff
			return
		}
		f.acc.add(n)
		switch {
		case n == len(c.buf):
			c.res = inlineHandoff // bulk: the goroutine splices the rest
			return
		case !c.rdhup:
			c.res = inlineDrained
			return
		}
		// The peer's FIN is there: read on to it.
	}
}

// end finishes a flow: it leaves the dormancy table and tells the session.
func (f *flow) end(err error) {
	f.state.Store(flowEnded)
	f.sp.s.srv.dormancy.forget(f)
	f.sp.ended(f, err)
}

// resume is the start of an inline flow's goroutine: it writes the bytes the loop could not.
func (f *flow) resume() error {
	if f.carryB == nil {
		return nil
	}
	b := f.carryB
	f.carryB = nil
	err := f.acc.write(f.dst, b, nil)
	copyBufPool.put(f.carry)
	f.carry = nil
	if err != nil {
		return err
	}
	f.acc.add(len(b))
	return nil
}
