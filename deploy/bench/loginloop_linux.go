package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"github.com/pires/go-proxyproto"
)

// This file is the "login-loop" target: relay-loop (relayloop_linux.go) with the least an
// IMAP login proxy does before it relays, run in the same event loops. Per connection: its
// own greeting; the client's first command, which must be LOGIN with two atoms or quoted
// strings (RFC 9051 section 6.2.3); a connect to the backend; a PROXY v2 header with the
// client's address where the backend wants one; the backend's greeting; AUTHENTICATE PLAIN
// with the credentials as an initial response (RFC 4616, RFC 4959); the backend's tagged
// answer, sent to the client under the client's tag; then the relay, unchanged.
//
// It is the bound for imapgate's `logins`: the same messages as imapgate's plain login with
// a PROXY header, with none of its waits on goroutines and none of its other work. What
// imapgate costs over it is its design (a goroutine per pre-auth conversation, the runtime's
// poller) and what it does besides: routing, logs, metrics, timeouts, the session registry.
//
// What it does not do: any other command before LOGIN (the connection is closed), literals,
// STARTTLS or TLS, timeouts, a check of the password (the backend checks it, as behind
// imapgate). It assumes that the backend offers SASL-IR (Dovecot does; without it the
// connection is closed) and that each short message of the login (greeting, header,
// AUTHENTICATE, the answer) fits in the empty send buffer of a fresh socket: a short write
// ends the connection.

// Phases of a connection in login-loop, before the relay (relaying, its loginState is nil).
const (
	phaseWantLogin    = iota // client: greeted, its LOGIN line not complete yet
	phaseWaitBackend         // client: its login goes on at the backend
	phaseConnecting          // backend: connect(2) in progress
	phaseBackendHello        // backend: header sent, its greeting not complete yet
	phaseBackendAuth         // backend: AUTHENTICATE sent, its tagged answer not complete yet
)

// loginTag is the tag of the AUTHENTICATE command sent to the backend.
const loginTag = "ll1"

// maxLoginLine bounds the bytes kept while a login line is incomplete.
const maxLoginLine = 8 << 10

var loginGreeting = []byte("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] login-loop ready\r\n")

// loginState is a connection's state until the relay starts.
type loginState struct {
	phase int
	line  []byte         // bytes read and not yet taken as lines
	tag   []byte         // client: the LOGIN's tag
	auth  []byte         // client: the AUTHENTICATE command for the backend
	src   netip.AddrPort // client: its address, for the PROXY header
}

// RunLoopLogin accepts connections on ln, logs each in to the backend at to as described
// above (with a PROXY v2 header first if proxyHeader), then relays it, until ctx ends, with
// one event loop per core. It closes ln and every connection before it returns.
func RunLoopLogin(ctx context.Context, ln *net.TCPListener, to string, proxyHeader bool) error {
	dst, err := netip.ParseAddrPort(ln.Addr().String())
	if err != nil {
		return err
	}
	return runLoops(ctx, ln, to, &loginConf{dst: dst, proxyHeader: proxyHeader})
}

// loginConf is what the loops of login-loop share.
type loginConf struct {
	dst         netip.AddrPort // the listener's address: the header's destination
	proxyHeader bool
}

// acceptLogin greets a new client and waits for its LOGIN.
func (l *relayLoop) acceptLogin(cfd int, src netip.AddrPort) {
	c := &loopConn{fd: cfd, login: &loginState{phase: phaseWantLogin, src: src}}
	l.conns[cfd] = c
	if !l.register(c) || !l.writeAll(c, loginGreeting) {
		l.closePair(c)
	}
}

// writeAll writes b to c at once; false if the socket did not take all of it.
func (l *relayLoop) writeAll(c *loopConn, b []byte) bool {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(c.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return e == 0 && int(n) == len(b)
}

// readLine reads what c has until its buffer holds a whole line, and returns that line
// (with its CRLF); nil and true if the line is not complete yet, false if the connection
// ended or the line is too long.
func (l *relayLoop) readLine(c *loopConn) ([]byte, bool) {
	s := c.login
	for {
		if i := bytes.Index(s.line, []byte("\r\n")); i >= 0 {
			return s.line[:i+2], true
		}
		if len(s.line) > maxLoginLine {
			return nil, false
		}
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(c.fd), uintptr(unsafe.Pointer(&l.buf[0])), uintptr(len(l.buf)))
		switch {
		case e == syscall.EAGAIN:
			return nil, true
		case e == syscall.EINTR:
			continue
		case e != 0 || n == 0:
			return nil, false
		}
		s.line = append(s.line, l.buf[:n]...)
		c.readable = int(n) == len(l.buf) // a full buffer: more may wait, with no new edge
	}
}

// loginEvent handles an event of a connection whose relay has not started.
func (l *relayLoop) loginEvent(c *loopConn, events uint32) {
	s := c.login
	if s.phase == phaseConnecting {
		if events&(syscall.EPOLLOUT|syscall.EPOLLERR|syscall.EPOLLHUP) != 0 {
			l.connected(c)
		}
		return
	}
	if events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) == 0 {
		return
	}
	if s.phase == phaseWaitBackend {
		c.readable = true // pipelined after LOGIN: the relay reads it
		if events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0 {
			c.rdhup = true
		}
		return
	}
	line, ok := l.readLine(c)
	if !ok {
		l.closePair(c)
		return
	}
	if line == nil {
		return
	}
	switch s.phase {
	case phaseWantLogin:
		l.clientLogin(c, line)
	case phaseBackendHello:
		l.backendHello(c, line)
	case phaseBackendAuth:
		l.backendAnswer(c, line)
	}
}

// clientLogin takes the client's LOGIN line and connects to the backend.
func (l *relayLoop) clientLogin(c *loopConn, line []byte) {
	s := c.login
	tag, user, pass, ok := parseLoginLine(line)
	if !ok {
		l.closePair(c)
		return
	}
	s.line = s.line[len(line):]
	s.tag = tag
	plain := make([]byte, 0, 2+len(user)+len(pass))
	plain = append(append(append(append(plain, 0), user...), 0), pass...)
	s.auth = []byte(loginTag + " AUTHENTICATE PLAIN " + base64.StdEncoding.EncodeToString(plain) + "\r\n")
	r, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(l.to.Addr.Family), syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if e != 0 {
		l.closePair(c)
		return
	}
	u := &loopConn{fd: int(r), connecting: true, login: &loginState{phase: phaseConnecting}}
	setsockopt(u.fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	c.peer, u.peer = u, c
	l.conns[u.fd] = u
	s.phase = phaseWaitBackend
	_, _, e = syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(u.fd), uintptr(unsafe.Pointer(&l.to)), l.tolen)
	if (e != 0 && e != syscall.EINPROGRESS) || !l.register(u) {
		l.closePair(c)
	}
}

// connected: the backend's connect(2) has finished; the PROXY header goes first.
func (l *relayLoop) connected(u *loopConn) {
	if !connectDone(u.fd) {
		l.closePair(u)
		return
	}
	u.connecting = false
	u.login.phase = phaseBackendHello
	if l.loginConf.proxyHeader {
		h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(u.peer.login.src), net.TCPAddrFromAddrPort(l.loginConf.dst))
		b, err := h.Format()
		if err != nil || !l.writeAll(u, b) {
			l.closePair(u)
			return
		}
	}
	l.loginEvent(u, syscall.EPOLLIN) // the greeting may be there already (edge-triggered)
}

// backendHello takes the backend's greeting and sends AUTHENTICATE.
func (l *relayLoop) backendHello(u *loopConn, line []byte) {
	if !bytes.HasPrefix(line, []byte("* OK ")) || !bytes.Contains(line, []byte("SASL-IR")) {
		l.closePair(u)
		return
	}
	u.login.line = u.login.line[len(line):]
	u.login.phase = phaseBackendAuth
	if !l.writeAll(u, u.peer.login.auth) {
		l.closePair(u)
		return
	}
	if len(u.login.line) > 0 {
		l.loginEvent(u, syscall.EPOLLIN)
	}
}

// backendAnswer takes the backend's answer to AUTHENTICATE: untagged lines are dropped, the
// tagged one goes to the client under its tag. After an OK the relay starts, with the bytes
// that came after the answer first; after a NO or BAD both connections are closed.
func (l *relayLoop) backendAnswer(u *loopConn, line []byte) {
	for line != nil {
		s := u.login
		s.line = s.line[len(line):]
		if rest, ok := bytes.CutPrefix(line, []byte(loginTag+" ")); ok {
			c := u.peer
			out := make([]byte, 0, len(c.login.tag)+1+len(rest)+len(s.line))
			out = append(append(append(out, c.login.tag...), ' '), rest...)
			if !bytes.HasPrefix(rest, []byte("OK")) {
				l.writeAll(c, out)
				l.closePair(u)
				return
			}
			out = append(out, s.line...)
			pipelined := c.login.line // the client's bytes after its LOGIN
			u.login, c.login = nil, nil
			if len(pipelined) > 0 {
				l.send(u, pipelined)
			}
			l.send(c, out)
			if !c.closed && c.readable {
				l.readFrom(c)
			}
			if !u.closed && u.readable {
				l.readFrom(u)
			}
			return
		}
		var ok bool
		if line, ok = l.readLine(u); !ok {
			l.closePair(u)
			return
		}
	}
}

// parseLoginLine parses `tag LOGIN user password` CRLF, user and password each an atom or a
// quoted string (RFC 9051 section 4.3: backslash escapes only '\' and '"').
func parseLoginLine(line []byte) (tag, user, pass []byte, ok bool) {
	line, ok = bytes.CutSuffix(line, []byte("\r\n"))
	if !ok {
		return nil, nil, nil, false
	}
	tag, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || len(tag) == 0 {
		return nil, nil, nil, false
	}
	cmd, rest, ok := bytes.Cut(rest, []byte(" "))
	if !ok || !bytes.EqualFold(cmd, []byte("LOGIN")) {
		return nil, nil, nil, false
	}
	if user, rest, ok = cutAstring(rest); !ok || len(rest) == 0 || rest[0] != ' ' {
		return nil, nil, nil, false
	}
	if pass, rest, ok = cutAstring(rest[1:]); !ok || len(rest) != 0 {
		return nil, nil, nil, false
	}
	return tag, user, pass, true
}

// cutAstring takes an atom or a quoted string from the front of b.
func cutAstring(b []byte) (s, rest []byte, ok bool) {
	if len(b) == 0 {
		return nil, nil, false
	}
	if b[0] != '"' {
		i := bytes.IndexByte(b, ' ')
		if i < 0 {
			i = len(b)
		}
		if i == 0 || bytes.ContainsAny(b[:i], "(){%*\"\\") {
			return nil, nil, false
		}
		return b[:i], b[i:], true
	}
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case '\\':
			if i+1 == len(b) || (b[i+1] != '\\' && b[i+1] != '"') {
				return nil, nil, false
			}
			s = append(s, b[i+1])
			i++
		case '"':
			if s == nil {
				s = []byte{}
			}
			return s, b[i+1:], true
		default:
			s = append(s, b[i])
		}
	}
	return nil, nil, false
}
