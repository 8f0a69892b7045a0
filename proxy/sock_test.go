package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Listen's listener accepts connections that behave as the net package's: addresses, reads
// and writes both ways, and Close ending a waiting Accept with net.ErrClosed.
func TestListenAccept(t *testing.T) {
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, a := connPair(t, ln, netDial)
	if a.RemoteAddr().String() != c.LocalAddr().String() || a.LocalAddr().String() != c.RemoteAddr().String() {
		t.Errorf("accepted %v <- %v; the client is %v -> %v", a.LocalAddr(), a.RemoteAddr(), c.LocalAddr(), c.RemoteAddr())
	}
	roundTrip(t, c, a)

	accepted := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		accepted <- err
	}()
	ln.Close()
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("the closed listener still takes connections")
	}
}

// connPair connects dial's connection to one accepted on ln; both are closed at the end.
func connPair(t *testing.T, ln net.Listener, dial func(t *testing.T, addr string) net.Conn) (dialed, accepted net.Conn) {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	dialed = dial(t, ln.Addr().String())
	t.Cleanup(func() { dialed.Close() })
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return dialed, accepted
}

func netDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rawDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, ok, err := dialRaw(context.Background(), addr, time.Minute)
	if !ok || err != nil {
		t.Fatalf("dialRaw: %v, %v", ok, err)
	}
	return c
}

func tcpListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// roundTrip sends a line each way between two connected ends.
func roundTrip(t *testing.T, a, b net.Conn) {
	t.Helper()
	for _, p := range [][2]net.Conn{{a, b}, {b, a}} {
		if _, err := p[0].Write([]byte("a1 NOOP\r\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 9)
		if _, err := io.ReadFull(p[1], buf); err != nil || string(buf) != "a1 NOOP\r\n" {
			t.Fatalf("read %q, %v", buf, err)
		}
	}
}

// Close ends the connection at once (a Read waiting in the poller returns net.ErrClosed, the
// peer reads EOF) and the descriptor is released by the closer.
func TestFdConnClose(t *testing.T) {
	c, peer := connPair(t, tcpListener(t), rawDial)
	roundTrip(t, c, peer)

	batches := make(chan struct{}, 1)
	hook := func(int) {
		select {
		case batches <- struct{}{}:
		default: // never hold up the process's closer
		}
	}
	closer.onBatch.Store(&hook)
	defer closer.onBatch.Store(nil)

	read := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 16))
		read <- err
	}()
	// The reader waits in the poller (or has not started yet: then it finds the conn closed).
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-read; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read during Close: %v, want net.ErrClosed", err)
	}
	if n, err := peer.Read(make([]byte, 16)); n != 0 || err != io.EOF {
		t.Errorf("the peer read %d, %v; want EOF", n, err)
	}
	if err := c.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v", err)
	}
	// Other tests' connections may be in the closer's batches too: wait for the batch that
	// holds this one.
	rc := c.(*fdConn).rc
	timeout := time.After(10 * time.Second)
	for rc.Control(func(uintptr) {}) == nil {
		select {
		case <-batches:
		case <-timeout:
			t.Fatal("the closer did not close the descriptor")
		}
	}
}

// dialRaw's errors are the net package's: a refused connection says ECONNREFUSED, a host
// name is left to dialHost (ok false), and the connect timeout and the context end the wait.
func TestDialRawErrors(t *testing.T) {
	ln := tcpListener(t)
	addr := ln.Addr().String()
	ln.Close()
	if _, ok, err := dialRaw(context.Background(), addr, time.Minute); !ok || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("closed port: %v, %v; want ECONNREFUSED", ok, err)
	}
	if c, ok, err := dialRaw(context.Background(), "localhost:143", time.Minute); ok || c != nil || err != nil {
		t.Errorf("host name: %v, %v, %v; want it left to dialHost", c, ok, err)
	}

	full := fullListener(t)
	if _, _, err := dialRaw(context.Background(), full, 50*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("SYN dropped, 50 ms timeout: %v, want a timeout", err)
	}
	// Cancelled while the connect waits (most likely: the SYN is dropped), or before.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	if _, _, err := dialRaw(ctx, full, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("SYN dropped, context cancelled: %v, want context.Canceled", err)
	}
}

// fullListener returns the address of a listening socket whose accept queue is full, so
// that Linux drops further SYNs and a connect waits: listen(2) with a backlog of 0, and
// connections made until one times out (the first does on this kernel), never accepted.
func fullListener(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	for range 8 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("the accept queue never filled")
	return ""
}

// IPv6 addresses are dialed and accepted too, where the machine has ::1.
func TestRawIPv6(t *testing.T) {
	ln, err := Listen(context.Background(), "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	c, a := connPair(t, ln, rawDial)
	if a.RemoteAddr().String() != c.LocalAddr().String() || c.RemoteAddr().String() != ln.Addr().String() {
		t.Errorf("accepted from %v, dialed from %v to %v (listener %v)", a.RemoteAddr(), c.LocalAddr(), c.RemoteAddr(), ln.Addr())
	}
	roundTrip(t, c, a)
}

// When max descriptors wait, the batch is closed at once, not after the interval (an hour
// here: without the early close this test would time out).
func TestCloserFullBatch(t *testing.T) {
	b := newBatchCloser(time.Hour, 4)
	t.Cleanup(func() { b.full <- struct{}{} }) // its goroutine finds nothing more and ends
	batches := make(chan int, 4)
	hook := func(n int) { batches <- n }
	b.onBatch.Store(&hook)
	next := func() int {
		t.Helper()
		select {
		case n := <-batches:
			return n
		case <-time.After(10 * time.Second):
			t.Fatal("no batch closed")
			return 0
		}
	}
	var files []*os.File
	for range 3 {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, r, w)
	}
	b.add(files[0]) // starts the closer: closed at once
	if n := next(); n != 1 {
		t.Fatalf("first batch %d", n)
	}
	for _, f := range files[1:5] {
		b.add(f)
	}
	if n := next(); n != 4 {
		t.Fatalf("full batch %d, want 4", n)
	}
	for _, f := range files[:5] {
		if _, err := f.Stat(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("%v not closed: %v", f.Name(), err)
		}
	}
	files[5].Close()
}

// A backend given by host name is resolved and dialed with raw system calls like an IP
// address (an *fdConn). The addresses are tried in the resolver's order: one that refuses
// gives way to the next; the first address's error is the one reported when all fail.
func TestDialHost(t *testing.T) {
	ln := tcpListener(t)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	c, err := dialBackend(context.Background(), net.JoinHostPort("localhost", port), time.Minute)
	if err != nil {
		t.Fatalf("localhost: %v", err)
	}
	if _, ok := c.(*fdConn); !ok {
		t.Errorf("localhost dialed as %T, want *fdConn", c)
	}
	accepted, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, accepted)
	c.Close()
	accepted.Close()

	// ln listens on 127.0.0.1 only: 127.0.0.2 refuses its port.
	good, refusing := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	resolve := func(addrs ...netip.Addr) {
		old := lookupNetIP
		lookupNetIP = func(ctx context.Context, network, host string) ([]netip.Addr, error) {
			if host != "imap.test" || network != "ip" {
				t.Errorf("resolved %s %q, want ip imap.test", network, host)
			}
			return addrs, nil
		}
		t.Cleanup(func() { lookupNetIP = old })
	}
	resolve(refusing, good)
	c, err = dialBackend(context.Background(), net.JoinHostPort("imap.test", port), time.Minute)
	if err != nil {
		t.Fatalf("second address: %v", err)
	}
	c.Close()
	if a, err := ln.Accept(); err == nil {
		a.Close()
	}

	resolve(refusing, refusing)
	_, err = dialBackend(context.Background(), net.JoinHostPort("imap.test", port), time.Minute)
	var oe *net.OpError
	if !errors.Is(err, syscall.ECONNREFUSED) || !errors.As(err, &oe) || oe.Addr.String() != net.JoinHostPort("127.0.0.2", port) {
		t.Errorf("every address refused: %v, want the first one's ECONNREFUSED", err)
	}

	resolve()
	if _, err := dialBackend(context.Background(), net.JoinHostPort("imap.test", port), time.Minute); err == nil ||
		!strings.Contains(err.Error(), "no suitable address") {
		t.Errorf("no address: %v", err)
	}
}

// A name that does not resolve fails the dial with the resolver's error.
func TestDialHostNotFound(t *testing.T) {
	_, err := dialBackend(context.Background(), "imap.invalid.:143", 3*time.Second) // RFC 2606: never resolves (rooted: no search domains); without a reachable DNS server, a timeout
	var de *net.DNSError
	if !errors.As(err, &de) {
		t.Errorf("imap.invalid: %v, want a *net.DNSError", err)
	}
}

// Happy Eyeballs (RFC 8305), as net's dialer: while the first family's address hangs (its
// SYN dropped), the other family's starts after fallbackDelay and wins; a first family that
// fails at once gives way at once; when both fail, the first family's error is reported.
func TestDialParallel(t *testing.T) {
	ln := tcpListener(t)
	good := netip.MustParseAddrPort(ln.Addr().String())
	hanging := netip.MustParseAddrPort(fullListener(t))
	deadline := time.Now().Add(time.Minute)
	accept := func() {
		t.Helper()
		a, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		a.Close()
	}

	c, err := dialParallel(context.Background(), []netip.AddrPort{hanging}, []netip.AddrPort{good}, deadline)
	if err != nil || c.RemoteAddr().String() != good.String() {
		t.Fatalf("first family hanging: %v, %v; want the fallback %s", c, err, good)
	}
	c.Close()
	accept()

	ln2 := tcpListener(t)
	refused := netip.MustParseAddrPort(ln2.Addr().String())
	ln2.Close()
	c, err = dialParallel(context.Background(), []netip.AddrPort{refused}, []netip.AddrPort{good}, deadline)
	if err != nil || c.RemoteAddr().String() != good.String() {
		t.Fatalf("first family refused: %v, %v; want the fallback %s", c, err, good)
	}
	c.Close()
	accept()

	other := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), refused.Port())
	_, err = dialParallel(context.Background(), []netip.AddrPort{refused}, []netip.AddrPort{other}, deadline)
	var oe *net.OpError
	if !errors.Is(err, syscall.ECONNREFUSED) || !errors.As(err, &oe) || oe.Addr.String() != refused.String() {
		t.Errorf("both refused: %v, want the first family's ECONNREFUSED from %s", err, refused)
	}
}

// dialHost splits the resolver's answer by family: with ::1 first, 127.0.0.1 is the fallback,
// whether or not the machine has IPv6 loopback.
func TestDialHostTwoFamilies(t *testing.T) {
	ln := tcpListener(t)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	old := lookupNetIP
	lookupNetIP = func(ctx context.Context, network, host string) ([]netip.Addr, error) {
		return []netip.Addr{netip.MustParseAddr("::1"), netip.MustParseAddr("127.0.0.1")}, nil
	}
	t.Cleanup(func() { lookupNetIP = old })
	c, err := dialBackend(context.Background(), net.JoinHostPort("imap.test", port), time.Minute)
	if err != nil {
		t.Fatalf("::1 then 127.0.0.1: %v", err)
	}
	defer c.Close()
	if c.RemoteAddr().String() != ln.Addr().String() {
		t.Errorf("connected to %v, want %v", c.RemoteAddr(), ln.Addr())
	}
}
