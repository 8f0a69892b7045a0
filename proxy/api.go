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
}
