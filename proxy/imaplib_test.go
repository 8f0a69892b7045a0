package proxy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// A real mail client: Python's imaplib logs in through the proxy (cleartext with plaintext
// auth allowed, STARTTLS, and implicit TLS), lists mailboxes and fetches a message.
const imaplibScript = `
import imaplib, ssl, sys
host, port, mode, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
if mode == "implicit":
    ctx = ssl.create_default_context(cafile=cafile)
    m = imaplib.IMAP4_SSL(host, port, ssl_context=ctx)
else:
    m = imaplib.IMAP4(host, port)
    if mode == "starttls":
        m.starttls(ssl.create_default_context(cafile=cafile))
typ, _ = m.login("alice@example.com", "alice")
assert typ == "OK", typ
typ, boxes = m.list()
assert typ == "OK" and any(b'INBOX' in b for b in boxes), boxes
typ, data = m.select("INBOX")
assert typ == "OK", data
typ, data = m.fetch("1", "(RFC822)")
assert typ == "OK", data
body = data[0][1]
assert b"Subject:" in body, body
m.logout()
print("imaplib-ok", len(body))
`

func TestPythonImaplib(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("python3 not installed (deploy/test.sh installs it)")
		}
		t.Skip("python3 not installed")
	}
	for _, mode := range []tlsconf.Mode{tlsconf.None, tlsconf.STARTTLS, tlsconf.Implicit} {
		t.Run(mode.String(), func(t *testing.T) {
			be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
			tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
				ListenerOptions{TLS: mode, AllowPlaintextAuth: mode == tlsconf.None})
			ca := filepath.Join(t.TempDir(), "ca.pem")
			if err := os.WriteFile(ca, tp.cert, 0o600); err != nil {
				t.Fatal(err)
			}
			host, port, _ := strings.Cut(tp.addr, ":")
			out, err := exec.Command(python, "-c", imaplibScript, host, port, mode.String(), ca).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "imaplib-ok") {
				t.Fatalf("imaplib: %v\n%s", err, out)
			}
		})
	}
}
