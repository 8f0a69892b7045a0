package proxy

import (
	"net"
	"os"
	"syscall"
)

// This file lets the dormancy loops copy a plain session themselves: an event loop for the
// splice phase, as nginx's workers are, with goroutines only where a loop cannot serve.
//
// A flow between two plain sockets, with no traffic observer, is "inline": at the handoff it
// starts dormant instead of with a goroutine, its source registered with one of the dormancy
// loops' epoll instances, edge-triggered (EPOLLET|EPOLLRDHUP), for the session's life. Both
// flows of a session are given the same loop. When the source becomes readable the loop's
// goroutine reads it into the loop's buffer (loopBufSize) and writes the bytes to the other
// socket, both without blocking, and goes on until the source is drained, bulk data (a FETCH
// body, an APPEND) included:
//   - the destination's send buffer is full: the bytes left wait in the flow (carryB, in a
//     buffer of the flow's own: keep) and the other flow's registration, whose source is
//     this destination, asks EPOLLOUT too (wantOut). Its EPOLLOUT event makes the loop
//     write them (onWritable) and read on. While it waits the flow reads nothing: the
//     sender is held back by TCP, as by any proxy;
//   - a flow that has had its share of a turn (inlineShare bytes) goes to the back of the
//     loop's queue (pollLoop.again), so one download does not hold up the loop's other
//     sessions; the loop takes it up again after the events that came meanwhile.
//
// A goroutine is started for a flow only when the loop cannot go on with it: its destination
// is full and the other flow's registration cannot ask EPOLLOUT (it is muted: that flow has
// a goroutine); the goroutine writes what is left and copies as splice.go's flows do,
// until the sweeper sends the flow back to the loop after DormantAfter (sleep). Closing the
// session (closeAll) from any other goroutine (a kick, shutdown, the half-close timer) wakes
// a dormant flow, waiting bytes or not: its goroutine sees the close and ends. A flow that
// ends in the loop (EOF, an error) ends there: spliceState.ended waits for nothing, and
// when its end closes the session (the backend's FIN after LOGOUT, the usual end) the loop
// ends the other flow too (pollLoop.end), with no goroutine. (If the session ends with it, its
// end line is logged from the loop. imapgate serve's log writer appends the line to a batch; a log destination
// that blocks would hold the loop when a batch is full, as it would hold every login.)
//
// Why: a goroutine per direction cost two goroutine starts per session, a wake-up and a
// park per message, and a read that says EAGAIN after every message (the runtime's poller
// clears readiness when a wait starts, and a FIN that came with the last bytes raises no new
// edge, so only a read can tell the socket is drained). In the loop, the event's EPOLLRDHUP
// says whether the peer's FIN came: a short read without it means drained (a FIN or bytes
// arriving after the event raise a new edge). Bulk data stays in the loop too: handed to a
// goroutine with splice(2), a download cost the backend 14-22 % more CPU per MB than behind
// the bench's loop relay (four runs; splice takes the sender's pages by reference, the
// likelier cause) and imapgate its goroutines' wake-ups; what copying in the loop saves is in
// the README (Performance).
//
// Ownership: flow.state says who may touch the flow. Dormant: nobody; a loop takes it on an
// event (flowInline) and gives it back, or hands it to a goroutine (flowRunning) after muting
// its registration, so no event comes for it while the goroutine runs. A flow waiting for
// its destination is dormant too, with carryB set: whoever takes it next (the loop on
// EPOLLOUT, or a goroutine woken by the session's close) writes those bytes first; the
// loop ending it after a close it made itself drops them (the destination is closed). sleep says
// dormant first and then turns the registration on again: an event that follows finds the
// flow the loop's. A flow in the loop's hands sees spliceState.closed when the loop gives it
// back. The descriptors are used only inside their RawConn's Control callback, which holds
// them open: a session closed meanwhile cannot make the loop read or write another
// connection's reused descriptor number.

// inlineShare is how many bytes the loop copies for one flow before it turns to its other
// events: 4 reads of its buffer. A flow is in the queue once at most (flow.queued), so in a
// round of the loop (the events of one epoll_pwait(2), then the queue) it copies one share
// from the queue and at most one from its events: a download waits for the other ready
// flows' shares, and costs one epoll_pwait(2) more per 256 KiB.
const inlineShare = 256 << 10

// loopBufSize is a loop's read buffer. A read takes what the socket has, up to that: a
// message costs the same with any size, and bulk data moves in fewer, larger reads and
// writes. Measured against 16 KiB (`imapgate bench -scenarios throughput`, two alternating
// runs of three rounds): 0.7 against 1.0 of the proxy's CPU per MB, the same MB/s within the
// machine's noise.
const loopBufSize = 64 << 10

// loopBufPool holds the loops' buffers, and those of flows that wait with more than
// copyBufSize bytes (keep). Not counted (unlike bulkBufPool): a loop holds its buffer for
// its life, and a flow that waits for a slow client holds one as it holds its bytes.
var loopBufPool = newBufPool(loopBufSize, false)

// inlineResult is what one inline copy ended with.
type inlineResult int8

const (
	inlineDrained inlineResult = iota // the source is empty: the flow stays the loop's
	inlineBlocked                     // the destination is full: carryB waits for EPOLLOUT
	inlineShared                      // the flow had its share: the loop's queue has it
	inlineEnd                         // EOF or an error (inlineCopy.err): the flow ends
)

// inlineCopy is a loop's state for the copy it is making: the flow, and what the read and
// write callbacks found. One per loop (only its goroutine copies), so a flow holds none of
// it, and its callbacks are bound once per loop: a copy allocates nothing.
type inlineCopy struct {
	readFn, writeFn func(fd uintptr)

	share int // inlineShare (tests lower it)
	f     *flow
	buf   []byte // the loop's buffer
	w     rawWriter
	res   inlineResult
	err   error // the end's (nil at EOF)
}

// write writes w.b to the destination without waiting (rawWriter's callback: at EAGAIN
// what is left stays in w.b).
func (c *inlineCopy) write(fd uintptr) { c.w.writeSome(fd) }

// writeTo writes b to f's destination without waiting and counts what went: it returns
// what the socket did not take (it is full), or the write's error.
func (c *inlineCopy) writeTo(f *flow, b []byte) (left []byte, err error) {
	c.w.b, c.w.err = b, nil
	if err := f.dst.rc.Control(c.writeFn); err != nil {
		c.w.err = err
	}
	left, err = c.w.b, c.w.err
	c.w.b, c.w.err = nil, nil
	f.acc.add(len(b) - len(left))
	return left, err
}

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

// onEvent is the loop's turn for an inline flow whose source raised an event (events), or
// whose turn in the loop's queue came (events 0).
func (l *pollLoop) onEvent(f *flow, events uint32) {
	if !f.state.CompareAndSwap(flowDormant, flowInline) {
		return // a goroutine has it (closeAll woke it), or it has ended
	}
	if events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
		f.hup = true
	}
	if f.carryB != nil {
		l.rest(f) // its destination is full: it reads on after onWritable
		return
	}
	l.copy(f)
}

// onWritable is the loop's turn for an inline flow whose destination raised EPOLLOUT (on the
// other flow's registration): it writes the bytes that waited, then reads on.
func (l *pollLoop) onWritable(f *flow) {
	if !f.state.CompareAndSwap(flowDormant, flowInline) {
		return
	}
	if f.carryB == nil {
		// Nothing waits (EPOLLOUT comes with every event once asked): as it was.
		f.state.Store(flowDormant)
		l.d.recheck(f)
		return
	}
	left, err := l.cp.writeTo(f, f.carryB)
	switch {
	case err != nil:
		f.dropCarry()
		l.d.count(-1)
		l.end(f, err)
	case len(left) > 0:
		f.carryB = left
		l.rest(f)
	default:
		f.dropCarry()
		l.copy(f)
	}
}

// rest gives f, which the loop holds, back: dormant, watched by its registration.
func (l *pollLoop) rest(f *flow) {
	f.state.Store(flowDormant)
	l.d.recheck(f)
	slept(f)
}

// copy reads f's source and writes to its destination (inlineCopy.read) and settles what
// became of f.
func (l *pollLoop) copy(f *flow) {
	d := l.d
	c := &l.cp
	c.f, c.buf = f, *l.bp
	if err := f.src.rc.Control(c.readFn); err != nil {
		c.res, c.err = inlineEnd, err // closed under us: the session is ending
	}
	res, err := c.res, c.err
	c.f, c.buf, c.err = nil, nil, nil
	switch res {
	case inlineDrained:
		l.rest(f)
	case inlineShared:
		if !f.queued { // it may have had a turn from an event while queued: once is enough
			f.queued = true
			l.again = append(l.again, f)
		}
		l.rest(f)
	case inlineEnd:
		d.count(-1)
		l.end(f, err)
	default: // inlineBlocked
		if h := testHookBlocked.Load(); h != nil {
			(*h)(f.from)
		}
		l.keep(f)
		if d.wantOut(f.reverse()) {
			l.rest(f)
			return
		}
		// The other flow has a goroutine: this one gets one too, which waits for the
		// destination in the runtime's poller. Its registration is muted meanwhile until
		// sleep turns it on again. One-shot and edge-triggered: EPOLLHUP and EPOLLERR,
		// which epoll reports whatever the mask, come once at most.
		_ = d.epollCtl(f, flowRunning, epollMuted)
		d.count(-1)
		go f.run()
	}
}

// read is the loop's copy, inside the source's Control callback: read, write, until the
// source is drained (a short read, and no FIN said), the destination is full, or the flow
// has had its share.
func (c *inlineCopy) read(fd uintptr) {
	f := c.f
	share := c.share
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
		left, err := c.writeTo(f, c.buf[:n])
		if err != nil {
			c.res, c.err = inlineEnd, err
			return
		}
		if len(left) > 0 {
			f.carryB = left
			c.res = inlineBlocked
			return
		}
		switch share -= n; {
		case n < len(c.buf) && !f.hup:
			c.res = inlineDrained
			return
		case share <= 0:
			c.res = inlineShared
			return
		}
		// More may be there: a full read, or the peer's FIN is known (read on to it).
	}
}

// keep makes the bytes f could not write (carryB, in the loop's buffer) f's own: up to
// copyBufSize are copied into a small buffer from the pool, more stay in the loop's buffer,
// which f takes (the loop takes another). A download parked on a slow client thus holds at
// most loopBufSize.
func (l *pollLoop) keep(f *flow) {
	if len(f.carryB) <= copyBufSize {
		f.carry = copyBufPool.get()
		f.carryB = (*f.carry)[:copy(*f.carry, f.carryB)]
		return
	}
	f.carry, l.bp = l.bp, loopBufPool.get()
}

// dropCarry gives the buffer of f's waiting bytes back to its pool.
func (f *flow) dropCarry() {
	if len(*f.carry) == copyBufSize {
		copyBufPool.put(f.carry)
	} else {
		loopBufPool.put(f.carry)
	}
	f.carry, f.carryB = nil, nil
}

// turn gives each flow in the loop's queue (pollLoop.again) its next share.
func (l *pollLoop) turn() {
	q := l.again
	l.again = l.spare[:0]
	for _, f := range q {
		f.queued = false
		l.onEvent(f, 0)
	}
	clear(q)
	l.spare = q[:0]
}

// reverse is the session's other flow: its source is f's destination.
func (f *flow) reverse() *flow {
	fl := &f.sp.flows
	if fl[0] == f {
		return fl[1]
	}
	return fl[0]
}

// end finishes a flow: it leaves the dormancy table and tells the session.
func (f *flow) end(err error) { f.endIn(nil, err) }

// endIn is end called by the goroutine of loop l (nil: any other).
func (f *flow) endIn(l *pollLoop, err error) {
	f.state.Store(flowEnded)
	f.sp.s.srv.dormancy.forget(f)
	f.sp.ended(f, err, l)
}

// end ends f, which the loop holds, and then the inline flows whose session that closed
// (flow.wakeIn put them in l.ending), as their goroutine would have: the bytes that waited
// for room in the destination go nowhere (it is closed), and the flow ends with
// net.ErrClosed, which marks no error. Their own ends find the session closed already, so
// l.ending takes no more meanwhile.
func (l *pollLoop) end(f *flow, err error) {
	f.endIn(l, err)
	for i, o := range l.ending {
		l.ending[i] = nil
		if o.carryB != nil {
			o.dropCarry()
		}
		o.endIn(l, net.ErrClosed)
	}
	l.ending = l.ending[:0]
}

// resume is the start of an inline flow's goroutine: it writes the bytes the loop could not.
func (f *flow) resume() error {
	if f.carryB == nil {
		return nil
	}
	b := f.carryB
	err := f.acc.write(f.dst, b, nil)
	f.dropCarry()
	if err != nil {
		return err
	}
	f.acc.add(len(b))
	return nil
}
