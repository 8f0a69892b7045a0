package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// FuzzPreauth drives the pre-auth state machine with arbitrary client bytes over a real
// loopback connection. Whatever the input, the proxy must answer in well-formed response
// lines, end the connection by itself (never hang) and never panic. Logins are routed to a
// shard with no backend, so every LOGIN ends NO [UNAVAILABLE] and the machine stays before
// login. The seed corpus runs in the normal test suite.
func FuzzPreauth(f *testing.F) {
	for _, seed := range []string{
		"a1 CAPABILITY\r\na2 NOOP\r\na3 LOGOUT\r\n",
		"a1 LOGIN alice secret\r\n",
		"a1 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
		"a1 LOGIN \"al\\\"ice\" \"x\\\\y\"\r\n",
		"a1 ID (\"name\" {3}\r\nfoo \"os\" NIL)\r\n",
		"a1 ID NIL\r\na2 ID ((\"a\"))\r\n",
		"a1 AUTHENTICATE PLAIN\r\n*\r\n",
		"a1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
		"a1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n",
		"a1 AUTHENTICATE PLAIN =\r\n",
		"a1 STARTTLS\r\n",
		"a1 SELECT INBOX\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"a1 LOGIN {99999999999}\r\n",
		"a1 LOGIN {4294967296+}\r\n",
		"\r\n\n\n* NOOP\r\n+ x\r\n",
		"a1 NOOP " + strings.Repeat("(", 20) + "\r\n",
		"a1 LOGIN \x00 \xff\r\n",
	} {
		f.Add([]byte(seed))
	}
	be := routerFunc(func(context.Context, routing.Request) (routing.Decision, error) {
		return routing.Decision{}, &routing.UnavailableError{Reason: "fuzz"}
	})
	tp := startProxy(f, be, ListenerOptions{AllowPlaintextAuth: true, PreAuthTimeout: 5 * time.Second})
	f.Fuzz(func(t *testing.T, input []byte) {
		conn, err := net.Dial("tcp", tp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		go func() {
			_, _ = conn.Write(input)
			_ = conn.(*net.TCPConn).CloseWrite()
		}()
		br := bufio.NewReader(conn)
		first := true
		for {
			line, err := br.ReadString('\n')
			if err == io.EOF && line == "" {
				return
			}
			if err != nil {
				if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("proxy did not end the connection")
				}
				return // reset by peer after BYE and close: fine
			}
			if !strings.HasSuffix(line, "\r\n") {
				t.Fatalf("response line without CRLF: %q", line)
			}
			if first && !strings.HasPrefix(line, "* OK [CAPABILITY ") {
				t.Fatalf("bad greeting %q", line)
			}
			first = false
			if line[0] != '*' && line[0] != '+' {
				tag, rest, ok := strings.Cut(line, " ")
				if !ok || !validTag(tag) {
					t.Fatalf("response with a bad tag: %q", line)
				}
				if !strings.HasPrefix(rest, "OK") && !strings.HasPrefix(rest, "NO") && !strings.HasPrefix(rest, "BAD") {
					t.Fatalf("tagged response is not OK/NO/BAD: %q", line)
				}
			}
		}
	})
}

// FuzzUpstream plays the backend during the upstream login with arbitrary bytes (then a
// FIN): greeting, capabilities, the ID answer, the login's completion, literals inside
// responses. Whatever it sends, dialUpstream and login must return, without panicking, an
// error typed by who is at fault (the backend: unavailable or protocol; the credentials:
// authentication failed) or a login with known capabilities. The seed corpus runs in the
// normal test suite.
func FuzzUpstream(f *testing.F) {
	const caps = "IMAP4rev1 ID SASL-IR AUTH=PLAIN"
	for _, seed := range []string{
		"* OK [CAPABILITY " + caps + "] ready\r\n* ID NIL\r\nig1 OK ID done\r\nig2 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
		"* OK [CAPABILITY " + caps + "] ready\r\nig1 OK\r\nig2 NO [AUTHENTICATIONFAILED] no\r\n",
		"* OK [CAPABILITY " + caps + "] ready\r\nig1 OK\r\nig2 NO [UNAVAILABLE] later\r\n",
		"* OK ready\r\n* CAPABILITY IMAP4rev1\r\nig1 OK\r\nig2 OK Logged in\r\nig3 BAD what\r\n",
		"* OK ready\r\n* CAPABILITY IMAP4rev1 LOGINDISABLED\r\nig1 OK\r\n",
		"* OK [CAPABILITY IMAP4rev1 ID] hi\r\n* ID (\"name\" {3}\r\nfoo)\r\nig1 OK\r\n* CAPABILITY IMAP4rev1\r\n* 3 EXISTS\r\nig2 OK done\r\n",
		"* PREAUTH hi\r\n",
		"* BYE busy\r\n",
		"HTTP/1.1 400 Bad Request\r\n\r\n",
		"* OK {99999999999}\r\n",
		"* OK [CAPABILITY " + caps + "] {5}\r\nab",
		"* OK [CAPABILITY\r\n",
		"* ok [capability imap4rev1 auth=plain sasl-ir] x\r\n+ \r\nig1 ok\r\n",
		"* OK [CAPABILITY " + caps + "] hi\r\nig1 OK\r\n* CAPABILITY\r\n* OK [CAPABILITY]\r\nig2 OK [CAPABILITY IMAP4rev1] in\r\n",
		"",
	} {
		f.Add([]byte(seed), false)
	}
	f.Add([]byte("* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\nig1 OK begin\r\n"), true)
	f.Add([]byte("* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\nig1 OK begin\r\n* injected\r\n"), true)
	f.Add([]byte("* OK [CAPABILITY IMAP4rev1] no STARTTLS here\r\n"), true)
	// One listener for every run: one per run runs out of ports when fuzzing.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	tl := ln.(*net.TCPListener)
	f.Fuzz(func(t *testing.T, script []byte, startTLS bool) {
		served := make(chan struct{})
		go func() {
			defer close(served)
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			_, _ = c.Write(script)
			_ = c.(*net.TCPConn).CloseWrite()
			_, _ = io.Copy(io.Discard, c) // what the proxy sends, until it closes
		}()
		defer func() {
			// Ends the Accept of a dial that failed before connecting (a dial that connected
			// was accepted: the login needs the greeting), then re-arms the listener.
			_ = tl.SetDeadline(time.Unix(1, 0))
			<-served
			_ = tl.SetDeadline(time.Time{})
		}()
		be := &routing.Backend{Address: ln.Addr().String(), ForwardClientIP: true}
		if startTLS {
			be.TLS = tlsconf.STARTTLS
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		up, err := dialUpstream(ctx, be, 20*time.Second, clientInfo{})
		if err != nil {
			checkUpstreamErr(t, err)
			return
		}
		defer up.raw.Close()
		defer up.releaseReader()
		ci := clientInfo{client: netip.MustParseAddrPort("192.0.2.1:5000"), sessionID: "s1"}
		if err := up.forwardID(ci); err != nil {
			checkUpstreamErr(t, err)
			return
		}
		res, err := up.login(credentials{user: "alice", password: "secret"})
		if err != nil {
			checkUpstreamErr(t, err)
			return
		}
		if !res.caps.known() {
			t.Fatalf("login succeeded without capabilities: %+v", res)
		}
		for _, raw := range res.untagged {
			if parseResponse(raw).isCapability() {
				t.Fatalf("a capability response would reach the client before the tagged OK: %q", raw)
			}
		}
		t.Logf("logged in (%s), capabilities %s", res.mech, res.caps)
	})
}

// checkUpstreamErr fails t unless err says who is at fault, as the upstream login promises.
func checkUpstreamErr(t *testing.T, err error) {
	t.Helper()
	t.Logf("upstream login failed: %v", err)
	var (
		un *backendUnavailableError
		pe *backendProtocolError
		af *authFailedError
	)
	if !errors.As(err, &un) && !errors.As(err, &pe) && !errors.As(err, &af) {
		t.Fatalf("untyped error %T: %v", err, err)
	}
	if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the upstream login timed out instead of ending at the backend's FIN: %v", err)
	}
}
