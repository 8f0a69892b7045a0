package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/imapgate/imapgate/deploy/dovecot"
	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// End-to-end tests with real Dovecot: two instances on loopback as shards a and b
// (passwd-file users, maildir, login_trusted_networks = 127.0.0.0/8), the real proxy in front.

// dovecotShards is shards a (alice) and b (bob) on two Dovecots, the backends reached with
// the given TLS mode.
type dovecotShards struct {
	a, b  *dovecot.Instance
	table *routing.Table
}

func startDovecotShards(t *testing.T, backendTLS tlsconf.Mode) *dovecotShards {
	var a, b *dovecot.Instance
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a = startDovecotNoFatal(t, map[string]string{"alice@example.com": "alice-pw"})
	}()
	go func() { defer wg.Done(); b = startDovecotNoFatal(t, map[string]string{"bob@example.org": "bob-pw"}) }()
	wg.Wait()
	if a == nil || b == nil {
		t.FailNow()
	}
	ds := &dovecotShards{a: a, b: b}
	ds.table = ds.tableFor(t, backendTLS)
	return ds
}

// startDovecotNoFatal is startDovecot for use in a goroutine (Fatal must run on the test's).
func startDovecotNoFatal(t *testing.T, users map[string]string) *dovecot.Instance {
	return startDovecotWith(t, dovecot.Options{Users: users})
}

// startDovecotWith starts a Dovecot for this test with o (Dir is the test's), or reports the
// error and returns nil.
func startDovecotWith(t *testing.T, o dovecot.Options) *dovecot.Instance {
	if _, ok := dovecot.Available(); !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o.Dir = t.TempDir()
	inst, err := dovecot.Start(ctx, o)
	if err != nil {
		t.Error(err)
		return nil
	}
	t.Cleanup(func() { inst.Close() })
	return inst
}

func (ds *dovecotShards) tableFor(t *testing.T, mode tlsconf.Mode) *routing.Table {
	backend := func(inst *dovecot.Instance) *routing.Backend {
		addr := inst.Addr
		if mode == tlsconf.Implicit {
			addr = inst.TLSAddr
		}
		return &routing.Backend{Address: addr, TLS: mode, ForwardClientIP: true,
			TLSConfig: &tls.Config{RootCAs: inst.RootCAs, ServerName: inst.ServerName}}
	}
	table, err := routing.NewTable(routing.TableSpec{
		Shards: []routing.ShardSpec{
			{Name: "a", Backends: []*routing.Backend{backend(ds.a)}},
			{Name: "b", Backends: []*routing.Backend{backend(ds.b)}},
		},
		Users:   map[string]string{"alice@example.com": "a"},
		Domains: map[string]string{"example.org": "b"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return table
}

func requireDovecot(t *testing.T) {
	if _, ok := dovecot.Available(); !ok {
		if os.Getenv("CI") != "" {
			t.Fatal("dovecot is not installed (deploy/test.sh installs it)")
		}
		t.Skip("dovecot is not installed; run deploy/test.sh")
	}
}

// Every combination of TLS on the client side and on the backend side, LOGIN and
// AUTHENTICATE PLAIN, each user on its own shard.
func TestDovecotEndToEnd(t *testing.T) {
	requireDovecot(t)
	for _, backendTLS := range []tlsconf.Mode{tlsconf.None, tlsconf.STARTTLS, tlsconf.Implicit} {
		t.Run("backend "+backendTLS.String(), func(t *testing.T) {
			ds := startDovecotShards(t, backendTLS)
			for _, clientTLS := range []tlsconf.Mode{tlsconf.None, tlsconf.STARTTLS, tlsconf.Implicit} {
				t.Run("client "+clientTLS.String(), func(t *testing.T) {
					tp := startProxy(t, &routing.Static{Table: ds.table},
						ListenerOptions{Name: "l", TLS: clientTLS, AllowPlaintextAuth: clientTLS == tlsconf.None})
					for i, u := range []struct{ user, pass, shard string }{
						{"alice@example.com", "alice-pw", "a"},
						{"bob@example.org", "bob-pw", "b"},
					} {
						login := func() *tclient {
							c := dialClient(t, tp, clientTLS, nil)
							var err error
							if i == 0 {
								err = c.Login(u.user, u.pass).Wait()
							} else {
								err = c.Authenticate(sasl.NewPlainClient("", u.user, u.pass))
							}
							if err != nil {
								t.Fatalf("login %s: %v", u.user, err)
							}
							return c
						}
						c := login()
						if !c.Caps().Has(imap.CapIdle) {
							t.Errorf("after login the client does not see Dovecot's capabilities: %v", c.Caps())
						}
						appendMessage(t, c, "Subject: seed\r\n\r\nseed\r\n")
						workout(t, c, login, u.user)
						for _, e := range tp.logs.FilterMessage("login").All() {
							if m := e.ContextMap(); m["user"] == u.user && m["shard"] != u.shard {
								t.Errorf("%s landed on shard %v, want %s", u.user, m["shard"], u.shard)
							}
						}
					}
				})
			}
		})
	}
}

func TestDovecotWrongPassword(t *testing.T) {
	requireDovecot(t)
	ds := startDovecotShards(t, tlsconf.None)
	tp := startProxy(t, &routing.Static{Table: ds.table}, ListenerOptions{AllowPlaintextAuth: true})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com wrong\r\n")
	c.expect("a1 NO [AUTHENTICATIONFAILED] Authentication failed.")
	c.send("a2 LOGIN alice@example.com alice-pw\r\n")
	c.expect("a2 OK [CAPABILITY IMAP4rev1 …")
}

// Dovecot must log the client's address, not the proxy's: forwarded through ID, or in a PROXY
// protocol header (v1 or v2) sent to Dovecot's haproxy listener. The client connects from
// 127.0.0.2 (still loopback) while the proxy dials Dovecot from 127.0.0.1.
func TestDovecotSeesClientAddress(t *testing.T) {
	requireDovecot(t)
	inst := startDovecot(t, map[string]string{"alice@example.com": "alice-pw"})
	for _, tc := range []struct {
		name string
		be   routing.Backend
		// idSession: the ID forwarding gives Dovecot the proxy's session id too.
		idSession bool
	}{
		{"ID", routing.Backend{Address: inst.Addr, ForwardClientIP: true}, true},
		{"PROXY v1", routing.Backend{Address: inst.HAProxyAddr, ProxyProtocol: routing.ProxyProtocolV1}, false},
		{"PROXY v2", routing.Backend{Address: inst.HAProxyAddr, ProxyProtocol: routing.ProxyProtocolV2}, false},
		{"PROXY v2 and ID", routing.Backend{Address: inst.HAProxyAddr, ProxyProtocol: routing.ProxyProtocolV2, ForwardClientIP: true}, true},
		// The header goes before STARTTLS's cleartext greeting, as before any TLS.
		{"PROXY v2, STARTTLS", routing.Backend{Address: inst.HAProxyAddr, ProxyProtocol: routing.ProxyProtocolV2, TLS: tlsconf.STARTTLS,
			TLSConfig: &tls.Config{RootCAs: inst.RootCAs, ServerName: inst.ServerName}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := tc.be
			table, err := routing.NewTable(routing.TableSpec{Shards: []routing.ShardSpec{{Name: "a", Backends: []*routing.Backend{&be}}}})
			if err != nil {
				t.Fatal(err)
			}
			tp := startProxy(t, &routing.Static{Table: table}, ListenerOptions{AllowPlaintextAuth: true})
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
			conn, err := d.Dial("tcp", tp.addr)
			if err != nil {
				t.Skipf("cannot dial from 127.0.0.2: %v", err)
			}
			t.Cleanup(func() { conn.Close() })
			c := newTranscript(t, conn)
			c.expect(greetPlainAllowed)
			c.send("a1 LOGIN alice@example.com alice-pw\r\n")
			c.expect("a1 OK …")
			c.send("a2 LOGOUT\r\n")
			c.expect("* BYE …")
			c.expect("a2 OK …")
			session := tp.waitLog(t, "login").ContextMap()["session"].(string)
			port := fmt.Sprint(conn.LocalAddr().(*net.TCPAddr).Port)

			line := dovecotLoginLine(t, inst, port)
			want := []string{"rip=127.0.0.2", "rport=" + port}
			if tc.idSession {
				want = append(want, "session=<"+session+">")
			}
			for _, w := range want {
				if !strings.Contains(line, w) {
					t.Errorf("Dovecot's login line lacks %q:\n%s", w, line)
				}
			}
		})
	}
}

// A client that came to imapgate over TLS is a TLS client to Dovecot too: the version 2
// header's PP2_TYPE_SSL makes Dovecot count the cleartext connection to its haproxy listener
// as secured, so its default disable_plaintext_auth = yes lets the login through, and its
// log says so; the header's PP2_TYPE_AUTHORITY gives it the name the client asked for (SNI)
// as its local name. A cleartext client, whose header has neither, is refused by Dovecot
// (LOGINDISABLED), which imapgate answers with NO [UNAVAILABLE].
func TestDovecotProxyHeaderClientTLS(t *testing.T) {
	requireDovecot(t)
	inst := startDovecotWith(t, dovecot.Options{
		Users: map[string]string{"alice@example.com": "alice-pw"},
		// imapgate connects from 127.0.0.1, the clients from 127.0.0.2: a client is not
		// trusted, so not secured by its address.
		TrustedNetworks: "127.0.0.1/32",
		ExtraConfig: "disable_plaintext_auth = yes\n" +
			"login_log_format_elements = user=<%u> rport=%{rport} local_name=<%{local_name}> %c\n",
	})
	if inst == nil {
		t.FailNow()
	}
	table, err := routing.NewTable(routing.TableSpec{Shards: []routing.ShardSpec{{Name: "a", Backends: []*routing.Backend{
		{Address: inst.HAProxyAddr, ProxyProtocol: routing.ProxyProtocolV2}}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mode tlsconf.Mode
	}{
		{"TLS client", tlsconf.Implicit},
		{"STARTTLS client", tlsconf.STARTTLS},
		{"cleartext client", tlsconf.None},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := startProxy(t, &routing.Static{Table: table}, ListenerOptions{TLS: tc.mode, AllowPlaintextAuth: true})
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
			conn, err := d.Dial("tcp", tp.addr)
			if err != nil {
				t.Skipf("cannot dial from 127.0.0.2: %v", err)
			}
			t.Cleanup(func() { conn.Close() })
			var cfg *tls.Config
			if tc.mode != tlsconf.None {
				cfg = tp.tls.Clone()
				cfg.ServerName = "localhost" // a name, so it goes as SNI (an IP address does not)
			}
			if tc.mode == tlsconf.Implicit {
				conn = tls.Client(conn, cfg)
			}
			port := fmt.Sprint(conn.LocalAddr().(*net.TCPAddr).Port)
			c := newTranscript(t, conn)
			c.expect("* OK …")
			if tc.mode == tlsconf.STARTTLS {
				c.send("s1 STARTTLS\r\n")
				c.expect("s1 OK Begin TLS negotiation now.")
				c.startTLS(cfg)
			}
			c.send("a1 LOGIN alice@example.com alice-pw\r\n")
			if tc.mode == tlsconf.None {
				// Dovecot offers LOGINDISABLED and no AUTH=PLAIN: nothing the client can mend.
				c.expect("a1 NO [UNAVAILABLE] Service temporarily unavailable.")
				if e := tp.waitLog(t, "backend failed"); !strings.Contains(fmt.Sprint(e.ContextMap()["error"]), "LOGINDISABLED") {
					t.Errorf("backend failed: %v, want Dovecot's LOGINDISABLED named", e.ContextMap())
				}
				return
			}
			c.expect("a1 OK …")
			c.send("a2 LOGOUT\r\n")
			c.expect("* BYE …")
			c.expect("a2 OK …")
			line := dovecotLoginLine(t, inst, port)
			for _, w := range []string{"local_name=<localhost>", "secured"} {
				if !strings.Contains(line, w) {
					t.Errorf("Dovecot's login line lacks %q:\n%s", w, line)
				}
			}
		})
	}
}

// dovecotLoginLine waits for Dovecot's login line for the client whose port is port
// (Dovecot's log process writes it after the client's session).
func dovecotLoginLine(t *testing.T, inst *dovecot.Instance, port string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	line, err := inst.WaitLog(ctx, regexp.MustCompile(`Login: user=<alice@example\.com>.* rport=`+regexp.QuoteMeta(port)+`,`))
	if err != nil {
		t.Fatalf("no login line for client port %s: %v:\n%s", port, err, line)
	}
	return line
}

// A 10 MB message appended through the proxy comes back byte for byte, with TLS on the client
// side (the copy loop with a buffer) and without (splice).
func TestDovecotLargeMessage(t *testing.T) {
	requireDovecot(t)
	ds := startDovecotShards(t, tlsconf.None)
	msg := largeMessage(t, 10<<20)
	for _, clientTLS := range []tlsconf.Mode{tlsconf.None, tlsconf.Implicit} {
		t.Run("client "+clientTLS.String(), func(t *testing.T) {
			tp := startProxy(t, &routing.Static{Table: ds.table},
				ListenerOptions{TLS: clientTLS, AllowPlaintextAuth: true})
			c := dialClient(t, tp, clientTLS, nil)
			if err := c.Login("bob@example.org", "bob-pw").Wait(); err != nil {
				t.Fatal(err)
			}
			appendMessage(t, c, string(msg))
			sel, err := c.Select("INBOX", nil).Wait()
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Fetch(imap.SeqSetNum(sel.NumMessages), &imap.FetchOptions{
				BodySection: []*imap.FetchItemBodySection{{Peek: true}},
			}).Collect()
			if err != nil || len(got) != 1 {
				t.Fatalf("FETCH: %v", err)
			}
			if body := got[0].BodySection[0].Bytes; !bytes.Equal(body, msg) {
				t.Fatalf("fetched %d bytes, not the %d appended (first difference at %d)",
					len(body), len(msg), firstDiff(body, msg))
			}
			if err := c.Logout().Wait(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// largeMessage makes an RFC 5322 message of about size bytes: base64 lines of random data.
func largeMessage(t *testing.T, size int) []byte {
	raw := make([]byte, size*3/4)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	b.WriteString("From: big@example.net\r\nTo: bob@example.org\r\nSubject: ten megabytes\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n")
	enc := make([]byte, 76)
	for i := 0; i+57 <= len(raw); i += 57 {
		base64.StdEncoding.Encode(enc, raw[i:i+57])
		b.Write(enc)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// 200 concurrent sessions through the proxy to Dovecot, each logging in, selecting and
// logging out, all at once (bounded in count and by the test's deadline).
func TestDovecotConcurrentSessions(t *testing.T) {
	requireDovecot(t)
	ds := startDovecotShards(t, tlsconf.None)
	tp := startProxy(t, &routing.Static{Table: ds.table}, ListenerOptions{AllowPlaintextAuth: true})
	const n = 200
	var (
		wg      sync.WaitGroup
		ready   sync.WaitGroup
		release = make(chan struct{})
		errs    = make(chan error, n)
	)
	ready.Add(n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user, pass := "alice@example.com", "alice-pw"
			if i%2 == 1 {
				user, pass = "bob@example.org", "bob-pw"
			}
			c, err := imapclient.DialInsecure(tp.addr, &imapclient.Options{
				Dialer: &net.Dialer{Timeout: 30 * time.Second}})
			if err != nil {
				ready.Done()
				errs <- err
				return
			}
			defer c.Close()
			err = c.Login(user, pass).Wait()
			if err == nil {
				_, err = c.Select("INBOX", nil).Wait()
			}
			ready.Done()
			if err != nil {
				errs <- fmt.Errorf("session %d: %w", i, err)
				return
			}
			<-release // all n sessions are logged in at the same time here
			if err := c.Noop().Wait(); err != nil {
				errs <- fmt.Errorf("session %d NOOP: %w", i, err)
				return
			}
			if err := c.Logout().Wait(); err != nil {
				errs <- fmt.Errorf("session %d LOGOUT: %w", i, err)
			}
		}()
	}
	ready.Wait()
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// startDovecot starts a Dovecot for this test, with users.
func startDovecot(t *testing.T, users map[string]string) *dovecot.Instance {
	t.Helper()
	inst := startDovecotNoFatal(t, users)
	if inst == nil {
		t.FailNow()
	}
	return inst
}
