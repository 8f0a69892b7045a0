package routing

import (
	"crypto/tls"
	"net/netip"

	"github.com/imapgate/imapgate/tlsconf"
)

// Request is what the proxy knows when a client logs in: the credentials' identity and where
// the client came from. The password is deliberately not here: routing decides where a user
// goes, the backend decides whether the password is right (pass-through authentication).
// Sources that verify passwords themselves (password files, HTTP auth) get it through a
// separate interface when they come.
type Request struct {
	// User is the authentication identity as the client sent it (LOGIN user name or the
	// PLAIN authcid), not yet lower-cased.
	User string
	// Mechanism is "LOGIN" or the SASL mechanism name ("PLAIN").
	Mechanism string
	// Listener is the name of the listener the client connected to.
	Listener string
	// Client is the client's address (after PROXY protocol, when that comes).
	Client netip.AddrPort
	// Local is the address the client connected to.
	Local netip.AddrPort
	// SessionID identifies the session in logs, on the backend (ID x-session-id) and in the
	// admin API.
	SessionID string
}

// Backend is one IMAP server in a shard. Values are shared between goroutines and
// transactions: never modify one after it has been put in a Table.
type Backend struct {
	// Shard is the name of the shard the backend belongs to.
	Shard string
	// Address is host:port.
	Address string
	// TLS is how imapgate talks to the backend.
	TLS tlsconf.Mode
	// TLSConfig verifies the backend's certificate (server name, CA). Nil means the
	// system roots and the host part of Address as server name.
	TLSConfig *tls.Config
	// ForwardClientIP makes the proxy send Dovecot's ID forwarding keys
	// (x-originating-ip and friends) before logging in, when the backend advertises ID.
	ForwardClientIP bool
	// ProxyProtocol, if not off, makes the proxy send a PROXY protocol header with the
	// client's address as the connection's first bytes, before TLS.
	ProxyProtocol ProxyProtocol
}

// Decision says where a session goes and how to log in there.
type Decision struct {
	// Shard is the shard chosen for the user.
	Shard string
	// Backends are the shard's backends that accept connections, in the order this user
	// should try them: the first is the user's stable choice, the rest are fallbacks for when
	// a backend refuses the connection. Never empty when Route returns no error.
	Backends []*Backend
	// Reason tells how the shard was found: "user", "domain", "wildcard" or "hash".
	Reason string
	// UpstreamUser is the user name to log in with on the backend; empty means the client's
	// own. (Room for Dovecot's destuser and master users.)
	UpstreamUser string
}
