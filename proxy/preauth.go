package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/imapgate/imapgate/tlsconf"
)

// This file is the client side before login: the not-authenticated state of RFC 9051
// section 3.1 (RFC 3501 section 3.1), answered by the proxy itself. The commands allowed
// there, and nothing else, are in preauthCommands: the state machine as data.

// preauthResult tells the session loop what to do after a command.
type preauthResult int

const (
	stay      preauthResult = iota // keep reading commands
	hangUp                         // close the connection (LOGOUT, too many errors, fatal input)
	handedOff                      // logged in upstream: splice
)

type preauthHandler func(s *session, cmd *command) (preauthResult, error)

// preauthCommands are the commands of the not-authenticated state (RFC 9051 sections 6.1
// and 6.2, RFC 2971 for ID).
var preauthCommands = map[string]preauthHandler{
	"CAPABILITY":   (*session).cmdCapability,
	"NOOP":         (*session).cmdNoop,
	"LOGOUT":       (*session).cmdLogout,
	"ID":           (*session).cmdID,
	"STARTTLS":     (*session).cmdStartTLS,
	"LOGIN":        (*session).cmdLogin,
	"AUTHENTICATE": (*session).cmdAuthenticate,
}

// maxBadCommands: after this many BAD answers the client gets BYE (a client that keeps
// sending garbage is broken or is not an IMAP client: cross-protocol attacks).
const maxBadCommands = 3

// proxyID is what the proxy answers to ID (RFC 2971 section 3.3).
const proxyID = `("name" "imapgate")`

// capabilities returns what the proxy implements before login (RFC 9051 section 7.2.2).
// LITERAL+ is accepted but not advertised: a client that kept the pre-login list would use it
// after login, where the backend decides (RFC 9051 section 6.2.3 says to ask again, but not
// every client does).
func (s *session) capabilities() string {
	caps := "IMAP4rev1 SASL-IR ID"
	if s.lo.TLS == tlsconf.STARTTLS && !s.clientTLS {
		caps += " STARTTLS"
	}
	if s.authAllowed() {
		caps += " AUTH=PLAIN"
	} else {
		caps += " LOGINDISABLED"
	}
	return caps
}

// authAllowed: RFC 9051 section 6.2.3, LOGIN over cleartext only where allowed.
func (s *session) authAllowed() bool {
	return s.clientTLS || s.lo.AllowPlaintextAuth
}

func (s *session) writef(format string, a ...any) {
	fmt.Fprintf(s.bw, format, a...)
}

func (s *session) flush() error { return s.bw.Flush() }

// runPreauth answers commands until the client logs in (true) or the connection ends
// (false).
func (s *session) runPreauth() bool {
	s.writef("* OK [CAPABILITY %s] imapgate ready.\r\n", s.capabilities())
	if s.flush() != nil {
		return false
	}
	bad := 0
	// answerBad sends a tagged BAD and reports whether the connection must end because the
	// client has used up its allowance of bad commands.
	answerBad := func(tag, msg string) bool {
		s.writef("%s BAD %s\r\n", tag, msg)
		bad++
		if bad >= maxBadCommands {
			s.endErr = errors.New("too many invalid commands")
			s.closedBy = "proxy"
			s.writef("* BYE Too many invalid commands.\r\n")
			_ = s.flush()
			return true
		}
		return s.flush() != nil
	}
	for {
		s.armReadDeadline()
		cmd, err := s.reader.read()
		var (
			pe *protocolError
			le *literalRefusedError
			fe *fatalInputError
		)
		switch {
		case err == nil:
		case errors.As(err, &pe):
			if answerBad(pe.tag, pe.msg) {
				return false
			}
			continue
		case errors.As(err, &le):
			if answerBad(le.tag, "[TOOBIG] Literal too large") {
				return false
			}
			continue
		case errors.As(err, &fe):
			s.endErr = err
			s.closedBy = "proxy"
			s.writef("* BYE %s\r\n", fe.msg)
			_ = s.flush()
			return false
		default:
			s.endPreauthOnReadError(err)
			return false
		}
		if cmd == nil {
			continue // a blank line
		}
		h, ok := preauthCommands[cmd.name]
		if !ok {
			msg := "Unknown command"
			if authenticatedCommands[cmd.name] {
				msg = "Command not permitted before login"
			}
			if answerBad(cmd.tag, msg) {
				return false
			}
			continue
		}
		res, err := h(s, cmd)
		if errors.As(err, &pe) {
			if answerBad(cmd.tag, pe.msg) {
				return false
			}
			continue
		}
		if err != nil {
			s.endPreauthOnReadError(err)
			return false
		}
		switch res {
		case handedOff:
			return true
		case hangUp:
			_ = s.flush()
			return false
		}
		if s.flush() != nil {
			return false
		}
	}
}

// endPreauthOnReadError says goodbye after a read error where the connection still works:
// our pre-auth timeout or a server shutdown. Other errors (client gone) end silently.
func (s *session) endPreauthOnReadError(err error) {
	switch {
	case s.closing.Load():
		s.closedBy = "proxy"
		s.writef("* BYE Server shutting down.\r\n")
		_ = s.flush()
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.endErr = errors.New("pre-auth timeout")
		s.closedBy = "proxy"
		// RFC 9051 section 7.1.5's own example of BYE.
		s.writef("* BYE Autologout; idle for too long\r\n")
		_ = s.flush()
	default:
		s.closedBy = "client"
		var ne net.Error
		if !errors.Is(err, io.EOF) && !errors.As(err, &ne) {
			s.endErr = err
		}
	}
}

// armReadDeadline sets the pre-auth timeout for the next read, unless the session is being
// interrupted (then the read fails at once).
func (s *session) armReadDeadline() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		_ = s.raw.SetReadDeadline(time.Unix(1, 0))
		return
	}
	_ = s.raw.SetReadDeadline(time.Now().Add(s.lo.preauthTimeout()))
}

func noArgs(cmd *command) error {
	if len(cmd.args) != 0 {
		return &protocolError{tag: cmd.tag, msg: cmd.name + " takes no arguments"}
	}
	return nil
}

// cmdCapability: RFC 9051 section 6.1.1.
func (s *session) cmdCapability(cmd *command) (preauthResult, error) {
	if err := noArgs(cmd); err != nil {
		return stay, err
	}
	s.writef("* CAPABILITY %s\r\n%s OK Capability completed.\r\n", s.capabilities(), cmd.tag)
	return stay, nil
}

// cmdNoop: RFC 9051 section 6.1.2.
func (s *session) cmdNoop(cmd *command) (preauthResult, error) {
	if err := noArgs(cmd); err != nil {
		return stay, err
	}
	s.writef("%s OK NOOP completed.\r\n", cmd.tag)
	return stay, nil
}

// cmdLogout: RFC 9051 section 6.1.3.
func (s *session) cmdLogout(cmd *command) (preauthResult, error) {
	if err := noArgs(cmd); err != nil {
		return stay, err
	}
	s.closedBy = "client"
	s.writef("* BYE Logging out\r\n%s OK Logout completed.\r\n", cmd.tag)
	return hangUp, nil
}

// cmdID: RFC 2971. The client's parameters are kept for the log; the proxy answers with its
// own. (The backend gets Dovecot's forwarding keys, not the client's list.)
func (s *session) cmdID(cmd *command) (preauthResult, error) {
	bad := func(msg string) (preauthResult, error) {
		return stay, &protocolError{tag: cmd.tag, msg: msg}
	}
	if len(cmd.args) != 1 {
		return bad("ID takes one argument: a list or NIL")
	}
	a := cmd.args[0]
	var pairs []string
	switch a.kind {
	case argNil:
	case argList:
		// RFC 2971 section 3.3: at most 30 pairs, keys ≤ 30 bytes, values ≤ 1024 bytes.
		if len(a.list)%2 != 0 || len(a.list) > 60 {
			return bad("ID list must hold at most 30 field-value pairs")
		}
		for i := 0; i < len(a.list); i += 2 {
			k, v := a.list[i], a.list[i+1]
			if k.kind != argString || len(k.value) > 30 {
				return bad("ID field names are strings of at most 30 bytes")
			}
			switch {
			case v.kind == argNil:
				pairs = append(pairs, k.value, "")
			case v.kind == argString && len(v.value) <= 1024:
				pairs = append(pairs, k.value, v.value)
			default:
				return bad("ID values are strings of at most 1024 bytes, or NIL")
			}
		}
	default:
		return bad("ID takes one argument: a list or NIL")
	}
	s.clientID = pairs
	s.writef("* ID %s\r\n%s OK ID completed.\r\n", proxyID, cmd.tag)
	return stay, nil
}

// cmdStartTLS: RFC 9051 section 6.2.1. Bytes the client sent after the command line belong
// to its TLS handshake; they are given to the TLS server, never read as commands.
func (s *session) cmdStartTLS(cmd *command) (preauthResult, error) {
	if err := noArgs(cmd); err != nil {
		return stay, err
	}
	if s.lo.TLS != tlsconf.STARTTLS || s.clientTLS {
		return stay, &protocolError{tag: cmd.tag, msg: "STARTTLS not available"}
	}
	s.writef("%s OK Begin TLS negotiation now.\r\n", cmd.tag)
	if err := s.flush(); err != nil {
		return hangUp, err
	}
	buffered, _ := s.br.Peek(s.br.Buffered())
	if err := s.startClientTLS(append([]byte(nil), buffered...)); err != nil {
		s.endErr = fmt.Errorf("client TLS handshake: %w", err)
		return hangUp, nil
	}
	return stay, nil
}

// cmdLogin: RFC 9051 section 6.2.3.
func (s *session) cmdLogin(cmd *command) (preauthResult, error) {
	if len(cmd.args) != 2 {
		return stay, &protocolError{tag: cmd.tag, msg: "LOGIN takes a user name and a password"}
	}
	user, ok1 := cmd.args[0].astring()
	pass, ok2 := cmd.args[1].astring()
	if !ok1 || !ok2 {
		return stay, &protocolError{tag: cmd.tag, msg: "LOGIN arguments must be strings"}
	}
	if !s.authAllowed() {
		s.writef("%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.\r\n", cmd.tag)
		return stay, nil
	}
	return s.login(cmd.tag, "LOGIN", credentials{user: user, password: pass})
}

// cmdAuthenticate: RFC 9051 section 6.2.2 with PLAIN (RFC 4616) and SASL-IR (RFC 4959).
func (s *session) cmdAuthenticate(cmd *command) (preauthResult, error) {
	if len(cmd.args) < 1 || len(cmd.args) > 2 || cmd.args[0].kind != argAtom {
		return stay, &protocolError{tag: cmd.tag, msg: "AUTHENTICATE takes a mechanism and an optional initial response"}
	}
	if !s.authAllowed() {
		s.writef("%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connections.\r\n", cmd.tag)
		return stay, nil
	}
	if !strings.EqualFold(cmd.args[0].value, "PLAIN") {
		s.writef("%s NO [CANNOT] Unsupported authentication mechanism\r\n", cmd.tag)
		return stay, nil
	}
	var encoded string
	if len(cmd.args) == 2 {
		if cmd.args[1].kind != argAtom {
			return stay, &protocolError{tag: cmd.tag, msg: "Invalid initial response"}
		}
		encoded = cmd.args[1].value
	} else {
		// RFC 9051 section 6.2.2: an empty challenge is "+ " then CRLF.
		s.writef("+ \r\n")
		if err := s.flush(); err != nil {
			return hangUp, err
		}
		line, err := readLine(s.br, s.lo.maxLine())
		if err != nil {
			return hangUp, err
		}
		encoded = string(line)
	}
	if encoded == "*" {
		// RFC 9051 section 6.2.2: cancel → tagged BAD.
		return stay, &protocolError{tag: cmd.tag, msg: "Authentication cancelled"}
	}
	cr, err := decodePlain(encoded)
	if err != nil {
		return stay, &protocolError{tag: cmd.tag, msg: err.Error()}
	}
	return s.login(cmd.tag, "PLAIN", cr)
}

// prefixConn is a net.Conn whose first reads return prefix: the bytes bufio had already read
// past a STARTTLS command line, which belong to the TLS handshake.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// Readers and writers used before login come from pools: every session needs them for a
// moment and none keeps them (an idle session must not hold 8 KiB it no longer uses).
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}
)

func getReader(r io.Reader) *bufio.Reader {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readerPool.Put(br)
}

// newBufio makes the reader and writer used before login on conn.
func (s *session) newBufio(conn net.Conn) {
	s.release()
	s.conn = conn
	s.br = getReader(conn)
	s.bw = writerPool.Get().(*bufio.Writer)
	s.bw.Reset(conn)
	s.reader = &commandReader{
		br:         s.br,
		maxLine:    s.lo.maxLine(),
		maxLiteral: s.lo.maxLiteral(),
		cont: func() error {
			s.writef("+ Ready for literal data\r\n")
			return s.flush()
		},
	}
}

// release gives the pre-login reader and writer back to their pools.
func (s *session) release() {
	if s.br != nil {
		putReader(s.br)
		s.br = nil
	}
	if s.bw != nil {
		s.bw.Reset(nil)
		writerPool.Put(s.bw)
		s.bw = nil
	}
	s.reader = nil
}
