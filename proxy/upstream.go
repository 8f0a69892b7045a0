package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// This file logs in to a backend by hand (see DESIGN.md for why go-imap's imapclient cannot:
// its reader goroutine keeps reading after login and its TLS connection is private). The
// conversation is:
//
//	dial → [PROXY header] → [TLS] → greeting → [STARTTLS → TLS → CAPABILITY]
//	     → [CAPABILITY]
//	     → [ID with Dovecot's forwarding keys] → AUTHENTICATE PLAIN or LOGIN
//	     → tagged OK (+ CAPABILITY if the OK had none)
//
// after which the connection, its TLS state and any bytes the backend sent after its OK are
// handed to the splice.

// upstream is a backend connection. Until handoff it is owned by the login goroutine; after
// handoff by the splice, which closes it.
type upstream struct {
	backend *routing.Backend
	raw     net.Conn // the TCP connection
	conn    net.Conn // raw, or the *tls.Conn over it
	nb      *nbConn  // under the *tls.Conn, when TLS is used
	br      *bufio.Reader
	caps    capSet
	tagSeq  int
	tls     bool
	// wbuf is reused for building command lines.
	wbuf []byte
	// pending is a command written together with the next one (the ID before the login:
	// one round trip instead of two, RFC 9051 section 5.5 allows the pipelining); idTag is
	// its tag, whose completion settle reads before anything else.
	pending []byte
	idTag   string
}

// credentials are what the client gave: never logged.
type credentials struct {
	authzid  string // PLAIN authorisation identity; "" for LOGIN
	user     string
	password string
}

// loginResult is what the backend said on a successful login.
type loginResult struct {
	caps capSet // post-login capabilities (RFC 9051 section 6.2.3: they may differ)
	text string // the human-readable text of the backend's tagged OK
	// untagged holds untagged responses received during the login that are not
	// CAPABILITY; they are passed to the client before the tagged OK, so none is lost.
	untagged [][]byte
	mech     string // "PLAIN" or "LOGIN"
}

// clientInfo is what the backend learns about the client through ID forwarding or a PROXY
// header.
type clientInfo struct {
	client    netip.AddrPort
	local     netip.AddrPort
	sessionID string
	tls       *clientTLSInfo // the client's TLS connection to the proxy; nil in cleartext
}

func (u *upstream) nextTag() string {
	u.tagSeq++
	return "ig" + strconv.Itoa(u.tagSeq)
}

// dialUpstream connects to be, sends the PROXY header if be wants one (ci's addresses), does
// TLS as configured, reads the greeting and learns the capabilities. Errors are
// *backendUnavailableError or *backendProtocolError, or *proxyFaultError, before any
// connection, when the proxy cannot make the header.
func dialUpstream(ctx context.Context, be *routing.Backend, timeout time.Duration, ci clientInfo) (*upstream, error) {
	header, err := proxyHeaderFor(be, ci)
	if err != nil {
		return nil, err
	}
	raw, err := dialBackend(ctx, be.Address, timeout)
	if err != nil {
		return nil, &backendUnavailableError{addr: be.Address, err: err}
	}
	u := &upstream{backend: be, raw: raw, conn: raw}
	_ = raw.SetDeadline(timeoutDeadline(ctx, timeout))
	if header != nil {
		if _, err = raw.Write(header); err != nil {
			err = u.unavailable(err)
		}
	}
	if err == nil {
		err = u.start(ctx)
	}
	if err != nil {
		raw.Close()
		u.releaseReader()
		return nil, err
	}
	return u, nil
}

func (u *upstream) unavailable(err error) error {
	return &backendUnavailableError{addr: u.backend.Address, err: err}
}

func (u *upstream) protocolErr(format string, a ...any) error {
	return &backendProtocolError{addr: u.backend.Address, msg: fmt.Sprintf(format, a...)}
}

func (u *upstream) tlsConfig() *tls.Config {
	cfg := u.backend.TLSConfig
	if cfg != nil && cfg.ServerName != "" {
		return cfg
	}
	host, _, err := net.SplitHostPort(u.backend.Address)
	if err != nil {
		host = u.backend.Address
	}
	if cfg == nil {
		return &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	cfg = cfg.Clone()
	cfg.ServerName = host
	return cfg
}

func (u *upstream) handshake(ctx context.Context) error {
	var under net.Conn = u.raw
	if nb := newNBConn(u.raw, nil); nb != nil {
		u.nb, under = nb, nb
	}
	tc := tls.Client(under, u.tlsConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		return u.unavailable(fmt.Errorf("TLS handshake: %w", err))
	}
	u.conn = tc
	u.tls = true
	u.releaseReader()
	u.br = getReader(tc)
	return nil
}

// start runs the conversation up to, not including, the login.
func (u *upstream) start(ctx context.Context) error {
	if u.backend.TLS == tlsconf.Implicit {
		if err := u.handshake(ctx); err != nil {
			return err
		}
	} else {
		u.br = getReader(u.raw)
	}
	greet, err := readResponse(u.br)
	if err != nil {
		return u.unavailable(fmt.Errorf("reading greeting: %w", err))
	}
	switch {
	case greet.tag == "*" && greet.status == "OK":
	case greet.tag == "*" && greet.status == "BYE":
		return u.unavailable(fmt.Errorf("greeting: BYE %s", greet.text))
	case greet.tag == "*" && greet.status == "PREAUTH":
		return u.protocolErr("backend greets with PREAUTH; it must ask for a login")
	default:
		return u.protocolErr("unexpected greeting %q", clip(greet.raw))
	}
	if c, ok := capsFrom(greet); ok {
		u.caps = c
	}
	if u.backend.TLS == tlsconf.STARTTLS {
		if err := u.startTLS(ctx); err != nil {
			return err
		}
	}
	if !u.caps.known() {
		if err := u.capability(); err != nil {
			return err
		}
	}
	return nil
}

// startTLS upgrades the connection (RFC 9051 section 6.2.1). Bytes the backend sends after
// its tagged OK and before the TLS handshake are an injection attack (CVE-2011-0411 family)
// and fail the connection. Capabilities learnt before TLS are forgotten.
func (u *upstream) startTLS(ctx context.Context) error {
	if u.caps.known() && !u.caps.has("STARTTLS") {
		return u.protocolErr("backend does not advertise STARTTLS")
	}
	tag := u.nextTag()
	if _, err := u.conn.Write([]byte(tag + " STARTTLS\r\n")); err != nil {
		return u.unavailable(err)
	}
	r, err := u.readUntilTagged(tag, nil)
	if err != nil {
		return err
	}
	if r.status != "OK" {
		return u.protocolErr("STARTTLS refused: %s %s", r.status, r.text)
	}
	if u.br.Buffered() > 0 {
		return u.protocolErr("backend sent %d bytes after its STARTTLS OK (possible injection)", u.br.Buffered())
	}
	u.caps = capSet{}
	return u.handshake(ctx)
}

// capability asks for the capabilities.
func (u *upstream) capability() error {
	tag := u.nextTag()
	if _, err := u.conn.Write([]byte(tag + " CAPABILITY\r\n")); err != nil {
		return u.unavailable(err)
	}
	var got capSet
	r, err := u.readUntilTagged(tag, func(r *response) {
		if c, ok := capsFrom(r); ok {
			got = c
		}
	})
	if err != nil {
		return err
	}
	if c, ok := capsFrom(r); ok {
		got = c
	}
	if r.status != "OK" || !got.known() {
		return u.protocolErr("CAPABILITY failed: %s %s", r.status, r.text)
	}
	u.caps = got
	return nil
}

// forwardID sends Dovecot's client forwarding keys in an ID command (RFC 2971; Dovecot
// honours them from login_trusted_networks and logs the client's address instead of ours).
// The backend's answer does not matter: a backend that refuses still gets the login.
func (u *upstream) forwardID(ci clientInfo) error {
	if !u.backend.ForwardClientIP || !u.caps.has("ID") {
		return nil
	}
	tag := u.nextTag()
	b := append(u.wbuf[:0], tag...)
	b = append(b, " ID ("...)
	kv := [][2]string{}
	if ci.client.IsValid() {
		kv = append(kv,
			[2]string{"x-originating-ip", ci.client.Addr().Unmap().String()},
			[2]string{"x-originating-port", strconv.Itoa(int(ci.client.Port()))})
	}
	if ci.local.IsValid() {
		kv = append(kv,
			[2]string{"x-connected-ip", ci.local.Addr().Unmap().String()},
			[2]string{"x-connected-port", strconv.Itoa(int(ci.local.Port()))})
	}
	if ci.sessionID != "" && quoteOK(ci.sessionID) {
		kv = append(kv, [2]string{"x-session-id", ci.sessionID})
	}
	if len(kv) == 0 {
		return nil
	}
	for i, p := range kv {
		if i > 0 {
			b = append(b, ' ')
		}
		b = appendQuoted(b, p[0])
		b = append(b, ' ')
		b = appendQuoted(b, p[1])
	}
	b = append(b, ")\r\n"...)
	// Sent with the login command that follows; its answer is read first (settle).
	u.pending, u.wbuf = b, nil
	u.idTag = tag
	return nil
}

// write writes b, after any pending command, in one write.
func (u *upstream) write(b []byte) error {
	if len(u.pending) > 0 {
		b = append(u.pending, b...)
		u.pending = nil
	}
	if _, err := u.conn.Write(b); err != nil {
		return u.unavailable(err)
	}
	return nil
}

// settle reads the completion of a pipelined ID, whatever it says (a backend that refuses
// ID still gets the login).
func (u *upstream) settle() error {
	if u.idTag == "" {
		return nil
	}
	tag := u.idTag
	u.idTag = ""
	_, err := u.readUntilTagged(tag, nil)
	return err
}

// login authenticates with the client's credentials: AUTHENTICATE PLAIN with SASL-IR
// (RFC 4959) where offered, else LOGIN (RFC 9051 section 6.2.3), else AUTHENTICATE PLAIN
// with a continuation. A tagged NO is *authFailedError.
func (u *upstream) login(cr credentials) (*loginResult, error) {
	plain := u.caps.has("AUTH=PLAIN")
	needPlain := cr.authzid != "" && cr.authzid != cr.user
	res := &loginResult{}
	var (
		tag string
		err error
	)
	switch {
	case plain && (u.caps.has("SASL-IR") || u.caps.has("LOGINDISABLED") || needPlain):
		res.mech = "PLAIN"
		tag, err = u.authenticatePlain(cr, u.caps.has("SASL-IR"))
	case needPlain:
		return nil, u.protocolErr("client asked for authorisation identity but backend lacks AUTH=PLAIN")
	case u.caps.has("LOGINDISABLED"):
		return nil, u.protocolErr("backend advertises LOGINDISABLED and no AUTH=PLAIN")
	default:
		res.mech = "LOGIN"
		tag, err = u.loginCommand(cr)
	}
	if err != nil {
		return nil, err
	}
	if err := u.settle(); err != nil {
		return nil, err
	}
	var untaggedCaps capSet
	r, err := u.readUntilTagged(tag, func(r *response) {
		if !r.isCapability() {
			res.untagged = append(res.untagged, r.raw)
			return
		}
		// Tolerated (Gmail and SmarterMail send it this way), never passed on: the client
		// gets the capabilities in the tagged OK. An empty list is dropped.
		if c, ok := capsFrom(r); ok {
			untaggedCaps = c
		}
	})
	if err != nil {
		return nil, err
	}
	switch r.status {
	case "OK":
	case "NO":
		return nil, &authFailedError{code: r.codeName(), text: r.text}
	default:
		return nil, u.protocolErr("login answered %s %s", r.status, clip([]byte(r.text)))
	}
	res.text = r.text
	if c, ok := capsFrom(r); ok {
		res.caps = c
	} else if untaggedCaps.known() {
		res.caps = untaggedCaps
	} else {
		if err := u.capability(); err != nil {
			return nil, err
		}
		res.caps = u.caps
	}
	u.caps = res.caps
	return res, nil
}

func (u *upstream) authenticatePlain(cr credentials, saslIR bool) (string, error) {
	ir := base64.StdEncoding.EncodeToString([]byte(cr.authzid + "\x00" + cr.user + "\x00" + cr.password))
	tag := u.nextTag()
	b := append(u.wbuf[:0], tag...)
	b = append(b, " AUTHENTICATE PLAIN"...)
	if saslIR {
		b = append(b, ' ')
		b = append(b, ir...)
		b = append(b, "\r\n"...)
		u.wbuf = b
		if err := u.write(b); err != nil {
			return "", err
		}
		return tag, nil
	}
	b = append(b, "\r\n"...)
	u.wbuf = b
	if err := u.write(b); err != nil {
		return "", err
	}
	if err := u.expectContinuation(tag); err != nil {
		return "", err
	}
	if _, err := u.conn.Write([]byte(ir + "\r\n")); err != nil {
		return "", u.unavailable(err)
	}
	return tag, nil
}

// loginCommand sends LOGIN, with each argument quoted or, where it cannot be quoted, as a
// literal: non-synchronising where the backend offers LITERAL+ (or LITERAL- for at most
// 4096 bytes, RFC 7888), synchronising otherwise.
func (u *upstream) loginCommand(cr credentials) (string, error) {
	if strings.ContainsRune(cr.user, 0) || strings.ContainsRune(cr.password, 0) {
		return "", u.protocolErr("credentials contain NUL, which LOGIN cannot carry")
	}
	tag := u.nextTag()
	b := append(u.wbuf[:0], tag...)
	b = append(b, " LOGIN "...)
	for i, s := range []string{cr.user, cr.password} {
		if i > 0 {
			b = append(b, ' ')
		}
		if quoteOK(s) {
			b = appendQuoted(b, s)
			continue
		}
		nonSync := u.caps.has("LITERAL+") || (u.caps.has("LITERAL-") && len(s) <= 4096)
		b = append(b, '{')
		b = strconv.AppendInt(b, int64(len(s)), 10)
		if nonSync {
			b = append(b, "+}\r\n"...)
		} else {
			b = append(b, "}\r\n"...)
			if err := u.write(b); err != nil {
				return "", err
			}
			b = b[:0]
			if err := u.expectContinuation(tag); err != nil {
				return "", err
			}
		}
		b = append(b, s...)
	}
	b = append(b, "\r\n"...)
	u.wbuf = b
	if err := u.write(b); err != nil {
		return "", err
	}
	return tag, nil
}

// expectContinuation reads until a "+" continuation request. A tagged completion instead
// means the backend refused the command.
func (u *upstream) expectContinuation(tag string) error {
	if err := u.settle(); err != nil {
		return err
	}
	for {
		r, err := readResponse(u.br)
		if err != nil {
			return u.unavailable(err)
		}
		switch {
		case r.tag == "+":
			return nil
		case r.isTagged(tag):
			if r.status == "NO" {
				return &authFailedError{code: r.codeName(), text: r.text}
			}
			return u.protocolErr("expected continuation, got %s %s", r.status, clip([]byte(r.text)))
		case r.tag == "*" && r.status == "BYE":
			return u.unavailable(fmt.Errorf("BYE %s", r.text))
		}
	}
}

// readUntilTagged reads responses until the tagged completion of tag and returns it;
// untagged responses on the way go to onUntagged (if not nil). An untagged BYE is fatal.
func (u *upstream) readUntilTagged(tag string, onUntagged func(*response)) (*response, error) {
	for {
		r, err := readResponse(u.br)
		if err != nil {
			if _, ok := err.(*backendProtocolError); ok {
				return nil, err
			}
			return nil, u.unavailable(err)
		}
		switch {
		case r.isTagged(tag):
			return r, nil
		case r.tag == "*" && r.status == "BYE":
			return nil, u.unavailable(fmt.Errorf("BYE %s", r.text))
		case r.tag == "*":
			if onUntagged != nil {
				onUntagged(r)
			}
		case r.tag == "+":
			return nil, u.protocolErr("unexpected continuation request")
		default:
			return nil, u.protocolErr("unexpected tagged response %q", clip(r.raw))
		}
	}
}

// close ends a connection that will not be handed off (after a failed login), politely.
func (u *upstream) close() {
	_ = u.raw.SetDeadline(time.Now().Add(time.Second))
	_, _ = u.conn.Write([]byte(u.nextTag() + " LOGOUT\r\n"))
	_ = u.raw.Close()
	u.releaseReader()
}

// releaseReader gives the login reader back to its pool.
func (u *upstream) releaseReader() {
	if u.br != nil {
		putReader(u.br)
		u.br = nil
	}
}

// clip shortens backend text for error messages.
func clip(b []byte) string {
	const max = 120
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}
