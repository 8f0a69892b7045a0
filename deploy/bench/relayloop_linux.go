package bench

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// This file is the "relay-loop" target: the same bare byte relay as relay.go, written as
// event loops instead of goroutines per connection, to measure what that design would save.
// One loop per core (as nginx runs a worker per core): a goroutine that waits on an epoll
// instance of its own through the runtime's poller (an epoll descriptor is itself pollable;
// proxy/dormant.go does the same), then accepts, connects, reads and writes with raw system
// calls. No goroutine, no *os.File and no registration in the runtime's poller per
// connection; edge-triggered with EPOLLRDHUP, so a short read without RDHUP ends a read
// burst with no read(2) that says EAGAIN. Like the relay: no IMAP, no TLS, no logs, no
// keepalive; a read buffer of relayBufSize, at most that much held per direction while the
// receiver's socket is full.

// loopEvents is how many events a loop takes per epoll_pwait.
const loopEvents = 128

// loopConn is one side of a relayed pair, owned by one loop.
type loopConn struct {
	fd         int
	peer       *loopConn
	pend       []byte // bytes for this socket that it has not taken yet
	connecting bool   // a backend socket whose connect(2) is in progress
	readable   bool   // an edge was seen and the socket not drained
	rdhup      bool   // the peer's FIN (or an error) is known: read until EOF
	eof        bool   // read returned EOF
	shutPend   bool   // shut this socket's write side once pend is empty
	closed     bool
	login      *loginState // login-loop: until the relay starts (loginloop_linux.go)
}

type relayLoop struct {
	epfd  int
	lfd   int
	to    syscall.RawSockaddrAny
	tolen uintptr
	conns map[int]*loopConn
	buf   []byte
	evs   []syscall.EpollEvent
	err   error // a failed accept: the loop ends with it

	loginConf *loginConf // login-loop; nil for relay-loop
}

// RunLoopRelay accepts connections on ln and relays each to the backend at to (an IP
// address and port) until ctx ends, with one event loop per core. It closes ln and every
// relayed connection before it returns.
func RunLoopRelay(ctx context.Context, ln *net.TCPListener, to string) error {
	return runLoops(ctx, ln, to, nil)
}

// runLoops runs relay-loop, or login-loop if lc is set.
func runLoops(ctx context.Context, ln *net.TCPListener, to string, lc *loginConf) error {
	defer ln.Close()
	ap, err := netip.ParseAddrPort(to)
	if err != nil {
		return err
	}
	var lfd int
	rc, err := ln.SyscallConn()
	if err != nil {
		return err
	}
	var derr error
	if err := rc.Control(func(fd uintptr) {
		lfd, derr = syscall.Dup(int(fd)) // the loops' own; non-blocking as ln's (shared flags)
	}); err != nil {
		return err
	}
	if derr != nil {
		return derr
	}
	defer syscall.Close(lfd)
	syscall.CloseOnExec(lfd)
	n := runtime.GOMAXPROCS(0)
	errc := make(chan error, n)
	for range n {
		go func() { errc <- runRelayLoop(ctx, lfd, ap, lc) }()
	}
	var first error
	for range n {
		if err := <-errc; err != nil && first == nil && ctx.Err() == nil {
			first = err
		}
	}
	return first
}

func runRelayLoop(ctx context.Context, lfd int, to netip.AddrPort, lc *loginConf) error {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		syscall.Close(epfd)
		return err
	}
	f := os.NewFile(uintptr(epfd), "relay-loop-epoll") // non-blocking: goes into the poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return err
	}
	l := &relayLoop{epfd: epfd, lfd: lfd, conns: map[int]*loopConn{}, buf: make([]byte, relayBufSize),
		evs: make([]syscall.EpollEvent, loopEvents), loginConf: lc}
	l.tolen = rawSockaddr(to, &l.to)
	// Level-triggered; EPOLLEXCLUSIVE wakes one loop per new connection, not all.
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | epollExclusive, Fd: int32(lfd)}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, lfd, &ev); err != nil {
		f.Close()
		return err
	}
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	err = rc.Read(l.run)
	for fd := range l.conns {
		syscall.Close(fd)
	}
	f.Close()
	if l.err != nil {
		return l.err
	}
	if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

const (
	epollExclusive = 1 << 28
	epollET        = 1 << 31
)

// addrPortOf is the address in sa (AF_INET or AF_INET6; the zero AddrPort otherwise).
func addrPortOf(sa *syscall.RawSockaddrAny) netip.AddrPort {
	switch sa.Addr.Family {
	case syscall.AF_INET:
		s := (*syscall.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(s.Addr), s.Port>>8|s.Port<<8)
	case syscall.AF_INET6:
		s := (*syscall.RawSockaddrInet6)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom16(s.Addr), s.Port>>8|s.Port<<8)
	}
	return netip.AddrPort{}
}

// rawSockaddr fills sa with ap and returns its length.
func rawSockaddr(ap netip.AddrPort, sa *syscall.RawSockaddrAny) uintptr {
	port := ap.Port()
	if ap.Addr().Unmap().Is4() {
		s := (*syscall.RawSockaddrInet4)(unsafe.Pointer(sa))
		s.Family = syscall.AF_INET
		s.Port = port>>8 | port<<8
		s.Addr = ap.Addr().Unmap().As4()
		return syscall.SizeofSockaddrInet4
	}
	s := (*syscall.RawSockaddrInet6)(unsafe.Pointer(sa))
	s.Family = syscall.AF_INET6
	s.Port = port>>8 | port<<8
	s.Addr = ap.Addr().As16()
	return syscall.SizeofSockaddrInet6
}

// run is the loop's RawConn.Read callback: it takes the ready events and handles them; false
// parks the goroutine until the epoll instance has events again. A batch smaller than evs
// emptied the ready list, so any later event raises a new edge on the epoll descriptor.
func (l *relayLoop) run(uintptr) bool {
	for {
		r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.evs[0])),
			uintptr(len(l.evs)), 0, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			l.err = os.NewSyscallError("epoll_pwait", e)
			return true
		}
		n := int(r)
		for _, ev := range l.evs[:n] {
			if int(ev.Fd) == l.lfd {
				if !l.accept() {
					return true
				}
				continue
			}
			c := l.conns[int(ev.Fd)]
			if c == nil || c.closed {
				continue
			}
			if c.login != nil {
				l.loginEvent(c, ev.Events)
				continue
			}
			if ev.Events&syscall.EPOLLOUT != 0 {
				l.writable(c)
			}
			if !c.closed && ev.Events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
				c.readable = true
				if ev.Events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
					c.rdhup = true
				}
				l.readFrom(c)
			}
		}
		if n < len(l.evs) {
			return false
		}
	}
}

// accept takes the pending connections and starts each one's backend connect. false: the
// listener failed (l.err).
func (l *relayLoop) accept() bool {
	for {
		var sa syscall.RawSockaddrAny
		salen := uint32(unsafe.Sizeof(sa))
		var sap, salenp uintptr
		if l.loginConf != nil { // login-loop: the client's address goes into the PROXY header
			sap, salenp = uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&salen))
		}
		r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, uintptr(l.lfd), sap, salenp, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
		case syscall.EAGAIN:
			return true
		case syscall.EINTR, syscall.ECONNABORTED:
			continue
		default:
			l.err = os.NewSyscallError("accept4", e)
			return false
		}
		cfd := int(r)
		setsockopt(cfd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
		if l.loginConf != nil {
			l.acceptLogin(cfd, addrPortOf(&sa))
			continue
		}
		r, _, e = syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(l.to.Addr.Family), syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if e != 0 {
			closeFd(cfd)
			continue
		}
		ufd := int(r)
		setsockopt(ufd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
		_, _, e = syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(ufd), uintptr(unsafe.Pointer(&l.to)), l.tolen)
		if e != 0 && e != syscall.EINPROGRESS {
			closeFd(cfd) // the client sees its connection closed, as with the relay
			closeFd(ufd)
			continue
		}
		c := &loopConn{fd: cfd}
		u := &loopConn{fd: ufd, connecting: e == syscall.EINPROGRESS}
		c.peer, u.peer = u, c
		l.conns[cfd], l.conns[ufd] = c, u
		if !l.register(c) || !l.register(u) {
			l.closePair(c)
		}
	}
}

// register adds c to the loop's epoll instance, edge-triggered.
func (l *relayLoop) register(c *loopConn) bool {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | epollET, Fd: int32(c.fd)}
	_, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(l.epfd), syscall.EPOLL_CTL_ADD, uintptr(c.fd),
		uintptr(unsafe.Pointer(&ev)), 0, 0)
	return e == 0
}

// readFrom moves what c has to its peer while the peer takes it; it stops (c.readable
// standing) when the peer's socket is full, and goes on when the peer is writable again.
func (l *relayLoop) readFrom(c *loopConn) {
	p := c.peer
	for c.readable && !c.closed {
		if len(p.pend) > 0 || p.connecting {
			return
		}
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(c.fd), uintptr(unsafe.Pointer(&l.buf[0])), uintptr(len(l.buf)))
		switch {
		case e == syscall.EAGAIN:
			c.readable = false
			return
		case e == syscall.EINTR:
			continue
		case e != 0:
			l.closePair(c) // a reset: the other direction cannot go on either
			return
		case n == 0:
			c.readable, c.eof = false, true
			p.shutPend = true
			l.flush(p)
			l.maybeDone(c)
			return
		}
		l.send(p, l.buf[:n])
		if int(n) < len(l.buf) && !c.rdhup {
			c.readable = false // drained: more bytes, or the FIN, raise a new edge
		}
	}
}

// write writes what of b the socket takes now: n bytes, and ok false after an error (the
// pair is closed then).
func (l *relayLoop) write(c *loopConn, b []byte) (n int, ok bool) {
	for n < len(b) {
		m, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(c.fd), uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n))
		switch e {
		case 0:
			n += int(m)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return n, true
		default:
			l.closePair(c)
			return n, false
		}
	}
	return n, true
}

// send writes b to c (pend is empty), keeping what the socket does not take in c.pend.
func (l *relayLoop) send(c *loopConn, b []byte) {
	n := 0
	if !c.connecting {
		var ok bool
		if n, ok = l.write(c, b); !ok {
			return
		}
	}
	c.pend = append(c.pend, b[n:]...)
}

// flush writes c.pend, then passes on a pending half-close.
func (l *relayLoop) flush(c *loopConn) {
	if c.connecting || c.closed {
		return
	}
	n, ok := l.write(c, c.pend)
	if !ok {
		return
	}
	c.pend = c.pend[:copy(c.pend, c.pend[n:])]
	if len(c.pend) == 0 && c.shutPend {
		c.shutPend = false
		syscall.RawSyscall(syscall.SYS_SHUTDOWN, uintptr(c.fd), syscall.SHUT_WR, 0)
		l.maybeDone(c.peer)
	}
}

// writable: a connect finished, or the socket takes bytes again.
func (l *relayLoop) writable(c *loopConn) {
	if c.connecting {
		if !connectDone(c.fd) {
			l.closePair(c)
			return
		}
		c.connecting = false
	}
	l.flush(c)
	if !c.closed && len(c.pend) == 0 && c.peer.readable {
		l.readFrom(c.peer)
	}
}

// maybeDone closes the pair once both directions have ended and been passed on.
func (l *relayLoop) maybeDone(c *loopConn) {
	p := c.peer
	if c.eof && p.eof && !c.shutPend && !p.shutPend && len(c.pend) == 0 && len(p.pend) == 0 {
		l.closePair(c)
	}
}

// connectDone reports whether the connect(2) in progress on fd succeeded (SO_ERROR).
func connectDone(fd int) bool {
	var v int32
	vl := uint32(4)
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), syscall.SOL_SOCKET, syscall.SO_ERROR,
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&vl)), 0)
	return e == 0 && v == 0
}

// closePair closes c and its peer (login-loop's client has none until its LOGIN).
func (l *relayLoop) closePair(c *loopConn) {
	for _, x := range [2]*loopConn{c, c.peer} {
		if x != nil && !x.closed {
			x.closed = true
			closeFd(x.fd)
			delete(l.conns, x.fd)
		}
	}
}

func setsockopt(fd, level, name, value int) {
	v := int32(value)
	syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(unsafe.Pointer(&v)), 4, 0)
}

func closeFd(fd int) { syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0) }
