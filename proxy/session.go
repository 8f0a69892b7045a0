package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/zap"
)

// session is one client connection from accept to close.
//
// Ownership: the session goroutine (Server.handle) owns raw and conn and everything below
// until the handoff, and closes them if the session ends before it. From the handoff the
// splice (splice.go) owns both connections and closes them. Other goroutines only call
// interrupt.
type session struct {
	id    string
	srv   *Server
	lo    *ListenerOptions
	start time.Time

	ctx    context.Context
	cancel context.CancelFunc

	raw       net.Conn // the accepted connection
	conn      net.Conn // raw, or the *tls.Conn over it
	nb        *nbConn  // under the *tls.Conn, when the client uses TLS
	br        *bufio.Reader
	bw        *bufio.Writer
	reader    *commandReader
	clientTLS bool
	clientID  []string // the client's ID parameters (RFC 2971), key, value, …

	// Set at login.
	user    string
	mech    string
	shard   string
	backend string
	up      *upstream

	mu       sync.Mutex       // guards sp, the login fields and observer against other goroutines
	sp       *spliceState     // the splice, from the handoff on; nil before
	observer *trafficObserver // the traffic observer after login, or nil
	// clientWMu serialises writes to the client after login between the backend→client copy
	// and a kick's BYE.
	clientWMu sync.Mutex
	closing   atomic.Bool
	kicked    atomic.Bool

	// The end of the session, for the log.
	closedBy string // "client", "backend" or "proxy"
	endErr   error
	c2b, b2c atomic.Int64
}

// authenticatedCommands are commands of later states (RFC 9051 section 6.3 and 6.4 and
// common extensions): before login they get a more helpful BAD than "unknown".
var authenticatedCommands = map[string]bool{
	"ENABLE": true, "SELECT": true, "EXAMINE": true, "CREATE": true, "DELETE": true,
	"RENAME": true, "SUBSCRIBE": true, "UNSUBSCRIBE": true, "LIST": true, "LSUB": true,
	"NAMESPACE": true, "STATUS": true, "APPEND": true, "IDLE": true, "CLOSE": true,
	"UNSELECT": true, "EXPUNGE": true, "SEARCH": true, "FETCH": true, "STORE": true,
	"COPY": true, "MOVE": true, "UID": true, "CHECK": true, "GETQUOTA": true,
	"GETQUOTAROOT": true, "COMPRESS": true, "UNAUTHENTICATE": true,
}

func (lo *ListenerOptions) preauthTimeout() time.Duration {
	if lo.PreAuthTimeout > 0 {
		return lo.PreAuthTimeout
	}
	return 60 * time.Second
}

func (lo *ListenerOptions) maxLine() int {
	if lo.MaxLineBytes > 0 {
		return lo.MaxLineBytes
	}
	return defaultMaxLineBytes
}

func (lo *ListenerOptions) maxLiteral() int {
	if lo.MaxLiteralBytes > 0 {
		return lo.MaxLiteralBytes
	}
	return defaultMaxLiteralBytes
}

// newSessionID returns 12 URL-safe characters from 72 random bits, the size of Dovecot's
// session ids.
func newSessionID() string {
	var b [9]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// startClientTLS runs the server side of a TLS handshake on the raw connection under the
// pre-auth timeout. prefix holds bytes already read past a STARTTLS command: they belong to
// the handshake.
func (s *session) startClientTLS(prefix []byte) error {
	if s.lo.TLSConfig == nil {
		return errors.New("listener has no TLS certificate")
	}
	var under net.Conn = s.raw
	if nb := newNBConn(s.raw, prefix); nb != nil {
		s.nb, under = nb, nb
	} else if len(prefix) > 0 {
		under = &prefixConn{Conn: s.raw, prefix: prefix}
	}
	tc := tls.Server(under, s.lo.TLSConfig)
	_ = s.raw.SetDeadline(time.Now().Add(s.lo.preauthTimeout()))
	ctx, cancel := context.WithTimeout(s.ctx, s.lo.preauthTimeout())
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	_ = s.raw.SetWriteDeadline(time.Time{})
	s.clientTLS = true
	s.newBufio(tc)
	return nil
}

// decodePlain decodes an AUTHENTICATE PLAIN response (RFC 4616 section 2) sent as base64
// ("=" stands for an empty response, RFC 9051 section 6.2.2). An error's text is the text of
// the client's BAD response, hence capitalised.
func decodePlain(encoded string) (credentials, error) {
	var raw []byte
	if encoded != "=" {
		var err error
		raw, err = base64.StdEncoding.DecodeString(encoded)
		if err != nil {
			//lint:ignore ST1005 the text is the BAD response's
			return credentials{}, errors.New("Invalid base64 in SASL response")
		}
	}
	var cr credentials
	srv := sasl.NewPlainServer(func(identity, username, password string) error {
		cr = credentials{authzid: identity, user: username, password: password}
		return nil
	})
	if raw == nil {
		raw = []byte{}
	}
	if _, _, err := srv.Next(raw); err != nil {
		//lint:ignore ST1005 the text is the BAD response's
		return credentials{}, errors.New("Invalid PLAIN response")
	}
	if cr.user == "" {
		//lint:ignore ST1005 the text is the BAD response's
		return credentials{}, errors.New("Invalid PLAIN response: empty user name")
	}
	return cr, nil
}

// login routes the user, logs in upstream and, on success, hands the session off. The client
// gets NO [AUTHENTICATIONFAILED] when the backend refuses the credentials and
// NO [UNAVAILABLE] when no backend of the user's shard can be used; it may try again.
func (s *session) login(tag, mech string, cr credentials) (preauthResult, error) {
	if cr.user == "" {
		s.writef("%s NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", tag)
		return stay, nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.loginTimeout())
	defer cancel()
	// The login's lines carry these fields first. They are appended per line (each append
	// copies: lf has no spare capacity), not bound with log.With, which clones the
	// logger's encoder for every login.
	log := s.srv.log
	lf := slices.Clip(append(s.logFields(3), zap.String("user", cr.user), zap.String("mechanism", mech)))

	req := routing.Request{
		User:      cr.user,
		Mechanism: mech,
		Listener:  s.lo.Name,
		Client:    addrPort(s.raw.RemoteAddr()),
		Local:     addrPort(s.raw.LocalAddr()),
		SessionID: s.id,
	}
	m := s.srv.metrics
	dec, err := s.srv.opts.Router.Route(ctx, req)
	if err != nil {
		m.Login("unavailable", mech, time.Since(s.start))
		log.Warn("login failed", append(lf, zap.String("reason", "unavailable"), zap.Error(err))...)
		s.writef("%s NO [UNAVAILABLE] Service temporarily unavailable.\r\n", tag)
		return stay, nil
	}
	lf = slices.Clip(append(lf, zap.String("shard", dec.Shard)))
	ci := clientInfo{client: req.Client, local: req.Local, sessionID: s.id}
	if s.clientTLS && slices.ContainsFunc(dec.Backends, func(b *routing.Backend) bool {
		return b.ProxyProtocol == routing.ProxyProtocolV2
	}) {
		ci.tls = tlsInfoOf(s.conn) // for the version 2 header's TLVs (proxyproto.go)
	}
	upCreds := cr
	if dec.UpstreamUser != "" {
		upCreds.user = dec.UpstreamUser
	}
	var lastErr error
	for _, be := range dec.Backends {
		up, res, err := s.loginUpstream(ctx, be, ci, upCreds)
		var af *authFailedError
		switch {
		case err == nil:
			s.mu.Lock()
			s.user, s.mech, s.shard, s.backend, s.up = cr.user, mech, dec.Shard, be.Address, up
			s.mu.Unlock()
			fields := append(lf,
				zap.String("backend", be.Address),
				zap.String("route", dec.Reason),
				zap.String("upstream_mechanism", res.mech),
				zap.Bool("client_tls", s.clientTLS),
				zap.Bool("backend_tls", up.tls),
			)
			if s.clientID != nil {
				fields = append(fields, zap.Strings("client_id", s.clientID))
			}
			log.Info("login", fields...)
			m.Login("ok", mech, time.Since(s.start))
			if err := s.handoff(tag, res); err != nil {
				s.endErr = err
				return hangUp, nil
			}
			return handedOff, nil
		case errors.As(err, &af):
			log.Info("login failed", append(lf, zap.String("backend", be.Address),
				zap.String("reason", "auth_failed"), zap.Error(err))...)
			m.Login("auth_failed", mech, time.Since(s.start))
			if af.code == "UNAVAILABLE" {
				s.writef("%s NO [UNAVAILABLE] Service temporarily unavailable.\r\n", tag)
			} else {
				s.writef("%s NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", tag)
			}
			return stay, nil
		}
		log.Warn("backend failed", append(lf, zap.String("backend", be.Address), zap.Error(err))...)
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	log.Warn("login failed", append(lf, zap.String("reason", "unavailable"), zap.Error(lastErr))...)
	if s.closing.Load() {
		m.Login("aborted", mech, time.Since(s.start))
		return hangUp, errors.New("server shutting down")
	}
	var (
		pe *backendProtocolError
		fe *proxyFaultError
	)
	if errors.As(lastErr, &pe) || errors.As(lastErr, &fe) {
		m.Login("error", mech, time.Since(s.start))
	} else {
		m.Login("unavailable", mech, time.Since(s.start))
	}
	s.writef("%s NO [UNAVAILABLE] Service temporarily unavailable.\r\n", tag)
	return stay, nil
}

// loginUpstream dials one backend and logs in there.
func (s *session) loginUpstream(ctx context.Context, be *routing.Backend, ci clientInfo, cr credentials) (*upstream, *loginResult, error) {
	t0 := time.Now()
	up, err := dialUpstream(ctx, be, s.srv.connectTimeout(), ci)
	// A header the proxy could not make was no attempt to connect: not the backend's record.
	if fe := (*proxyFaultError)(nil); !errors.As(err, &fe) {
		s.srv.metrics.UpstreamConnect(be.Shard, be.Address, time.Since(t0), err == nil)
	}
	if err != nil {
		return nil, nil, err
	}
	// Unblock the conversation if the session is interrupted or the login times out.
	stop := context.AfterFunc(ctx, func() { _ = up.raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		_ = up.raw.SetDeadline(dl)
	}
	if err := up.forwardID(ci); err != nil {
		up.close()
		return nil, nil, err
	}
	res, err := up.login(cr)
	if err != nil {
		up.close()
		return nil, nil, err
	}
	if !stop() {
		up.close()
		return nil, nil, &backendUnavailableError{addr: be.Address, err: ctx.Err()}
	}
	_ = up.raw.SetDeadline(time.Time{})
	return up, res, nil
}

// handoff gives the client the backend's answer to its login under the client's tag, with the
// backend's post-login capabilities (RFC 9051 section 6.2.3), and delivers the bytes either
// side sent ahead: the client's pipelined commands to the backend and the backend's bytes
// after its OK to the client.
func (s *session) handoff(tag string, res *loginResult) error {
	for _, u := range res.untagged {
		s.bw.Write(u)
		s.bw.WriteString("\r\n")
	}
	text := res.text
	if text == "" {
		text = "Logged in"
	}
	s.writef("%s OK [CAPABILITY %s] %s\r\n", tag, res.caps.String(), text)
	// The observer starts here, so the bytes either side sent ahead are seen (and counted)
	// like all that follows.
	s.mu.Lock()
	s.startObserver()
	obs := s.observer
	s.mu.Unlock()
	m := s.srv.metrics
	if n := s.up.br.Buffered(); n > 0 {
		ahead, _ := s.up.br.Peek(n)
		if obs != nil {
			obs.fromBackend(ahead)
		}
		s.bw.Write(ahead)
		s.b2c.Add(int64(n))
		m.Bytes("backend_to_client", int64(n))
	}
	if err := s.flush(); err != nil {
		return err
	}
	if n := s.br.Buffered(); n > 0 {
		ahead, _ := s.br.Peek(n)
		if obs != nil {
			obs.fromClient(ahead)
		}
		if _, err := s.up.conn.Write(ahead); err != nil {
			return err
		}
		s.c2b.Add(int64(n))
		m.Bytes("client_to_backend", int64(n))
	}
	_ = s.raw.SetDeadline(time.Time{})
	// The bufio readers and writers go back to their pools here: from now on bytes go
	// straight between the connections.
	s.release()
	s.up.releaseReader()
	s.up.caps, s.up.wbuf = capSet{}, nil // login state, not needed any more
	return nil
}

// interrupt ends the session from another goroutine (server shutdown, kick): before login
// the session loop says BYE; after handoff both connections are closed.
func (s *session) interrupt() {
	s.closing.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sp != nil {
		s.sp.closeAll()
		return
	}
	s.cancel()
	_ = s.raw.SetReadDeadline(time.Unix(1, 0))
}

// logFields are the fields that name the session in every line it logs, in a slice with room
// for extra more fields. A session keeps no logger of its own: zap's With holds an encoder
// and a 1 KiB buffer, which was a tenth of an idle session's memory.
func (s *session) logFields(extra int) []zap.Field {
	return append(make([]zap.Field, 0, 3+extra), zap.String("session", s.id), zap.String("listener", s.lo.Name),
		zap.String("client", s.raw.RemoteAddr().String()))
}

// kick ends a logged-in session on an operator's request (Server.Kick). A client between
// commands or in IDLE gets "* BYE" first (RFC 9051 section 7.1.5), if the observer can tell.
// While the backend→client copy holds the write lock, a response is being written (and may
// be parked on a client that stopped reading): no BYE then, and no waiting for it.
func (s *session) kick() {
	s.kicked.Store(true)
	s.mu.Lock()
	obs, spliced := s.observer, s.sp != nil
	s.mu.Unlock()
	if spliced && obs != nil && s.clientWMu.TryLock() {
		if obs.atBoundary() {
			_ = s.raw.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = s.conn.Write([]byte("* BYE Session ended by the administrator.\r\n"))
		}
		s.clientWMu.Unlock()
	}
	s.interrupt()
}

// startObserver decides whether this session runs the traffic observer, and starts it.
func (s *session) startObserver() {
	on := false
	switch s.lo.Observe {
	case ObserveAuto:
		on = s.clientTLS || s.up.tls
	case ObserveOn:
		on = true
	}
	until, traced := s.srv.traces.active(s.user)
	if !on && !traced {
		return
	}
	o := newTrafficObserver(s.srv.metrics)
	if traced {
		o.trace, o.traceUntil = s.srv.log.With(append(s.logFields(1), zap.String("user", s.user))...), until
	}
	s.observer = o
}

// run is the session until login and, if the login succeeds, starts the splice. It reports
// whether it did: then the splice's goroutines end the session (calling finish); otherwise
// the session is over and its connections closed when run returns.
func (s *session) run(finish func()) (spliced bool) {
	if s.lo.TLS == tlsconf.Implicit {
		if err := s.startClientTLS(nil); err != nil {
			s.endErr = err
			s.closedBy = "client"
			s.endBeforeSplice()
			return false
		}
	} else {
		s.newBufio(s.raw)
	}
	if !s.runPreauth() {
		if s.closedBy == "" {
			s.closedBy = "client"
		}
		s.endBeforeSplice()
		return false
	}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		s.up.raw.Close()
		s.closedBy = "proxy"
		s.endBeforeSplice()
		return false
	}
	s.srv.metrics.SessionStarted(s.shard, s.backend)
	spliceStart := time.Now()
	sp := s.splice(func() {
		s.srv.metrics.SessionEnded(s.shard, s.backend, time.Since(spliceStart))
		if s.closing.Load() {
			s.closedBy = "proxy"
		}
		if s.kicked.Load() {
			s.closedBy = "kick"
		}
		s.logEnd()
		finish()
	})
	s.sp = sp
	// The context only served the login; dropping it now frees what it holds (interrupt
	// uses the splice from here on).
	s.cancel()
	s.ctx, s.cancel = nil, nil
	s.mu.Unlock()
	sp.start()
	return true
}

// endBeforeSplice ends a session that never reached the splice.
func (s *session) endBeforeSplice() {
	s.release()
	s.logEnd()
	s.cancel()
	s.raw.Close()
}

func (s *session) logEnd() {
	// 4 fields always, 3 with a user, 1 for an error, 3 from the observer.
	fields := append(s.logFields(11),
		zap.Duration("duration", time.Since(s.start)),
		zap.Int64("bytes_client_to_backend", s.c2b.Load()),
		zap.Int64("bytes_backend_to_client", s.b2c.Load()),
		zap.String("closed_by", s.closedBy),
	)
	if s.user != "" {
		fields = append(fields, zap.String("user", s.user), zap.String("shard", s.shard),
			zap.String("backend", s.backend))
	}
	if s.endErr != nil {
		fields = append(fields, zap.Error(s.endErr))
	}
	if s.observer != nil {
		fields = append(fields, s.observer.end()...)
	}
	s.srv.log.Info("session end", fields...)
}
