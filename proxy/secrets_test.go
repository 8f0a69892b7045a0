package proxy

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/imapgate/imapgate/routing"

	"go.uber.org/zap/zapcore"
)

// Passwords, and the SASL blobs that carry them, must appear in no log line at any level,
// whether the login succeeds, fails or is cancelled.
func TestNoPasswordInLogs(t *testing.T) {
	const pass = "Tr0ub4dor&3-horse"
	be := startMemBackend(t, map[string]string{"alice@example.com": pass})
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{Name: "imap", AllowPlaintextAuth: true})
	blob := base64.StdEncoding.EncodeToString([]byte("\x00alice@example.com\x00" + pass))
	wrong := base64.StdEncoding.EncodeToString([]byte("\x00alice@example.com\x00" + pass + "x"))

	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com \"" + pass + "x\"\r\n")
	c.expect("a1 NO [AUTHENTICATIONFAILED] Authentication failed.")
	c.send("a2 AUTHENTICATE PLAIN " + wrong + "\r\n")
	c.expect("a2 NO [AUTHENTICATIONFAILED] Authentication failed.")
	c.send("a3 AUTHENTICATE PLAIN\r\n")
	c.expect("+ ")
	c.send(blob + "\r\n")
	c.expect("a3 OK …")
	c.send("a4 LOGOUT\r\n")
	c.expect("* BYE …")
	c.expect("a4 OK …")
	tp.waitLog(t, "session end")

	c = dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("b1 LOGIN {17}\r\n")
	c.expect("+ Ready for literal data")
	c.send("alice@example.com {" + strconv.Itoa(len(pass)) + "+}\r\n" + pass + "\r\n")
	c.expect("b1 OK …")
	c.conn.Close()

	for _, e := range tp.logs.All() {
		if e.Level < zapcore.DebugLevel {
			continue
		}
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + fmt.Sprint(v)
		}
		for _, secret := range []string{pass, blob, wrong, base64.StdEncoding.EncodeToString([]byte(pass))} {
			if strings.Contains(line, secret) {
				t.Fatalf("a log line exposes a secret: %s", line)
			}
		}
	}
	if len(tp.logs.FilterMessage("login").All()) == 0 {
		t.Fatal("no login line logged: the test checked nothing")
	}
}
