package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
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

// splice copies client→backend and backend→client until both end, then closes both
// connections. It records byte counts, who closed first and the first real error.
func (s *session) splice() {
	client, backend := s.conn, s.up.conn
	var (
		wg       sync.WaitGroup
		once     sync.Once
		closeAll = func() {
			once.Do(func() {
				_ = s.raw.Close()
				_ = s.up.raw.Close()
			})
		}
		mu       sync.Mutex
		firstEnd string
		timer    *time.Timer
	)
	direction := func(dst, src net.Conn, n *int64, from string) {
		defer wg.Done()
		copied, err := copyConn(dst, src)
		*n += copied
		mu.Lock()
		defer mu.Unlock()
		if firstEnd == "" {
			firstEnd = from
		}
		if err != nil && !isClosedConnErr(err) && s.endErr == nil && !s.closing.Load() {
			s.endErr = err
		}
		if err != nil {
			closeAll()
			return
		}
		// EOF: pass the half-close on. When the backend has closed, nothing the client
		// sends can be answered any more: end now. When the client has closed its half,
		// the backend may still answer what it sent last (LOGOUT): give it a little while.
		closeWrite(dst)
		if from == "backend" {
			closeAll()
			return
		}
		if timer == nil {
			timer = time.AfterFunc(halfCloseLinger, closeAll)
		}
	}
	wg.Add(2)
	go func() { direction(backend, client, &s.c2b, "client") }()
	direction(client, backend, &s.b2c, "backend")
	wg.Wait()
	if timer != nil {
		timer.Stop()
	}
	closeAll()
	s.closedBy = firstEnd
}

// copyConn copies src to dst until EOF or an error. A nil error means src reached EOF.
// Between two *net.TCPConn it is io.Copy, which Linux turns into splice(2).
func copyConn(dst, src net.Conn) (int64, error) {
	if _, ok := dst.(*net.TCPConn); ok {
		if _, ok := src.(*net.TCPConn); ok {
			return io.Copy(dst, src)
		}
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	// Hide ReaderFrom/WriterTo so the buffer is really used (io.CopyBuffer would otherwise
	// hand the copy to (*net.TCPConn).ReadFrom with its own 32 KiB buffer).
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
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
