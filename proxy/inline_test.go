package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// inlineRig is one inline flow between two loopback TCP connections (sender → flow →
// receiver) on a poll loop of its own, without the loop's goroutine: the test hands the loop
// its events (step), so every turn of the loop is seen. The other flow (receiver → sender) is
// in the loop too, or (newInlineRigOneWay) has never started, as if it had a goroutine.
type inlineRig struct {
	t                *testing.T
	sender, receiver *net.TCPConn
	dstSock          *net.TCPConn
	f, rev           *flow
	l                *pollLoop
	count            *atomic.Int64
	ended            chan struct{}
	runs             atomic.Int32 // goroutines started for the rig's flows
}

func newInlineRig(t *testing.T) *inlineRig { return makeInlineRig(t, true) }

func newInlineRigOneWay(t *testing.T) *inlineRig { return makeInlineRig(t, false) }

func makeInlineRig(t *testing.T, both bool) *inlineRig {
	t.Helper()
	sender, srcSock := tcpPair(t)
	dstSock, receiver := tcpPair(t)
	srv := New(Options{})
	d := newDormancyOn(nopMetrics{})
	l, err := newPollLoop(d)
	if err != nil {
		t.Fatal(err)
	}
	l.bp = loopBufPool.get()
	d.loops = []*pollLoop{l}
	srv.dormancy = d
	t.Cleanup(d.close)
	r := &inlineRig{t: t, sender: sender, receiver: receiver, dstSock: dstSock, l: l, ended: make(chan struct{})}
	sess := &session{srv: srv, raw: srcSock, up: &upstream{raw: dstSock}}
	sp := &spliceState{s: sess, done: func() { close(r.ended) }}
	src, dst := makeEndpoint(srcSock, srcSock, nil), makeEndpoint(dstSock, dstSock, nil)
	sp.flows[0] = sp.newFlow(dst, src, srcSock, &sess.c2b, "client")
	sp.flows[1] = sp.newFlow(src, dst, dstSock, &sess.b2c, "backend")
	sp.left.Store(2)
	hook := func(f *flow) {
		if f.sp == sp {
			r.runs.Add(1)
		}
	}
	testHookRun.Store(&hook)
	t.Cleanup(func() {
		testHookRun.Store(nil)
		sp.closeAll()
		sp.mu.Lock()
		if sp.timer != nil {
			sp.timer.Stop()
		}
		sp.mu.Unlock()
	})
	r.f, r.rev, r.count = sp.flows[0], sp.flows[1], &sess.c2b
	if !d.arm(r.f) || both && !d.arm(r.rev) {
		t.Fatal("a flow between plain sockets was not made inline")
	}
	return r
}

// fillDestination writes to the receiver's path (which reads nothing yet) until it is full,
// and returns what it wrote.
func (r *inlineRig) fillDestination() []byte {
	rc, _ := r.dstSock.SyscallConn()
	fill := bytes.Repeat([]byte("f"), 64<<10)
	var wrote []byte
	rc.Control(func(fd uintptr) {
		for {
			n, e := sysWrite(fd, fill)
			if e != 0 {
				return
			}
			wrote = append(wrote, fill[:n]...)
		}
	})
	return wrote
}

// step waits (bounded) for the loop's epoll to have events and hands them to the loop.
func (r *inlineRig) step() {
	r.t.Helper()
	events := make([]syscall.EpollEvent, 8)
	n, err := syscall.EpollWait(r.l.epfd, events, 10_000)
	if err != nil || n == 0 {
		r.t.Fatalf("no event for the loop: %d, %v", n, err)
	}
	for _, ev := range events[:n] {
		r.l.dispatch(ev)
	}
}

// receive reads exactly n bytes from the receiver.
func (r *inlineRig) receive(n int) []byte {
	r.t.Helper()
	_ = r.receiver.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(r.receiver, b); err != nil {
		r.t.Fatalf("receiver: %v", err)
	}
	return b
}

// A short message is copied by the loop itself: read, write, and the flow is dormant again
// with no goroutine started and nothing held.
func TestInlineLoopCopiesShortMessage(t *testing.T) {
	r := newInlineRig(t)
	for _, msg := range []string{"a1 NOOP\r\n", "a2 SELECT INBOX\r\n"} {
		r.sender.Write([]byte(msg))
		r.step()
		if s := r.f.state.Load(); s != flowDormant {
			t.Fatalf("after %q the flow is in state %d, want dormant (the loop's)", msg, s)
		}
		if got := string(r.receive(len(msg))); got != msg {
			t.Fatalf("receiver got %q, want %q", got, msg)
		}
	}
	if n := r.count.Load(); n != int64(len("a1 NOOP\r\na2 SELECT INBOX\r\n")) {
		t.Fatalf("bytes counted %d", n)
	}
	if r.f.carry != nil || r.f.carryB != nil {
		t.Fatal("the flow holds a buffer while dormant")
	}
}

// When the destination cannot take the bytes, the loop does not wait: the bytes left wait in
// the flow until the destination has room, which the other flow's registration announces
// (EPOLLOUT); then the loop writes them and reads on. No goroutine is started; nothing is
// lost or reordered. A short message waits in a small buffer of the flow's own; a burst of
// more than copyBufSize in the loop's buffer, which the flow takes (the loop takes another).
func TestInlineLoopWaitsForFullDestination(t *testing.T) {
	for _, tc := range []struct {
		name  string
		msg   func(attempt int) string
		carry int // the size of the buffer the bytes wait in
	}{
		{"message", func(i int) string { return "a" + strconv.Itoa(i) + " APPEND INBOX {5}\r\n" }, copyBufSize},
		{"burst", func(i int) string { return strings.Repeat("m", 40<<10) + strconv.Itoa(i) + "\r\n" }, loopBufSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newInlineRig(t)
			var want []byte // what the receiver must get, in order
			waiting := false
			// Fill the path to the receiver, then send. The kernel may find room for the
			// bytes again meanwhile (an ACK, a window update): then the loop writes them
			// whole, and the test fills again (bounded).
			for attempt := 0; attempt < 20 && !waiting; attempt++ {
				want = append(want, r.fillDestination()...)
				msg := tc.msg(attempt)
				r.sender.Write([]byte(msg))
				want = append(want, msg...)
				for r.count.Load()+int64(len(r.f.carryB)) < int64(len(want)-bytes.Count(want, []byte("f"))) {
					r.step() // until the loop has read all of it (a burst may come in parts)
				}
				waiting = r.f.carryB != nil
			}
			if !waiting {
				t.Fatal("the destination never stayed full: nothing to wait for")
			}
			if s := r.f.state.Load(); s != flowDormant {
				t.Fatalf("flow state %d with %d bytes waiting; want dormant", s, len(r.f.carryB))
			}
			if n := len(*r.f.carry); n != tc.carry {
				t.Fatalf("%d bytes wait in a buffer of %d, want %d", len(r.f.carryB), n, tc.carry)
			}
			if r.rev.events&syscall.EPOLLOUT == 0 {
				t.Fatal("the other flow's registration does not ask EPOLLOUT")
			}
			got := make(chan []byte, 1)
			go func() { got <- r.receive(len(want)) }()
			for r.f.carryB != nil { // each step waits (bounded) for the room's event
				r.step()
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("receiver got %d bytes ending %q, want %d ending %q", len(b), b[max(0, len(b)-40):],
					len(want), want[max(0, len(want)-40):])
			}
			r.sender.Write([]byte("b1 NOOP\r\n"))
			r.step()
			if got := string(r.receive(9)); got != "b1 NOOP\r\n" {
				t.Fatalf("after the waiting bytes the receiver got %q", got)
			}
			if m := int64(len(want) - bytes.Count(want, []byte("f")) + 9); r.count.Load() != m {
				t.Fatalf("bytes counted %d, want %d", r.count.Load(), m)
			}
			if n := r.runs.Load(); n != 0 {
				t.Fatalf("%d goroutines started for the flows", n)
			}
			if r.f.carry != nil {
				t.Fatal("the flow holds a buffer after its bytes went")
			}
		})
	}
}

// When the destination is full and the other flow cannot announce its room (it has a
// goroutine, so its registration is muted), a goroutine writes what is left and goes on with
// the flow.
func TestInlineLoopHandsFullDestinationToGoroutine(t *testing.T) {
	r := newInlineRigOneWay(t)
	var want []byte
	handed := false
	for attempt := 0; attempt < 20 && !handed; attempt++ {
		want = append(want, r.fillDestination()...)
		msg := "a" + strconv.Itoa(attempt) + " APPEND INBOX {5}\r\n"
		r.sender.Write([]byte(msg))
		r.step()
		want = append(want, msg...)
		handed = r.f.state.Load() == flowRunning
	}
	if !handed {
		t.Fatal("the destination never stayed full: no hand-off to test")
	}
	if got := r.receive(len(want)); !bytes.Equal(got, want) {
		t.Fatalf("receiver got %d bytes ending %q, want %d ending %q", len(got), got[max(0, len(got)-40):],
			len(want), want[max(0, len(want)-40):])
	}
	// The goroutine goes on with the flow, after the carried bytes (until the sweeper sends
	// it back: TestInlineRestAfterGoroutine).
	r.sender.Write([]byte("b1 NOOP\r\n"))
	if got := string(r.receive(9)); got != "b1 NOOP\r\n" {
		t.Fatalf("after the carried bytes the receiver got %q", got)
	}
	// Counted once written: the goroutine's count may come just after the receiver read.
	m := int64(len(want) - bytes.Count(want, []byte("f")) + 9)
	waitFor(t, "the flow's bytes counted", func() bool { return r.count.Load() == m })
}

// Bulk data (reads that fill the loop's buffer) stays in the loop: shares of inlineShare
// bytes, the destination filling up and taking again, many times over; no goroutine.
func TestInlineLoopCopiesBulk(t *testing.T) {
	r := newInlineRig(t)
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	go r.l.run() // the burst raises events until it has all come: the loop's goroutine takes them
	go r.sender.Write(data)
	got := r.receive(len(data))
	if !bytes.Equal(got, data) {
		t.Fatal("bulk data changed on the way")
	}
	waitFor(t, "the burst counted", func() bool { return r.count.Load() == int64(len(data)) })
	if n := r.runs.Load(); n != 0 {
		t.Fatalf("%d goroutines started for the flows", n)
	}
}

// A flow that has had its share waits in the loop's queue, once: an event that gives it
// another share meanwhile does not queue it again, and its turn comes after the events.
func TestInlineLoopQueuesFlowOnce(t *testing.T) {
	r := newInlineRig(t)
	r.l.cp.share = loopBufSize // one full read is a share
	data := bytes.Repeat([]byte("q"), 4<<20)
	go r.sender.Write(data)
	received := make(chan []byte, 1)
	go func() { received <- r.receive(len(data)) }()
	queued := func() (n int) {
		for _, f := range r.l.again {
			if f == r.f {
				n++
			}
		}
		return n
	}
	srcRC, _ := r.f.srcRaw.(*net.TCPConn).SyscallConn()
	inq := func() (n int) {
		srcRC.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		return n
	}
	for queued() == 0 { // until a copy has used up its share: a full read
		waitFor(t, "more than a read's worth of bytes at the source, or bytes waiting", func() bool {
			return inq() > loopBufSize || r.f.carryB != nil
		})
		r.step()
	}
	r.l.onEvent(r.f, syscall.EPOLLIN) // as if more bytes raised an event before its turn
	if n := queued(); n != 1 {
		t.Fatalf("the flow is in the loop's queue %d times, want once", n)
	}
	for r.count.Load() < int64(len(data)) {
		if len(r.l.again) > 0 {
			r.l.turn()
			continue
		}
		r.step()
	}
	if got := <-received; !bytes.Equal(got, data) {
		t.Fatal("the bytes changed on the way")
	}
}

// The sender's FIN ends the flow in the loop: the half-close is passed on (RFC 9051 section
// 3.4: after LOGOUT the client may close first; the backend still answers).
func TestInlineLoopEndsAtFIN(t *testing.T) {
	r := newInlineRig(t)
	r.sender.Write([]byte("a9 LOGOUT\r\n"))
	r.sender.CloseWrite()
	for r.f.state.Load() != flowEnded {
		r.step()
	}
	if got := string(r.receive(11)); got != "a9 LOGOUT\r\n" {
		t.Fatalf("receiver got %q", got)
	}
	_ = r.receiver.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := r.receiver.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the sender's FIN the receiver read %d, %v; want the FIN passed on", n, err)
	}
	if r.f.loop.flows[r.f.id] != nil {
		t.Fatal("the ended flow is still in the loop's table")
	}
}

// The client half-closes after LOGOUT (RFC 9051 section 3.4): its flow ends in the loop. The
// backend's answer then finds the client's socket full: it waits for EPOLLOUT on the ended
// flow's registration, and is written whole when the client reads.
func TestInlineLoopAnswerAfterHalfCloseWaits(t *testing.T) {
	r := newInlineRig(t)
	client, backend := r.sender, r.receiver // r.f: client → backend; r.rev: backend → client
	client.Write([]byte("a9 LOGOUT\r\n"))
	client.CloseWrite()
	for r.f.state.Load() != flowEnded {
		r.step()
	}
	var want []byte // what the client must get, in order
	fill := bytes.Repeat([]byte("g"), 64<<10)
	for attempt := 0; attempt < 20 && r.rev.carryB == nil; attempt++ {
		r.rev.dst.rc.Control(func(fd uintptr) { // fill the client's path (it reads nothing yet)
			for {
				n, e := sysWrite(fd, fill)
				if e != 0 {
					return
				}
				want = append(want, fill[:n]...)
			}
		})
		msg := "* BYE logging out " + strconv.Itoa(attempt) + "\r\na9 OK LOGOUT completed\r\n"
		backend.Write([]byte(msg))
		want = append(want, msg...)
		r.step()
	}
	if r.rev.carryB == nil {
		t.Fatal("the client's socket never stayed full: nothing to wait for")
	}
	got := make(chan []byte, 1)
	go func() {
		_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, len(want))
		n, _ := io.ReadFull(client, b)
		got <- b[:n]
	}()
	for r.rev.carryB != nil { // each step waits (bounded) for the room's event
		r.step()
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the client got %d bytes ending %q, want %d ending %q", len(b), b[max(0, len(b)-40):],
			len(want), want[max(0, len(want)-40):])
	}
	if n := r.runs.Load(); n != 0 {
		t.Fatalf("%d goroutines started for the flows", n)
	}
}

// While a goroutine owns the flow the loop hears nothing of it; when the goroutine gives it
// back (sleep), bytes that came meanwhile raise an event at once, and the loop copies them.
func TestInlineRestAfterGoroutine(t *testing.T) {
	r := newInlineRig(t)
	d := r.l.d
	// As the loop hands a flow to a goroutine (copy, when the other flow cannot ask EPOLLOUT).
	if err := d.epollCtl(r.f, flowRunning, epollMuted); err != nil {
		t.Fatal(err)
	}
	d.count(-1)
	r.sender.Write([]byte("a1 NOOP\r\n"))
	srcRC, _ := r.f.srcRaw.(*net.TCPConn).SyscallConn()
	srcRC.Control(func(fd uintptr) { // until the bytes are there (bounded)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 10_000); n != 1 || err != nil {
			t.Fatalf("the sender's bytes did not arrive: %d, %v", n, err)
		}
	})
	if n, _ := syscall.EpollWait(r.l.epfd, make([]syscall.EpollEvent, 1), 0); n != 0 {
		t.Fatal("the loop got an event for a flow its goroutine runs")
	}
	if !d.sleep(r.f) {
		t.Fatal("rest refused a flow of a live session")
	}
	r.step()
	if got := string(r.receive(9)); got != "a1 NOOP\r\n" {
		t.Fatalf("receiver got %q", got)
	}
	if s := r.f.state.Load(); s != flowDormant {
		t.Fatalf("flow state %d after the loop's copy, want dormant", s)
	}
}

// Through the proxy: a plain session's directions are copied by the loops from the first
// byte after login, with no goroutine, and a FETCH of a large message (bulk, copied by the
// loop too) arrives whole.
func TestPlainSessionRunsInline(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	m := newRecordingMetrics()
	tp := startProxy(t, toBackends(&routing.Backend{Address: be.addr}),
		ListenerOptions{AllowPlaintextAuth: true}, func(o *Options) { o.Metrics = m })
	c := dialTranscript(t, tp.addr)
	c.expect("* OK …")
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	body := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
	msg := "Subject: big\r\n\r\n" + body
	c.send("a2 APPEND INBOX {" + strconv.Itoa(len(msg)) + "}\r\n") // synchronising: LITERAL- caps {n+} at 4 KiB
	c.expect("+ …")
	c.send(msg + "\r\n")
	for !strings.HasPrefix(c.line(), "a2 OK") {
	}
	c.send("a3 SELECT INBOX\r\n")
	for !strings.HasPrefix(c.line(), "a3 OK") {
	}
	waitNoFlowGoroutines(t)
	if n := m.dormantNow(); n != 2 {
		t.Fatalf("directions waiting in the loops = %d, want 2", n)
	}
	c.send("a4 FETCH * BODY.PEEK[TEXT]\r\n") // the message just appended
	line := c.line()
	if want := "BODY[TEXT] {" + strconv.Itoa(len(body)) + "}"; !strings.HasSuffix(line, want) {
		t.Fatalf("got %q, want a FETCH ending %q", line, want)
	}
	got := make([]byte, len(body))
	if _, err := io.ReadFull(c.br, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != body {
		t.Fatal("the message body changed on the way")
	}
	c.expect(")")
	c.expect("a4 OK …")
	c.send("a5 NOOP\r\n")
	c.expect("a5 OK …")
	waitNoFlowGoroutines(t)

	c.send("a6 LOGOUT\r\n")
	c.expect("* BYE …")
	c.expect("a6 OK …")
	c.expectClosed()
	tp.waitLog(t, "session end")
	if n := m.dormantNow(); n != 0 {
		t.Fatalf("directions waiting in the loops after the session's end = %d, want 0", n)
	}
}

// If the loops stop (here: closed under a live session), their flows get goroutines that wait
// in the runtime's poller, and the session goes on.
func TestSessionOutlivesItsPollLoops(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	tp := startProxy(t, toBackends(&routing.Backend{Address: be.addr}),
		ListenerOptions{TLS: tlsconf.None, AllowPlaintextAuth: true})
	c := dialTranscript(t, tp.addr)
	c.expect("* OK …")
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	c.send("a2 NOOP\r\n")
	c.expect("a2 OK …")
	tp.srv.mu.Lock()
	d := tp.srv.dormancy
	tp.srv.mu.Unlock()
	d.close()
	waitFor(t, "a goroutine for each flow after the loops stopped", func() bool { return flowGoroutines() == 2 })
	for _, tag := range []string{"a3", "a4"} {
		c.send(tag + " NOOP\r\n")
		c.expect(tag + " OK …")
	}
	waitFor(t, "both flows parked in the runtime's poller, with goroutines", func() bool { return flowGoroutines() == 2 })
}

// Many plain sessions at once on the loops, each with short commands and a bulk FETCH (in
// shares, waiting for the client's socket now and then; DormantAfter short, so that any
// direction handed to a goroutine comes back during the run): every answer arrives whole and
// in order.
func TestInlineManySessions(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	tp := startProxy(t, toBackends(&routing.Backend{Address: be.addr}),
		ListenerOptions{AllowPlaintextAuth: true}, func(o *Options) { o.DormantAfter = 5 * time.Millisecond })
	body := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB
	c := dialTranscript(t, tp.addr)
	c.expect("* OK …")
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	msg := "Subject: big\r\n\r\n" + body
	c.send("a2 APPEND INBOX {" + strconv.Itoa(len(msg)) + "}\r\n")
	c.expect("+ …")
	c.send(msg + "\r\n")
	for !strings.HasPrefix(c.line(), "a2 OK") {
	}

	const sessions, rounds = 16, 20
	errs := make(chan error, sessions)
	for i := 0; i < sessions; i++ {
		go func() {
			errs <- func() error {
				conn, err := net.Dial("tcp", tp.addr)
				if err != nil {
					return err
				}
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
				br := bufio.NewReader(conn)
				line := func() (string, error) {
					l, err := br.ReadString('\n')
					return strings.TrimSuffix(l, "\r\n"), err
				}
				until := func(tag string) error {
					for {
						l, err := line()
						if err != nil {
							return err
						}
						if strings.HasPrefix(l, tag+" ") {
							if !strings.HasPrefix(l, tag+" OK") {
								return fmt.Errorf("%s", l)
							}
							return nil
						}
					}
				}
				if _, err := line(); err != nil {
					return err
				}
				fmt.Fprintf(conn, "b1 LOGIN alice@example.com alice\r\nb2 SELECT INBOX\r\n")
				if err := until("b1"); err != nil {
					return err
				}
				if err := until("b2"); err != nil {
					return err
				}
				for r := 0; r < rounds; r++ {
					fmt.Fprintf(conn, "n%d NOOP\r\n", r)
					if err := until(fmt.Sprintf("n%d", r)); err != nil {
						return err
					}
					if r%5 != 0 {
						continue
					}
					fmt.Fprintf(conn, "f%d FETCH * BODY.PEEK[TEXT]\r\n", r)
					l, err := line()
					if err != nil {
						return err
					}
					if !strings.HasSuffix(l, "{"+strconv.Itoa(len(body))+"}") {
						return fmt.Errorf("FETCH answered %q", l)
					}
					got := make([]byte, len(body))
					if _, err := io.ReadFull(br, got); err != nil {
						return err
					}
					if string(got) != body {
						return fmt.Errorf("round %d: the body changed on the way", r)
					}
					if err := until(fmt.Sprintf("f%d", r)); err != nil {
						return err
					}
				}
				fmt.Fprintf(conn, "z LOGOUT\r\n")
				return until("z")
			}()
		}()
	}
	for i := 0; i < sessions; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// Bulk both ways at once through one loop: the client sends 16 MiB while it reads them back
// from a backend that echoes, both ends reading 512 bytes at a time through small receive
// buffers. The proxy's own sockets get small send buffers after the login (the kernel grows
// them to megabytes otherwise, and whether a destination filled then depended on the pace:
// under -race it did not), so both directions find their destination full again and again
// and wait in the loop for EPOLLOUT. Every byte comes back, in order, and no direction needs
// a goroutine.
func TestInlineLoopBulkBothWays(t *testing.T) {
	const total = 16 << 20
	stream := func() func([]byte) { // the bytes the client sends, and expects back
		r := rand.New(rand.NewPCG(3, 5))
		return func(b []byte) {
			for i := range b {
				b[i] = byte(r.Uint32())
			}
		}
	}
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK [CAPABILITY IMAP4rev1] ready\r\n")
		s.expect(`ig1 LOGIN "alice" "pw"`)
		s.send("ig1 OK [CAPABILITY IMAP4rev1] done\r\n")
		// Echo: what the bufio reader has already, then the socket's, 512 bytes at a time,
		// through a small receive buffer: the proxy finds this socket full again and again.
		_ = s.conn.SetDeadline(time.Now().Add(60 * time.Second))
		_ = s.conn.(*net.TCPConn).SetReadBuffer(128 << 10)
		buf := make([]byte, 512)
		for echoed := 0; echoed < total; {
			n, err := s.br.Read(buf)
			if err != nil {
				t.Errorf("backend read after %d bytes: %v", echoed, err)
				return
			}
			if _, err := s.conn.Write(buf[:n]); err != nil {
				t.Errorf("backend write after %d bytes: %v", echoed, err)
				return
			}
			echoed += n
		}
		s.expect("c2 LOGOUT")
		s.send("* BYE bye\r\nc2 OK done\r\n")
	})
	tp, m, runs, c := loggedInAsAlice(t, addr)
	_ = c.conn.SetDeadline(time.Now().Add(60 * time.Second))
	_ = c.conn.(*net.TCPConn).SetReadBuffer(128 << 10) // and the client's too
	shrinkSendBuffers(t, tp.srv, 4<<10)
	var waits [2]atomic.Int32 // a direction found its destination full: client→backend, backend→client
	blocked := func(from string) { waits[boolIndex(from == "backend")].Add(1) }
	testHookBlocked.Store(&blocked)
	t.Cleanup(func() { testHookBlocked.Store(nil) })

	sent := make(chan error, 1)
	go func() {
		fill := stream()
		buf := make([]byte, 96<<10)
		for n := 0; n < total; {
			chunk := buf[:min(len(buf), total-n)]
			fill(chunk)
			if _, err := c.conn.Write(chunk); err != nil {
				sent <- fmt.Errorf("client write after %d bytes: %v", n, err)
				return
			}
			n += len(chunk)
		}
		sent <- nil
	}()
	fill := stream()
	got, want := make([]byte, 512), make([]byte, 512)
	for n := 0; n < total; n += len(got) {
		if _, err := io.ReadFull(c.br, got); err != nil {
			t.Fatalf("client read after %d bytes: %v", n, err)
		}
		fill(want)
		if !bytes.Equal(got, want) {
			t.Fatalf("the bytes from offset %d changed on the way", n)
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if n := runs.Load(); n != 0 {
		t.Errorf("%d flow goroutines started, want none", n)
	}
	up, down := waits[0].Load(), waits[1].Load()
	t.Logf("waits for a full destination: client→backend %d, backend→client %d", up, down)
	if up == 0 || down == 0 {
		t.Errorf("waits for a full destination: client→backend %d, backend→client %d; want some each way", up, down)
	}
	if n := m.dormantNow(); n != 2 {
		t.Fatalf("directions waiting in the loops = %d, want 2", n)
	}
	c.send("c2 LOGOUT\r\n")
	c.expect("* BYE bye")
	c.expect("c2 OK done")
	c.expectClosed()
}

// shrinkSendBuffers sets SO_SNDBUF to n on both sockets of every session srv holds (the
// kernel doubles it and keeps a floor): the loops then find a destination full long before
// a peer that reads slowly has drained it.
func shrinkSendBuffers(t *testing.T, srv *Server, n int) {
	t.Helper()
	srv.mu.Lock()
	var conns []net.Conn
	for s := range srv.sessions {
		s.mu.Lock()
		conns = append(conns, s.raw)
		if s.up != nil {
			conns = append(conns, s.up.raw)
		}
		s.mu.Unlock()
	}
	srv.mu.Unlock()
	if len(conns) == 0 {
		t.Fatal("no session to shrink")
	}
	for _, c := range conns {
		sc, ok := c.(syscall.Conn)
		if !ok {
			t.Fatalf("%T has no raw socket", c)
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, n)
		}); err != nil {
			t.Fatal(err)
		}
		if serr != nil {
			t.Fatal(serr)
		}
	}
}

func boolIndex(b bool) int {
	if b {
		return 1
	}
	return 0
}

// A plain session's usual end: the backend answers LOGOUT and closes. Its FIN comes to the
// loop, which ends that direction, closes the session and ends the other direction itself
// (pollLoop.end): no goroutine is started for either, and the session end is logged
// with both counts.
func TestInlineSessionEndsInTheLoop(t *testing.T) {
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK [CAPABILITY IMAP4rev1] ready\r\n")
		s.expect(`ig1 LOGIN "alice" "pw"`)
		s.send("ig1 OK [CAPABILITY IMAP4rev1] done\r\n")
		s.expect("c2 LOGOUT")
		s.send("* BYE bye\r\nc2 OK done\r\n")
	}) // the script's end closes the backend's connection
	tp, m, runs, c := loggedInAsAlice(t, addr)
	c.send("c2 LOGOUT\r\n")
	c.expect("* BYE bye")
	c.expect("c2 OK done")
	c.expectClosed()

	e := tp.waitLog(t, "session end")
	if got := e.ContextMap()["closed_by"]; got != "backend" {
		t.Errorf("closed_by = %v, want backend", got)
	}
	if got, want := e.ContextMap()["bytes_client_to_backend"], int64(len("c2 LOGOUT\r\n")); got != want {
		t.Errorf("bytes_client_to_backend = %v, want %d", got, want)
	}
	if n := runs.Load(); n != 0 {
		t.Errorf("%d flow goroutines started, want none", n)
	}
	if n := m.dormantNow(); n != 0 {
		t.Errorf("directions waiting in the loops after the end = %d, want 0", n)
	}
}

// loggedInAsAlice starts a plain proxy in front of the scripted backend at addr (which
// answers ig1 LOGIN "alice" "pw" with OK [CAPABILITY IMAP4rev1] done) and logs a client
// in through it. runs counts the goroutines started for a flow from then on.
func loggedInAsAlice(t *testing.T, addr string) (tp *testProxy, m *recordingMetrics, runs *atomic.Int32, c *transcript) {
	t.Helper()
	m = newRecordingMetrics()
	tp = startProxy(t, toBackends(&routing.Backend{Address: addr}),
		ListenerOptions{AllowPlaintextAuth: true}, func(o *Options) { o.Metrics = m })
	runs = new(atomic.Int32)
	hook := func(*flow) { runs.Add(1) }
	testHookRun.Store(&hook)
	t.Cleanup(func() { testHookRun.Store(nil) })
	c = dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("c1 LOGIN alice pw\r\n")
	c.expect("c1 OK [CAPABILITY IMAP4rev1] done")
	return tp, m, runs, c
}

// The client flow waits with carried bytes (destination full, EPOLLOUT asked on the backend
// flow's registration); the backend's FIN (or an RST) then comes to the loop. The loop ends the backend
// flow, closes the session and ends the client flow itself: carry dropped, no goroutine,
// table empty, dormant count 0, done once.
func TestInlineLoopEndsWaitingFlowOnClose(t *testing.T) {
	for _, tc := range []struct{ burst, rst bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		burst := tc.burst
		t.Run(fmt.Sprint("burst=", burst, ",rst=", tc.rst), func(t *testing.T) {
			r := newInlineRig(t)
			waiting := false
			for attempt := 0; attempt < 20 && !waiting; attempt++ {
				r.fillDestination()
				msg := "a APPEND INBOX {5}\r\n"
				if burst {
					msg = strings.Repeat("m", 40<<10)
				}
				r.sender.Write([]byte(msg))
				r.step()
				waiting = r.f.carryB != nil
			}
			if !waiting {
				t.Skip("destination never stayed full")
			}
			if r.rev.state.Load() != flowDormant || r.f.state.Load() != flowDormant {
				t.Fatalf("states %d %d", r.f.state.Load(), r.rev.state.Load())
			}
			if tc.rst {
				_ = r.receiver.SetLinger(0)
				_ = r.receiver.Close()
			} else {
				_ = r.receiver.CloseWrite() // the backend's FIN
			}
			for ended := false; !ended; {
				select {
				case <-r.ended:
					ended = true
				default:
					r.step()
				}
			}
			if r.f.state.Load() != flowEnded || r.rev.state.Load() != flowEnded {
				t.Fatalf("states %d %d, want both ended", r.f.state.Load(), r.rev.state.Load())
			}
			if r.f.carry != nil || r.f.carryB != nil {
				t.Fatal("carry kept")
			}
			if n := r.runs.Load(); n != 0 {
				t.Fatalf("%d goroutines", n)
			}
			if n := r.l.d.now.Load(); n != 0 {
				t.Fatalf("dormant count %d", n)
			}
			r.l.mu.Lock()
			n := len(r.l.flows)
			r.l.mu.Unlock()
			if n != 0 {
				t.Fatalf("%d flows left in the table", n)
			}
			if len(r.l.ending) != 0 {
				t.Fatal("ending not empty")
			}
			if r.f.sp.left.Load() != 0 {
				t.Fatalf("left = %d", r.f.sp.left.Load())
			}
		})
	}
}

// Many plain sessions end by LOGOUT (the backend's FIN comes to a loop) while Kick and Close
// interrupt them from other goroutines: no race, no deadlock, every session finishes, the
// dormant gauge goes back to 0.
func TestInlineLoopEndsRaceKickAndClose(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	for round := 0; round < 5; round++ {
		m := newRecordingMetrics()
		tp := startProxy(t, toBackends(&routing.Backend{Address: be.addr}),
			ListenerOptions{AllowPlaintextAuth: true}, func(o *Options) { o.Metrics = m })
		const sessions = 40
		clients := make([]*transcript, sessions)
		for i := range clients {
			c := dialTranscript(t, tp.addr)
			c.expect("* OK …")
			c.send("b1 LOGIN alice@example.com alice\r\n")
			c.expect("b1 OK …")
			clients[i] = c
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, c := range clients {
			wg.Add(1)
			go func() { // not the test's goroutine: raw reads and writes, no Fatal
				defer wg.Done()
				<-start
				_, _ = c.conn.Write([]byte("z LOGOUT\r\n"))
				for {
					if _, err := c.br.ReadString('\n'); err != nil {
						return
					}
				}
			}()
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			tp.srv.Kick(func(si SessionInfo) bool { return si.ID[len(si.ID)-1]%2 == 0 })
		}()
		go func() { defer wg.Done(); <-start; tp.srv.Close() }()
		close(start)
		wg.Wait()
		waitFor(t, "sessions gone", func() bool { return tp.srv.ActiveSessions() == 0 })
		waitFor(t, "dormant gauge 0", func() bool { return m.dormantNow() == 0 })
		if n := tp.srv.dormancy.now.Load(); n != 0 {
			t.Fatalf("dormancy.now = %d", n)
		}
	}
}
