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
	testHookDormant = func(f *flow) { slept <- f }
	m := newRecordingMetrics()
	tp := startProxy(t, toBackends(&routing.Backend{Address: be.addr}),
		ListenerOptions{TLS: mode, AllowPlaintextAuth: true},
		func(o *Options) { o.DormantAfter = 20 * time.Millisecond; o.Metrics = m })
	t.Cleanup(func() {
		tp.srv.Close()
		testHookDormant = nil
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
			c := dialMode(t, tp, mode)
			c.expect("* OK …")
			c.send("a1 LOGIN alice@example.com alice\r\n")
			c.expect("a1 OK …")
			c.send("a2 SELECT INBOX\r\n")
			for !strings.HasPrefix(c.line(), "a2 OK") {
			}
			c.send("a3 IDLE\r\n")
			c.expect("+ idling")
			sp := waitDormant(t, slept)
			if n := flowGoroutines(); n != 0 {
				t.Fatalf("%d flow goroutines while the only session is dormant", n)
			}
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
