package proxy

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// tcpPair returns two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// trickle writes every byte in its own write, so the reader sees partial TLS records.
type trickle struct{ net.Conn }

func (t trickle) Write(b []byte) (int, error) {
	for i := range b {
		if _, err := t.Conn.Write(b[i : i+1]); err != nil {
			return i, err
		}
	}
	return len(b), nil
}

// crypto/tls must treat errWouldBlock from the connection under it as temporary: keep the
// partial record and go on at the next Read. The non-blocking TLS copy relies on it.
func TestTLSReadResumesAfterWouldBlock(t *testing.T) {
	cfg, pem, err := tlsconf.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := tlsconf.CertPool(pem)
	cc, sc := tcpPair(t)
	nb := newNBConn(sc, nil)
	server := tls.Server(nb, cfg)
	client := tls.Client(trickle{cc}, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	want := make([]byte, 40<<10)
	rand.Read(want)
	go func() {
		if err := client.Handshake(); err != nil {
			return
		}
		client.Write(want) // several records, written a byte at a time
		client.Close()
	}()
	if err := server.Handshake(); err != nil {
		t.Fatal(err)
	}
	nb.nonblocking.Store(true)
	var got bytes.Buffer
	buf := make([]byte, 4096)
	wouldBlocks := 0
	var rerr error
	// As pump reads: inside one RawConn.Read, parking on "would block".
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	err = rc.Read(func(fd uintptr) bool {
		nb.enter(fd)
		defer nb.leave()
		for {
			n, err := server.Read(buf)
			got.Write(buf[:n])
			switch {
			case err == errWouldBlock:
				wouldBlocks++
				return false
			case err == io.EOF:
				return true
			case err != nil:
				rerr = err
				return true
			}
		}
	})
	if err != nil || rerr != nil {
		t.Fatal(err, rerr)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("got %d bytes, want %d identical", got.Len(), len(want))
	}
	if wouldBlocks == 0 {
		t.Fatal("the reader never saw a partial record: the test proved nothing")
	}
}

// copyRig is sender → [src | copyConn | dst] → receiver over loopback TCP, with TLS on
// either proxy-facing side as asked.
type copyRig struct {
	sender, receiver net.Conn
	src, dst         *endpoint
	acc              accounting
}

func newCopyRig(t testing.TB, srcTLS, dstTLS bool) *copyRig {
	t.Helper()
	cfg, pem, err := tlsconf.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := tlsconf.CertPool(pem)
	sender, srcSock := tcpPair(t)
	dstSock, receiver := tcpPair(t)
	r := &copyRig{sender: sender, receiver: receiver}
	handshake := func(serverSide *net.TCPConn, clientSide net.Conn) (net.Conn, *endpoint) {
		nb := newNBConn(serverSide, nil)
		srv := tls.Server(nb, cfg)
		cli := tls.Client(clientSide, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		errc := make(chan error, 1)
		go func() { errc <- cli.Handshake() }()
		if err := srv.Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		return cli, makeEndpoint(serverSide, srv, nb)
	}
	if srcTLS {
		r.sender, r.src = handshake(srcSock, sender)
	} else {
		r.src = makeEndpoint(srcSock, srcSock, nil)
	}
	if dstTLS {
		r.receiver, r.dst = handshake(dstSock, receiver)
	} else {
		r.dst = makeEndpoint(dstSock, dstSock, nil)
	}
	return r
}

// run sends data through the rig and returns what arrived (if keep) and copyConn's result.
func (r *copyRig) run(data []byte, keep bool) (got []byte, n int64, err error) {
	go func() {
		r.sender.Write(data)
		closeWrite(r.sender)
	}()
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := copyConn(r.dst, r.src, r.acc)
		closeWrite(r.dst.conn)
		done <- result{n, err}
	}()
	var rerr error
	if keep {
		got, rerr = io.ReadAll(r.receiver)
	} else {
		buf := make([]byte, 256<<10)
		for rerr == nil {
			_, rerr = r.receiver.Read(buf)
		}
		if rerr == io.EOF {
			rerr = nil
		}
	}
	res := <-done
	if rerr != nil && res.err == nil {
		res.err = rerr
	}
	return got, res.n, res.err
}

// A short message through a running copy loop between plain sockets allocates nothing:
// IMAP sessions live for hours, and every message once cost a closure and its captured
// variables for the read and another for the write (12 allocations per NOOP round trip).
// The flow's accounting carries its own rawWriter, as newFlow gives it. (A read through
// crypto/tls allocates 24 bytes in the standard library, readFromUntil's atLeastReader, so
// the TLS modes are left out.)
func TestCopyConnAllocatesNothingPerMessage(t *testing.T) {
	for _, tc := range copyModes[:1] {
		t.Run(tc.name, func(t *testing.T) {
			r := newCopyRig(t, tc.srcTLS, tc.dstTLS)
			r.acc.w = new(rawWriter)
			done := make(chan error, 1)
			go func() {
				_, err := copyConn(r.dst, r.src, r.acc)
				done <- err
			}()
			msg := []byte("a1 NOOP\r\n")
			buf := make([]byte, len(msg))
			roundTrip := func() {
				if _, err := r.sender.Write(msg); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(r.receiver, buf); err != nil {
					t.Fatal(err)
				}
			}
			roundTrip() // buffers into the pools, TLS state settled
			if n := testing.AllocsPerRun(200, roundTrip); n != 0 {
				t.Errorf("%v allocations per message, want 0", n)
			}
			closeWrite(r.sender)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

var copyModes = []struct {
	name           string
	srcTLS, dstTLS bool
}{{"splice", false, false}, {"tls to plain", true, false}, {"plain to tls", false, true}}

// Bulk data through each copy loop arrives intact, and EOF is passed on.
func TestCopyConnBulk(t *testing.T) {
	want := make([]byte, 24<<20)
	rand.Read(want)
	for _, tc := range copyModes {
		t.Run(tc.name, func(t *testing.T) {
			got, n, err := newCopyRig(t, tc.srcTLS, tc.dstTLS).run(want, true)
			if err != nil || n != int64(len(want)) {
				t.Fatalf("copyConn = %d, %v", n, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("received %d bytes, not the %d sent", len(got), len(want))
			}
		})
	}
}

// The last short message and the FIN often arrive together, and the read that takes the
// message also takes the FIN: no readiness edge follows. The copy must still see EOF
// (parking after every short read did not; the client's "a LOGOUT" then hung its session).
func TestCopyConnShortMessageThenFIN(t *testing.T) {
	for _, tc := range copyModes {
		t.Run(tc.name, func(t *testing.T) {
			for range 20 {
				msg := []byte("* BYE Logging out\r\na OK Logout completed.\r\n")
				got, n, err := newCopyRig(t, tc.srcTLS, tc.dstTLS).run(msg, true)
				if err != nil || n != int64(len(msg)) || !bytes.Equal(got, msg) {
					t.Fatalf("copyConn = %d, %v; received %q", n, err, got)
				}
			}
		})
	}
}

// An idle spliced session holds its four sockets (client, proxy's two, backend in this one
// process) and no pipe. io.Copy would hold two more pipes (four fds) per session.
func TestIdleSessionHoldsNoPipe(t *testing.T) {
	if _, err := os.ReadDir("/proc/self/fd"); err != nil {
		t.Skip("no /proc")
	}
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	for _, mode := range []tlsconf.Mode{tlsconf.None, tlsconf.Implicit} {
		t.Run("client "+mode.String(), func(t *testing.T) {
			tp := startProxy(t, toBackends(&routing.Backend{Address: be.addr}),
				ListenerOptions{TLS: mode, AllowPlaintextAuth: true})
			fds := func() int {
				ents, _ := os.ReadDir("/proc/self/fd")
				return len(ents)
			}
			closer.closeNow() // the last subtest's sessions, closed in a batch otherwise
			before := fds()
			const n = 20
			for range n {
				var conn net.Conn
				var err error
				if mode == tlsconf.Implicit {
					conn, err = tls.Dial("tcp", tp.addr, tp.tls)
				} else {
					conn, err = net.Dial("tcp", tp.addr)
				}
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				c := newTranscript(t, conn)
				c.expect("* OK …")
				c.send("a1 LOGIN alice@example.com alice\r\na2 SELECT INBOX\r\n")
				c.expect("a1 OK …")
				for !strings.HasPrefix(c.line(), "a2 OK") {
				}
			}
			per := float64(fds()-before) / n
			if per > 4.5 {
				t.Fatalf("%.1f fds per idle session, want 4 (sockets only)", per)
			}
		})
	}
}

// A bulk chunk to a TLS side goes out as one write(2) of all its records (nbConn.gather).
// Another writer on the same TLS connection meanwhile (the other flow answering a TLS 1.3
// KeyUpdate, an alert, a kick's BYE) must neither be lost, nor cut a record, nor overtake
// records gathered before its own: the peer would fail with "bad record MAC". Here BYEs are
// written in a loop while thousands of chunks are gathered; they arrive whole, and what is
// left is the bulk, intact.
func TestGatherKeepsConcurrentWritesWhole(t *testing.T) {
	r := newCopyRig(t, false, true)
	const chunk = 20000                           // two records each
	bulk := bytes.Repeat([]byte("a"), 4000*chunk) // the old code failed within 1000
	bye := []byte("* BYE imapgate: kicked\r\n")
	type result struct {
		got []byte
		err error
	}
	received := make(chan result, 1)
	go func() {
		got, err := io.ReadAll(r.receiver)
		if err != nil {
			r.receiver.Close() // the writers below then fail instead of waiting
		}
		received <- result{got, err}
	}()
	var stop atomic.Bool
	byes := make(chan int, 1)
	go func() {
		n := 0
		for !stop.Load() {
			if _, err := r.dst.conn.Write(bye); err != nil {
				break
			}
			n++
		}
		byes <- n
	}()
	var gerr error
	for off := 0; off < len(bulk) && gerr == nil; off += chunk {
		gerr = r.dst.nb.gather(r.dst.conn, bulk[off:off+chunk], nil)
	}
	stop.Store(true)
	n := <-byes
	if gerr == nil {
		closeWrite(r.dst.conn)
	}
	res := <-received
	if res.err != nil || gerr != nil {
		t.Fatalf("after %d bytes: receiver: %v; gather: %v", len(res.got), res.err, gerr)
	}
	if got := bytes.Count(res.got, bye); got != n {
		t.Fatalf("%d whole BYEs arrived, %d were written", got, n)
	}
	if rest := bytes.ReplaceAll(res.got, bye, nil); !bytes.Equal(rest, bulk) {
		t.Fatalf("the bulk arrived changed (%d bytes)", len(rest))
	}
	t.Logf("%d gathers, %d BYEs in between", len(bulk)/chunk, n)
}

// A TLS client that reads slowly parks the bulk copy to it in the write of a gathered batch.
// By then the copy has given its buffer back: it waits holding the batch's records (64 KiB),
// not the plaintext they were made from as well.
func TestGatherFlushHoldsNoCopyBuffer(t *testing.T) {
	r := newCopyRig(t, false, true)
	base := bulkBufPool.out.Load()
	var flushes, held atomic.Int64
	hook := func() {
		flushes.Add(1)
		held.Add(bulkBufPool.out.Load() - base)
	}
	testHookGatherFlush.Store(&hook)
	t.Cleanup(func() { testHookGatherFlush.Store(nil) })
	data := make([]byte, 8<<20)
	if _, n, err := r.run(data, false); err != nil || n != int64(len(data)) {
		t.Fatalf("copyConn = %d, %v", n, err)
	}
	if flushes.Load() == 0 {
		t.Fatal("no batch was gathered")
	}
	if h := held.Load(); h != 0 {
		t.Fatalf("%d copy buffers held over %d batch writes", h, flushes.Load())
	}
	t.Logf("%d batch writes, no copy buffer held during any", flushes.Load())
	if out := bulkBufPool.out.Load(); out != base {
		t.Fatalf("%d copy buffers not given back", out-base)
	}
}

// closeWrite on a TLS side sends close_notify and then the TCP FIN of the socket under it
// (through nbConn): the peer's TLS reads EOF, and so does its TCP socket under TLS.
func TestCloseWriteTLSSendsFIN(t *testing.T) {
	r := newCopyRig(t, false, true)
	rawReceiver := r.receiver.(*tls.Conn).NetConn()
	closeWrite(r.dst.conn)
	if n, err := r.receiver.Read(make([]byte, 16)); n != 0 || err != io.EOF {
		t.Fatalf("TLS read %d, %v; want close_notify's EOF", n, err)
	}
	// A bounded wait: without the FIN this read would wait for the full close.
	rawReceiver.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := rawReceiver.Read(make([]byte, 16)); n != 0 || err != io.EOF {
		t.Errorf("TCP read under TLS %d, %v; want the FIN's EOF", n, err)
	}
}
