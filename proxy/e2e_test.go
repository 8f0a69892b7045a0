package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgate/imapgate/deploy/memdemo"
	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// End-to-end tests: a real IMAP client (go-imap's imapclient) through the proxy to real
// in-process IMAP servers (imapmemserver), routed by the go-memdb table.

// twoShards starts shard a (alice) and shard b (bob) and a proxy routing between them the way
// the configuration would: alice by user, example.org by domain.
func twoShards(t *testing.T, lo ListenerOptions) (*testProxy, map[string]string) {
	a := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	b := startMemBackend(t, map[string]string{"bob@example.org": "bob"})
	table, err := routing.NewTable(routing.TableSpec{
		Shards: []routing.ShardSpec{
			{Name: "a", Backends: []*routing.Backend{{Address: a.addr}}},
			{Name: "b", Backends: []*routing.Backend{{Address: b.addr}}},
		},
		Users:   map[string]string{"alice@example.com": "a"},
		Domains: map[string]string{"example.org": "b"},
	})
	if err != nil {
		t.Fatal(err)
	}
	tp := startProxy(t, &routing.Static{Table: table}, lo)
	return tp, map[string]string{"a": a.addr, "b": b.addr}
}

// tclient is an imapclient with the EXISTS counts the server pushed (RFC 9051 section
// 7.4.1), so a test can wait for one instead of sleeping.
type tclient struct {
	*imapclient.Client
	exists chan uint32
}

// dialClient connects an imapclient through the proxy, with TLS as the listener wants.
func dialClient(t *testing.T, tp *testProxy, mode tlsconf.Mode, opts *imapclient.Options) *tclient {
	t.Helper()
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = tp.tls
	exists := make(chan uint32, 64)
	opts.UnilateralDataHandler = &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				select {
				case exists <- *d.NumMessages:
				default:
				}
			}
		},
	}
	var (
		c   *imapclient.Client
		err error
	)
	switch mode {
	case tlsconf.None:
		c, err = imapclient.DialInsecure(tp.addr, opts)
	case tlsconf.STARTTLS:
		c, err = imapclient.DialStartTLS(tp.addr, opts)
	case tlsconf.Implicit:
		c, err = imapclient.DialTLS(tp.addr, opts)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &tclient{Client: c, exists: exists}
}

// workout runs a mail client's day in a logged-in session: SELECT, FETCH, APPEND with a
// literal, IDLE woken by another session's APPEND, LOGOUT.
func workout(t *testing.T, c *tclient, second func() *tclient, user string) {
	t.Helper()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if sel.NumMessages == 0 {
		t.Fatalf("INBOX of %s is empty", user)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("FETCH: %v (%d messages)", err, len(msgs))
	}
	if body := msgs[0].BodySection[0].Bytes; !bytes.Contains(body, []byte("Subject:")) {
		t.Fatalf("FETCH body has no Subject: %q", body)
	}

	msg := fmt.Sprintf("From: test@example.net\r\nTo: %s\r\nSubject: appended\r\n\r\nAppended through imapgate.\r\n", user)
	appendMessage(t, c, msg)

	// IDLE: another session's APPEND must reach us as an untagged EXISTS while we idle.
	if second != nil {
		idle, err := c.Idle()
		if err != nil {
			t.Fatalf("IDLE: %v", err)
		}
		// imapmemserver may miss an update that lands just as IDLE starts (its tracker
		// registers after sending "+ idling"), and Dovecot polls: append again, a bounded
		// number of times, until the server tells us.
		other := second()
		base := sel.NumMessages + 1 // our own APPEND above
		woken := false
		for try := 0; try < 10 && !woken; try++ {
			appendMessage(t, other, "Subject: while idling\r\n\r\nwake up\r\n")
			wait := time.After(3 * time.Second)
		waitLoop:
			for {
				select {
				case n := <-c.exists:
					if n > base {
						woken = true
						break waitLoop
					}
				case <-wait:
					break waitLoop
				}
			}
		}
		if !woken {
			t.Fatal("no EXISTS reached the client during IDLE")
		}
		if err := other.Logout().Wait(); err != nil {
			t.Fatalf("LOGOUT of second session: %v", err)
		}
		if err := idle.Close(); err != nil {
			t.Fatalf("DONE: %v", err)
		}
		if err := idle.Wait(); err != nil {
			t.Fatalf("IDLE: %v", err)
		}
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatalf("LOGOUT: %v", err)
	}
}

func appendMessage(t *testing.T, c *tclient, msg string) {
	t.Helper()
	ac := c.Append("INBOX", int64(len(msg)), nil)
	if _, err := ac.Write([]byte(msg)); err != nil {
		t.Fatalf("APPEND write: %v", err)
	}
	if err := ac.Close(); err != nil {
		t.Fatalf("APPEND close: %v", err)
	}
	if _, err := ac.Wait(); err != nil {
		t.Fatalf("APPEND: %v", err)
	}
}

func TestEndToEndMemShards(t *testing.T) {
	for _, mode := range []tlsconf.Mode{tlsconf.None, tlsconf.STARTTLS, tlsconf.Implicit} {
		t.Run("client "+mode.String(), func(t *testing.T) {
			tp, _ := twoShards(t, ListenerOptions{Name: "l", TLS: mode, AllowPlaintextAuth: mode == tlsconf.None})
			for _, u := range []struct{ user, pass, shard string }{
				{"alice@example.com", "alice", "a"},
				{"bob@example.org", "bob", "b"},
			} {
				login := func() *tclient {
					c := dialClient(t, tp, mode, nil)
					if err := c.Login(u.user, u.pass).Wait(); err != nil {
						t.Fatalf("LOGIN %s: %v", u.user, err)
					}
					return c
				}
				c := login()
				// After login the client must see the backend's capabilities, not ours.
				if caps := c.Caps(); !caps.Has(imap.CapIMAP4rev2) || caps.Has(imap.CapLoginDisabled) {
					t.Errorf("capabilities after login = %v, want the backend's", caps)
				}
				workout(t, c, login, u.user)
				tp.waitLog(t, "login")
				found := false
				for _, e := range tp.logs.FilterMessage("login").All() {
					if m := e.ContextMap(); m["user"] == u.user {
						found = true
						if m["shard"] != u.shard {
							t.Errorf("%s landed on shard %v, want %s", u.user, m["shard"], u.shard)
						}
					}
				}
				if !found {
					t.Errorf("no login line for %s", u.user)
				}
			}
		})
	}
}

// Bytes the client pipelines after LOGIN must reach the backend after the handoff.
func TestEndToEndPipelinedAfterLogin(t *testing.T) {
	tp, _ := twoShards(t, ListenerOptions{AllowPlaintextAuth: true})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN bob@example.org bob\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n")
	c.expect("a1 OK [CAPABILITY IMAP4rev2 …")
	for {
		l := c.line()
		if strings.HasPrefix(l, "a2 ") {
			if !strings.HasPrefix(l, "a2 OK") {
				t.Fatalf("SELECT: %q", l)
			}
			break
		}
	}
	c.expect("* BYE …")
	c.expect("a3 OK …")
	c.expectClosed()
	e := tp.waitLog(t, "session end")
	m := e.ContextMap()
	if m["bytes_client_to_backend"].(int64) == 0 {
		t.Errorf("session end counts no bytes: %v", m)
	}
	// The backend closed after its OK, the proxy closed the client: a normal end.
	if m["closed_by"] != "backend" || m["error"] != nil {
		t.Errorf("session end: closed_by %v, error %v; want backend, none", m["closed_by"], m["error"])
	}
}

// A client that disconnects after login ends the backend side too, and the session ends.
func TestEndToEndClientDisconnect(t *testing.T) {
	tp, _ := twoShards(t, ListenerOptions{AllowPlaintextAuth: true})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	c.conn.Close()
	e := tp.waitLog(t, "session end")
	if m := e.ContextMap(); m["closed_by"] != "client" || m["error"] != nil {
		t.Errorf("session end: closed_by %v, error %v; want client, none", m["closed_by"], m["error"])
	}
}

// TLS on the backend side: STARTTLS and implicit TLS to an in-process server, certificate
// verified against its CA.
func TestEndToEndBackendTLS(t *testing.T) {
	cfg, pem, err := tlsconf.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pool, err := tlsconf.CertPool(pem)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []tlsconf.Mode{tlsconf.STARTTLS, tlsconf.Implicit} {
		t.Run(mode.String(), func(t *testing.T) {
			be := startMemBackend(t, map[string]string{"alice@example.com": "alice"},
				func(o *memdemo.ShardOptions) { o.TLS, o.TLSConfig = mode, cfg })
			good := &routing.Backend{Address: be.addr, TLS: mode,
				TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}
			tp := startProxy(t, toBackends(good), ListenerOptions{AllowPlaintextAuth: true})
			c := dialClient(t, tp, tlsconf.None, nil)
			if err := c.Login("alice@example.com", "alice").Wait(); err != nil {
				t.Fatalf("LOGIN: %v", err)
			}
			workout(t, c, nil, "alice@example.com")
			if m := tp.waitLog(t, "login").ContextMap(); m["backend_tls"] != true {
				t.Errorf("login log says backend_tls=%v", m["backend_tls"])
			}

			// A backend whose certificate does not verify is unavailable.
			bad := &routing.Backend{Address: be.addr, TLS: mode,
				TLSConfig: &tls.Config{ServerName: "127.0.0.1"}} // system roots: fails
			tp2 := startProxy(t, toBackends(bad), ListenerOptions{AllowPlaintextAuth: true})
			tc := dialTranscript(t, tp2.addr)
			tc.expect(greetPlainAllowed)
			tc.send("a1 LOGIN alice@example.com alice\r\n")
			tc.expect("a1 NO [UNAVAILABLE] Service temporarily unavailable.")
		})
	}
}

// scriptedBackend accepts one connection and plays server lines from script. It is for
// backend behaviours a conforming in-process server does not show (Gmail's untagged
// CAPABILITY, bytes after OK, STARTTLS injection); the client side is still the real proxy.
func scriptedBackend(t *testing.T, script func(s *transcript)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer conn.Close()
		script(newTranscript(t, conn))
	}()
	t.Cleanup(func() {
		ln.Close()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("scripted backend did not finish")
		}
	})
	return ln.Addr().String()
}

// viaProxy starts a proxy (plaintext LOGIN allowed) in front of be and returns it with a
// client past the greeting.
func viaProxy(t *testing.T, be *routing.Backend) (*testProxy, *transcript) {
	t.Helper()
	tp := startProxy(t, toBackends(be), ListenerOptions{AllowPlaintextAuth: true})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	return tp, c
}

func TestUpstreamUntaggedCapabilityAndBytesAfterOK(t *testing.T) {
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK Gimap ready\r\n") // no capabilities in the greeting
		s.expect("ig1 CAPABILITY")
		s.send("* CAPABILITY IMAP4rev1 UNSELECT IDLE\r\nig1 OK Thats all she wrote!\r\n")
		s.expect(`ig2 LOGIN "alice" "pa ss\"word"`)
		// Untagged CAPABILITY after login, an ALERT, then the OK and, in the same packet,
		// an unsolicited response that must reach the client after its OK.
		s.send("* CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE\r\n* OK [ALERT] Welcome\r\nig2 OK alice authenticated (Success)\r\n* 3 EXISTS\r\n")
		s.expect("c2 NOOP")
		s.send("c2 OK Success\r\n")
	})
	_, c := viaProxy(t, &routing.Backend{Address: addr})
	c.send(`c1 LOGIN alice "pa ss\"word"` + "\r\n")
	c.expect("* OK [ALERT] Welcome")
	c.expect("c1 OK [CAPABILITY IMAP4rev1 UNSELECT IDLE NAMESPACE] alice authenticated (Success)")
	c.expect("* 3 EXISTS")
	c.send("c2 NOOP\r\n")
	c.expect("c2 OK Success")
}

func TestUpstreamLiteralLoginAndCapabilityAfterOK(t *testing.T) {
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK [CAPABILITY IMAP4rev1] ready\r\n")
		s.expect("ig1 LOGIN {5}") // 8-bit user name: a synchronising literal
		s.send("+ go on\r\n")
		s.expect(`jörg "pw"`)
		s.send("ig1 OK done\r\n") // no capabilities: the proxy must ask
		s.expect("ig2 CAPABILITY")
		s.send("* CAPABILITY IMAP4rev1 IDLE\r\nig2 OK done\r\n")
	})
	_, c := viaProxy(t, &routing.Backend{Address: addr})
	c.send("c1 LOGIN {5+}\r\njörg pw\r\n")
	c.expect("c1 OK [CAPABILITY IMAP4rev1 IDLE] done")
}

// An empty capability list (found by FuzzUpstream) is no list: the client never sees it, and
// the proxy asks instead of handing the client "OK [CAPABILITY ]".
func TestUpstreamEmptyCapabilityListAsked(t *testing.T) {
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK [CAPABILITY IMAP4rev1] ready\r\n")
		s.expect(`ig1 LOGIN "alice" "alice"`)
		s.send("* CAPABILITY\r\n* OK [CAPABILITY] hm\r\n* OK [ALERT] Welcome\r\nig1 OK [CAPABILITY] done\r\n")
		s.expect("ig2 CAPABILITY")
		s.send("* CAPABILITY IMAP4rev1 IDLE\r\nig2 OK [CAPABILITY] done\r\n")
	})
	_, c := viaProxy(t, &routing.Backend{Address: addr})
	c.send("c1 LOGIN alice alice\r\n")
	c.expect("* OK [ALERT] Welcome")
	c.expect("c1 OK [CAPABILITY IMAP4rev1 IDLE] done")
}

func TestUpstreamStartTLSInjectionRefused(t *testing.T) {
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n")
		s.expect("ig1 STARTTLS")
		// An attacker's bytes after the OK, in the same packet.
		s.send("ig1 OK Begin TLS\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n")
		s.expectClosed()
	})
	tp, c := viaProxy(t, &routing.Backend{Address: addr, TLS: tlsconf.STARTTLS})
	c.send("c1 LOGIN alice alice\r\n")
	c.expect("c1 NO [UNAVAILABLE] Service temporarily unavailable.")
	if !strings.Contains(tp.logText(), "possible injection") {
		t.Errorf("log does not name the injection:\n%s", tp.logText())
	}
}

// A backend that refuses the pipelined ID still gets the login, here with a synchronising
// literal: the ID's answer is read before the continuation request.
func TestUpstreamPipelinedIDRefusedThenLiteralLogin(t *testing.T) {
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK [CAPABILITY IMAP4rev1 ID] ready\r\n")
		s.expect("ig1 ID …")
		s.expect(`ig2 LOGIN "alice" {6}`)
		s.send("ig1 BAD Not now\r\n+ Ready for literal data\r\n")
		s.expect("pässw")
		s.send("ig2 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
	})
	_, c := viaProxy(t, &routing.Backend{Address: addr, ForwardClientIP: true})
	c.send("c1 LOGIN alice {6+}\r\npässw\r\n")
	c.expect("c1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
}

func TestUpstreamForwardsClientAddressInID(t *testing.T) {
	got := make(chan string, 1)
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK [CAPABILITY IMAP4rev1 ID SASL-IR AUTH=PLAIN] ready\r\n")
		got <- s.line()
		// The login comes pipelined behind the ID, before the ID is answered: one round
		// trip for both.
		s.expect("ig2 AUTHENTICATE PLAIN AGFsaWNlAGFsaWNl") // \0alice\0alice
		s.send("* ID NIL\r\nig1 OK ID done\r\n")
		s.send("ig2 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
	})
	tp, c := viaProxy(t, &routing.Backend{Address: addr, ForwardClientIP: true})
	c.send("c1 LOGIN alice alice\r\n")
	c.expect("c1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in")
	id := <-got
	local := c.conn.LocalAddr().(*net.TCPAddr)
	for _, want := range []string{
		`ig1 ID ("x-originating-ip" "127.0.0.1" "x-originating-port" "` + fmt.Sprint(local.Port) + `"`,
		`"x-connected-ip" "127.0.0.1" "x-connected-port" "` + tp.addr[strings.LastIndexByte(tp.addr, ':')+1:] + `"`,
		`"x-session-id" "`,
	} {
		if !strings.Contains(id, want) {
			t.Errorf("ID line %q lacks %q", id, want)
		}
	}
}

// A backend that refuses connections is reported to the metrics by address, and the client
// gets NO [UNAVAILABLE].
func TestUpstreamConnectFailureReported(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there now
	m := newRecordingMetrics()
	tp := startProxy(t, toBackends(&routing.Backend{Address: dead}),
		ListenerOptions{AllowPlaintextAuth: true}, func(o *Options) { o.Metrics = m })
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("c1 LOGIN alice alice\r\n")
	c.expect("c1 NO [UNAVAILABLE] Service temporarily unavailable.")
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.upFailed[dead] != 1 {
		t.Fatalf("failed connects reported: %v, want 1 for %s", m.upFailed, dead)
	}
}

// A backend given by host name: the proxy resolves it and logs in there; the login line
// names the backend as configured.
func TestEndToEndBackendByHostName(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	_, port, _ := net.SplitHostPort(be.addr)
	byName := net.JoinHostPort("localhost", port)
	tp := startProxy(t, toBackends(&routing.Backend{Address: byName}), ListenerOptions{AllowPlaintextAuth: true})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK [CAPABILITY IMAP4rev2 …")
	c.send("a2 LOGOUT\r\n")
	c.expect("* BYE …")
	c.expect("a2 OK …")
	c.expectClosed()
	if m := tp.waitLog(t, "login").ContextMap(); m["backend"] != byName {
		t.Errorf("login line names backend %v, want %s", m["backend"], byName)
	}
}
