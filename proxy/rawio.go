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

// waitReadable parks the goroutine in the runtime's poller until the socket has a byte to
// read, an EOF or an error, without holding any buffer. The callback must see EAGAIN from a
// real syscall before returning false: the poller is edge-triggered, and a readiness event
// from before this call has been reset. Once woken it returns without another syscall.
func waitReadable(rc syscall.RawConn) error {
	var b byte
	woken := false
	return rc.Read(func(fd uintptr) bool {
		if woken {
			return true
		}
		woken = true
		_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b)), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		return errno != syscall.EAGAIN
	})
}

// readWait reads from a plain socket into a buffer taken from the pool only when there is
// something to read: while the socket is empty the goroutine waits holding no buffer (*bp is
// nil). The read that sees EAGAIN is the one that parks, so no readiness edge is missed and
// no extra syscall is spent. (0, io.EOF) at the peer's FIN.
func readWait(rc syscall.RawConn, bp **[]byte) (int, error) {
	var (
		n    int
		rerr error
	)
	err := rc.Read(func(fd uintptr) bool {
		if *bp == nil {
			*bp = copyBufPool.Get().(*[]byte)
		}
		for {
			n, rerr = syscall.Read(int(fd), **bp)
			switch rerr {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				copyBufPool.Put(*bp)
				*bp = nil
				return false
			}
			return true
		}
	})
	switch {
	case err != nil:
		return 0, err
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readNonblock reads what the socket has now: (0, errWouldBlock) when nothing, (0, io.EOF)
// at the peer's FIN.
func readNonblock(rc syscall.RawConn, b []byte) (int, error) {
	var (
		n    int
		rerr error
	)
	err := rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), b)
			if rerr != syscall.EINTR {
				return true
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case rerr == syscall.EAGAIN:
		return 0, errWouldBlock
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// nbConn is the TCP connection under a *tls.Conn. Until nonblocking is set it behaves as
// the connection it wraps (handshake and pre-auth use ordinary blocking reads with
// deadlines); afterwards its Read returns errWouldBlock instead of waiting, so the copy loop
// can give its buffer back and wait for readability with nothing held.
type nbConn struct {
	net.Conn
	rc          syscall.RawConn
	prefix      []byte // bytes read ahead before the TLS handshake (after STARTTLS)
	nonblocking atomic.Bool
}

// newNBConn wraps c if it is a socket (syscall.Conn); otherwise it returns nil and the
// caller falls back to blocking copies.
func newNBConn(c net.Conn, prefix []byte) *nbConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return &nbConn{Conn: c, rc: rc, prefix: prefix}
}

func (c *nbConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	if !c.nonblocking.Load() {
		return c.Conn.Read(b)
	}
	return readNonblock(c.rc, b)
}

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

// spliceIn moves what src has into a pipe, taken from the pool (into *pp) only when there is
// something to move: while the socket is empty the goroutine waits holding no pipe. The
// pipe is empty when a splice into it starts (the caller drains each chunk), so EAGAIN can
// only mean "socket empty", and the splice that sees it is the one that parks. (0, nil) at
// EOF.
//
// With wait false it does not park: EAGAIN gives the pipe back and returns errWouldBlock.
func spliceIn(src syscall.RawConn, pp **pipe, wait bool) (int, error) {
	var (
		n    int64
		serr error
	)
	err := src.Read(func(fd uintptr) bool {
		if *pp == nil {
			if *pp, serr = getPipe(); serr != nil {
				return true
			}
		}
		for {
			n, serr = syscall.Splice(int(fd), nil, (*pp).w, nil, pipeSize, spliceFlags)
			switch serr {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				putPipe(*pp)
				*pp = nil
				return !wait
			}
			return true
		}
	})
	switch {
	case err != nil:
		return 0, err
	case serr == syscall.EAGAIN:
		return 0, errWouldBlock
	case serr != nil:
		return 0, os.NewSyscallError("splice", serr)
	}
	return int(n), nil
}

// spliceOut moves n bytes from p to dst, waiting for dst to be writable as needed.
func spliceOut(dst syscall.RawConn, p *pipe, n int) error {
	var serr error
	err := dst.Write(func(fd uintptr) bool {
		for n > 0 {
			m, e := syscall.Splice(p.r, nil, int(fd), nil, n, spliceFlags)
			switch e {
			case nil:
				n -= int(m)
			case syscall.EINTR:
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
