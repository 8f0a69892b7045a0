package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imapgate/imapgate/deploy/memdemo"
	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Test harness: real in-process IMAP backends (go-imap's imapmemserver), a real proxy on
// loopback, and a transcript client that reads and writes raw protocol lines.

// memBackend is one imapmemserver shard on 127.0.0.1:0 (see package memdemo).
type memBackend struct {
	addr  string
	shard *memdemo.Shard
}

// startMemBackend starts an in-process IMAP server with the given users (name → password),
// each with an INBOX holding three sample messages.
func startMemBackend(t testing.TB, users map[string]string, opts ...func(*memdemo.ShardOptions)) *memBackend {
	t.Helper()
	so := memdemo.ShardOptions{Users: users, Messages: 3, Logger: newTestLogger(t)}
	for _, f := range opts {
		f(&so)
	}
	sh, err := memdemo.StartShardWith(context.Background(), so)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Close() })
	return &memBackend{addr: sh.Addr, shard: sh}
}

// testLogger passes a backend's log lines to the test's log while the test runs. The
// backend's connection goroutines may outlive the test by a little (a proxy's close(2) comes
// in batches, up to 100 ms later: sock.go); their lines after the end are dropped, as testing
// forbids Logf then.
type testLogger struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func newTestLogger(t testing.TB) *testLogger {
	l := &testLogger{t: t}
	t.Cleanup(func() {
		l.mu.Lock()
		l.done = true
		l.mu.Unlock()
	})
	return l
}

func (l *testLogger) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.t.Logf("backend: "+format, args...)
	}
}

// routerFunc adapts a function to Router.
type routerFunc func(ctx context.Context, req routing.Request) (routing.Decision, error)

func (f routerFunc) Route(ctx context.Context, req routing.Request) (routing.Decision, error) {
	return f(ctx, req)
}

// toBackends routes every user to one shard made of the given backends.
func toBackends(bes ...*routing.Backend) Router {
	return routerFunc(func(ctx context.Context, req routing.Request) (routing.Decision, error) {
		return routing.Decision{Shard: "a", Backends: bes, Reason: "test"}, nil
	})
}

// testProxy is a running proxy with its logs captured.
type testProxy struct {
	srv  *Server
	addr string
	logs *observer.ObservedLogs
	cert []byte // PEM of the listener certificate, when TLS is on
	tls  *tls.Config
}

// startProxy runs a Server with one listener configured by lo on 127.0.0.1:0. If lo uses TLS
// and has no TLSConfig, a self-signed certificate for 127.0.0.1 is made.
func startProxy(t testing.TB, router Router, lo ListenerOptions, opts ...func(*Options)) *testProxy {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	o := Options{Router: router, Logger: zap.New(core), ConnectTimeout: 5 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	tp := &testProxy{logs: logs}
	if lo.TLS != tlsconf.None && lo.TLSConfig == nil {
		cfg, pem, err := tlsconf.SelfSigned("127.0.0.1", "localhost")
		if err != nil {
			t.Fatal(err)
		}
		lo.TLSConfig, tp.cert = cfg, pem
	}
	if tp.cert != nil {
		pool, err := tlsconf.CertPool(tp.cert)
		if err != nil {
			t.Fatal(err)
		}
		tp.tls = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	}
	ln, err := Listen(context.Background(), "127.0.0.1:0") // as imapgate serve listens
	if err != nil {
		t.Fatal(err)
	}
	tp.srv = New(o)
	tp.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tp.srv.Serve(ln, lo)
	}()
	t.Cleanup(func() {
		tp.srv.Close()
		<-done
	})
	return tp
}

// transcript is a raw protocol client: send writes bytes as they are, expect reads one line
// and compares it.
type transcript struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
}

func dialTranscript(t testing.TB, addr string) *transcript {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return newTranscript(t, c)
}

func newTranscript(t testing.TB, c net.Conn) *transcript {
	_ = c.SetDeadline(time.Now().Add(20 * time.Second)) // a hang fails the test, not the suite
	return &transcript{t: t, conn: c, br: bufio.NewReader(c)}
}

func (c *transcript) send(s string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(s)); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

// line reads one line without CRLF.
func (c *transcript) line() string {
	c.t.Helper()
	l, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

// expect reads one line and checks it. A trailing "…" in want matches any rest of line.
func (c *transcript) expect(want string) string {
	c.t.Helper()
	got := c.line()
	if rest, ok := strings.CutSuffix(want, "…"); ok {
		if !strings.HasPrefix(got, rest) {
			c.t.Fatalf("got  %q\nwant %q", got, want)
		}
		return got
	}
	if got != want {
		c.t.Fatalf("got  %q\nwant %q", got, want)
	}
	return got
}

// expectClosed checks that the server closed the connection.
func (c *transcript) expectClosed() {
	c.t.Helper()
	l, err := c.br.ReadString('\n')
	if err == nil {
		c.t.Fatalf("expected the connection to close, got %q", l)
	}
}

// startTLS upgrades the transcript connection after the server's OK to STARTTLS.
func (c *transcript) startTLS(cfg *tls.Config) {
	c.t.Helper()
	tc := tls.Client(c.conn, cfg)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.br = bufio.NewReader(tc)
}

// logText returns all captured log messages and fields as one string, for searching.
func (tp *testProxy) logText() string {
	var b strings.Builder
	for _, e := range tp.logs.All() {
		b.WriteString(e.Message)
		for k, v := range e.ContextMap() {
			fmt.Fprintf(&b, " %s=%v", k, v)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// waitLog waits until a log entry with the message appears (no sleeping: polls the observer
// on a ticker, bounded).
func (tp *testProxy) waitLog(t testing.TB, msg string) observer.LoggedEntry {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if es := tp.logs.FilterMessage(msg).All(); len(es) > 0 {
			return es[0]
		}
		select {
		case <-deadline:
			t.Fatalf("no log line %q; logs:\n%s", msg, tp.logText())
		case <-tick.C:
		}
	}
}

func netListen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
