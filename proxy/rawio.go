package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// This file holds the low-level I/O that lets an idle session hold neither a pipe nor a
// buffer (DESIGN.md, "Splicing in Go"): waiting for readability through syscall.RawConn,
// non-blocking reads, splice(2) through pipes taken from a pool only while bytes flow, and a
// connection wrapper that lets crypto/tls read without blocking.
//
// Why by hand: io.Copy between TCP connections holds a 1 MiB pipe (2 fds) per direction for
// the session's life, and any TLS side holds a 32 KiB buffer per direction; an IMAP fleet is
// mostly idle IDLE sessions, so that is most of the proxy's memory and file descriptors. No
// library offers "splice, but only while readable".

// errWouldBlock is returned by non-blocking reads when no byte is available. It is a
// net.Error with Temporary() true so that crypto/tls keeps a partially read record and the
// next Read goes on where this one stopped (crypto/tls does not make temporary errors
// sticky; pinned by TestTLSReadResumesAfterWouldBlock).
var errWouldBlock error = wouldBlockError{}

type wouldBlockError struct{}

func (wouldBlockError) Error() string   { return "read would block" }
func (wouldBlockError) Timeout() bool   { return false }
func (wouldBlockError) Temporary() bool { return true }

// The system calls on the data path are made with syscall.RawSyscall, not syscall.Syscall
// (which syscall.Read, net.Conn and os.File use). The sockets and pipes are non-blocking, so
// these calls return at once. syscall.Syscall tells the scheduler a goroutine is entering a
// system call, and when every P was idle that wakes the runtime's sysmon thread, which then
// sleeps in 20 µs steps before going back to its deep sleep: a proxy that idles between
// every message (the NOOP round trip) paid three extra context switches per message for it
// (perf: do_nanosleep and futex_wait in sysmon, about 20 % of the proxy's samples).

// sysRead is read(2) on a non-blocking descriptor.
func sysRead(fd uintptr, b []byte) (int, syscall.Errno) { return sysRW(syscall.SYS_READ, fd, b) }

// sysWrite is write(2) on a non-blocking descriptor.
func sysWrite(fd uintptr, b []byte) (int, syscall.Errno) { return sysRW(syscall.SYS_WRITE, fd, b) }

// sysRW is read(2) or write(2) (trap) on b, again after EINTR.
func sysRW(trap, fd uintptr, b []byte) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		if e != syscall.EINTR {
			return int(r), e
		}
	}
}

// sysSplice is splice(2) between non-blocking descriptors, with no offsets.
func sysSplice(in, out uintptr, n int) (int, syscall.Errno) {
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_SPLICE, in, 0, out, 0, uintptr(n), spliceFlags)
		if e != syscall.EINTR {
			return int(r), e
		}
	}
}

// readNonblock reads what the socket has now: (0, errWouldBlock) when nothing, (0, io.EOF)
// at the peer's FIN.
func readNonblock(fd uintptr, b []byte) (int, error) {
	n, e := sysRead(fd, b)
	switch {
	case e == syscall.EAGAIN:
		return 0, errWouldBlock
	case e != 0:
		return 0, os.NewSyscallError("read", e)
	case n == 0 && len(b) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// writeAll writes b to the socket, parking in the poller while its send buffer is full.
// Write deadlines apply (kick's BYE sets one). For one-off writes; a flow writes through its
// own rawWriter.
func writeAll(rc syscall.RawConn, b []byte) error {
	w := rawWriters.Get().(*rawWriter)
	err := w.write(rc, b)
	rawWriters.Put(w)
	return err
}

// rawWriters and rawReaders hold writers and readers whose callbacks are bound already:
// one-off writes and fdConn's reads and writes (the conversation up to login) allocate
// nothing, and a connection holds none between calls.
var (
	rawWriters = sync.Pool{New: func() any { return new(rawWriter) }}
	rawReaders = sync.Pool{New: func() any { return new(rawReader) }}
)

// rawWriter writes whole buffers to sockets through their RawConn, as writeAll. Its callback
// is bound once, so a write allocates nothing: a closure passed to RawConn.Write is moved to
// the heap with the variables it captures, three allocations per write. Not for concurrent
// use: each flow has its own.
type rawWriter struct {
	b   []byte
	err error
	fn  func(fd uintptr) bool // w.writeSome, bound on the first write
}

func (w *rawWriter) write(rc syscall.RawConn, b []byte) error {
	if w.fn == nil {
		w.fn = w.writeSome
	}
	w.b, w.err = b, nil
	err := rc.Write(w.fn)
	werr := w.err
	w.b, w.err = nil, nil
	if err != nil {
		return err
	}
	return werr
}

// writeSome is the RawConn.Write callback: it writes until w.b is gone, or asks to wait
// until the socket is writable again (false).
func (w *rawWriter) writeSome(fd uintptr) bool {
	for len(w.b) > 0 {
		n, e := sysWrite(fd, w.b)
		switch e {
		case 0:
			w.b = w.b[n:]
		case syscall.EAGAIN:
			return false
		default:
			w.err = os.NewSyscallError("write", e)
			return true
		}
	}
	return true
}

// nbConn is the TCP connection under a *tls.Conn. Until nonblocking is set it behaves as
// the connection it wraps (handshake and pre-auth use ordinary blocking reads with
// deadlines). Afterwards the copy loop reads through it only from inside the socket's
// RawConn.Read callback (between enter and leave), where a Read never blocks: it returns
// errWouldBlock when the socket is empty, so the loop can give its buffer back and park with
// nothing held. Writes go to the connection it wraps: a sockConn, which writes without
// blocking the thread.
type nbConn struct {
	net.Conn
	prefix      []byte // bytes read ahead before the TLS handshake (after STARTTLS)
	nonblocking atomic.Bool

	// Set by enter, used by the one goroutine that reads after login.
	fd     uintptr
	inside bool

	// While gathering (see gather), writes from crypto/tls collect in buf and go out as one.
	wmu       sync.Mutex
	gathering bool
	buf       *[]byte
	werr      error // a gathered batch failed: crypto/tls and the wire disagree from here
}

// newNBConn wraps c if it is a socket (syscall.Conn); otherwise it returns nil and the
// caller falls back to blocking copies.
func newNBConn(c net.Conn, prefix []byte) *nbConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	if _, err := sc.SyscallConn(); err != nil {
		return nil
	}
	return &nbConn{Conn: c, prefix: prefix}
}

// enter is called at the start of each RawConn.Read callback invocation with its descriptor;
// leave at its end.
func (c *nbConn) enter(fd uintptr) { c.fd, c.inside = fd, true }
func (c *nbConn) leave()           { c.inside = false }

func (c *nbConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	if !c.nonblocking.Load() {
		return c.Conn.Read(b)
	}
	if !c.inside {
		return 0, errWouldBlock // not from the copy loop, the only reader after login
	}
	return readNonblock(c.fd, b)
}

// Write writes b to the connection, or adds it to the gathered bytes. Writes hold wmu to
// the end, so a gathered batch and a direct write never pass each other: crypto/tls numbers
// its records as it makes them, and the peer must get them in that order.
func (c *nbConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	if c.gathering {
		*c.buf = append(*c.buf, b...)
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// CloseWrite sends the FIN of the connection it wraps, if that can (closeWrite calls it after
// crypto/tls's close_notify, which does not reach the TCP layer). Without it a TLS side's
// half-close stopped at close_notify: nbConn's embedded net.Conn does not carry CloseWrite.
func (c *nbConn) CloseWrite() error {
	// After any direct write in progress. Not after a gathered batch: the caller is the
	// flow that writes to this side, its only gatherer, done copying (closeWrite in ended).
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// gather writes b through tc (the *tls.Conn over c) with one write(2) for all its records.
// crypto/tls writes each record of at most 16 KiB on its own, so a bulk chunk of 64 KiB cost
// four system calls; here it costs one. Another writer on tc meanwhile (the other flow
// answering a TLS 1.3 KeyUpdate, an alert, a kick's BYE) is gathered too, whole and in
// order, or waits for the batch to leave (TestGatherKeepsConcurrentWritesWhole). If the
// batch cannot be written, crypto/tls has already counted its records as sent: the error
// sticks, and every later write fails with it. release, if not nil, is called once b is
// encrypted, before the batch is written: a client that reads slowly parks the write with
// the batch, and the caller's buffer is free already.
func (c *nbConn) gather(tc net.Conn, b []byte, release func()) error {
	c.wmu.Lock()
	c.gathering = true
	c.buf = gatherBufPool.Get().(*[]byte)
	c.wmu.Unlock()
	_, err := tc.Write(b)
	if release != nil {
		release()
	}
	if h := testHookGatherFlush.Load(); h != nil {
		(*h)()
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	buf := c.buf
	c.gathering, c.buf = false, nil
	if len(*buf) > 0 && c.werr == nil {
		if _, werr := c.Conn.Write(*buf); werr != nil {
			c.werr = werr
		}
	}
	if err == nil {
		err = c.werr
	}
	*buf = (*buf)[:0]
	gatherBufPool.Put(buf)
	return err
}

// testHookGatherFlush, if set (by tests), is called by gather before it writes a batch.
var testHookGatherFlush atomic.Pointer[func()]

// gatherBufPool holds gather's buffers: a bulk chunk and its records' overhead.
var gatherBufPool = sync.Pool{New: func() any { b := make([]byte, 0, bulkBufSize+bulkBufSize/256); return &b }}

// A pipe for splice(2), from the pool.
type pipe struct {
	r, w int
}

// pipeSize is the capacity asked of each pipe (F_SETPIPE_SZ), as Go's own splice uses: large
// pipes mean fewer syscalls per megabyte. Only pipes in use or pooled exist.
const pipeSize = 1 << 20

// maxIdlePipes bounds the pool: pipes beyond it are closed when given back.
const maxIdlePipes = 64

var pipes struct {
	sync.Mutex
	free []*pipe
}

func getPipe() (*pipe, error) {
	pipes.Lock()
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.Unlock()
		return p, nil
	}
	pipes.Unlock()
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	const fSETPIPE_SZ = 1031
	_, _, _ = syscall.Syscall(syscall.SYS_FCNTL, uintptr(fds[1]), fSETPIPE_SZ, pipeSize)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe returns an empty pipe to the pool.
func putPipe(p *pipe) {
	pipes.Lock()
	if len(pipes.free) < maxIdlePipes {
		pipes.free = append(pipes.free, p)
		pipes.Unlock()
		return
	}
	pipes.Unlock()
	p.close()
}

// close closes a pipe that may still hold data (never pooled).
func (p *pipe) close() {
	syscall.Close(p.r)
	syscall.Close(p.w)
}

const spliceFlags = 0x1 | 0x2 // SPLICE_F_MOVE | SPLICE_F_NONBLOCK

// spliceIn moves what src has now into a pipe, taken from the pool (into *pp) only when
// there is something to move. The pipe is empty when a splice into it starts (the caller
// drains each chunk), so EAGAIN can only mean "socket empty": then the pipe goes back to the
// pool and spliceIn returns errWouldBlock. (0, nil) at EOF.
func spliceIn(src syscall.RawConn, pp **pipe) (int, error) {
	var (
		n    int
		serr error
	)
	err := src.Read(func(fd uintptr) bool {
		if *pp == nil {
			if *pp, serr = getPipe(); serr != nil {
				return true
			}
		}
		var e syscall.Errno
		n, e = sysSplice(fd, uintptr((*pp).w), pipeSize)
		switch e {
		case 0:
		case syscall.EAGAIN:
			putPipe(*pp)
			*pp = nil
			serr = errWouldBlock
		default:
			serr = os.NewSyscallError("splice", e)
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	return n, serr
}

// spliceOut moves n bytes from p to dst, waiting for dst to be writable as needed.
func spliceOut(dst syscall.RawConn, p *pipe, n int) error {
	var serr error
	err := dst.Write(func(fd uintptr) bool {
		for n > 0 {
			m, e := sysSplice(uintptr(p.r), fd, n)
			switch e {
			case 0:
				n -= m
			case syscall.EAGAIN:
				return false // the socket's send buffer is full: wait until writable
			default:
				serr = os.NewSyscallError("splice", e)
				return true
			}
		}
		return true
	})
	if err != nil {
		return err
	}
	return serr
}

// sockConn is a TCP connection whose Read and Write make their system calls through
// RawSyscall and wait in the runtime's poller, as the splice does; everything else (deadlines,
// which apply to these waits too, Close, CloseWrite, addresses) is the *net.TCPConn's. It
// wraps the connections the net package made, those of a listener that is not Listen's
// (fdConn, sock.go, is the same for the sockets made there: accepted by Listen's listener,
// dialed to a backend).
// With net.Conn's own Read and Write every call entered the scheduler's system call path,
// and on this kind of machine the runtime's sysmon then spent a seventh of the proxy's CPU
// in the logins benchmark, waking every 20 µs to retake Ps from system calls that were
// never going to block.
type sockConn struct {
	*net.TCPConn
	rc syscall.RawConn
}

// newSockConn wraps c if it is a *net.TCPConn; otherwise it returns c.
func newSockConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &sockConn{TCPConn: tc, rc: rc}
}

func (c *sockConn) Read(b []byte) (int, error) {
	n, rerr, err := rawConnRead(c.rc, b)
	switch {
	case err != nil:
		return 0, err
	case rerr != nil && rerr != io.EOF:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: rerr}
	}
	return n, rerr
}

func (c *sockConn) Write(b []byte) (int, error) {
	if err := writeAll(c.rc, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// rawConnRead reads into b from the socket behind rc: read(2) with RawSyscall, waiting in
// the poller while the socket is empty. rerr is the read's outcome (io.EOF at the peer's
// FIN), err the wait's (a deadline, a close).
func rawConnRead(rc syscall.RawConn, b []byte) (n int, rerr, err error) {
	if len(b) == 0 {
		return 0, nil, nil
	}
	r := rawReaders.Get().(*rawReader)
	n, rerr, err = r.read(rc, b)
	rawReaders.Put(r)
	return n, rerr, err
}

// rawReader is rawConnRead's state, with its RawConn.Read callback bound once: a closure
// passed to Read is moved to the heap with what it captures, two allocations per read. Not
// for concurrent use: rawConnRead takes one from rawReaders per read.
type rawReader struct {
	b    []byte
	n    int
	rerr error
	fn   func(fd uintptr) bool // r.readSome, bound on the first read
}

func (r *rawReader) read(rc syscall.RawConn, b []byte) (n int, rerr, err error) {
	if r.fn == nil {
		r.fn = r.readSome
	}
	r.b, r.n, r.rerr = b, 0, nil
	err = rc.Read(r.fn)
	n, rerr = r.n, r.rerr
	r.b, r.rerr = nil, nil
	return n, rerr, err
}

// readSome is the callback: false (wait until readable) while the socket is empty.
func (r *rawReader) readSome(fd uintptr) bool {
	r.n, r.rerr = readNonblock(fd, r.b)
	return r.rerr != errWouldBlock
}
