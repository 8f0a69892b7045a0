package proxy

import (
	"crypto/tls"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// dormantProxy is a proxy whose quiet flows go dormant after 20 ms, with a channel that
// tells when one has.
func dormantProxy(t *testing.T, mode tlsconf.Mode) (*testProxy, *recordingMetrics, <-chan *flow) {
	t.Helper()
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice", "bob@example.com": "bob"})
	slept := make(chan *flow, 64)
	hook := func(f *flow) {
		select {
		case slept <- f:
		default: // a test that stopped listening must not block the proxy
		}
	}
	testHookDormant.Store(&hook)
	m := newRecordingMetrics()
	tp := startProxy(t, toBackends(&routing.Backend{Address: be.addr}),
		ListenerOptions{TLS: mode, AllowPlaintextAuth: true},
		func(o *Options) { o.DormantAfter = 20 * time.Millisecond; o.Metrics = m })
	t.Cleanup(func() {
		tp.srv.Close()
		testHookDormant.Store(nil)
	})
	return tp, m, slept
}

// waitDormant waits until both flows of one session have gone dormant.
func waitDormant(t *testing.T, slept <-chan *flow) *spliceState {
	t.Helper()
	seen := map[*flow]bool{}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case f := <-slept:
			seen[f] = true
			if seen[f.sp.flows[0]] && seen[f.sp.flows[1]] &&
				f.sp.flows[0].state.Load() == flowDormant && f.sp.flows[1].state.Load() == flowDormant {
				return f.sp
			}
		case <-timeout:
			t.Fatal("the session's flows did not both go dormant")
		}
	}
}

// flowGoroutines counts goroutines running a flow.
func flowGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "proxy.(*flow).run(")
}

// waitNoFlowGoroutines waits (bounded) for the goroutines of dormant flows to have returned:
// the hook runs just before they do.
func waitNoFlowGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for flowGoroutines() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d flow goroutines while the only session is dormant", flowGoroutines())
		}
		runtime.Gosched()
	}
}

// idleSession logs alice in, selects INBOX and starts IDLE (tag a3), as a mail client
// waiting for new mail does.
func idleSession(t *testing.T, tp *testProxy, mode tlsconf.Mode) *transcript {
	t.Helper()
	c := dialMode(t, tp, mode)
	c.expect("* OK …")
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	c.send("a2 SELECT INBOX\r\n")
	for !strings.HasPrefix(c.line(), "a2 OK") {
	}
	c.send("a3 IDLE\r\n")
	c.expect("+ idling")
	return c
}

func dialMode(t *testing.T, tp *testProxy, mode tlsconf.Mode) *transcript {
	t.Helper()
	if mode == tlsconf.Implicit {
		c, err := tls.Dial("tcp", tp.addr, tp.tls)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return newTranscript(t, c)
	}
	return dialTranscript(t, tp.addr)
}

// A session in IDLE goes dormant in both directions, holds no goroutine, and wakes for the
// backend's untagged EXISTS and for the client's DONE.
func TestDormantSessionWakesBothWays(t *testing.T) {
	for _, mode := range []tlsconf.Mode{tlsconf.None, tlsconf.Implicit} {
		t.Run("client "+mode.String(), func(t *testing.T) {
			tp, m, slept := dormantProxy(t, mode)
			c := idleSession(t, tp, mode)
			sp := waitDormant(t, slept)
			waitNoFlowGoroutines(t)
			if n := m.dormantNow(); n != 2 {
				t.Fatalf("dormant directions gauge = %d, want 2", n)
			}

			// Another session appends: the backend's EXISTS wakes backend→client.
			o := dialMode(t, tp, mode)
			o.expect("* OK …")
			o.send("b1 LOGIN alice@example.com alice\r\n")
			o.expect("b1 OK …")
			msg := "Subject: wake up\r\n\r\nhello\r\n"
			o.send("b2 APPEND INBOX {" + strconv.Itoa(len(msg)) + "+}\r\n" + msg + "\r\n")
			for !strings.HasPrefix(o.line(), "b2 OK") {
			}
			c.expect("* 4 EXISTS")

			// The client's DONE wakes client→backend (dormant again by now or not).
			c.send("DONE\r\n")
			c.expect("a3 OK …")
			c.send("a4 NOOP\r\n")
			c.expect("a4 OK …")
			c.send("a5 LOGOUT\r\n")
			c.expect("* BYE …")
			c.expect("a5 OK …")
			c.expectClosed()
			tp.waitLog(t, "session end")
			if n := sp.left.Load(); n != 0 {
				t.Fatalf("%d flows still running after the session ended", n)
			}
			if n := m.dormantNow(); n < 0 || n > 2 {
				t.Fatalf("dormant directions gauge = %d with one session left", n) // the other one's
			}
		})
	}
}

// A dormant session ends when the client goes away, and when the server closes.
func TestDormantSessionEnds(t *testing.T) {
	tp, _, slept := dormantProxy(t, tlsconf.None)
	open := func() *transcript {
		c := dialTranscript(t, tp.addr)
		c.expect("* OK …")
		c.send("a1 LOGIN alice@example.com alice\r\n")
		c.expect("a1 OK …")
		return c
	}
	gone := open()
	waitDormant(t, slept)
	gone.conn.(*net.TCPConn).Close()
	e := tp.waitLog(t, "session end")
	if by := e.ContextMap()["closed_by"]; by != "client" {
		t.Fatalf("closed_by = %v, want client", by)
	}

	stays := open()
	waitDormant(t, slept)
	closed := make(chan struct{})
	go func() {
		tp.srv.Close()
		close(closed)
	}()
	stays.expectClosed()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return with a dormant session")
	}
	if n := tp.srv.ActiveSessions(); n != 0 {
		t.Fatalf("%d sessions left after Close", n)
	}
}

// An operator's kick reaches a dormant session.
func TestDormantSessionKicked(t *testing.T) {
	tp, _, slept := dormantProxy(t, tlsconf.None)
	c := dialTranscript(t, tp.addr)
	c.expect("* OK …")
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	waitDormant(t, slept)
	if n := tp.srv.Kick(func(si SessionInfo) bool { return si.User == "alice@example.com" }); n != 1 {
		t.Fatalf("Kick = %d, want 1", n)
	}
	c.expectClosed()
	e := tp.waitLog(t, "session end")
	if by := e.ContextMap()["closed_by"]; by != "kick" {
		t.Fatalf("closed_by = %v, want kick", by)
	}
}

// A backend that stops reading while the client goes on sending fills every buffer between
// them, and the client→backend copy waits to write. Closing the server (or kicking the
// session) must still end the session: the copy must not hold the client socket while it
// waits on the backend, or closing the client socket waits for it forever.
func TestCloseWhileCopyWaitsOnFullBackend(t *testing.T) {
	release := make(chan struct{})
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] ready\r\n")
		s.expect("ig1 AUTHENTICATE PLAIN AGFsaWNlAGFsaWNl")
		s.send("ig1 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
		<-release // reads nothing more
	})
	t.Cleanup(func() { close(release) })
	tp := startProxy(t, toBackends(&routing.Backend{Address: addr}),
		ListenerOptions{AllowPlaintextAuth: true, Observe: ObserveOn}) // short reads, no splice
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("c1 LOGIN alice alice\r\n")
	c.expect("c1 OK [CAPABILITY IMAP4rev1] Logged in")
	_ = c.conn.SetDeadline(time.Time{})
	go func() {
		line := []byte("c2 NOOP " + strings.Repeat("x", 1000) + "\r\n")
		for {
			if _, err := c.conn.Write(line); err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !flowWaitsToWrite() {
		if time.Now().After(deadline) {
			t.Fatal("the client→backend copy never waited on the backend")
		}
		runtime.Gosched()
	}
	closed := make(chan struct{})
	go func() {
		tp.srv.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Server.Close hung on a session whose backend stopped reading")
	}
}

// flowWaitsToWrite reports whether some flow goroutine is parked writing.
func flowWaitsToWrite() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "proxy.(*flow).run(") && strings.Contains(g, "proxy.(*rawWriter).write(") &&
			strings.Contains(g, "runtime_pollWait") {
			return true
		}
	}
	return false
}

// hiddenListener hands out connections that do not show their socket (as a wrapping
// listener might): their copies block and never go dormant.
type hiddenListener struct{ net.Listener }

func (l hiddenListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return struct{ net.Conn }{c}, nil
}

// The sweeper leaves flows over connections without a socket alone (it used to ask them to
// go dormant, and the dormancy poller could not watch them).
func TestDormancySkipsConnectionsWithoutSocket(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	srv := New(Options{Router: toBackends(&routing.Backend{Address: be.addr}), DormantAfter: time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(hiddenListener{ln}, ListenerOptions{AllowPlaintextAuth: true})
	t.Cleanup(func() { srv.Close() })
	c := dialTranscript(t, ln.Addr().String())
	c.expect("* OK …")
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	// Many sweeps (one a millisecond) pass during these round trips.
	for i := range 200 {
		tag := "n" + strconv.Itoa(i)
		c.send(tag + " NOOP\r\n")
		c.expect(tag + " OK …")
	}
	c.send("a2 LOGOUT\r\n")
	c.expect("* BYE …")
	c.expect("a2 OK …")
}

// runningCount counts the flows in the sweeper's registry of running flows.
func runningCount(d *dormancy) int {
	n := 0
	for i := range d.runningFlows {
		sh := &d.runningFlows[i]
		sh.mu.Lock()
		n += len(sh.flows)
		sh.mu.Unlock()
	}
	return n
}

// The sweeper finds quiet flows without the server's lock (which accepting connections
// needs), through its own registry of running flows: a session goes dormant while the lock
// is held, and the registry holds exactly the flows that have a goroutine.
func TestSweeperDoesNotTakeServerLock(t *testing.T) {
	tp, _, slept := dormantProxy(t, tlsconf.None)
	c := idleSession(t, tp, tlsconf.None)
	var d *dormancy
	func() {
		tp.srv.mu.Lock()
		defer tp.srv.mu.Unlock()
		d = tp.srv.dormancy
		waitDormant(t, slept)
	}()
	waitNoFlowGoroutines(t)
	if n := runningCount(d); n != 0 {
		t.Fatalf("%d flows in the running registry while the only session is dormant", n)
	}
	c.send("DONE\r\n")
	c.expect("a3 OK …")
	c.send("a4 LOGOUT\r\n")
	c.expect("* BYE …")
	c.expect("a4 OK …")
	c.expectClosed()
	tp.waitLog(t, "session end")
	if n := runningCount(d); n != 0 {
		t.Fatalf("%d flows left in the running registry after the session ended", n)
	}
}
