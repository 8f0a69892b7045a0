package proxy

import "fmt"

// Errors on the upstream side, typed by who is at fault. The client never sees their text:
// it gets a uniform NO [AUTHENTICATIONFAILED] or NO [UNAVAILABLE] (RFC 5530 codes), and the
// log line gets the detail.

// backendUnavailableError: the backend could not be reached or did not greet us properly
// (refused, timed out, TLS failure, BYE greeting). The next backend of the shard is tried.
type backendUnavailableError struct {
	addr string
	err  error
}

func (e *backendUnavailableError) Error() string {
	return fmt.Sprintf("backend %s unavailable: %v", e.addr, e.err)
}

func (e *backendUnavailableError) Unwrap() error { return e.err }

// backendProtocolError: the backend said something a correct IMAP server would not (or
// something that smells of an attack, such as bytes after its STARTTLS OK). The backend's
// fault; the client gets NO [UNAVAILABLE].
type backendProtocolError struct {
	addr string
	msg  string
}

func (e *backendProtocolError) Error() string {
	if e.addr == "" {
		return "backend protocol error: " + e.msg
	}
	return fmt.Sprintf("backend %s protocol error: %s", e.addr, e.msg)
}

// authFailedError: the backend refused the credentials (tagged NO to LOGIN or
// AUTHENTICATE). The user's fault, or the password's; the client may retry.
type authFailedError struct {
	// code is the backend's response code, if any (e.g. AUTHENTICATIONFAILED, UNAVAILABLE).
	code string
	// text is the backend's text, for the log only.
	text string
}

func (e *authFailedError) Error() string {
	if e.code != "" {
		return fmt.Sprintf("backend refused login: [%s] %s", e.code, e.text)
	}
	return "backend refused login: " + e.text
}

// proxyFaultError: the proxy could not do its own part of the upstream login, such as making
// the PROXY header a backend asks for. Neither the client's fault nor the backend's; the
// client gets NO [UNAVAILABLE], the next backend of the shard is tried, and the log line and
// the "error" login result say what failed.
type proxyFaultError struct {
	op  string
	err error
}

func (e *proxyFaultError) Error() string { return e.op + ": " + e.err.Error() }

func (e *proxyFaultError) Unwrap() error { return e.err }
