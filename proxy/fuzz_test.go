package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
)

// FuzzPreauth drives the pre-auth state machine with arbitrary client bytes over a real
// loopback connection. Whatever the input, the proxy must answer in well-formed response
// lines, end the connection by itself (never hang) and never panic. Logins are routed to a
// shard with no backend, so every LOGIN ends NO [UNAVAILABLE] and the machine stays before
// login. The seed corpus runs in the normal test suite.
func FuzzPreauth(f *testing.F) {
	for _, seed := range []string{
		"a1 CAPABILITY\r\na2 NOOP\r\na3 LOGOUT\r\n",
		"a1 LOGIN alice secret\r\n",
		"a1 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
		"a1 LOGIN \"al\\\"ice\" \"x\\\\y\"\r\n",
		"a1 ID (\"name\" {3}\r\nfoo \"os\" NIL)\r\n",
		"a1 ID NIL\r\na2 ID ((\"a\"))\r\n",
		"a1 AUTHENTICATE PLAIN\r\n*\r\n",
		"a1 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n",
		"a1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n",
		"a1 AUTHENTICATE PLAIN =\r\n",
		"a1 STARTTLS\r\n",
		"a1 SELECT INBOX\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"a1 LOGIN {99999999999}\r\n",
		"a1 LOGIN {4294967296+}\r\n",
		"\r\n\n\n* NOOP\r\n+ x\r\n",
		"a1 NOOP " + strings.Repeat("(", 20) + "\r\n",
		"a1 LOGIN \x00 \xff\r\n",
	} {
		f.Add([]byte(seed))
	}
	be := routerFunc(func(context.Context, routing.Request) (routing.Decision, error) {
		return routing.Decision{}, &routing.UnavailableError{Reason: "fuzz"}
	})
	tp := startProxy(f, be, ListenerOptions{AllowPlaintextAuth: true, PreAuthTimeout: 5 * time.Second})
	f.Fuzz(func(t *testing.T, input []byte) {
		conn, err := net.Dial("tcp", tp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		go func() {
			_, _ = conn.Write(input)
			_ = conn.(*net.TCPConn).CloseWrite()
		}()
		br := bufio.NewReader(conn)
		first := true
		for {
			line, err := br.ReadString('\n')
			if err == io.EOF && line == "" {
				return
			}
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("proxy did not end the connection")
				}
				return // reset by peer after BYE and close: fine
			}
			if !strings.HasSuffix(line, "\r\n") {
				t.Fatalf("response line without CRLF: %q", line)
			}
			if first && !strings.HasPrefix(line, "* OK [CAPABILITY ") {
				t.Fatalf("bad greeting %q", line)
			}
			first = false
			if line[0] != '*' && line[0] != '+' {
				tag, rest, ok := strings.Cut(line, " ")
				if !ok || !validTag(tag) {
					t.Fatalf("response with a bad tag: %q", line)
				}
				if !strings.HasPrefix(rest, "OK") && !strings.HasPrefix(rest, "NO") && !strings.HasPrefix(rest, "BAD") {
					t.Fatalf("tagged response is not OK/NO/BAD: %q", line)
				}
			}
		}
	})
}
