package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// This file reads client commands before login (RFC 9051 section 2.2.1 and the grammar in
// section 9; RFC 3501 section 9). It is written by hand on bufio rather than with go-imap's
// imapserver, which keeps its own reader and would lose pipelined bytes at the handoff (see
// DESIGN.md). Only what the pre-auth commands use is parsed: atoms, quoted strings, literals
// ({n} and RFC 7888 {n+}), NIL and flat or nested parenthesised lists (ID, RFC 2971).

// argKind tells what a parsed argument was on the wire.
type argKind int

const (
	argAtom   argKind = iota // an atom (RFC 9051 "atom"), never NIL
	argString                // a quoted string or a literal (RFC 9051 "string")
	argNil                   // the atom NIL
	argList                  // a parenthesised list
)

// arg is one parsed argument of a command.
type arg struct {
	kind  argKind
	value string // atom text or string contents
	list  []arg  // for argList
}

// astring reports the value of an argument usable as an astring (RFC 9051: atom or string).
func (a arg) astring() (string, bool) {
	switch a.kind {
	case argAtom, argString:
		return a.value, true
	case argNil:
		// NIL is a valid atom where an astring is expected ("LOGIN NIL pass" is the user
		// named NIL).
		return "NIL", true
	}
	return "", false
}

// command is one complete client command: everything up to the CRLF that ends it, literals
// included.
type command struct {
	tag  string
	name string // upper-cased
	args []arg
}

// protocolError is the client's fault: the command is answered BAD and counted towards the
// limit of bad commands.
type protocolError struct {
	tag string // "*" when the tag could not be read
	msg string
}

func (e *protocolError) Error() string { return e.msg }

// fatalInputError is the client's fault and the stream cannot be resynchronised (an oversize
// line or a non-synchronising literal larger than allowed): answered with BYE, then closed.
type fatalInputError struct{ msg string }

func (e *fatalInputError) Error() string { return e.msg }

// literalRefusedError: a synchronising literal larger than allowed. The client has not sent it
// yet (it waits for our continuation), so a tagged BAD keeps the stream in step.
type literalRefusedError struct {
	tag  string
	size int64
}

func (e *literalRefusedError) Error() string {
	return fmt.Sprintf("literal of %d bytes is too large", e.size)
}

const (
	defaultMaxLineBytes    = 8 << 10
	defaultMaxLiteralBytes = 8 << 10
	// maxCommandLiterals bounds the literals in one command: ID allows 30 pairs (RFC 2971
	// section 3.3), so 64 is plenty.
	maxCommandLiterals = 64
	maxListDepth       = 4
)

// commandReader reads commands from a client before login.
type commandReader struct {
	br *bufio.Reader
	// cont is called before a synchronising literal is read; it must send a continuation
	// request ("+ ...") and flush it.
	cont       func() error
	maxLine    int
	maxLiteral int
}

// readLine reads one line without its line ending, bounded by max bytes. A bare LF ends a
// line too (Dovecot and most servers accept it). The returned slice is a copy.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > max+2 {
			return nil, &fatalInputError{msg: "Line too long"}
		}
		line = append(line, frag...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	if len(line) > max {
		return nil, &fatalInputError{msg: "Line too long"}
	}
	return line, nil
}

// literalAtEnd reports whether line ends with a literal announcement "{n}" or "{n+}"
// (RFC 9051 "literal", RFC 7888 "literal+"), and where it starts.
func literalAtEnd(line []byte) (start int, size int64, sync bool, ok bool) {
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, 0, false, false
	}
	open := bytes.LastIndexByte(line, '{')
	if open < 0 {
		return 0, 0, false, false
	}
	digits := line[open+1 : len(line)-1]
	sync = true
	if len(digits) > 0 && digits[len(digits)-1] == '+' {
		sync = false
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 || len(digits) > 10 {
		return 0, 0, false, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, 0, false, false
		}
	}
	n, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil {
		return 0, 0, false, false
	}
	return open, n, sync, true
}

// read reads one whole command (all its lines and literals) and parses it. A blank line
// returns (nil, nil). Errors of type *protocolError, *literalRefusedError and
// *fatalInputError are the client's fault; others come from the connection.
func (r *commandReader) read() (*command, error) {
	var (
		segs  [][]byte // text between literals
		lits  [][]byte // literal contents; len(lits) == len(segs)-1
		total int
	)
	for {
		line, err := readLine(r.br, r.maxLine-total)
		if err != nil {
			return nil, err
		}
		total += len(line)
		start, size, sync, ok := literalAtEnd(line)
		if !ok {
			segs = append(segs, line)
			break
		}
		if size > int64(r.maxLiteral) || len(lits) >= maxCommandLiterals {
			tag := "*"
			if len(segs) > 0 {
				tag = tagOf(segs[0])
			} else {
				tag = tagOf(line)
			}
			if !sync {
				// RFC 7888 section 4: the bytes are on their way and cannot be skipped
				// safely; the server may reply BAD and close.
				return nil, &fatalInputError{msg: "Literal too large"}
			}
			return nil, &literalRefusedError{tag: tag, size: size}
		}
		segs = append(segs, line[:start])
		if sync {
			if err := r.cont(); err != nil {
				return nil, err
			}
		}
		lit := make([]byte, size)
		if _, err := io.ReadFull(r.br, lit); err != nil {
			return nil, err
		}
		lits = append(lits, lit)
	}
	if len(segs) == 1 && len(bytes.TrimSpace(segs[0])) == 0 {
		return nil, nil
	}
	p := parser{segs: segs, lits: lits}
	return p.command()
}

// tagOf returns the tag of a command line, or "*" when there is none.
func tagOf(line []byte) string {
	i := bytes.IndexByte(line, ' ')
	if i <= 0 {
		return "*"
	}
	if !validTag(string(line[:i])) {
		return "*"
	}
	return string(line[:i])
}

// validTag: RFC 9051 "tag = 1*<any ASTRING-CHAR except "+">".
func validTag(t string) bool {
	if t == "" {
		return false
	}
	for i := 0; i < len(t); i++ {
		if !isAtomChar(t[i]) && t[i] != ']' || t[i] == '+' {
			return false
		}
	}
	return true
}

// isAtomChar: RFC 9051 ATOM-CHAR, any CHAR except atom-specials.
func isAtomChar(c byte) bool {
	if c <= 0x1f || c >= 0x7f {
		return false
	}
	switch c {
	case '(', ')', '{', ' ', '%', '*', '"', '\\', ']':
		return false
	}
	return true
}

// parser turns the lines and literals of one command into a command.
type parser struct {
	segs [][]byte
	lits [][]byte
	seg  int // current segment
	pos  int // position in the current segment
	tag  string
}

func (p *parser) errorf(format string, a ...any) error {
	tag := p.tag
	if tag == "" {
		tag = "*"
	}
	return &protocolError{tag: tag, msg: fmt.Sprintf(format, a...)}
}

func (p *parser) cur() []byte { return p.segs[p.seg] }

// atEnd reports whether the whole command has been consumed.
func (p *parser) atEnd() bool {
	return p.seg == len(p.segs)-1 && p.pos >= len(p.cur())
}

// atLiteral reports whether the current segment is used up and a literal follows.
func (p *parser) atLiteral() bool {
	return p.seg < len(p.segs)-1 && p.pos >= len(p.cur())
}

func (p *parser) peek() (byte, bool) {
	if p.pos < len(p.cur()) {
		return p.cur()[p.pos], true
	}
	return 0, false
}

func (p *parser) command() (*command, error) {
	tag := p.atomRun()
	if !validTag(tag) {
		return nil, p.errorf("Invalid tag")
	}
	p.tag = tag
	if !p.space() {
		return nil, p.errorf("Missing command")
	}
	name := p.atomRun()
	if name == "" {
		return nil, p.errorf("Missing command")
	}
	cmd := &command{tag: tag, name: strings.ToUpper(name)}
	for !p.atEnd() {
		if !p.space() {
			return nil, p.errorf("Expected space between arguments")
		}
		a, err := p.arg(0)
		if err != nil {
			return nil, err
		}
		cmd.args = append(cmd.args, a)
	}
	return cmd, nil
}

// space consumes one SP. A literal announcement is followed directly by its data, so no
// space is expected after a literal except between arguments.
func (p *parser) space() bool {
	if c, ok := p.peek(); ok && c == ' ' {
		p.pos++
		return true
	}
	return false
}

// atomRun consumes a run of atom characters plus ']' (which appears in tags and in
// BODY[...] forms; harmless here).
func (p *parser) atomRun() string {
	start := p.pos
	for p.pos < len(p.cur()) {
		c := p.cur()[p.pos]
		if !isAtomChar(c) && c != ']' && c != '%' && c != '*' {
			break
		}
		p.pos++
	}
	return string(p.cur()[start:p.pos])
}

func (p *parser) arg(depth int) (arg, error) {
	if p.atLiteral() {
		lit := p.lits[p.seg]
		p.seg++
		p.pos = 0
		return arg{kind: argString, value: string(lit)}, nil
	}
	c, ok := p.peek()
	if !ok {
		return arg{}, p.errorf("Missing argument")
	}
	switch c {
	case '"':
		return p.quoted()
	case '(':
		if depth >= maxListDepth {
			return arg{}, p.errorf("Lists nested too deep")
		}
		p.pos++
		l := arg{kind: argList}
		for {
			if c, ok := p.peek(); ok && c == ')' {
				p.pos++
				return l, nil
			}
			if len(l.list) > 0 && !p.space() {
				return arg{}, p.errorf("Expected space or ) in list")
			}
			if p.atEnd() {
				return arg{}, p.errorf("Unterminated list")
			}
			a, err := p.arg(depth + 1)
			if err != nil {
				return arg{}, err
			}
			l.list = append(l.list, a)
		}
	}
	a := p.atomRun()
	if a == "" {
		return arg{}, p.errorf("Unexpected character %q", c)
	}
	if strings.EqualFold(a, "NIL") {
		return arg{kind: argNil}, nil
	}
	return arg{kind: argAtom, value: a}, nil
}

// quoted reads a quoted string (RFC 9051 "quoted"): \" and \\ are the only escapes. 8-bit
// bytes are accepted (UTF-8 user names, RFC 6855), CR and LF cannot occur inside a line.
func (p *parser) quoted() (arg, error) {
	p.pos++ // opening quote
	var b strings.Builder
	line := p.cur()
	for p.pos < len(line) {
		c := line[p.pos]
		p.pos++
		switch c {
		case '"':
			return arg{kind: argString, value: b.String()}, nil
		case '\\':
			if p.pos >= len(line) {
				return arg{}, p.errorf("Unterminated quoted string")
			}
			e := line[p.pos]
			if e != '"' && e != '\\' {
				return arg{}, p.errorf("Invalid escape in quoted string")
			}
			b.WriteByte(e)
			p.pos++
		case 0:
			return arg{}, p.errorf("NUL in quoted string")
		default:
			b.WriteByte(c)
		}
	}
	return arg{}, p.errorf("Unterminated quoted string")
}
