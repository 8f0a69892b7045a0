package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// This file moves bytes after login. Nothing here parses IMAP: the bytes go through
// unchanged, both ways, until both directions have ended.
//
// Each direction is a flow. Between two plain sockets with no observer the dormancy loops
// copy it (inline.go); otherwise, or when a loop cannot go on with it, a goroutine runs
// copyConn. Short messages go through a pooled 16 KiB buffer (one TLS record); bulk bursts
// between plain sockets go through splice(2) (zero-copy, see DESIGN.md; used only where no
// loop copies them) with a pooled pipe, and bulk bursts to a TLS side through a
// pooled 64 KiB buffer whose records leave in one write(2) (nbConn.gather); the buffer goes
// back before that write, which may wait for a slow client. Bulk bursts from a TLS side to a
// plain one fill that buffer with up to four decrypted records per write. An idle direction
// holds none of them: it is parked in the runtime's poller (rawio.go).

// copyBufSize is one maximal TLS record (RFC 8446 section 5.1).
const copyBufSize = 16 << 10

var copyBufPool = newBufPool(copyBufSize, false)

// bulkBufSize is the buffer a copy to a TLS side takes once a read has filled a copyBufSize
// one (bulk data is flowing, and splice(2) cannot encrypt): fewer, larger reads, and with
// nbConn.gather one write(2) for the four records made of it. It goes back to its pool when
// the source is drained. Measured (BenchmarkCopy/plain_to_tls): 553 → 765 MB/s, a third of
// the allocations; 128 and 256 KiB cost as much CPU per MB in `imapgate bench` and hold more
// memory per downloading session.
const bulkBufSize = 64 << 10

var bulkBufPool = newBufPool(bulkBufSize, true)

// bufPool is a pool of copy buffers of one size. A counted pool keeps the number of buffers
// taken and not yet given back: the bulk one, whose buffers a download parked on a slow
// client must not hold (TestGatherFlushHoldsNoCopyBuffer). The small one is taken for every
// message and not counted: no shared counter on that path.
type bufPool struct {
	pool    sync.Pool
	counted bool
	out     atomic.Int64
}

func newBufPool(size int, counted bool) *bufPool {
	p := &bufPool{counted: counted}
	p.pool.New = func() any { b := make([]byte, size); return &b }
	return p
}

func (p *bufPool) get() *[]byte {
	if p.counted {
		p.out.Add(1)
	}
	return p.pool.Get().(*[]byte)
}

func (p *bufPool) put(b *[]byte) {
	if p.counted {
		p.out.Add(-1)
	}
	p.pool.Put(b)
}

// halfCloseLinger is how long the backend may go on sending after the client has closed its
// sending half. IMAP has no use for a long half-open connection: a client that sent its last
// bytes (LOGOUT) and closed its half gets the replies in that time. Past it both connections
// are closed.
const halfCloseLinger = 5 * time.Second

// splice makes the session's two flows, client→backend and backend→client, on one dormancy
// loop; start starts them, and the session goroutine, whose stack grew during the pre-auth
// conversation, ends. A flow with a goroutine that stays quiet goes dormant (dormant.go):
// its goroutine ends too, and the server's dormancy poller starts a new one when bytes
// come. When both flows have ended, the last one closes both connections and calls done.
// The splice records byte counts, who closed first and the first real error.
//
// The caller holds s.mu and sets s.sp: from then on interrupt reaches the flows through it.
func (s *session) splice(done func()) *spliceState {
	sp := &spliceState{s: s, done: done}
	client := makeEndpoint(s.raw, s.conn, s.nb)
	backend := makeEndpoint(s.up.raw, s.up.conn, s.up.nb)
	sp.flows[0] = sp.newFlow(backend, client, s.raw, &s.c2b, "client")
	sp.flows[1] = sp.newFlow(client, backend, s.up.raw, &s.b2c, "backend")
	// One loop for both: a flow waiting for room in its destination hears of it through the
	// other's registration (inline.go).
	l := s.srv.dormancy.pick()
	sp.flows[0].loop, sp.flows[1].loop = l, l
	sp.left.Store(2)
	return sp
}

// start starts both flows: in the dormancy poller's loop if they can be copied there
// (inline.go), else each with a goroutine.
func (sp *spliceState) start() {
	d := sp.s.srv.dormancy
	for _, f := range sp.flows {
		if !d.arm(f) {
			go f.run()
		}
	}
}

// spliceState is shared by a session's two flows.
type spliceState struct {
	s        *session
	done     func()
	flows    [2]*flow
	left     atomic.Int32
	closed   atomic.Bool
	once     sync.Once
	mu       sync.Mutex
	firstEnd string
	timer    *time.Timer
}

// closeAll closes both connections and wakes any dormant flow, so it sees the close and
// ends. Safe to call from any goroutine, any number of times.
func (sp *spliceState) closeAll() { sp.closeAllIn(nil) }

// closeAllIn is closeAll called by the goroutine of loop l (nil: by any other goroutine). A
// dormant inline flow of l is then not given a goroutine just to see the close: l ends it
// once the flow at hand has ended (pollLoop.end). Most plain sessions end so (the
// backend's FIN after LOGOUT comes to the loop), and a goroutine started for it cost a
// wake-up and, with the session's end logged on its fresh stack, a stack copy: about 5 % of
// the proxy's CPU in the logins benchmark.
func (sp *spliceState) closeAllIn(l *pollLoop) {
	sp.once.Do(func() {
		sp.closed.Store(true)
		_ = sp.s.raw.Close()
		_ = sp.s.up.raw.Close()
		for _, f := range sp.flows {
			f.wakeIn(l)
		}
	})
}

// flow is one direction of a spliced session: it reads from src ("client" or "backend", in
// from) and writes to dst.
type flow struct {
	sp       *spliceState
	dst, src *endpoint
	srcRaw   net.Conn // the socket under src, for the sweeper's read deadline
	acc      accounting
	from     string

	state    atomic.Int32 // flowRunning (a goroutine owns the flow), flowDormant, flowInline, flowEnded
	inline   bool         // the dormancy loop copies the flow itself (inline.go); set before it is dormant
	carry    *[]byte      // inline: the buffer holding carryB (pollLoop.keep)
	carryB   []byte       // inline: bytes the loop could not write (the destination was full)
	hup      bool         // inline: an event said the source's peer closed (or failed): read on to EOF
	queued   bool         // inline: in its loop's queue (pollLoop.again); the loop goroutine's only
	sleepReq atomic.Bool  // the sweeper has asked the flow to go dormant
	busy     atomic.Bool  // bytes moved since the sweeper last looked
	quiet    int          // sweeps in a row that found the flow quiet; under its registry shard's lock
	shard    uint8        // its shard in dormancy's running-flow registry
	loop     *pollLoop    // its dormancy loop: the session's, given at the handoff (tests: at its first registration)
	// Guarded by its loop's mu.
	id        uint64 // key in the dormancy table, 0 until the flow first goes dormant
	watched   bool   // registered with the dormancy epoll
	events    uint32 // its registration's events, once watched
	forgotten bool   // the flow has ended: never arm it again
}

const (
	flowRunning int32 = iota
	flowDormant
	flowInline // the dormancy poller's loop is copying it (inline.go)
	flowEnded  // the flow has ended
)

func (sp *spliceState) newFlow(dst, src *endpoint, srcRaw net.Conn, n *atomic.Int64, from string) *flow {
	s := sp.s
	f := &flow{sp: sp, dst: dst, src: src, srcRaw: srcRaw, from: from,
		shard: uint8(flowShards.Add(1) % runShards)}
	f.acc = accounting{count: n, m: s.srv.metrics, dir: metricDir[from], busy: &f.busy, w: new(rawWriter)}
	if obs := s.observer; obs != nil {
		acc := &f.acc
		acc.tap = obs.fromClient
		if from == "backend" {
			acc.tap, acc.wmu = obs.fromBackend, &s.clientWMu
		}
	}
	f.busy.Store(true)
	return f
}

// run is a flow's goroutine; named so it shows in stack dumps. It copies until the flow
// ends, or until it goes dormant at the sweeper's request.
func (f *flow) run() {
	if h := testHookRun.Load(); h != nil {
		(*h)(f)
	}
	var err error
	if f.inline {
		err = f.resume()
	}
	if err == nil {
		var slept bool
		if slept, err = f.copyOrSleep(); slept {
			return
		}
	}
	f.end(err)
}

// copyOrSleep copies until the flow ends (the copy's error, nil at EOF) or goes dormant at the
// sweeper's request (slept: a dormancy loop has it now).
func (f *flow) copyOrSleep() (slept bool, err error) {
	d := f.sp.s.srv.dormancy
	d.running(f, true)
	for {
		_, err = copyConn(f.dst, f.src, f.acc)
		if err == nil || !f.sleepReq.Load() || !errors.Is(err, os.ErrDeadlineExceeded) {
			d.running(f, false)
			return false, err
		}
		// Deadline first: a sweep in between sees the request still standing and makes no
		// new one, so none is lost with its deadline.
		_ = f.srcRaw.SetReadDeadline(time.Time{})
		f.sleepReq.Store(false)
		d.running(f, false)
		if d.sleep(f) {
			return true, nil
		}
		d.running(f, true)
	}
}

// wake gives a dormant flow a goroutine again.
func (f *flow) wake() { f.wakeIn(nil) }

// wakeIn is wake called by the goroutine of loop l (nil: any other), which only
// closeAllIn does: an inline flow of l goes to l's list of flows to end (pollLoop.ending)
// instead, since with both sockets closed there is nothing left for it to copy.
func (f *flow) wakeIn(l *pollLoop) {
	if f.state.CompareAndSwap(flowDormant, flowRunning) {
		f.sp.s.srv.dormancy.count(-1)
		if l != nil && f.loop == l && f.inline {
			l.ending = append(l.ending, f)
			return
		}
		go f.run()
	}
}

// ended handles the end of one flow; the last one to end finishes the session.
func (sp *spliceState) ended(f *flow, err error, l *pollLoop) {
	s := sp.s
	sp.mu.Lock()
	if sp.firstEnd == "" {
		sp.firstEnd = f.from
	}
	if err != nil && !isClosedConnErr(err) && s.endErr == nil && !s.closing.Load() {
		s.endErr = err
	}
	if fc, ok := f.srcRaw.(*fdConn); ok && err == nil && f.from == "backend" && !f.src.tls {
		// The backend's FIN is read (it closes after LOGOUT): closing its socket need not
		// send ours at once. Not the client's: a client that half-closed after LOGOUT reads
		// on until our FIN, which must not wait for the batched close.
		fc.peerFIN.Store(true)
	}
	switch {
	case err != nil, f.from == "backend":
		// When the backend has closed, nothing the client sends can be answered any more:
		// end now. A TLS client gets close_notify first; on plain TCP the close sends the
		// FIN itself.
		if err == nil && f.dst.tls {
			closeWrite(f.dst.conn)
		}
		sp.mu.Unlock()
		sp.closeAllIn(l)
	default:
		// The client has closed its half: pass the half-close on; the backend may still
		// answer what it sent last (LOGOUT): give it a little while.
		closeWrite(f.dst.conn)
		if sp.timer == nil {
			sp.timer = time.AfterFunc(halfCloseLinger, sp.closeAll)
		}
		sp.mu.Unlock()
	}
	if sp.left.Add(-1) == 0 {
		sp.mu.Lock()
		if sp.timer != nil {
			sp.timer.Stop()
		}
		sp.mu.Unlock()
		sp.closeAllIn(l)
		s.closedBy = sp.firstEnd
		sp.done()
	}
}

// endpoint is one side of a spliced session.
type endpoint struct {
	conn net.Conn        // what bytes are read from and written to: the socket or the *tls.Conn
	rc   syscall.RawConn // the socket; nil when it is not one (then copies block, as io.Copy)
	nb   *nbConn         // under conn when conn is TLS over a socket
	tls  bool
}

// gathers reports whether writes to e can go through nbConn.gather: TLS over a socket.
func (e *endpoint) gathers() bool { return e.tls && e.nb != nil }

func makeEndpoint(raw, conn net.Conn, nb *nbConn) *endpoint {
	e := &endpoint{conn: conn, nb: nb}
	_, e.tls = conn.(*tls.Conn)
	if sc, ok := raw.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			e.rc = rc
		}
	}
	if e.tls && nb == nil {
		e.rc = nil // TLS we cannot read without blocking: fall back to a blocking copy
	}
	if nb != nil {
		nb.nonblocking.Store(true)
	}
	return e
}

// copyConn copies src to dst until EOF (nil error) or an error. While src has nothing to
// read, it holds no buffer and no pipe: it waits in the poller.
//
// Every chunk moved is added to count and reported to m under direction as it goes, so the
// admin API and metrics see live figures.
// With a tap (the traffic observer) bytes go through user space: splice is not used.
func copyConn(dst, src *endpoint, acc accounting) (int64, error) {
	if src.rc == nil || dst.rc == nil {
		return copyBlocking(dst.conn, src.conn, acc)
	}
	// Most IMAP traffic is short lines, for which read(2) and write(2) through a pooled
	// 16 KiB buffer cost less than splice(2) (measured: a NOOP round trip spent most of the
	// proxy's time in splice calls). When a read fills the buffer between plain sockets,
	// bulk data is flowing (a FETCH body, an APPEND upload) and the rest of the burst goes
	// through splice(2) with a pipe from the pool.
	canSplice := !src.tls && !dst.tls && acc.tap == nil
	var total int64
	for {
		bulk, err := pump(dst, src, acc, &total, canSplice)
		if err != nil || !bulk {
			return total, err
		}
		eof, err := spliceBurst(dst, src, acc, &total)
		if err != nil || eof {
			return total, err
		}
	}
}

// metricDir names the direction of the copy that starts at a side.
var metricDir = map[string]string{"client": "client_to_backend", "backend": "backend_to_client"}

// accounting adds moved bytes to a session counter and to the metrics, and shows them to
// the traffic observer (tap) before they are written.
type accounting struct {
	count *atomic.Int64
	m     Metrics
	dir   string
	tap   func([]byte) // nil without the observer; must not modify or keep its argument
	wmu   *sync.Mutex  // if set, held around tap and write (kick's BYE takes it too)
	busy  *atomic.Bool // if set, marked for every chunk moved, for the sweeper
	w     *rawWriter   // writes to a plain socket; the flow's own (nil: writeAll)
}

// moved marks the flow busy for the sweeper.
func (a accounting) moved() {
	if a.busy != nil {
		a.busy.Store(true)
	}
}

// write shows b to the tap and writes it to dst: through crypto/tls, or straight to the
// socket. A write gathered for a TLS side calls release (if not nil) as soon as b is no
// longer needed, which can be before the write returns.
func (a accounting) write(dst *endpoint, b []byte, release func()) error {
	if a.wmu != nil {
		a.wmu.Lock()
		defer a.wmu.Unlock()
	}
	if a.tap != nil {
		a.tap(b)
	}
	if dst.gathers() && len(b) > copyBufSize {
		return dst.nb.gather(dst.conn, b, release)
	}
	if dst.tls || dst.rc == nil {
		_, err := dst.conn.Write(b)
		return err
	}
	if a.w == nil {
		return writeAll(dst.rc, b)
	}
	return a.w.write(dst.rc, b)
}

func (a accounting) add(n int) {
	if a.count != nil {
		a.count.Add(int64(n))
	}
	if a.m != nil {
		a.m.Bytes(a.dir, int64(n))
	}
}

// pump moves what src sends to dst through a pooled buffer until EOF (false, nil), an error,
// or (with canSplice) a read that fills the buffer (true, nil). Each read is made inside a
// RawConn.Read callback on src; when it says EAGAIN the buffer goes back to the pool and the
// goroutine parks in the poller, holding nothing. The callback (pumpReader.read) and the
// write's (the flow's rawWriter) are bound once, so a message between plain sockets
// allocates nothing (TestCopyConnAllocatesNothingPerMessage).
//
// The write to dst happens outside the callback: a callback holds a reference on src, and
// closing src waits for every reference, so a write parked on a full dst inside it would make
// closing the session wait for dst forever.
//
// It reads until EAGAIN even after a short read: a short read can carry the last bytes before
// the peer's FIN, and the FIN raises no new readiness edge after that read (found by
// TestCopyConnShortMessageThenFIN). Linux's TCP_INQ would tell without the extra read(2);
// measured, skipping it did not change the proxy's CPU per NOOP round trip (50.5 vs 51.2 µs).
// Under crypto/tls, nbConn reads the socket inside the same callback.
func pump(dst, src *endpoint, acc accounting, total *int64, canSplice bool) (bulk bool, err error) {
	r := &pumpReader{src: src, pool: copyBufPool}
	defer func() {
		if r.bp != nil {
			r.pool.put(r.bp)
		}
	}()
	// A gathered write calls release once its records are made, before they leave: a TLS
	// client that reads slowly then parks the copy holding the records only, not the bulk
	// buffer too (TestGatherFlushHoldsNoCopyBuffer).
	release := func() {
		r.pool.put(r.bp)
		r.bp = nil
	}
	read := r.read // bound once: nothing is allocated per message
	// A burst towards a TLS side, or from one to a plain side, goes on with a bulk buffer.
	// (Between two TLS sides the records go one by one.)
	bulkBurst := dst.gathers() && !src.tls || src.tls && !dst.tls
	for {
		r.n, r.e = 0, nil
		if rerr := src.rc.Read(read); rerr != nil {
			return false, rerr
		}
		n, e := r.n, r.e
		full := false
		if n > 0 {
			acc.moved()
			full = n == len(*r.bp)
			if err := acc.write(dst, (*r.bp)[:n], release); err != nil {
				return false, err
			}
			*total += int64(n)
			acc.add(n)
		}
		switch {
		case e == io.EOF:
			return false, nil
		case e != nil && e != errWouldBlock:
			return false, e
		case e == nil && canSplice && full:
			return true, nil
		case e == nil && bulkBurst && r.pool == copyBufPool && full:
			// A small buffer is never gathered, so never released: r.bp is still here.
			copyBufPool.put(r.bp)
			r.bp, r.pool = nil, bulkBufPool
		}
	}
}

// pumpReader is pump's read, made in src's RawConn.Read callback: a buffer from pool (into
// bp) only when the socket has bytes, and what the read gave (n, e).
type pumpReader struct {
	src  *endpoint
	bp   *[]byte
	pool *bufPool // where bp comes from: bulkBufPool during a burst to a TLS side
	n    int
	e    error
}

// read is the callback: false (park until readable) when the socket is empty, with the
// buffer back in the pool.
func (r *pumpReader) read(fd uintptr) bool {
	src := r.src
	if src.nb != nil {
		src.nb.enter(fd)
		defer src.nb.leave()
	}
	if r.bp == nil {
		r.bp = r.pool.get()
	}
	if src.tls {
		r.n, r.e = src.conn.Read(*r.bp) // crypto/tls over nbConn: decrypts buffered records first
		// crypto/tls returns one record per Read: in a burst (the bulk buffer) read on
		// while records are there, so that one write carries up to four.
		for r.pool == bulkBufPool && r.e == nil && r.n > 0 && r.n < len(*r.bp) {
			m, e2 := src.conn.Read((*r.bp)[r.n:])
			r.n += m
			if e2 == errWouldBlock || m == 0 {
				break
			}
			r.e = e2 // EOF or an error after data: the data goes first
		}
	} else {
		r.n, r.e = readNonblock(fd, *r.bp)
	}
	if r.n == 0 && r.e == errWouldBlock {
		r.pool.put(r.bp)
		r.bp, r.pool = nil, copyBufPool
		return false // park until readable
	}
	return true
}

// spliceBurst moves the rest of a bulk burst from src to dst with splice(2) through a pipe
// from the pool, until src is empty (then the pipe goes back to the pool) or at EOF.
func spliceBurst(dst, src *endpoint, acc accounting, total *int64) (eof bool, err error) {
	var p *pipe
	for {
		m, err := spliceIn(src.rc, &p)
		if err == errWouldBlock {
			return false, nil // drained: back to small reads, which park
		}
		if err != nil {
			if p != nil {
				putPipe(p) // empty: each chunk is drained before the next splice in
			}
			return false, err
		}
		acc.moved()
		if m == 0 {
			putPipe(p)
			return true, nil
		}
		if err := spliceOut(dst.rc, p, m); err != nil {
			p.close() // may still hold data: never pooled
			return false, err
		}
		*total += int64(m)
		acc.add(m)
	}
}

// copyBlocking is the fallback for connections that are not sockets.
func copyBlocking(dst, src net.Conn, acc accounting) (int64, error) {
	bp := copyBufPool.get()
	defer copyBufPool.put(bp)
	// Hide ReaderFrom/WriterTo so the buffer is really used.
	return io.CopyBuffer(accountingWriter{&endpoint{conn: dst}, acc}, struct{ io.Reader }{src}, *bp)
}

type accountingWriter struct {
	w   *endpoint
	acc accounting
}

func (a accountingWriter) Write(b []byte) (int, error) {
	a.acc.moved()
	if err := a.acc.write(a.w, b, nil); err != nil {
		return 0, err
	}
	a.acc.add(len(b))
	return len(b), nil
}

// closeWrite half-closes conn's sending side: TLS close_notify, then TCP FIN.
func closeWrite(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		_ = tc.CloseWrite()
		c = tc.NetConn()
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// isClosedConnErr reports errors that only say the connection went away, which is how
// sessions end: not worth an error in the log.
func isClosedConnErr(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
