package admin

import (
	"errors"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/imapgate/imapgate/proxy"
)

// checkDelta reports a series that did not move by want between two scrapes.
func checkDelta(t *testing.T, before, after series, k string, want float64) {
	t.Helper()
	if _, ok := after[k]; !ok {
		t.Errorf("%s: not in /metrics", k)
		return
	}
	if got := after[k] - before[k]; got != want {
		t.Errorf("%s moved by %v, want %v (before %v, after %v)", k, got, want, before[k], after[k])
	}
}

// TestMetricsEndToEnd drives a real proxy through a successful LOGIN with a FETCH, a
// successful AUTHENTICATE PLAIN, a wrong password and an unreachable shard, and checks how
// every metric moved between scrapes of /metrics.
func TestMetricsEndToEnd(t *testing.T) {
	e := startEnv(t)
	before := e.scrape()

	if got := before[key("imapgate_build_info", "version", "v0.0.0-test", "goversion", runtime.Version())]; got != 1 {
		t.Errorf("imapgate_build_info = %v, want 1", got)
	}
	for _, k := range []string{"go_goroutines", "process_open_fds",
		key("imapgate_sessions_active", "shard", "down", "backend", e.addrDown),
		key("imapgate_connections_total", "listener", "imap"),
		key("imapgate_logins_total", "result", "aborted", "mechanism", "PLAIN"),
		key("imapgate_bytes_total", "direction", DirClientToBackend),
		"imapgate_imap_idle_sessions", "imapgate_session_duration_seconds_count",
	} {
		if _, ok := before[k]; !ok {
			t.Errorf("%s is not scraped before its first event", k)
		}
	}

	// alice: implicit TLS, LOGIN, SELECT, FETCH of a whole message, LOGOUT.
	alice, err := imapclient.DialTLS(e.tlsAddr, &imapclient.Options{TLSConfig: e.clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if err := alice.Login("alice@example.com", "alice").Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := alice.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("fetch: %v, %d messages", err, len(msgs))
	}
	if got := len(msgs[0].FindBodySection(&imap.FetchItemBodySection{})); got != e.messageLen {
		t.Fatalf("fetched %d bytes, want %d", got, e.messageLen)
	}
	during := e.scrape()
	checkDelta(t, before, during, key("imapgate_sessions_active", "shard", "a", "backend", e.addrA), 1)
	checkDelta(t, before, during, key("imapgate_connections_active", "listener", "imaps"), 1)
	var live []proxy.SessionInfo
	e.getJSON("/api/v1/sessions?user=alice@example.com", &live)
	if len(live) != 1 || !live[0].LoggedIn || live[0].Shard != "a" || live[0].Backend != e.addrA ||
		live[0].Listener != "imaps" || live[0].BytesBackendToClient < int64(e.messageLen) || live[0].BytesClientToBackend == 0 {
		t.Errorf("sessions of alice: %+v", live)
	}
	if err := alice.Logout().Wait(); err != nil {
		t.Errorf("logout: %v", err)
	}
	alice.Close()
	e.waitSessionEnded(1)
	e.waitConnClosed(1)

	// bob: cleartext, AUTHENTICATE PLAIN.
	bob, err := imapclient.DialInsecure(e.plainAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	if err := bob.Authenticate(sasl.NewPlainClient("", "bob@example.org", "bob")); err != nil {
		t.Fatal(err)
	}
	bob.Close()
	e.waitSessionEnded(1)
	e.waitConnClosed(1)

	// carol: wrong password; then a user of the shard whose backend refuses connections.
	carol, err := imapclient.DialInsecure(e.plainAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer carol.Close()
	var imapErr *imap.Error
	if err := carol.Login("carol@example.com", "wrong").Wait(); !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("wrong password: %v", err)
	}
	if err := carol.Login("someone@down.example", "x").Wait(); !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeUnavailable {
		t.Errorf("shard down: %v", err)
	}
	carol.Close()
	e.waitConnClosed(1)

	after := e.scrape()
	checkDelta(t, before, after, key("imapgate_connections_total", "listener", "imaps"), 1)
	checkDelta(t, before, after, key("imapgate_connections_total", "listener", "imap"), 2)
	checkDelta(t, before, after, key("imapgate_connections_active", "listener", "imaps"), 0)
	checkDelta(t, before, after, key("imapgate_connections_active", "listener", "imap"), 0)
	checkDelta(t, before, after, key("imapgate_logins_total", "result", "ok", "mechanism", "LOGIN"), 1)
	checkDelta(t, before, after, key("imapgate_logins_total", "result", "ok", "mechanism", "PLAIN"), 1)
	checkDelta(t, before, after, key("imapgate_logins_total", "result", "auth_failed", "mechanism", "LOGIN"), 1)
	checkDelta(t, before, after, key("imapgate_logins_total", "result", "unavailable", "mechanism", "LOGIN"), 1)
	checkDelta(t, before, after, key("imapgate_logins_total", "result", "error", "mechanism", "LOGIN"), 0)
	checkDelta(t, before, after, "imapgate_login_duration_seconds_count", 2)
	checkDelta(t, before, after, key("imapgate_login_duration_seconds_bucket", "le", "+Inf"), 2)
	if after["imapgate_login_duration_seconds_sum"] <= before["imapgate_login_duration_seconds_sum"] {
		t.Error("imapgate_login_duration_seconds_sum did not grow")
	}
	checkDelta(t, before, after, key("imapgate_upstream_connect_duration_seconds_count", "shard", "a"), 2)
	checkDelta(t, before, after, key("imapgate_upstream_connect_duration_seconds_count", "shard", "b"), 1)
	checkDelta(t, before, after, key("imapgate_upstream_connect_duration_seconds_count", "shard", "down"), 1)
	checkDelta(t, before, after, key("imapgate_sessions_active", "shard", "a", "backend", e.addrA), 0)
	checkDelta(t, before, after, key("imapgate_sessions_active", "shard", "b", "backend", e.addrB), 0)
	checkDelta(t, before, after, "imapgate_session_duration_seconds_count", 2)
	checkDelta(t, before, after, "imapgate_imap_idle_sessions", 0)
	b2c := after[key("imapgate_bytes_total", "direction", DirBackendToClient)] - before[key("imapgate_bytes_total", "direction", DirBackendToClient)]
	c2b := after[key("imapgate_bytes_total", "direction", DirClientToBackend)] - before[key("imapgate_bytes_total", "direction", DirClientToBackend)]
	if b2c < float64(e.messageLen) || c2b < float64(len("x SELECT INBOX\r\n")) {
		t.Errorf("imapgate_bytes_total moved by %v backend to client (want ≥ %d, the message) and %v client to backend", b2c, e.messageLen, c2b)
	}

	// The commands seen after login come from the traffic observer, on by default here: the
	// client side is TLS. (The plain listener's sessions are not observed.)
	checkDelta(t, before, after, key("imapgate_imap_commands_total", "command", "SELECT"), 1)
	checkDelta(t, before, after, key("imapgate_imap_commands_total", "command", "FETCH"), 1)
	checkDelta(t, before, after, key("imapgate_imap_command_duration_seconds_count", "command", "FETCH"), 1)
	if v := after[key("imapgate_imap_commands_total", "command", "LOGIN")]; v != 0 {
		t.Errorf("LOGIN, answered by the proxy before the observer starts, counted %v times", v)
	}
}

// TestKick ends real sessions through the API: by session id, by user (a client in IDLE),
// by backend and by shard.
func TestKick(t *testing.T) {
	e := startEnv(t)

	alice, err := imapclient.DialTLS(e.tlsAddr, &imapclient.Options{TLSConfig: e.clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if err := alice.Login("alice@example.com", "alice").Wait(); err != nil {
		t.Fatal(err)
	}
	bob, err := imapclient.DialInsecure(e.plainAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	if err := bob.Login("bob@example.org", "bob").Wait(); err != nil {
		t.Fatal(err)
	}
	carol := e.dialRaw(true)
	carol.send("a LOGIN carol@example.com carol")
	carol.expect("a OK")
	carol.send("b SELECT INBOX")
	carol.expect("b OK")
	carol.send("c IDLE")
	carol.expect("+")
	preauth := e.dialRaw(false) // not logged in: never kicked

	var all []proxy.SessionInfo
	e.getJSON("/api/v1/sessions", &all)
	if len(all) != 4 {
		t.Fatalf("%d sessions, want 4: %+v", len(all), all)
	}
	for _, tc := range []struct {
		query string
		want  int
	}{
		{"?user=ALICE@example.com", 1}, {"?shard=a", 2}, {"?backend=" + e.addrB, 1},
		{"?listener=imap", 2}, {"?shard=a&listener=imaps", 2}, {"?shard=b&listener=imaps", 0},
		{"?user=nobody", 0},
	} {
		var got []proxy.SessionInfo
		e.getJSON("/api/v1/sessions"+tc.query, &got)
		if len(got) != tc.want {
			t.Errorf("sessions%s: %d, want %d: %+v", tc.query, len(got), tc.want, got)
		}
	}

	// By session id: bob.
	var bobs []proxy.SessionInfo
	e.getJSON("/api/v1/sessions?user=bob@example.org", &bobs)
	if len(bobs) != 1 || bobs[0].ID == "" {
		t.Fatalf("bob's sessions: %+v", bobs)
	}
	if n := e.kick(`{"session": "` + bobs[0].ID + `"}`); n != 1 {
		t.Errorf("kick by session: %d", n)
	}
	waitClosed(t, bob, "bob")

	// By user: carol, in IDLE.
	var carols []proxy.SessionInfo
	e.getJSON("/api/v1/sessions?user=carol@example.com", &carols)
	if len(carols) != 1 {
		t.Fatalf("carol's sessions: %+v", carols)
	}
	// The observer sees the backend's "+ idling" before the client does.
	if !carols[0].Idle || carols[0].Command != "IDLE" {
		t.Errorf("carol in IDLE: session list shows idle %v, command %q", carols[0].Idle, carols[0].Command)
	}
	var idle series = e.scrape()
	if got := idle["imapgate_imap_idle_sessions"]; got != 1 {
		t.Errorf("imapgate_imap_idle_sessions = %v with one client in IDLE", got)
	}
	if n := e.kick(`{"user": "Carol@Example.com"}`); n != 1 {
		t.Errorf("kick by user: %d", n)
	}
	rest, _ := carol.rest() // returns once the connection has ended
	if !strings.HasPrefix(rest, "* BYE") {
		t.Errorf("kicked in IDLE, the client got %q, want * BYE", rest)
	}

	// By backend: alice's.
	if n := e.kick(`{"backend": "` + e.addrA + `"}`); n != 1 {
		t.Errorf("kick by backend: %d", n)
	}
	waitClosed(t, alice, "alice")
	e.waitSessionEnded(3)
	e.waitConnClosed(3)
	if got := e.scrape()["imapgate_imap_idle_sessions"]; got != 0 {
		t.Errorf("imapgate_imap_idle_sessions = %v after the IDLE client was kicked", got)
	}

	// Nothing left to kick on shard a; the pre-auth client is untouched.
	if n := e.kick(`{"shard": "a"}`); n != 0 {
		t.Errorf("kick by shard after the others: %d", n)
	}
	e.getJSON("/api/v1/sessions", &all)
	if len(all) != 1 || all[0].LoggedIn {
		t.Errorf("after the kicks: %+v, want only the pre-auth session", all)
	}
	preauth.send("z NOOP")
	preauth.expect("z OK")

	// By shard: a new session on shard b.
	bob2, err := imapclient.DialInsecure(e.plainAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer bob2.Close()
	if err := bob2.Login("bob@example.org", "bob").Wait(); err != nil {
		t.Fatal(err)
	}
	if n := e.kick(`{"shard": "b"}`); n != 1 {
		t.Errorf("kick by shard: %d", n)
	}
	waitClosed(t, bob2, "bob")

	for _, entry := range e.logs.FilterMessage("admin: kick").All() {
		if entry.ContextMap()["remote"] == nil {
			t.Errorf("kick log line without the remote address: %v", entry.ContextMap())
		}
	}
	if n := e.logs.FilterMessage("admin: kick").Len(); n != 5 {
		t.Errorf("%d kick log lines, want 5", n)
	}
	if code, _ := e.request(http.MethodGet, "/api/v1/sessions", ""); code != http.StatusOK {
		t.Errorf("sessions after kicks: %d", code)
	}
}

// waitClosed waits until the server has closed c's connection.
func waitClosed(t *testing.T, c *imapclient.Client, who string) {
	t.Helper()
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s's connection did not end after the kick", who)
	}
}
