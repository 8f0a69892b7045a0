package proxy

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// This file makes the proxy's own TCP connections (accepted clients, dialed backends) with
// raw system calls, and puts each socket in the runtime's poller through an *os.File, which
// gives the waits, the deadlines and the close.
//
// Why not net.TCPListener.Accept and net.Dialer: every system call they make goes through
// syscall.Syscall, which tells the scheduler a goroutine enters a system call. When every P
// was idle, that wakes the runtime's sysmon thread from its deep sleep (runtime/proc.go,
// entersyscallWakeSysmon), and sysmon then polls in 20 µs steps until it finds every P idle
// again. Under a login load the proxy goes idle between nearly every step of a session, so
// whichever syscall.Syscall came first after a pause woke sysmon: perf put sysmon at 17 %
// of the proxy's CPU in the logins benchmark, woken by close(2), the log's write(2),
// connect(2) with its setsockopt(2) calls, and accept4(2). Moving only some of them moved
// the wake-ups to the others (the same count), so all of them go: the calls here are made
// with syscall.RawSyscall (none of them blocks: the sockets are non-blocking, and accept and
// connect wait in the poller), os.NewFile makes none for a non-blocking descriptor (its
// fcntl and epoll_ctl are the runtime's own), closes are batched (batchCloser), and log
// lines are written in batches (config's log.flush_interval). sockConn (rawio.go) did the
// same for reads and writes earlier.
//
// What stays with the net package: making the listening socket (once), resolving a backend's
// host name (dialHost then connects here), and connections of listeners that are not
// Listen's (tests, wrappers): those run as before, through sockConn.

// fdConn is a TCP connection on a socket made here. Read and Write are those of sockConn
// (RawSyscall inside the poller's wait); deadlines, Close and the waits are the *os.File's.
// Errors are shaped as the net package's (*net.OpError, net.ErrClosed after Close), which is
// what the rest of the proxy and crypto/tls expect of a net.Conn.
type fdConn struct {
	f      *os.File
	rc     syscall.RawConn
	raddr  net.Addr
	laddr  atomic.Pointer[net.TCPAddr] // the listener's, or learnt on first use (getsockname)
	closed atomic.Bool
	// peerFIN: the backend's FIN has been read (the splice saw its EOF); Close need not
	// send ours at once (see Close).
	peerFIN atomic.Bool
}

// newFdConn takes ownership of fd, a connected non-blocking TCP socket.
func newFdConn(fd int, raddr net.Addr) (*fdConn, error) {
	f := os.NewFile(uintptr(fd), "tcp")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &fdConn{f: f, rc: rc, raddr: raddr}, nil
}

func (c *fdConn) opErr(op string, err error) error {
	if c.closed.Load() {
		err = net.ErrClosed
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.raddr, Err: err}
}

func (c *fdConn) Read(b []byte) (int, error) {
	n, rerr, err := rawConnRead(c.rc, b)
	if err == nil {
		err = rerr
	}
	// A read that raced with Close may have found the socket already shut down (EOF): after
	// Close a read says net.ErrClosed, as a net.TCPConn's does.
	if err != nil && (err != io.EOF || c.closed.Load()) {
		return 0, c.opErr("read", err)
	}
	return n, err
}

func (c *fdConn) Write(b []byte) (int, error) {
	if err := writeAll(c.rc, b); err != nil {
		return 0, c.opErr("write", err)
	}
	return len(b), nil
}

// Close ends the connection at once and releases the descriptor soon after. A Read or
// Write waiting in the poller returns net.ErrClosed.
//
// Why not at once: close(2) is made by the *os.File through syscall.Syscall (there is no
// other way to take a descriptor out of the runtime's poller), and every session closes two
// sockets after its last bytes, so those closes woke sysmon (see the top of this file). Here
// the connection ends with shutdown(2) (the peer gets its FIN now, or an RST when close(2)
// later finds unread bytes, as an immediate close would have sent), the waits end through a
// deadline in the past, and the descriptor goes to closer, which closes a batch at a time.
// A backend whose FIN has been read (the usual end: it closes after LOGOUT) has nothing
// more to send and does not wait for ours: it gets it from the batched close, within
// closeBatchEvery, and the shutdown(2) is saved (one system call of about fifty per
// session; spliceState.ended sets peerFIN).
func (c *fdConn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return c.opErr("close", net.ErrClosed)
	}
	_ = c.f.SetDeadline(time.Unix(1, 0))
	if !c.peerFIN.Load() {
		_ = c.shutdown(syscall.SHUT_RDWR)
	}
	closer.add(c.f)
	return nil
}

// closer closes descriptors in batches: at most one batch per closeBatchEvery, unless
// closeBatchMax wait. The batch's close(2) calls wake sysmon once (and it then polls for a
// few milliseconds); closing every 10 ms still left sysmon at 5 % of the proxy's CPU in the
// logins benchmark, every 100 ms at 2.5 %. One goroutine closes for the whole process, and
// an *os.File's Close waits for RawConn callbacks running on it to return: callbacks must
// never wait on anything (none does; pump's comment says why they must not), or every close
// in the process would wait with them.
var closer = newBatchCloser(closeBatchEvery, closeBatchMax)

const (
	// closeBatchEvery bounds how long a closed connection keeps its descriptor.
	closeBatchEvery = 100 * time.Millisecond
	// closeBatchMax bounds how many closed connections keep their descriptors: with more
	// waiting, the batch is closed at once (a storm of session ends, near the fd limit).
	closeBatchMax = 256
)

type batchCloser struct {
	every time.Duration
	max   int
	full  chan struct{} // max wait

	// onBatch, if set (by tests), is called with the size of each batch closed.
	onBatch atomic.Pointer[func(int)]

	mu      sync.Mutex
	pending []*os.File
	running bool
}

func newBatchCloser(every time.Duration, max int) *batchCloser {
	return &batchCloser{every: every, max: max, full: make(chan struct{}, 1)}
}

func (b *batchCloser) add(f *os.File) {
	b.mu.Lock()
	b.pending = append(b.pending, f)
	start := !b.running
	b.running = true
	if !start && len(b.pending) >= b.max {
		// Under mu, as run's drain of full is: a signal stands only for files still pending.
		select {
		case b.full <- struct{}{}:
		default:
		}
	}
	b.mu.Unlock()
	if start {
		go b.run()
	}
}

// closeNow closes what waits, in the caller's goroutine (tests that count descriptors).
func (b *batchCloser) closeNow() {
	b.mu.Lock()
	batch := b.pending
	b.pending = nil
	b.mu.Unlock()
	for _, f := range batch {
		f.Close()
	}
}

// run closes the pending descriptors, then waits b.every (or until b.max wait) for more,
// and ends when a wait brought none.
func (b *batchCloser) run() {
	var batch []*os.File
	t := time.NewTimer(b.every)
	defer t.Stop()
	for {
		b.mu.Lock()
		batch, b.pending = b.pending, batch[:0]
		select { // this batch answers any signal
		case <-b.full:
		default:
		}
		if len(batch) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		for i, f := range batch {
			f.Close()
			batch[i] = nil
		}
		if h := b.onBatch.Load(); h != nil {
			(*h)(len(batch))
		}
		t.Reset(b.every)
		select {
		case <-t.C:
		case <-b.full:
		}
	}
}

// CloseWrite sends a FIN (shutdown(2) SHUT_WR).
func (c *fdConn) CloseWrite() error { return c.shutdown(syscall.SHUT_WR) }

// shutdown is shutdown(2) on the socket.
func (c *fdConn) shutdown(how int) error {
	var e syscall.Errno
	if err := c.rc.Control(func(fd uintptr) {
		_, _, e = syscall.RawSyscall(syscall.SYS_SHUTDOWN, fd, uintptr(how), 0)
	}); err != nil {
		return c.opErr("shutdown", err)
	}
	if e != 0 {
		return c.opErr("shutdown", os.NewSyscallError("shutdown", e))
	}
	return nil
}

func (c *fdConn) RemoteAddr() net.Addr { return c.raddr }

// LocalAddr is learnt with getsockname(2) on first use, and remembered.
func (c *fdConn) LocalAddr() net.Addr {
	if a := c.laddr.Load(); a != nil {
		return a
	}
	var a *net.TCPAddr
	_ = c.rc.Control(func(fd uintptr) {
		var sa syscall.RawSockaddrAny
		l := uint32(syscall.SizeofSockaddrAny)
		_, _, e := syscall.RawSyscall(syscall.SYS_GETSOCKNAME, fd, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)))
		if e == 0 {
			a = tcpAddrOf(&sa)
		}
	})
	if a == nil {
		return &net.TCPAddr{} // closed: as net's LocalAddr, no address worth showing
	}
	c.laddr.Store(a)
	return a
}

func (c *fdConn) SetDeadline(t time.Time) error      { return c.setDeadline(c.f.SetDeadline, t) }
func (c *fdConn) SetReadDeadline(t time.Time) error  { return c.setDeadline(c.f.SetReadDeadline, t) }
func (c *fdConn) SetWriteDeadline(t time.Time) error { return c.setDeadline(c.f.SetWriteDeadline, t) }

// setDeadline refuses deadlines after Close, as net does: Close's deadline in the past is
// what wakes the waits, and a later one must not undo it.
func (c *fdConn) setDeadline(set func(time.Time) error, t time.Time) error {
	if c.closed.Load() {
		return c.opErr("set deadline", net.ErrClosed)
	}
	err := set(t)
	if c.closed.Load() { // Close came in between: put its deadline back
		_ = c.f.SetDeadline(time.Unix(1, 0))
		return c.opErr("set deadline", net.ErrClosed)
	}
	return err
}

// SyscallConn is the socket's, for the splice, with the net package's errors after Close.
func (c *fdConn) SyscallConn() (syscall.RawConn, error) { return fdRawConn{c}, nil }

// fdRawConn is an fdConn's RawConn. After Close its waits end with net.ErrClosed, as a
// net.TCPConn's do, where the *os.File's say os.ErrDeadlineExceeded (Close's deadline) or
// "use of closed file": the splice takes net.ErrClosed for the end of a session, and a
// deadline for a sleep request (dormant.go).
type fdRawConn struct{ c *fdConn }

func (r fdRawConn) Control(f func(fd uintptr)) error   { return r.err("raw-control", r.c.rc.Control(f)) }
func (r fdRawConn) Read(f func(fd uintptr) bool) error { return r.err("raw-read", r.c.rc.Read(f)) }
func (r fdRawConn) Write(f func(fd uintptr) bool) error {
	return r.err("raw-write", r.c.rc.Write(f))
}

func (r fdRawConn) err(op string, err error) error {
	if err != nil && r.c.closed.Load() {
		return r.c.opErr(op, net.ErrClosed)
	}
	return err
}

// tcpAddrOf reads an AF_INET or AF_INET6 socket address.
func tcpAddrOf(sa *syscall.RawSockaddrAny) *net.TCPAddr {
	switch sa.Addr.Family {
	case syscall.AF_INET:
		p := (*syscall.RawSockaddrInet4)(unsafe.Pointer(sa))
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4(p.Addr), ntohs(p.Port)))
	case syscall.AF_INET6:
		p := (*syscall.RawSockaddrInet6)(unsafe.Pointer(sa))
		a := netip.AddrFrom16(p.Addr)
		if p.Scope_id != 0 {
			a = a.WithZone(zoneName(p.Scope_id))
		}
		return net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, ntohs(p.Port)))
	}
	return &net.TCPAddr{}
}

// sockaddrOf writes ap into sa (tcpAddrOf's inverse) and returns its length.
func sockaddrOf(ap netip.AddrPort, sa *syscall.RawSockaddrAny) uintptr {
	if ap.Addr().Is4() {
		p := (*syscall.RawSockaddrInet4)(unsafe.Pointer(sa))
		p.Family, p.Port, p.Addr = syscall.AF_INET, htons(ap.Port()), ap.Addr().As4()
		return syscall.SizeofSockaddrInet4
	}
	p := (*syscall.RawSockaddrInet6)(unsafe.Pointer(sa))
	p.Family, p.Port, p.Addr = syscall.AF_INET6, htons(ap.Port()), ap.Addr().As16()
	if z := ap.Addr().Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			p.Scope_id = uint32(ifi.Index)
		} else if n, err := strconv.ParseUint(z, 10, 32); err == nil {
			p.Scope_id = uint32(n)
		}
	}
	return syscall.SizeofSockaddrInet6
}

// zoneName is the interface name of a scope id, or the number when there is none. Names
// are remembered: the lookup is a netlink dump through syscall.Syscall.
func zoneName(id uint32) string {
	if name, ok := zoneNames.Load(id); ok {
		return name.(string)
	}
	name := strconv.FormatUint(uint64(id), 10)
	if ifi, err := net.InterfaceByIndex(int(id)); err == nil {
		name = ifi.Name
	}
	zoneNames.Store(id, name)
	return name
}

var zoneNames sync.Map // uint32 → string

// ntohs reads a port stored in network byte order (a sockaddr's sin_port).
func ntohs(p uint16) uint16 { return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p))[:]) }

// htons stores a port in network byte order.
func htons(p uint16) (v uint16) {
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&v))[:], p)
	return v
}

// closeRaw closes a descriptor not yet in an *os.File.
func closeRaw(fd int) { syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0) }

// Listen listens on addr (host:port, TCP) with ListenConfig's options and returns a
// listener whose Accept makes no syscall.Syscall (see the top of this file). Serve takes
// any net.Listener; this is the one imapgate serve uses.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	ln, err := ListenConfig().Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return takeListener(ln.(*net.TCPListener)), nil
}

// rawListener is a listening TCP socket taken over from a *net.TCPListener: the net package
// makes the socket (addresses, dual stack, SO_REUSEADDR, backlog), then its descriptor
// moves to an *os.File, because a listener's RawConn cannot wait for readability (its Read
// is EINVAL) and an *os.File's can.
type rawListener struct {
	f      *os.File
	rc     syscall.RawConn
	addr   net.Addr
	closed atomic.Bool
}

// takeListener moves tl's socket to a rawListener and closes tl; if it cannot, it returns tl.
func takeListener(tl *net.TCPListener) net.Listener {
	f, err := tl.File() // a duplicate, non-blocking, in the poller
	if err != nil {
		return tl
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return tl
	}
	l := &rawListener{f: f, rc: rc, addr: tl.Addr()}
	tl.Close() // the duplicate keeps the socket
	return l
}

func (l *rawListener) Addr() net.Addr { return l.addr }

// Close closes the socket; a waiting Accept returns net.ErrClosed.
func (l *rawListener) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
	}
	return l.f.Close()
}

// Accept takes one connection (accept4(2), non-blocking and close-on-exec), waiting in the
// poller while none is pending. A connection reset before it was taken (ECONNABORTED) is
// skipped, as the net package does. Errors are *net.OpError.
func (l *rawListener) Accept() (net.Conn, error) {
	var (
		nfd  = -1
		sa   syscall.RawSockaddrAny
		aerr error
	)
	err := l.rc.Read(func(fd uintptr) bool {
		for {
			n := uint32(syscall.SizeofSockaddrAny)
			r, _, e := syscall.RawSyscall6(syscall.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&sa)),
				uintptr(unsafe.Pointer(&n)), syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0, 0)
			switch e {
			case 0:
				nfd = int(r)
				return true
			case syscall.EAGAIN:
				return false
			case syscall.EINTR, syscall.ECONNABORTED:
				continue
			default:
				aerr = os.NewSyscallError("accept4", e)
				return true
			}
		}
	})
	if l.closed.Load() {
		err = net.ErrClosed
	} else if err == nil {
		err = aerr
	}
	if err != nil {
		if nfd >= 0 {
			closeRaw(nfd)
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: err}
	}
	// As net does; Linux does not copy TCP_NODELAY from the listener (SO_KEEPALIVE and
	// TCP_KEEPIDLE it does: see ListenConfig).
	_ = setsockoptInt(uintptr(nfd), syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	c, err := newFdConn(nfd, tcpAddrOf(&sa))
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: err}
	}
	if la, ok := l.addr.(*net.TCPAddr); ok && !la.IP.IsUnspecified() {
		// Bound to one address: every connection's local address is the listener's, and
		// no getsockname(2) is needed (LocalAddr). Shared: nobody modifies an Addr.
		c.laddr.Store(la)
	}
	return c, nil
}

// dialBackend connects to a backend's address: an IP address and port (dialRaw), or a host
// name and port (dialHost).
func dialBackend(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	if c, ok, err := dialRaw(ctx, addr, timeout); ok {
		return c, err
	}
	return dialHost(ctx, addr, timeout)
}

// dialRaw connects to addr, an IP address and port, with the options the proxy sets on
// backend connections (TCP_NODELAY, keepAliveIdle), waiting in the poller for the handshake
// until ctx ends or timeout passes. ok is false when addr is not an IP address and port (a
// host name: see dialHost).
func dialRaw(ctx context.Context, addr string, timeout time.Duration) (c net.Conn, ok bool, err error) {
	ap, perr := netip.ParseAddrPort(addr)
	if perr != nil {
		return nil, false, nil
	}
	c, err = dialAddrPort(ctx, ap, timeout)
	return c, true, err
}

// lookupNetIP resolves a backend's host name with net.DefaultResolver (read at each call);
// tests replace it.
var lookupNetIP = func(ctx context.Context, network, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, network, host)
}

// fallbackDelay is how long the addresses of the first family have before those of the
// other family start too, as net's dialer waits (RFC 8305 section 5, Happy Eyeballs).
const fallbackDelay = 300 * time.Millisecond

// dialHost connects to addr, a host name and port, as net's dialer does (net/dial.go,
// dialParallel and dialSerial): it resolves the name (net.DefaultResolver: /etc/hosts, DNS,
// per the system's configuration; at each dial, with no cache), splits the addresses into
// those of the first one's family and the others, and tries each list in order (RFC 6724,
// the resolver's), each address with an equal share of the time left but at least 2 s where
// that much is left; the other family's list starts after fallbackDelay, or at once when the
// first list has failed. The first connection made wins; the first list's error is reported
// when both fail. An empty host is the local system, as for net ("localhost" here).
//
// Why not net.Dialer for host names: its system calls go through syscall.Syscall (see the
// top of this file). With the bench's backend given as localhost (from /etc/hosts, no DNS),
// the runtime's sysmon took 13.5 % of the proxy's CPU in the logins benchmark through
// net.Dialer and 2.2–2.8 % dialed here, and the proxy's CPU per login went from a median of
// 670 µs to 540 µs (README, "How a session goes"). A name resolved by DNS saves less: the
// resolver's own UDP exchange goes through net.
func dialHost(ctx context.Context, addr string, timeout time.Duration) (net.Conn, error) {
	host, service, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	if host == "" {
		host = "localhost"
	}
	deadline := timeoutDeadline(ctx, timeout)
	// The lookups end at the deadline; the connects end there through their own timeouts,
	// which report it as net's dialer does (os.ErrDeadlineExceeded, "i/o timeout").
	lctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	port, err := net.DefaultResolver.LookupPort(lctx, "tcp", service)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	ips, err := lookupNetIP(lctx, "ip", host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: err}
	}
	if len(ips) == 0 {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: &net.AddrError{Err: "no suitable address found", Addr: host}}
	}
	var primaries, fallbacks []netip.AddrPort
	first4 := ips[0].Unmap().Is4()
	for _, ip := range ips {
		ap := netip.AddrPortFrom(ip.Unmap(), uint16(port))
		if ap.Addr().Is4() == first4 {
			primaries = append(primaries, ap)
		} else {
			fallbacks = append(fallbacks, ap)
		}
	}
	if len(fallbacks) == 0 {
		return dialSerial(ctx, primaries, deadline)
	}
	return dialParallel(ctx, primaries, fallbacks, deadline)
}

// dialParallel races the two families' lists (dialHost). The loser's connection, if it
// makes one, is closed.
func dialParallel(ctx context.Context, primaries, fallbacks []netip.AddrPort, deadline time.Time) (net.Conn, error) {
	type result struct {
		c       net.Conn
		err     error
		primary bool
	}
	results := make(chan result) // unbuffered: a racer hands its connection over, or closes it
	returned := make(chan struct{})
	defer close(returned)
	ctx, cancel := context.WithCancel(ctx) // ends the loser's connect
	defer cancel()
	race := func(aps []netip.AddrPort, primary bool) {
		c, err := dialSerial(ctx, aps, deadline)
		select {
		case results <- result{c, err, primary}:
		case <-returned:
			if c != nil {
				c.Close()
			}
		}
	}
	go race(primaries, true)
	fallback := time.NewTimer(fallbackDelay)
	defer fallback.Stop()
	var primaryErr, fallbackErr error
	fallbackStarted := false
	for {
		select {
		case <-fallback.C:
			if !fallbackStarted {
				fallbackStarted = true
				go race(fallbacks, false)
			}
		case r := <-results:
			if r.err == nil {
				return r.c, nil
			}
			if r.primary {
				primaryErr = r.err
			} else {
				fallbackErr = r.err
			}
			if primaryErr != nil && fallbackErr != nil {
				return nil, primaryErr
			}
			if !fallbackStarted { // the first family failed early: the other goes now
				fallbackStarted = true
				go race(fallbacks, false)
			}
		}
	}
}

// dialSerial tries aps in order until one connects (dialHost); the first error is reported
// when none does, as net's dialer reports it (the first address's is the most telling).
func dialSerial(ctx context.Context, aps []netip.AddrPort, deadline time.Time) (net.Conn, error) {
	var first error
	for i, ap := range aps {
		left := time.Until(deadline)
		if left <= 0 {
			if first == nil {
				first = &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: os.ErrDeadlineExceeded}
			}
			break
		}
		share := left / time.Duration(len(aps)-i)
		if share < 2*time.Second {
			share = min(2*time.Second, left)
		}
		c, err := dialAddrPort(ctx, ap, share)
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// dialAddrPort connects to ap, as dialRaw.
func dialAddrPort(ctx context.Context, ap netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	fail := func(err error) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(ap), Err: err}
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	var sa syscall.RawSockaddrAny
	salen := sockaddrOf(ap, &sa)
	r, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(sa.Addr.Family), syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if e != 0 {
		return fail(os.NewSyscallError("socket", e))
	}
	fd := int(r)
	for _, o := range [...]struct{ level, name, value int }{
		{syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
		{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(keepAliveIdle / time.Second)},
	} {
		if e := setsockoptInt(uintptr(fd), o.level, o.name, o.value); e != 0 {
			closeRaw(fd)
			return fail(os.NewSyscallError("setsockopt", e))
		}
	}
	// A non-blocking connect(2) returns EINPROGRESS; the handshake's end is the socket
	// becoming writable, with its outcome in SO_ERROR (connect(2), "EINPROGRESS"). An
	// interrupted connect goes on in the background (EINTR), as net's connect takes it.
	_, _, e = syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), salen)
	switch e {
	case syscall.EINTR, syscall.EALREADY:
		e = syscall.EINPROGRESS
	case syscall.EISCONN:
		e = 0
	}
	if e != 0 && e != syscall.EINPROGRESS {
		closeRaw(fd)
		return fail(os.NewSyscallError("connect", e))
	}
	fc, err := newFdConn(fd, net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return fail(err)
	}
	if e == syscall.EINPROGRESS {
		if err := fc.waitConnected(ctx, timeout); err != nil {
			fc.Close()
			return fail(err)
		}
	}
	return fc, nil
}

// timeoutDeadline is when a wait of at most timeout must end, or ctx's deadline if sooner.
func timeoutDeadline(ctx context.Context, timeout time.Duration) time.Time {
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		return dl
	}
	return deadline
}

// waitConnected waits for a non-blocking connect to finish.
func (c *fdConn) waitConnected(ctx context.Context, timeout time.Duration) error {
	_ = c.f.SetWriteDeadline(timeoutDeadline(ctx, timeout))
	stop := context.AfterFunc(ctx, func() { _ = c.f.SetWriteDeadline(time.Unix(1, 0)) })
	var cerr error
	err := c.rc.Write(func(fd uintptr) bool {
		// getpeername(2) first: it succeeds once connected, which on loopback is nearly
		// always so at the first call (the handshake runs inside connect), and then one
		// system call tells. Only ENOTCONN needs SO_ERROR to tell a failure from a connect
		// still going on, or from a spurious wake-up (as net's connect notes).
		var sa syscall.RawSockaddrAny
		l := uint32(syscall.SizeofSockaddrAny)
		_, _, e := syscall.RawSyscall(syscall.SYS_GETPEERNAME, fd, uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l)))
		switch e {
		case 0:
			return true
		case syscall.ENOTCONN:
		default:
			cerr = os.NewSyscallError("getpeername", e)
			return true
		}
		v, e := getsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		switch {
		case e != 0:
			cerr = os.NewSyscallError("getsockopt", e)
		case v == 0, syscall.Errno(v) == syscall.EINPROGRESS || syscall.Errno(v) == syscall.EALREADY || syscall.Errno(v) == syscall.EINTR:
			return false // still connecting
		case syscall.Errno(v) == syscall.EISCONN:
		default:
			cerr = os.NewSyscallError("connect", syscall.Errno(v))
		}
		return true
	})
	if !stop() {
		return ctx.Err()
	}
	_ = c.f.SetWriteDeadline(time.Time{})
	if err != nil {
		return err
	}
	return cerr
}

func setsockoptInt(fd uintptr, level, name, value int) syscall.Errno {
	v := int32(value)
	_, _, e := syscall.RawSyscall6(syscall.SYS_SETSOCKOPT, fd, uintptr(level), uintptr(name), uintptr(unsafe.Pointer(&v)), 4, 0)
	return e
}

func getsockoptInt(fd uintptr, level, name int) (int, syscall.Errno) {
	var v int32
	l := uint32(4)
	_, _, e := syscall.RawSyscall6(syscall.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(name), uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	return int(v), e
}
