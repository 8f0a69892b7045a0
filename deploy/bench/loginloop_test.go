//go:build linux

package bench

import (
	"bufio"
	"context"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/deploy/dovecot"
)

// TestLoginLoopDovecot runs login-loop in front of a real Dovecot's haproxy listener, with
// the client on 127.0.0.2: Dovecot logs the client's address from the PROXY header, the
// client gets Dovecot's OK under its own tag, and the session goes on through the relay.
// A wrong password gets Dovecot's NO under the client's tag and the connection's end; a
// first command other than LOGIN ends the connection.
func TestLoginLoopDovecot(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Dovecot")
	}
	if _, ok := dovecot.Available(); !ok {
		t.Skip("dovecot is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	inst, err := dovecot.Start(ctx, dovecot.Options{Dir: t.TempDir(), Users: map[string]string{"alice": `pw "q" \x`}})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	addr, stop := startTestRelay(t, func(ctx context.Context, ln *net.TCPListener, to string) error {
		return RunLoopLogin(ctx, ln, to, true)
	}, inst.HAProxyAddr)
	defer stop()

	t.Run("login", func(t *testing.T) {
		s := dialTranscript(t, addr)
		s.expect(`^\* OK \[CAPABILITY IMAP4rev1 AUTH=PLAIN\] login-loop ready$`)
		// SELECT pipelined after LOGIN: it waits in the loop until the login is done.
		s.send("a1 LOGIN alice \"pw \\\"q\\\" \\\\x\"\r\na2 SELECT INBOX\r\n")
		s.expect(`^a1 OK \[CAPABILITY IMAP4rev1 .*\] Logged in$`)
		s.expectUntil(`^a2 OK \[READ-WRITE\] Select completed`)
		s.send("a3 LOGOUT\r\n")
		s.expect(`^\* BYE Logging out$`)
		s.expect(`^a3 OK Logout completed`)
		s.expectEOF()
		if log, err := inst.WaitLog(ctx, regexp.MustCompile(`imap-login: Info: Login: user=<alice>, method=PLAIN, rip=127\.0\.0\.2, `)); err != nil {
			t.Fatalf("%v:\n%s", err, log)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		s := dialTranscript(t, addr)
		s.expect(`^\* OK `)
		s.send("b1 LOGIN alice wrong\r\n")
		s.expect(`^b1 NO \[AUTHENTICATIONFAILED\] `)
		s.expectEOF()
	})
	t.Run("not LOGIN", func(t *testing.T) {
		s := dialTranscript(t, addr)
		s.expect(`^\* OK `)
		s.send("c1 CAPABILITY\r\n")
		s.expectEOF()
	})
}

func TestParseLoginLine(t *testing.T) {
	for _, tc := range []struct {
		line, tag, user, pass string
		ok                    bool
	}{
		{"a1 LOGIN alice secret\r\n", "a1", "alice", "secret", true},
		{"a1 login \"alice\" \"pw \\\"q\\\" \\\\x\"\r\n", "a1", "alice", `pw "q" \x`, true},
		{"a1 LOGIN \"\" \"\"\r\n", "a1", "", "", true},
		{"a1 LOGIN alice secret", "", "", "", false},           // no CRLF
		{"a1 LOGIN alice\r\n", "", "", "", false},              // no password
		{"a1 LOGIN alice secret extra\r\n", "", "", "", false}, // a third argument
		{"a1 LOGIN alice {6}\r\n", "", "", "", false},          // literals are not taken
		{"a1 LOGIN \"alice secret\r\n", "", "", "", false},     // unterminated quote
		{"a1 LOGIN \"al\\ice\" secret\r\n", "", "", "", false}, // \ escapes only \ and "
		{"a1 AUTHENTICATE PLAIN\r\n", "", "", "", false},       // not LOGIN
		{" LOGIN alice secret\r\n", "", "", "", false},         // no tag
		{"a1 LOGIN alice  secret\r\n", "", "", "", false},      // two spaces
		{"a1 LOGIN \"alice\"secret\r\n", "", "", "", false},    // no space after the quote
	} {
		tag, user, pass, ok := parseLoginLine([]byte(tc.line))
		if ok != tc.ok || string(tag) != tc.tag || string(user) != tc.user || string(pass) != tc.pass {
			t.Errorf("parseLoginLine(%q) = %q %q %q %v; want %q %q %q %v", tc.line, tag, user, pass, ok, tc.tag, tc.user, tc.pass, tc.ok)
		}
	}
}

// FuzzLoginLine: parseLoginLine never panics, and what it takes quotes back (as the load
// generator writes it) to a line it parses to the same tag, user and password.
func FuzzLoginLine(f *testing.F) {
	for _, seed := range []string{
		"a1 LOGIN alice secret\r\n", "a1 LOGIN \"a\\\"b\" \"\\\\\"\r\n", "a1 LOGIN \"\" x\r\n",
		"a1 LOGIN {3}\r\n", "a1 LOGIN \"\\", "\r\n", "a LOGIN a a a\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		tag, user, pass, ok := parseLoginLine(line)
		if !ok {
			return
		}
		var b strings.Builder
		w := bufio.NewWriter(&b)
		w.WriteString(string(tag) + " LOGIN ")
		writeQuoted(w, string(user))
		w.WriteByte(' ')
		writeQuoted(w, string(pass))
		w.WriteString("\r\n")
		w.Flush()
		tag2, user2, pass2, ok2 := parseLoginLine([]byte(b.String()))
		if !ok2 || string(tag2) != string(tag) || string(user2) != string(user) || string(pass2) != string(pass) {
			t.Fatalf("%q parsed to %q %q %q; quoted back %q parsed to %q %q %q %v", line, tag, user, pass, b.String(), tag2, user2, pass2, ok2)
		}
	})
}

// transcript is a client connection read line by line, for tests written as transcripts.
type transcript struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// dialTranscript connects to addr from 127.0.0.2, with a deadline of 10 s.
func dialTranscript(t *testing.T, addr string) *transcript {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &transcript{t: t, c: c, r: bufio.NewReader(c)}
}

func (s *transcript) send(b string) {
	s.t.Helper()
	if _, err := io.WriteString(s.c, b); err != nil {
		s.t.Fatal(err)
	}
}

// expect reads one line, which must match re.
func (s *transcript) expect(re string) {
	s.t.Helper()
	line, err := s.r.ReadString('\n')
	if err != nil {
		s.t.Fatalf("read: %q, %v; want %s", line, err, re)
	}
	if line = strings.TrimSuffix(line, "\r\n"); !regexp.MustCompile(re).MatchString(line) {
		s.t.Fatalf("got %q, want %s", line, re)
	}
}

// expectUntil reads lines until one matches re.
func (s *transcript) expectUntil(re string) {
	s.t.Helper()
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("read: %q, %v; want %s", line, err, re)
		}
		if regexp.MustCompile(re).MatchString(strings.TrimSuffix(line, "\r\n")) {
			return
		}
	}
}

// expectEOF: the server closed the connection, with nothing more before it.
func (s *transcript) expectEOF() {
	s.t.Helper()
	if rest, err := io.ReadAll(s.r); err != nil || len(rest) != 0 {
		s.t.Fatalf("read %q, %v; want the connection's end", rest, err)
	}
}
