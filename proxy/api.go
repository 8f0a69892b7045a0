package proxy

import (
	"context"
	"crypto/tls"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/zap"
)

// Router finds where a user's session goes. routing.Static implements it over the go-memdb
// table; later sources (password files, HTTP auth, etcd) implement it too. Route must not
// block for long: it runs on the login path of every session. An error of type
// *routing.UnavailableError makes the client get NO [UNAVAILABLE]; any other error is logged
// and the client gets the same answer.
type Router interface {
	Route(ctx context.Context, req routing.Request) (routing.Decision, error)
}

// ListenerOptions configure one client-facing listener. The zero value is a cleartext
// listener that refuses plaintext authentication (it advertises LOGINDISABLED).
type ListenerOptions struct {
	// Name labels the listener in logs (and, later, metrics).
	Name string
	// TLS is how clients reach this listener: None, STARTTLS (port 143 style) or Implicit
	// (port 993 style).
	TLS tlsconf.Mode
	// TLSConfig is the server certificate; required for STARTTLS and Implicit.
	TLSConfig *tls.Config
	// AllowPlaintextAuth allows LOGIN and AUTHENTICATE before TLS. RFC 9051 section 6.2.3:
	// servers must not allow it by default.
	AllowPlaintextAuth bool
	// PreAuthTimeout ends an unauthenticated connection that sends nothing for this long.
	// Zero means 60 s (nginx's and Dovecot's default is of that order).
	PreAuthTimeout time.Duration
	// MaxLineBytes bounds one command line before login. Zero means 8 KiB.
	MaxLineBytes int
	// MaxLiteralBytes bounds one literal before login. Zero means 8 KiB.
	MaxLiteralBytes int
	// Observe says whether sessions run the traffic observer after login (per-command
	// metrics, IDLE tracking, BYE on kick, traces). The zero value, ObserveAuto, turns it on
	// when a side is TLS, where bytes pass through user space anyway.
	Observe ObserveMode
}

// Options configure a Server. The zero value of every field is usable except Router.
type Options struct {
	// Router decides where each session goes. Required.
	Router Router
	// Logger receives one line at login and one at the end of each session. Nil means
	// zap.NewNop().
	Logger *zap.Logger
	// ConnectTimeout bounds dialing a backend plus its greeting and TLS handshake.
	// Zero means 5 s.
	ConnectTimeout time.Duration
	// LoginTimeout bounds the whole upstream login conversation. Zero means 15 s.
	LoginTimeout time.Duration
	// Metrics receives counts and timings of the data path. Nil means none are kept.
	Metrics Metrics
	// DormantAfter is how long one direction of a logged-in session may be silent before
	// its goroutine ends and the server's dormancy loops wait for it instead (dormant.go):
	// an idle session then holds no goroutine stack. Zero means 2 s; negative, never, and
	// then plain sessions are not copied by the loops either (inline.go): every direction
	// keeps a goroutine.
	DormantAfter time.Duration
}

// Metrics receives events from the data path, to be turned into Prometheus metrics (package
// admin) or anything else. Every method must be cheap and safe for concurrent use; label
// values passed in come from a bounded set (listener, shard and backend names from the
// configuration, fixed result and command names), never from what a client sent.
type Metrics interface {
	// ConnOpened and ConnClosed bracket every accepted client connection.
	ConnOpened(listener string)
	ConnClosed(listener string)
	// Login reports a login attempt's outcome: result is one of "ok", "auth_failed",
	// "unavailable", "error", "aborted"; mechanism "LOGIN" or "PLAIN"; d runs from accept to
	// the end of the attempt.
	Login(result, mechanism string, d time.Duration)
	// UpstreamConnect reports dialing backend (its address) of shard up to its greeting,
	// TLS included: d is the time it took, ok whether it worked.
	UpstreamConnect(shard, backend string, d time.Duration, ok bool)
	// SessionStarted and SessionEnded bracket the logged-in part of a session.
	SessionStarted(shard, backend string)
	SessionEnded(shard, backend string, d time.Duration)
	// Bytes reports bytes moved after login: direction is "client_to_backend" or
	// "backend_to_client". Called once per chunk copied.
	Bytes(direction string, n int64)
	// Command reports one completed IMAP command seen by the traffic observer: name is
	// upper-case from a fixed list or "other".
	Command(name string, d time.Duration)
	// Idle reports a session entering (+1) or leaving (-1) IDLE.
	Idle(delta int)
	// Dormant reports a direction of a logged-in session going dormant (+1: it holds no
	// goroutine, a dormancy loop waits for it) or waking (-1: a goroutine runs it, or it
	// ended). Plain directions are dormant between bursts (inline.go).
	Dormant(delta int)
}

// nopMetrics is the Metrics used when Options.Metrics is nil.
type nopMetrics struct{}

func (nopMetrics) ConnOpened(string)                                   {}
func (nopMetrics) ConnClosed(string)                                   {}
func (nopMetrics) Login(string, string, time.Duration)                 {}
func (nopMetrics) UpstreamConnect(string, string, time.Duration, bool) {}
func (nopMetrics) SessionStarted(string, string)                       {}
func (nopMetrics) SessionEnded(string, string, time.Duration)          {}
func (nopMetrics) Bytes(string, int64)                                 {}
func (nopMetrics) Command(string, time.Duration)                       {}
func (nopMetrics) Idle(int)                                            {}
func (nopMetrics) Dormant(int)                                         {}

// SessionInfo describes one live session, for the admin API.
type SessionInfo struct {
	ID       string    `json:"id"`
	Listener string    `json:"listener"`
	Client   string    `json:"client"`
	Start    time.Time `json:"start"`
	// LoggedIn is false while the session is before login (User and below are empty).
	LoggedIn bool   `json:"logged_in"`
	User     string `json:"user,omitempty"`
	Shard    string `json:"shard,omitempty"`
	Backend  string `json:"backend,omitempty"`
	// Bytes moved after login, live.
	BytesClientToBackend int64 `json:"bytes_client_to_backend"`
	BytesBackendToClient int64 `json:"bytes_backend_to_client"`
	// Idle and Command come from the traffic observer (false and "" without it).
	Idle    bool   `json:"idle"`
	Command string `json:"command,omitempty"`
}
