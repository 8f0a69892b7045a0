package proxy

import (
	"crypto/tls"
	"encoding/base64"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// Transcript tests of the not-authenticated state. "C:" lines are what the client sends,
// "S:" lines what it must receive.

const greetPlainAllowed = "* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] imapgate ready."

// plainProxy is a cleartext listener that allows plaintext auth, in front of one memory
// backend with alice@example.com / alice.
func plainProxy(t *testing.T) (*testProxy, *memBackend) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{Name: "imap", AllowPlaintextAuth: true})
	return tp, be
}

func TestPreauthCapabilityNoopLogout(t *testing.T) {
	tp, _ := plainProxy(t)
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 CAPABILITY\r\n")
	c.expect("* CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN")
	c.expect("a1 OK Capability completed.")
	c.send("a2 noop\r\n")
	c.expect("a2 OK NOOP completed.")
	c.send("a3 CAPABILITY extra\r\n")
	c.expect("a3 BAD CAPABILITY takes no arguments")
	c.send("a4 LOGOUT\r\n")
	c.expect("* BYE Logging out")
	c.expect("a4 OK Logout completed.")
	c.expectClosed()
}

func TestPreauthPipelined(t *testing.T) {
	tp, _ := plainProxy(t)
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 NOOP\r\na2 CAPABILITY\r\na3 ID NIL\r\na4 LOGOUT\r\n")
	c.expect("a1 OK NOOP completed.")
	c.expect("* CAPABILITY …")
	c.expect("a2 OK Capability completed.")
	c.expect(`* ID ("name" "imapgate")`)
	c.expect("a3 OK ID completed.")
	c.expect("* BYE Logging out")
	c.expect("a4 OK Logout completed.")
	c.expectClosed()
}

func TestPreauthID(t *testing.T) {
	tp, _ := plainProxy(t)
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	// Outlook sends ID values as literals; both kinds of literal are accepted.
	c.send(`a1 ID ("name" "Outlook" "version" {4}` + "\r\n")
	c.expect("+ Ready for literal data")
	c.send(`16.0 "os" {5+}` + "\r\nLinux)\r\n")
	c.expect(`* ID ("name" "imapgate")`)
	c.expect("a1 OK ID completed.")
	c.send("a2 ID (\"odd\")\r\n")
	c.expect("a2 BAD ID list must hold at most 30 field-value pairs")
	c.send("a3 ID (\"" + strings.Repeat("k", 31) + "\" \"v\")\r\n")
	c.expect("a3 BAD ID field names are strings of at most 30 bytes")
}

func TestPreauthBadCommandsThenBye(t *testing.T) {
	tp, _ := plainProxy(t)
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 FROB\r\n")
	c.expect("a1 BAD Unknown command")
	c.send("a2 SELECT INBOX\r\n")
	c.expect("a2 BAD Command not permitted before login")
	c.send("GET / HTTP/1.1\r\n")
	c.expect("GET BAD Unknown command")
	c.expect("* BYE Too many invalid commands.")
	c.expectClosed()
}

func TestPreauthSyntaxErrors(t *testing.T) {
	tp, _ := plainProxy(t)
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("\r\n") // blank lines are ignored, as Dovecot does
	c.send("a1 LOGIN \"unterminated\r\n")
	c.expect("a1 BAD Unterminated quoted string")
	c.send("a2 LOGIN onlyuser\r\n")
	c.expect("a2 BAD LOGIN takes a user name and a password")
}

func TestPreauthLoginQuotedAndLiterals(t *testing.T) {
	for _, tc := range []struct{ name, send string }{
		{"atoms", "a1 LOGIN alice@example.com alice\r\n"},
		{"quoted", "a1 LOGIN \"alice@example.com\" \"alice\"\r\n"},
		{"non-sync literals", "a1 LOGIN {17+}\r\nalice@example.com {5+}\r\nalice\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp, _ := plainProxy(t)
			c := dialTranscript(t, tp.addr)
			c.expect(greetPlainAllowed)
			c.send(tc.send)
			c.expect("a1 OK [CAPABILITY IMAP4rev2 IMAP4rev1 …")
			c.send("a2 LOGOUT\r\n")
			c.expect("* BYE …")
			c.expect("a2 OK …")
		})
	}
	t.Run("sync literals", func(t *testing.T) {
		tp, _ := plainProxy(t)
		c := dialTranscript(t, tp.addr)
		c.expect(greetPlainAllowed)
		c.send("a1 LOGIN {17}\r\n")
		c.expect("+ Ready for literal data")
		c.send("alice@example.com {5}\r\n")
		c.expect("+ Ready for literal data")
		c.send("alice\r\n")
		c.expect("a1 OK [CAPABILITY IMAP4rev2 IMAP4rev1 …")
	})
}

func TestPreauthWrongPasswordThenRetry(t *testing.T) {
	tp, _ := plainProxy(t)
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com wrong\r\n")
	c.expect("a1 NO [AUTHENTICATIONFAILED] Authentication failed.")
	c.send("a2 LOGIN alice@example.com alice\r\n")
	c.expect("a2 OK [CAPABILITY …")
}

func TestPreauthUnavailable(t *testing.T) {
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: deadAddr(t)}),
		ListenerOptions{AllowPlaintextAuth: true})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 NO [UNAVAILABLE] Service temporarily unavailable.")
	c.send("a2 NOOP\r\n")
	c.expect("a2 OK NOOP completed.")
}

func TestPreauthSkipsRefusingBackend(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	tp := startProxy(t, toBackends(
		&routing.Backend{Shard: "a", Address: deadAddr(t)},
		&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{AllowPlaintextAuth: true})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK [CAPABILITY …")
}

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	ln, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestPreauthAuthenticatePlain(t *testing.T) {
	ir := base64.StdEncoding.EncodeToString([]byte("\x00alice@example.com\x00alice"))
	t.Run("SASL-IR", func(t *testing.T) {
		tp, _ := plainProxy(t)
		c := dialTranscript(t, tp.addr)
		c.expect(greetPlainAllowed)
		c.send("a1 AUTHENTICATE PLAIN " + ir + "\r\n")
		c.expect("a1 OK [CAPABILITY …")
	})
	t.Run("continuation", func(t *testing.T) {
		tp, _ := plainProxy(t)
		c := dialTranscript(t, tp.addr)
		c.expect(greetPlainAllowed)
		c.send("a1 authenticate plain\r\n")
		c.expect("+ ")
		c.send(ir + "\r\n")
		c.expect("a1 OK [CAPABILITY …")
	})
	t.Run("cancel, empty, garbage", func(t *testing.T) {
		tp, _ := plainProxy(t)
		c := dialTranscript(t, tp.addr)
		c.expect(greetPlainAllowed)
		c.send("a1 AUTHENTICATE PLAIN\r\n")
		c.expect("+ ")
		c.send("*\r\n")
		c.expect("a1 BAD Authentication cancelled")
		c.send("a2 AUTHENTICATE PLAIN =\r\n")
		c.expect("a2 BAD Invalid PLAIN response")
		c.send("a3 NOOP\r\n")
		c.expect("a3 OK NOOP completed.")
		c.send("a4 AUTHENTICATE PLAIN !!!\r\n")
		c.expect("a4 BAD Invalid base64 in SASL response")
		c.expect("* BYE Too many invalid commands.")
	})
	t.Run("unsupported mechanism", func(t *testing.T) {
		tp, _ := plainProxy(t)
		c := dialTranscript(t, tp.addr)
		c.expect(greetPlainAllowed)
		c.send("a1 AUTHENTICATE CRAM-MD5\r\n")
		c.expect("a1 NO [CANNOT] Unsupported authentication mechanism")
	})
	t.Run("wrong password", func(t *testing.T) {
		tp, _ := plainProxy(t)
		c := dialTranscript(t, tp.addr)
		c.expect(greetPlainAllowed)
		bad := base64.StdEncoding.EncodeToString([]byte("\x00alice@example.com\x00nope"))
		c.send("a1 AUTHENTICATE PLAIN " + bad + "\r\n")
		c.expect("a1 NO [AUTHENTICATIONFAILED] Authentication failed.")
	})
}

func TestPreauthPrivacyRequired(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{Name: "imap", TLS: tlsconf.STARTTLS})
	c := dialTranscript(t, tp.addr)
	c.expect("* OK [CAPABILITY IMAP4rev1 SASL-IR ID STARTTLS LOGINDISABLED] imapgate ready.")
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.")
	c.send("a2 AUTHENTICATE PLAIN\r\n")
	c.expect("a2 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.")
	c.send("a3 STARTTLS\r\n")
	c.expect("a3 OK Begin TLS negotiation now.")
	c.startTLS(tp.tls)
	c.send("a4 CAPABILITY\r\n")
	c.expect("* CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN")
	c.expect("a4 OK Capability completed.")
	c.send("a5 STARTTLS\r\n")
	c.expect("a5 BAD STARTTLS not available")
	c.send("a6 LOGIN alice@example.com alice\r\n")
	c.expect("a6 OK [CAPABILITY …")
	c.send("a7 SELECT INBOX\r\n")
	for !strings.HasPrefix(c.line(), "a7 OK") {
	}
}

// A command pipelined after STARTTLS in the same packet must never run: it belongs to the TLS
// handshake, which fails (the plaintext-injection attack of CVE-2011-0411).
func TestPreauthStartTLSBytesAfterCommandGoToHandshake(t *testing.T) {
	tp := startProxy(t, toBackends(), ListenerOptions{TLS: tlsconf.STARTTLS})
	c := dialTranscript(t, tp.addr)
	c.expect("* OK …")
	c.send("a1 STARTTLS\r\na2 CAPABILITY\r\n")
	c.expect("a1 OK Begin TLS negotiation now.")
	c.expectClosed()
	tp.waitLog(t, "session end")
	if !strings.Contains(tp.logText(), "client TLS handshake") {
		t.Errorf("log does not say the handshake failed:\n%s", tp.logText())
	}
}

// A client that sends STARTTLS and its TLS ClientHello in one write (pipelining) gets TLS.
func TestPreauthStartTLSPipelinedHandshake(t *testing.T) {
	tp := startProxy(t, toBackends(), ListenerOptions{TLS: tlsconf.STARTTLS})
	c := dialTranscript(t, tp.addr)
	c.expect("* OK …")
	pc := &pipelinedStartTLS{transcript: c, raw: c.conn, cmd: []byte("a1 STARTTLS\r\n")}
	tc := tls.Client(pc, tp.tls)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c.conn = tc
	c.br.Reset(tc)
	c.send("a2 NOOP\r\n")
	c.expect("a2 OK NOOP completed.")
}

// pipelinedStartTLS puts the STARTTLS command in front of the first TLS record and reads the
// tagged OK before the first TLS record from the server.
type pipelinedStartTLS struct {
	*transcript
	raw   net.Conn // the TCP connection under the TLS client
	cmd   []byte
	gotOK bool
}

func (p *pipelinedStartTLS) Write(b []byte) (int, error) {
	if p.cmd != nil {
		b = append(p.cmd, b...)
		p.cmd = nil
		n, err := p.raw.Write(b)
		return max(n-len("a1 STARTTLS\r\n"), 0), err
	}
	return p.raw.Write(b)
}

func (p *pipelinedStartTLS) Read(b []byte) (int, error) {
	if !p.gotOK {
		p.gotOK = true
		p.expect("a1 OK Begin TLS negotiation now.")
	}
	if p.br.Buffered() > 0 {
		return p.br.Read(b)
	}
	return p.raw.Read(b)
}

func (p *pipelinedStartTLS) Close() error                       { return p.raw.Close() }
func (p *pipelinedStartTLS) LocalAddr() net.Addr                { return p.raw.LocalAddr() }
func (p *pipelinedStartTLS) RemoteAddr() net.Addr               { return p.raw.RemoteAddr() }
func (p *pipelinedStartTLS) SetDeadline(t time.Time) error      { return p.raw.SetDeadline(t) }
func (p *pipelinedStartTLS) SetReadDeadline(t time.Time) error  { return p.raw.SetReadDeadline(t) }
func (p *pipelinedStartTLS) SetWriteDeadline(t time.Time) error { return p.raw.SetWriteDeadline(t) }

func TestPreauthImplicitTLS(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{Name: "imaps", TLS: tlsconf.Implicit})
	conn, err := tls.Dial("tcp", tp.addr, tp.tls)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := newTranscript(t, conn)
	c.expect(greetPlainAllowed)
	c.send("a1 STARTTLS\r\n")
	c.expect("a1 BAD STARTTLS not available")
	c.send("a2 LOGIN alice@example.com alice\r\n")
	c.expect("a2 OK [CAPABILITY …")
}

func TestPreauthOversize(t *testing.T) {
	t.Run("line", func(t *testing.T) {
		tp, _ := plainProxy(t)
		c := dialTranscript(t, tp.addr)
		c.expect(greetPlainAllowed)
		c.send("a1 NOOP " + strings.Repeat("x", 9000) + "\r\n")
		c.expect("* BYE Line too long")
		c.expectClosed()
	})
	t.Run("sync literal", func(t *testing.T) {
		tp, _ := plainProxy(t)
		c := dialTranscript(t, tp.addr)
		c.expect(greetPlainAllowed)
		c.send("a1 LOGIN {100000}\r\n")
		c.expect("a1 BAD [TOOBIG] Literal too large")
		c.send("a2 NOOP\r\n")
		c.expect("a2 OK NOOP completed.")
	})
	t.Run("non-sync literal", func(t *testing.T) {
		tp, _ := plainProxy(t)
		c := dialTranscript(t, tp.addr)
		c.expect(greetPlainAllowed)
		c.send("a1 LOGIN {100000+}\r\n")
		c.expect("* BYE Literal too large")
		c.expectClosed()
	})
}

func TestPreauthTimeout(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	// A short timeout on a real socket: the test waits for the BYE itself, never sleeps.
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{AllowPlaintextAuth: true, PreAuthTimeout: 50 * time.Millisecond})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.expect("* BYE Autologout; idle for too long")
	c.expectClosed()
	// Half a command does not keep a connection alive either.
	c = dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN {5}\r\n")
	c.expect("+ Ready for literal data")
	c.expect("* BYE Autologout; idle for too long")
}

func TestPreauthServerCloseSaysBye(t *testing.T) {
	tp, _ := plainProxy(t)
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	go tp.srv.Close()
	c.expect("* BYE Server shutting down.")
	c.expectClosed()
}
