package proxy

import (
	"bufio"
	"io"
	"strings"
)

// This file reads the backend's responses during the upstream login (RFC 9051 section 7):
// untagged lines ("* ..."), continuation requests ("+ ...") and tagged completions
// ("tag OK|NO|BAD [code] text"). Literals inside responses (a backend may send ID values as
// literals) are read whole and kept inside the line.

// maxResponseBytes bounds one backend response during login, literals included.
const maxResponseBytes = 64 << 10

// response is one backend response line with its literals inlined.
type response struct {
	raw    []byte // the whole response without its final CRLF, literals inlined
	tag    string // "*" for untagged, "+" for continuation, else the tag
	status string // OK, NO, BAD, BYE, PREAUTH (upper-cased) when it is a status response
	code   string // the response code's text without brackets, e.g. "CAPABILITY IMAP4rev1 ..."
	text   string // human-readable text after the code
}

// readResponse reads one response. Errors are the backend's fault (or the network's).
func readResponse(br *bufio.Reader) (*response, error) {
	var raw []byte
	for {
		line, err := readLine(br, maxResponseBytes-len(raw))
		if err != nil {
			if _, ok := err.(*fatalInputError); ok {
				return nil, &backendProtocolError{msg: "response too long"}
			}
			return nil, err
		}
		raw = append(raw, line...)
		_, size, _, ok := literalAtEnd(line)
		if !ok {
			break
		}
		if size > int64(maxResponseBytes-len(raw)) {
			return nil, &backendProtocolError{msg: "literal in response too large"}
		}
		raw = append(raw, "\r\n"...)
		start := len(raw)
		raw = append(raw, make([]byte, size)...)
		if _, err := io.ReadFull(br, raw[start:]); err != nil {
			return nil, err
		}
	}
	return parseResponse(raw), nil
}

// parseResponse splits a response line into tag, status, code and text. It never fails:
// what it cannot recognise stays in raw with an empty status.
func parseResponse(raw []byte) *response {
	r := &response{raw: raw}
	s := string(raw)
	tag, rest, _ := strings.Cut(s, " ")
	r.tag = tag
	if tag == "+" {
		r.text = rest
		return r
	}
	status, rest, _ := strings.Cut(rest, " ")
	switch up := strings.ToUpper(status); up {
	case "OK", "NO", "BAD", "BYE", "PREAUTH":
		r.status = up
	default:
		// An untagged data response such as "* CAPABILITY ..." or "* ID (...)".
		r.text = strings.TrimPrefix(s, tag+" ")
		return r
	}
	if strings.HasPrefix(rest, "[") {
		if end := strings.IndexByte(rest, ']'); end > 0 {
			r.code = rest[1:end]
			rest = strings.TrimPrefix(rest[end+1:], " ")
		}
	}
	r.text = rest
	return r
}

// codeName returns the atom of a response code ("CAPABILITY" for "CAPABILITY IMAP4rev1 …").
func (r *response) codeName() string {
	name, _, _ := strings.Cut(r.code, " ")
	return strings.ToUpper(name)
}

// untaggedData returns the name of an untagged data response ("CAPABILITY", "ID") and its
// arguments, or "" if r is not one.
func (r *response) untaggedData() (name, args string) {
	if r.tag != "*" || r.status != "" {
		return "", ""
	}
	name, args, _ = strings.Cut(r.text, " ")
	return strings.ToUpper(name), args
}

// capSet is a set of capabilities as a server advertised them; names are compared
// case-insensitively (RFC 9051 section 7.2.2: capability names are atoms, case-insensitive).
type capSet struct {
	list []string // as advertised, in order
}

func parseCaps(s string) capSet {
	return capSet{list: strings.Fields(s)}
}

func (c capSet) has(name string) bool {
	for _, v := range c.list {
		if strings.EqualFold(v, name) {
			return true
		}
	}
	return false
}

func (c capSet) known() bool { return len(c.list) > 0 }

func (c capSet) String() string { return strings.Join(c.list, " ") }

// capsFrom returns the capabilities carried by a response: a [CAPABILITY …] code or an
// untagged CAPABILITY response. An empty list carries none (the list must hold IMAP4rev2,
// RFC 9051 section 7.2.2, or IMAP4rev1 from an RFC 3501 server), so ok is false for it and
// the caller asks.
func capsFrom(r *response) (caps capSet, ok bool) {
	if r.codeName() == "CAPABILITY" {
		_, list, _ := strings.Cut(r.code, " ")
		caps = parseCaps(list)
	} else if name, args := r.untaggedData(); name == "CAPABILITY" {
		caps = parseCaps(args)
	}
	return caps, caps.known()
}

// isCapability reports whether r is a capability response: a [CAPABILITY …] code or an
// untagged CAPABILITY response, with a list or (malformed) without one.
func (r *response) isCapability() bool {
	name, _ := r.untaggedData()
	return name == "CAPABILITY" || r.codeName() == "CAPABILITY"
}

// quoteOK reports whether s can be sent as an IMAP quoted string (RFC 9051 "quoted": 7-bit
// TEXT-CHARs; 8-bit only with UTF8=ACCEPT, which we do not assume before login).
func quoteOK(s string) bool {
	if len(s) > 1024 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == 0 || c == '\r' || c == '\n' || c >= 0x80 {
			return false
		}
	}
	return true
}

// appendQuoted appends s as a quoted string. The caller checked quoteOK.
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return append(b, '"')
}

// isStatus reports whether r is the tagged completion for tag.
func (r *response) isTagged(tag string) bool {
	return r.tag == tag && r.status != ""
}
