package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// Conn is the load generator's IMAP client: one connection, tagged commands written
// by hand, responses read line by line with literals ({n}) skipped and counted, never
// parsed into values. It allocates nothing per command once its buffers exist. A Conn is
// not safe for concurrent use.
type Conn struct {
	nc  net.Conn
	r   *bufio.Reader
	w   *bufio.Writer
	seq uint64
	tag []byte // the current command's tag
	// long collects a response line longer than r's buffer.
	long []byte
}

// ProtocolError is a response the load generator did not expect: a NO or BAD, a missing
// greeting, a BYE.
type ProtocolError struct {
	Op   string
	Line string
}

func (e *ProtocolError) Error() string { return fmt.Sprintf("%s: server said %q", e.Op, e.Line) }

// Dial connects to addr (with TLS from the first byte if tlsConf is set) and reads the
// greeting, which must be "* OK". bufSize is the size of the read and write buffers
// (4096 when 0). ctx bounds the dial, the handshake and the greeting.
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, bufSize int) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if tlsConf != nil {
		tc := tls.Client(nc, tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		nc = tc
	}
	if bufSize <= 0 {
		bufSize = 4096
	}
	c := &Conn{nc: nc, r: bufio.NewReaderSize(nc, bufSize), w: bufio.NewWriterSize(nc, bufSize), tag: make([]byte, 0, 24)}
	line, err := c.readLine()
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !bytes.HasPrefix(line, []byte("* OK")) {
		nc.Close()
		return nil, &ProtocolError{"greeting", string(trimCRLF(line))}
	}
	if _, err := c.skipLiterals(line); err != nil {
		nc.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	_ = nc.SetDeadline(time.Time{})
	return c, nil
}

// SetDeadline sets the deadline for every later read and write.
func (c *Conn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// Close closes the connection without LOGOUT.
func (c *Conn) Close() error { return c.nc.Close() }

// Login sends LOGIN with user and password as quoted strings.
func (c *Conn) Login(user, password string) error {
	c.begin()
	c.w.WriteString("LOGIN ")
	writeQuoted(c.w, user)
	c.w.WriteByte(' ')
	writeQuoted(c.w, password)
	_, err := c.finish("LOGIN")
	return err
}

// Select selects mailbox (read-write); Examine selects it read-only.
func (c *Conn) Select(mailbox string) error { return c.simple("SELECT ", mailbox) }

// Examine selects mailbox read-only.
func (c *Conn) Examine(mailbox string) error { return c.simple("EXAMINE ", mailbox) }

func (c *Conn) simple(verb, mailbox string) error {
	c.begin()
	c.w.WriteString(verb)
	writeQuoted(c.w, mailbox)
	_, err := c.finish(verb[:len(verb)-1])
	return err
}

// Noop sends NOOP and waits for its tagged OK.
func (c *Conn) Noop() error {
	c.begin()
	c.w.WriteString("NOOP")
	_, err := c.finish("NOOP")
	return err
}

// Logout sends LOGOUT and waits for the tagged OK (after the server's BYE). It does not
// close the connection.
func (c *Conn) Logout() error {
	c.begin()
	c.w.WriteString("LOGOUT")
	_, err := c.finish("LOGOUT")
	return err
}

// FetchAll sends FETCH 1:* (BODY.PEEK[]) and returns the number of literal bytes received,
// which is the size of every message body fetched.
func (c *Conn) FetchAll() (int64, error) {
	c.begin()
	c.w.WriteString("FETCH 1:* (BODY.PEEK[])")
	return c.finish("FETCH")
}

// Append appends msg to mailbox with a synchronizing literal.
func (c *Conn) Append(mailbox string, msg []byte) error {
	c.begin()
	c.w.WriteString("APPEND ")
	writeQuoted(c.w, mailbox)
	c.w.WriteString(" {")
	c.w.WriteString(strconv.Itoa(len(msg)))
	c.w.WriteString("}\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	if err := c.waitContinuation("APPEND"); err != nil {
		return err
	}
	c.w.Write(msg)
	_, err := c.finish("APPEND")
	return err
}

// Idle sends IDLE and waits for the server's continuation request: from then on the
// session idles until Done.
func (c *Conn) Idle() error {
	c.begin()
	c.w.WriteString("IDLE\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	return c.waitContinuation("IDLE")
}

// Done ends IDLE and waits for the IDLE command's tagged OK. Updates the server sent
// while idling are read and dropped. An error means the session did not survive.
func (c *Conn) Done() error {
	c.w.WriteString("DONE\r\n")
	if err := c.w.Flush(); err != nil {
		return err
	}
	_, err := c.waitTagged("IDLE")
	return err
}

// begin starts a command: writes a new tag and a space.
func (c *Conn) begin() {
	c.seq++
	c.tag = append(c.tag[:0], 'b')
	c.tag = strconv.AppendUint(c.tag, c.seq, 10)
	c.w.Write(c.tag)
	c.w.WriteByte(' ')
}

// finish ends the command line, sends it and waits for the tagged response.
func (c *Conn) finish(op string) (int64, error) {
	c.w.WriteString("\r\n")
	if err := c.w.Flush(); err != nil {
		return 0, err
	}
	return c.waitTagged(op)
}

// waitTagged reads responses until the one tagged with the current tag, skipping and
// counting literals. Anything but OK there is a *ProtocolError.
func (c *Conn) waitTagged(op string) (int64, error) {
	var lit int64
	for {
		line, err := c.readLine()
		if err != nil {
			return lit, err
		}
		tagged := len(line) > len(c.tag) && line[len(c.tag)] == ' ' && bytes.Equal(line[:len(c.tag)], c.tag)
		if tagged {
			status := line[len(c.tag)+1:]
			if !bytes.HasPrefix(status, []byte("OK")) {
				return lit, &ProtocolError{op, string(trimCRLF(line))}
			}
		}
		n, err := c.skipLiterals(line)
		lit += n
		if err != nil {
			return lit, err
		}
		if tagged {
			return lit, nil
		}
	}
}

// waitContinuation reads responses until a continuation request ("+ ...").
func (c *Conn) waitContinuation(op string) error {
	for {
		line, err := c.readLine()
		if err != nil {
			return err
		}
		if line[0] == '+' {
			return nil
		}
		if len(line) > len(c.tag) && bytes.Equal(line[:len(c.tag)], c.tag) {
			return &ProtocolError{op, string(trimCRLF(line))}
		}
		if _, err := c.skipLiterals(line); err != nil {
			return err
		}
	}
}

// readLine returns the next line including its CRLF. The slice is valid until the next
// read. A connection that ends is io.ErrUnexpectedEOF.
func (c *Conn) readLine() ([]byte, error) {
	line, err := c.r.ReadSlice('\n')
	if err == nil {
		return line, nil
	}
	if errors.Is(err, bufio.ErrBufferFull) {
		c.long = append(c.long[:0], line...)
		for errors.Is(err, bufio.ErrBufferFull) {
			if len(c.long) > 1<<20 {
				return nil, errors.New("response line longer than 1 MiB")
			}
			line, err = c.r.ReadSlice('\n')
			c.long = append(c.long, line...)
		}
		if err == nil {
			return c.long, nil
		}
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return nil, err
}

// skipLiterals handles a response line that announces a literal ("... {123}\r\n"): it
// discards the literal's bytes and reads the line that follows, as long as each one ends
// in another literal. It returns the number of literal bytes skipped.
func (c *Conn) skipLiterals(line []byte) (int64, error) {
	var total int64
	for {
		n, ok := literalSize(line)
		if !ok {
			return total, nil
		}
		d, err := c.r.Discard(int(n))
		total += int64(d)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return total, err
		}
		if line, err = c.readLine(); err != nil {
			return total, err
		}
	}
}

// literalSize parses a literal announced at the end of line: "{n}\r\n" or "{n+}\r\n".
func literalSize(line []byte) (int64, bool) {
	line = trimCRLF(line)
	if len(line) < 3 || line[len(line)-1] != '}' {
		return 0, false
	}
	i := bytes.LastIndexByte(line, '{')
	if i < 0 {
		return 0, false
	}
	digits := line[i+1 : len(line)-1]
	if len(digits) > 0 && digits[len(digits)-1] == '+' {
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 || len(digits) > 12 {
		return 0, false
	}
	var n int64
	for _, d := range digits {
		if d < '0' || d > '9' {
			return 0, false
		}
		n = n*10 + int64(d-'0')
	}
	return n, true
}

func trimCRLF(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// writeQuoted writes s as an IMAP quoted string.
func writeQuoted(w *bufio.Writer, s string) {
	w.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			w.WriteByte('\\')
		}
		w.WriteByte(s[i])
	}
	w.WriteByte('"')
}
