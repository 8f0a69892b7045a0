package bench

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
)

// This file is the "relay" target: a bare byte relay, run as `imapgate bench-relay` in a
// child process of its own like the other peers. It knows nothing of IMAP: for every client
// connection it dials the backend and copies bytes both ways, a goroutine per direction,
// read(2) and write(2) through a 16 KiB buffer, as a first Go relay does. No greeting of
// its own, no login, no TLS, no logs, no metrics.
//
// It is there to measure, not to compete: what one more user-space process between client
// and backend costs on this machine when written the plain Go way. In the logins and
// latency scenarios imapgate's figures beside the relay's show what imapgate's own work
// costs (the IMAP conversation up to login, routing, logs, metrics) apart from the hop.
// Bulk data is another matter: imapgate moves it with splice(2), the relay through its
// buffer. (A C event loop such as nginx's can cost less per connection than this relay.)

// relayBufSize is the relay's copy buffer: the size of imapgate's for short messages.
const relayBufSize = 16 << 10

// RunRelay accepts connections on ln and relays each to the backend at to until ctx ends. It
// closes ln and every relayed connection before it returns.
func RunRelay(ctx context.Context, ln net.Listener, to string) error {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		wg    sync.WaitGroup
	)
	track := func(c net.Conn, add bool) bool {
		mu.Lock()
		defer mu.Unlock()
		if add && conns == nil {
			return false // shutting down
		}
		if add {
			conns[c] = true
		} else if conns != nil {
			delete(conns, c)
		}
		return true
	}
	shutdown := func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		conns = nil
		mu.Unlock()
	}
	stop := context.AfterFunc(ctx, shutdown)
	defer stop()
	var d net.Dialer
	for {
		c, err := ln.Accept()
		if err != nil {
			shutdown() // on a failed Accept too: no client is left waiting in the backlog
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := d.DialContext(ctx, "tcp", to)
			if err != nil {
				_ = c.Close()
				return
			}
			if !track(c, true) || !track(u, true) {
				_ = c.Close()
				_ = u.Close()
				return
			}
			relayBoth(c, u)
			track(c, false)
			track(u, false)
		}()
	}
}

// relayBoth copies a to b and b to a until both directions end, passing each end of stream
// on as a half-close, then closes both.
func relayBoth(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		relayCopy(b, a)
		close(done)
	}()
	relayCopy(a, b)
	<-done
	_ = a.Close()
	_ = b.Close()
}

// relayCopy copies src to dst until src ends or either fails, then half-closes dst. The
// wrappers hide net.TCPConn's ReaderFrom and WriterTo, so the bytes go through the buffer
// with read(2) and write(2), not splice(2).
func relayCopy(dst, src net.Conn) {
	buf := make([]byte, relayBufSize)
	_, err := io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
		_ = cw.CloseWrite()
		return
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		// A reset or a failed write: the other direction cannot go on either.
		_ = dst.Close()
		_ = src.Close()
	}
}
