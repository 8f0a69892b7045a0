// Package tlsconf builds the TLS configurations imapgate uses on both sides of a session:
// the server side offered to clients (STARTTLS on port 143, implicit TLS on port 993) and the
// client side used to reach backends (STARTTLS or implicit TLS, certificates verified by
// default). It also makes self-signed certificates for `imapgate demo` and for tests.
//
// It does not open connections, negotiate STARTTLS on the wire or decide when TLS is used:
// the proxy package does that. Certificate reload, SNI certificates and mTLS to backends come
// later (see ROADMAP) and belong here.
package tlsconf

import "fmt"

// Mode says how TLS is used on one connection.
type Mode int

const (
	// None: cleartext for the whole connection.
	None Mode = iota
	// STARTTLS: cleartext greeting, then the STARTTLS command upgrades the connection
	// (RFC 9051 section 6.2.1, RFC 3501 section 6.2.1).
	STARTTLS
	// Implicit: TLS from the first byte (RFC 8314 section 3.3, port 993).
	Implicit
)

// String returns the configuration spelling: "none", "starttls" or "implicit".
func (m Mode) String() string {
	switch m {
	case None:
		return "none"
	case STARTTLS:
		return "starttls"
	case Implicit:
		return "implicit"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode reads the configuration spelling of a Mode. The empty string is None.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "none":
		return None, nil
	case "starttls":
		return STARTTLS, nil
	case "implicit":
		return Implicit, nil
	}
	return None, fmt.Errorf("unknown TLS mode %q (want none, starttls or implicit)", s)
}
