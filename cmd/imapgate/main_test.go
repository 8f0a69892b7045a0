package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgate/imapgate/config"
	"github.com/imapgate/imapgate/deploy/memdemo"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

// The proxy's closer is one goroutine for the process, alive for up to two batch intervals
// after the last connection closed (proxy/sock.go).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/imapgate/imapgate/proxy.(*batchCloser).run"),
		goleak.IgnoreTopFunction("github.com/imapgate/imapgate/proxy.(*workerPool).work")) // waiting workers (proxy/workers.go)
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a running command.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb syncBuffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		out  string // in stdout or stderr
	}{
		{nil, 2, "Usage:"},
		{[]string{"help"}, 0, "imapgate serve"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"check", "-nope"}, 2, "flag provided but not defined"},
		{[]string{"check", "stray"}, 2, `unexpected argument "stray"`},
		{[]string{"serve", "-h"}, 0, "-config"},
	} {
		code, out, errOut := runCmd(t, tc.args...)
		if code != tc.code || !strings.Contains(out+errOut, tc.out) {
			t.Errorf("imapgate %q: exit %d, output %q; want exit %d and %q", tc.args, code, out+errOut, tc.code, tc.out)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCmd(t, "version")
	if code != 0 || !strings.HasPrefix(out, "imapgate ") || !strings.Contains(out, runtime.Version()) {
		t.Errorf("version: exit %d, %q", code, out)
	}
}

// writeConfig writes doc and a self-signed certificate (cert.pem, key.pem) to a new
// directory and returns the configuration's path.
func writeConfig(t *testing.T, doc string) string {
	t.Helper()
	dir := t.TempDir()
	certPEM, keyPEM, err := tlsconf.SelfSignedPEM()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"cert.pem": certPEM, "key.pem": keyPEM, "imapgate.yaml": []byte(doc)}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "imapgate.yaml")
}

const checkDoc = `listeners:
  - name: imap
    address: 127.0.0.1:0
    tls: starttls
  - name: imaps
    address: 127.0.0.1:0
    tls: implicit
tls:
  cert_file: cert.pem
  key_file: key.pem
routing:
  shards:
    - name: a
      backends:
        - address: 10.0.0.1:143
          forward_client_ip: true
        - address: mail-a.internal:993
          tls: implicit
    - name: b
      weight: 2
      backends:
        - address: 10.0.1.1:143
          tls: starttls
          server_name: mail-b.internal
  users: {"alice@example.com": a}
  domains: {"example.org": b, "*.example.net": b}
`

func TestCheck(t *testing.T) {
	path := writeConfig(t, checkDoc)
	code, out, errOut := runCmd(t, "check", "-config", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		path + ": OK",
		"listeners (2):", "imap ", "imaps ", "STARTTLS, login only after TLS", "implicit TLS",
		"certificate: " + filepath.Join(filepath.Dir(path), "cert.pem"),
		"shards (2):", "a: weight 1, 2 backends", "b: weight 2, 1 backend",
		"10.0.0.1:143", "cleartext, forwards client IP",
		"implicit TLS, verified as mail-a.internal (system roots)",
		"STARTTLS, verified as mail-b.internal",
		"users: 1 pinned", "domains: 2 (1 wildcard)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

func TestCheckErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"invalid", strings.Replace(checkDoc, "tls: implicit\ntls:", "tls: tls\ntls:", 1),
			`imapgate.yaml:7: listeners[1].tls: unknown TLS mode "tls"`},
		{"several problems", strings.Replace(strings.Replace(checkDoc, "10.0.1.1:143", "10.0.1.1", 1), `"example.org": b`, `"example.org": c`, 1),
			"2 problems:\n  "},
		{"missing certificate", strings.Replace(checkDoc, "cert_file: cert.pem", "cert_file: nothere.pem", 1),
			"imapgate.yaml:9: tls.cert_file: "},
		{"missing CA file", strings.Replace(checkDoc, "tls: implicit\n    - name: b", "tls: implicit\n          ca_file: ca.pem\n    - name: b", 1),
			"imapgate.yaml:19: routing.shards[0].backends[1].ca_file: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.doc)
			code, out, errOut := runCmd(t, "check", "-config", path)
			if code != 1 || !strings.HasPrefix(errOut, "imapgate check: ") || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", code, errOut, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q on error", out)
			}
		})
	}
	code, _, errOut := runCmd(t, "check", "-config", filepath.Join(t.TempDir(), "none.yaml"))
	if code != 1 || !strings.Contains(errOut, "none.yaml: no such file") {
		t.Errorf("missing file: exit %d, %q", code, errOut)
	}
}

func TestServeListenFailure(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	doc := "listeners:\n  - {name: free, address: \"127.0.0.1:0\"}\n  - {name: busy, address: \"" + busy.Addr().String() + "\"}\n" +
		"routing: {shards: [{name: a, backends: [{address: \"127.0.0.1:1\"}]}]}\n"
	code, _, errOut := runCmd(t, "serve", "-config", writeConfig(t, doc))
	if code != 1 || !strings.Contains(errOut, "imapgate serve: listener busy: ") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

// login logs in over c and returns the subjects of INBOX's messages.
func login(t *testing.T, c *imapclient.Client, user, password string) []string {
	t.Helper()
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("select: %v", err)
	}
	var all imap.SeqSet
	all.AddRange(1, sel.NumMessages)
	msgs, err := c.Fetch(all, &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	var subjects []string
	for _, m := range msgs {
		subjects = append(subjects, m.Envelope.Subject)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("logout: %v", err)
	}
	return subjects
}

func TestDemo(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	readyc := make(chan *demoInfo, 1)
	done := make(chan error, 1)
	go func() {
		done <- demo(ctx, demoOptions{imap: "127.0.0.1:0", imaps: "127.0.0.1:0", logLevel: "debug"}, &stdout, &stderr,
			func(d *demoInfo) { readyc <- d })
	}()
	var d *demoInfo
	select {
	case d = <-readyc:
	case err := <-done:
		t.Fatalf("demo ended: %v\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not start")
	}

	certPEM, err := os.ReadFile(d.certFile())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := tlsconf.CertPool(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	opts := &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}
	imapAddr, imapsAddr := d.imap.String(), d.imaps.String()
	for _, want := range []string{
		"curl -v --url imap://" + imapAddr + "/INBOX --user alice@example.com:alice",
		"imaps://" + imapsAddr + "/INBOX;UID=1",
		"openssl s_client -quiet -connect " + imapsAddr + " -CAfile " + d.certFile(),
		"openssl s_client -quiet -starttls imap -connect " + imapAddr,
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("instructions lack %q:\n%s", want, stdout.String())
		}
	}

	t.Run("STARTTLS alice on shard a", func(t *testing.T) {
		c, err := imapclient.DialStartTLS(imapAddr, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := login(t, c, "alice@example.com", "alice"); len(got) != memdemo.DemoMessages || got[0] != "Welcome to imapgate" {
			t.Errorf("subjects %q", got)
		}
	})
	t.Run("implicit TLS bob on shard b", func(t *testing.T) {
		c, err := imapclient.DialTLS(imapsAddr, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := login(t, c, "bob@example.org", "bob"); len(got) != memdemo.DemoMessages {
			t.Errorf("subjects %q", got)
		}
	})
	t.Run("plaintext login allowed on the STARTTLS port", func(t *testing.T) {
		c, err := imapclient.DialInsecure(imapAddr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		login(t, c, "dave@example.org", "dave")
	})
	t.Run("wrong password", func(t *testing.T) {
		c, err := imapclient.DialTLS(imapsAddr, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var imapErr *imap.Error
		if err := c.Login("carol@example.com", "wrong").Wait(); !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeAuthenticationFailed {
			t.Errorf("login: %v, want AUTHENTICATIONFAILED", err)
		}
	})
	t.Run("check accepts the demo configuration", func(t *testing.T) {
		code, _, errOut := runCmd(t, "check", "-config", filepath.Join(d.dir, "imapgate.yaml"))
		if code != 0 {
			t.Errorf("check: exit %d: %s", code, errOut)
		}
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("demo: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop")
	}
	// Log lines are written in batches; the last batch at exit.
	for _, want := range []string{"listening", `"shard": "a"`, `"shard": "b"`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, stderr.String())
		}
	}
	if _, err := os.Stat(d.dir); !os.IsNotExist(err) {
		t.Errorf("temporary directory %s left behind: %v", d.dir, err)
	}
}

// TestServe runs a configuration as serve does, against memdemo shards.
func TestServe(t *testing.T) {
	addrA, closeA, err := memdemo.StartShard(map[string]string{"alice@example.com": "alice"}, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer closeA()
	addrB, closeB, err := memdemo.StartShard(map[string]string{"bob@example.org": "bob"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer closeB()
	doc := `listeners:
  - name: imap
    address: 127.0.0.1:0
    allow_plaintext_auth: true
routing:
  shards:
    - name: a
      backends: [{address: "` + addrA + `"}]
    - name: b
      backends: [{address: "` + addrB + `"}]
  users: {"alice@example.com": a}
  domains: {"example.org": b}
`
	cfg, err := config.Load(writeConfig(t, doc))
	if err != nil {
		t.Fatal(err)
	}
	g, err := build(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, g, zap.NewNop(), func(a []net.Addr) { addrc <- a[0] }) }()
	addr := (<-addrc).String()
	for user, n := range map[string]int{"alice@example.com": 2, "bob@example.org": 1} {
		c, err := imapclient.DialInsecure(addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := login(t, c, user, strings.Split(user, "@")[0]); len(got) != n {
			t.Errorf("%s: %d messages, want %d", user, len(got), n)
		}
		c.Close()
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
}
