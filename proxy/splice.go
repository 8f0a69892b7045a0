package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// This file moves bytes after login. Nothing here parses IMAP: the bytes go through
// unchanged, both ways, until both directions have ended.
//
// Between two plain TCP connections io.Copy uses splice(2) on Linux (zero-copy, see
// DESIGN.md). Where a side is TLS the bytes pass through user space anyway; a 16 KiB buffer
// (one TLS record) per direction is used instead of io.Copy's 32 KiB.

// copyBufSize is one maximal TLS record (RFC 8446 section 5.1).
const copyBufSize = 16 << 10

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// halfCloseLinger is how long the backend may go on sending after the client has closed its
// sending half. IMAP has no use for a long half-open connection: a client that sent its last
// bytes (LOGOUT) and closed its half gets the replies in that time. Past it both connections
// are closed.
const halfCloseLinger = 5 * time.Second

// splice starts copying client→backend and backend→client, each in a new goroutine, and
// returns at once: the session goroutine, whose stack grew during the pre-auth conversation,
// ends, so an idle session holds only the two small stacks of its copy loops. When both
// directions have ended, the last one closes both connections and calls done. It records
// byte counts, who closed first and the first real error.
func (s *session) splice(done func()) {
	sp := &spliceState{s: s, done: done}
	client := makeEndpoint(s.raw, s.conn, s.nb)
	backend := makeEndpoint(s.up.raw, s.up.conn, s.up.nb)
	sp.left.Store(2)
	go sp.direction(backend, client, &s.c2b, "client")
	go sp.direction(client, backend, &s.b2c, "backend")
}

// spliceState is shared by a session's two copy goroutines.
type spliceState struct {
	s        *session
	done     func()
	left     atomic.Int32
	once     sync.Once
	mu       sync.Mutex
	firstEnd string
	timer    *time.Timer
}

func (sp *spliceState) closeAll() {
	sp.once.Do(func() {
		_ = sp.s.raw.Close()
		_ = sp.s.up.raw.Close()
	})
}

// direction is one copy goroutine; named so it shows in stack dumps.
func (sp *spliceState) direction(dst, src *endpoint, n *atomic.Int64, from string) {
	s := sp.s
	acc := accounting{count: n, m: s.srv.metrics, dir: metricDir[from]}
	if obs := s.observer; obs != nil {
		acc.tap = obs.fromClient
		if from == "backend" {
			acc.tap, acc.wmu = obs.fromBackend, &s.clientWMu
		}
	}
	_, err := copyConn(dst, src, acc)
	sp.ended(dst, from, err)
	if sp.left.Add(-1) == 0 {
		sp.mu.Lock()
		if sp.timer != nil {
			sp.timer.Stop()
		}
		sp.mu.Unlock()
		sp.closeAll()
		s.closedBy = sp.firstEnd
		sp.done()
	}
}

// ended handles the end of one direction.
func (sp *spliceState) ended(dst *endpoint, from string, err error) {
	s := sp.s
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.firstEnd == "" {
		sp.firstEnd = from
	}
	if err != nil && !isClosedConnErr(err) && s.endErr == nil && !s.closing.Load() {
		s.endErr = err
	}
	if err != nil {
		sp.closeAll()
		return
	}
	// EOF: pass the half-close on. When the backend has closed, nothing the client sends can
	// be answered any more: end now. When the client has closed its half, the backend may
	// still answer what it sent last (LOGOUT): give it a little while.
	closeWrite(dst.conn)
	if from == "backend" {
		sp.closeAll()
		return
	}
	if sp.timer == nil {
		sp.timer = time.AfterFunc(halfCloseLinger, sp.closeAll)
	}
}

// endpoint is one side of a spliced session.
type endpoint struct {
	conn net.Conn        // what bytes are read from and written to: the socket or the *tls.Conn
	rc   syscall.RawConn // the socket; nil when it is not one (then copies block, as io.Copy)
	nb   *nbConn         // under conn when conn is TLS over a socket
	tls  bool
}

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

// read reads what src has now without blocking: (0, errWouldBlock) when nothing.
func (e *endpoint) read(b []byte) (int, error) {
	if e.tls {
		return e.conn.Read(b) // crypto/tls over nbConn: decrypts buffered records first
	}
	return readNonblock(e.rc, b)
}

// copyConn copies src to dst until EOF (nil error) or an error. While src has nothing to
// read, it holds no buffer and no pipe: it waits in the poller.
//
// Every chunk moved is added to count and reported to m under direction as it goes, so the
// admin API and metrics see live figures.
// With a tap (the traffic observer) bytes go through user space: splice is not used.
func copyConn(dst, src *endpoint, acc accounting) (int64, error) {
	switch {
	case src.rc == nil || dst.rc == nil:
		return copyBlocking(dst.conn, src.conn, acc)
	case !src.tls && !dst.tls && acc.tap == nil:
		return copySplice(dst, src, acc)
	}
	return copyBuffered(dst, src, acc)
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
}

// write shows b to the tap and writes it to dst.
func (a accounting) write(dst net.Conn, b []byte) error {
	if a.wmu != nil {
		a.wmu.Lock()
		defer a.wmu.Unlock()
	}
	if a.tap != nil {
		a.tap(b)
	}
	_, err := dst.Write(b)
	return err
}

func (a accounting) add(n int) {
	if a.count != nil {
		a.count.Add(int64(n))
	}
	if a.m != nil {
		a.m.Bytes(a.dir, int64(n))
	}
}

// copySplice moves bytes socket to socket. Most IMAP traffic is short lines, for which
// read(2) and write(2) through a pooled 16 KiB buffer cost less than splice(2) (measured: a
// NOOP round trip spent most of the proxy's time in splice calls); when a read fills the
// buffer, bulk data is flowing (a FETCH body, an APPEND upload) and the rest of the burst goes
// through splice(2) with a pipe from the pool. Between bursts the direction waits holding
// neither buffer nor pipe.
func copySplice(dst, src *endpoint, acc accounting) (int64, error) {
	var (
		total int64
		bp    *[]byte
		p     *pipe
	)
	defer func() {
		if bp != nil {
			copyBufPool.Put(bp)
		}
	}()
	for {
		n, err := readWait(src.rc, &bp)
		if n > 0 {
			if werr := acc.write(dst.conn, (*bp)[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			acc.add(n)
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		if n < copyBufSize {
			continue
		}
		copyBufPool.Put(bp)
		bp = nil
		for {
			m, err := spliceIn(src.rc, &p, false)
			if err == errWouldBlock {
				break // drained: back to small reads, which park
			}
			if err != nil {
				if p != nil {
					p.close()
				}
				return total, err
			}
			if m == 0 {
				putPipe(p)
				return total, nil // EOF
			}
			if err := spliceOut(dst.rc, p, m); err != nil {
				p.close() // may still hold data: never pooled
				return total, err
			}
			total += int64(m)
			acc.add(m)
		}
	}
}

// copyBuffered copies through a 16 KiB buffer (one TLS record) taken from a pool while src
// has bytes and given back before waiting. A *tls.Conn may hold decrypted or raw bytes the
// socket no longer shows, so with a TLS source the socket is only waited on after a read
// said "would block".
func copyBuffered(dst, src *endpoint, acc accounting) (int64, error) {
	var (
		total int64
		bp    *[]byte
	)
	defer func() {
		if bp != nil {
			copyBufPool.Put(bp)
		}
	}()
	for {
		var (
			n   int
			err error
		)
		if src.tls {
			if bp == nil {
				bp = copyBufPool.Get().(*[]byte)
			}
			n, err = src.conn.Read(*bp) // crypto/tls over nbConn: never blocks
		} else {
			n, err = readWait(src.rc, &bp) // waits with no buffer held
		}
		if n > 0 {
			if werr := acc.write(dst.conn, (*bp)[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			acc.add(n)
		}
		switch {
		case err == nil:
		case err == errWouldBlock:
			copyBufPool.Put(bp)
			bp = nil
			if err := waitReadable(src.rc); err != nil {
				return total, err
			}
		case err == io.EOF:
			return total, nil
		default:
			return total, err
		}
	}
}

// copyBlocking is the fallback for connections that are not sockets.
func copyBlocking(dst, src net.Conn, acc accounting) (int64, error) {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	// Hide ReaderFrom/WriterTo so the buffer is really used.
	return io.CopyBuffer(accountingWriter{dst, acc}, struct{ io.Reader }{src}, *bp)
}

type accountingWriter struct {
	w   net.Conn
	acc accounting
}

func (a accountingWriter) Write(b []byte) (int, error) {
	if err := a.acc.write(a.w, b); err != nil {
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
