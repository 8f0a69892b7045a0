package admin

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imapgate/imapgate/proxy"
	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// fakeProxy records what the API asks of the proxy.
type fakeProxy struct {
	mu       sync.Mutex
	sessions []proxy.SessionInfo
	kicked   []string // ids of the sessions a Kick matched
	traces   map[string]time.Time
}

func (f *fakeProxy) Sessions() []proxy.SessionInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]proxy.SessionInfo(nil), f.sessions...)
}

func (f *fakeProxy) Kick(match func(proxy.SessionInfo) bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, s := range f.sessions {
		if s.LoggedIn && match(s) {
			f.kicked = append(f.kicked, s.ID)
			n++
		}
	}
	return n
}

func (f *fakeProxy) Trace(user string, until time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.traces == nil {
		f.traces = make(map[string]time.Time)
	}
	f.traces[user] = until
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func sampleSessions() []proxy.SessionInfo {
	return []proxy.SessionInfo{
		{ID: "s3", Listener: "imaps", Start: t0.Add(3 * time.Second), LoggedIn: true, User: "carol@example.com", Shard: "a", Backend: "mail-a2:143"},
		{ID: "s1", Listener: "imaps", Start: t0.Add(1 * time.Second), LoggedIn: true, User: "alice@example.com", Shard: "a", Backend: "mail-a1:143", Idle: true},
		{ID: "s2", Listener: "imap", Start: t0.Add(2 * time.Second), LoggedIn: true, User: "bob@example.org", Shard: "b", Backend: "mail-b1:143", Command: "FETCH"},
		{ID: "s4", Listener: "imap", Start: t0.Add(4 * time.Second)},
		{ID: "s0", Listener: "imap", Start: t0, LoggedIn: true, User: "Alice@Example.com", Shard: "a", Backend: "MAIL-A1:143"},
	}
}

func testTable(t *testing.T) *routing.Table {
	t.Helper()
	table, err := routing.NewTable(routing.TableSpec{
		Shards: []routing.ShardSpec{
			{Name: "a", Backends: []*routing.Backend{
				{Shard: "a", Address: "mail-a1:143", ForwardClientIP: true},
				{Shard: "a", Address: "mail-a2:993", TLS: tlsconf.Implicit},
			}},
			{Name: "b", Backends: []*routing.Backend{{Shard: "b", Address: "mail-b1:143"}}},
		},
		Users:   map[string]string{"alice@example.com": "a"},
		Domains: map[string]string{"example.org": "b"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return table
}

// call runs one request through the handler (no network) and returns the status, the
// headers and the decoded JSON body.
func call(t *testing.T, h http.Handler, method, target, body string, header ...string) (int, http.Header, map[string]any) {
	t.Helper()
	var req *http.Request
	if body != "" {
		req = httptest.NewRequest(method, target, strings.NewReader(body))
	} else {
		req = httptest.NewRequest(method, target, nil)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var out map[string]any
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") && method != http.MethodHead {
		var v any
		if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
			t.Fatalf("%s %s: invalid JSON %q: %v", method, target, rec.Body.String(), err)
		}
		if m, ok := v.(map[string]any); ok {
			out = m
		} else {
			out = map[string]any{"list": v}
		}
	}
	return rec.Code, rec.Header(), out
}

func TestSessionsEndpoint(t *testing.T) {
	fp := &fakeProxy{sessions: sampleSessions()}
	s := New(Options{Proxy: fp})
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"s0", "s1", "s2", "s3", "s4"}},
		{"?user=alice@example.com", []string{"s0", "s1"}},
		{"?user=ALICE%40EXAMPLE.COM", []string{"s0", "s1"}},
		{"?shard=a", []string{"s0", "s1", "s3"}},
		{"?shard=A", nil},
		{"?backend=mail-a1:143", []string{"s0", "s1"}},
		{"?listener=imap", []string{"s0", "s2", "s4"}},
		{"?shard=a&listener=imaps", []string{"s1", "s3"}},
		{"?user=", []string{"s4"}}, // the sessions before login have no user
	} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/sessions"+tc.query, nil))
		var got []proxy.SessionInfo
		if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &got) != nil {
			t.Fatalf("%s: %d %s", tc.query, rec.Code, rec.Body)
		}
		var ids []string
		for _, si := range got {
			ids = append(ids, si.ID)
		}
		if strings.Join(ids, ",") != strings.Join(tc.want, ",") {
			t.Errorf("sessions%s = %v, want %v", tc.query, ids, tc.want)
		}
	}

	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/sessions?shard=b", nil))
	var one []map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &one); err != nil || len(one) != 1 {
		t.Fatalf("%v %s", err, rec.Body)
	}
	for _, field := range []string{"id", "user", "client", "shard", "backend", "start", "bytes_client_to_backend", "bytes_backend_to_client", "idle", "command", "logged_in", "listener"} {
		if _, ok := one[0][field]; !ok {
			t.Errorf("session JSON lacks %q: %v", field, one[0])
		}
	}

	for _, tc := range []struct{ query, want string }{
		{"?users=x", `unknown parameter "users" (want user, shard, backend or listener)`},
		{"?user=a&user=b", `parameter "user" given 2 times`},
		{"?user=%zz", "invalid query string"},
	} {
		code, _, body := call(t, s, http.MethodGet, "/api/v1/sessions"+tc.query, "")
		if code != http.StatusBadRequest || !strings.Contains(body["error"].(string), tc.want) {
			t.Errorf("%s: %d %v, want 400 %q", tc.query, code, body, tc.want)
		}
	}
}

func TestKickEndpoint(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	for _, tc := range []struct {
		body string
		want []string
	}{
		{`{"user": "ALICE@example.com"}`, []string{"s1", "s0"}},
		{`{"backend": "mail-a1:143"}`, []string{"s1", "s0"}},
		{`{"shard": "a"}`, []string{"s3", "s1", "s0"}},
		{`{"session": "s2"}`, []string{"s2"}},
		{`{"session": "s4"}`, nil}, // before login: not kicked
		{`{"shard": "nope"}`, nil},
		{`{"user": "bob@example.org", "shard": ""}`, []string{"s2"}},
	} {
		fp := &fakeProxy{sessions: sampleSessions()}
		s := New(Options{Proxy: fp, Logger: zap.New(core)})
		code, _, body := call(t, s, http.MethodPost, "/api/v1/kick", tc.body)
		if code != http.StatusOK || body["kicked"] != float64(len(tc.want)) {
			t.Errorf("kick %s: %d %v, want %d kicked", tc.body, code, body, len(tc.want))
		}
		if strings.Join(fp.kicked, ",") != strings.Join(tc.want, ",") {
			t.Errorf("kick %s matched %v, want %v", tc.body, fp.kicked, tc.want)
		}
	}
	if n := logs.FilterMessage("admin: kick").Len(); n != 7 {
		t.Errorf("%d kick log lines, want 7", n)
	}

	s := New(Options{Proxy: &fakeProxy{sessions: sampleSessions()}})
	for _, tc := range []struct{ body, want string }{
		{``, "empty body"},
		{`{}`, `give exactly one of "user", "backend", "shard" or "session"`},
		{`{"user": "a", "shard": "b"}`, "give exactly one"},
		{`{"usr": "a"}`, `invalid JSON body: unknown field "usr"`},
		{`{"user": 7}`, "invalid JSON body"},
		{`{"user": "a"} {}`, "data after the object"},
		{`["user"]`, "invalid JSON body"},
		{`{"user": "` + strings.Repeat("x", maxBodyBytes) + `"}`, "body larger than 65536 bytes"},
	} {
		code, _, body := call(t, s, http.MethodPost, "/api/v1/kick", tc.body)
		if code != http.StatusBadRequest || !strings.Contains(body["error"].(string), tc.want) {
			t.Errorf("kick %.40q: %d %v, want 400 %q", tc.body, code, body, tc.want)
		}
	}

	// A browser's cross-site POST is refused; curl's (no Origin, no Sec-Fetch-Site) is not.
	code, _, body := call(t, s, http.MethodPost, "/api/v1/kick", `{"user": "alice@example.com"}`,
		"Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example")
	if code != http.StatusForbidden || !strings.Contains(body["error"].(string), "cross-origin") {
		t.Errorf("cross-site kick: %d %v", code, body)
	}
}

func TestRouteEndpoint(t *testing.T) {
	table := testTable(t)
	s := New(Options{Router: table})
	code, _, body := call(t, s, http.MethodGet, "/api/v1/route?user=Alice@example.com", "")
	if code != http.StatusOK || body["shard"] != "a" || body["reason"] != "user" || body["user"] != "Alice@example.com" {
		t.Fatalf("route alice: %d %v", code, body)
	}
	bes := body["backends"].([]any)
	if len(bes) != 2 {
		t.Fatalf("backends %v", bes)
	}
	tlsModes := map[string]string{}
	for _, b := range bes {
		bm := b.(map[string]any)
		tlsModes[bm["address"].(string)] = bm["tls"].(string)
		if bm["address"] == "mail-a1:143" && bm["forward_client_ip"] != true {
			t.Errorf("forward_client_ip lost: %v", bm)
		}
	}
	if tlsModes["mail-a2:993"] != "implicit" || tlsModes["mail-a1:143"] != "none" {
		t.Errorf("tls modes %v", tlsModes)
	}
	code, _, body = call(t, s, http.MethodGet, "/api/v1/route?user=dave@example.org", "")
	if code != http.StatusOK || body["shard"] != "b" || body["reason"] != "domain" {
		t.Errorf("route dave: %d %v", code, body)
	}

	// No side effects: the same answer every time, and the table is unchanged.
	for range 3 {
		_, _, again := call(t, s, http.MethodGet, "/api/v1/route?user=Alice@example.com", "")
		if toJSON(again) != toJSON(map[string]any{"user": "Alice@example.com", "shard": "a", "reason": "user", "backends": bes}) {
			t.Errorf("route changed: %v", again)
		}
	}

	if err := table.SetBackendUp("b", "mail-b1:143", false); err != nil {
		t.Fatal(err)
	}
	code, _, body = call(t, s, http.MethodGet, "/api/v1/route?user=dave@example.org", "")
	if code != http.StatusServiceUnavailable || body["shard"] != "b" || !strings.Contains(body["error"].(string), "no backend is up") {
		t.Errorf("route to a shard without backends: %d %v", code, body)
	}

	for _, q := range []string{"", "?user=", "?name=x"} {
		code, _, body := call(t, s, http.MethodGet, "/api/v1/route"+q, "")
		if code != http.StatusBadRequest || body["error"] == "" {
			t.Errorf("route%s: %d %v", q, code, body)
		}
	}
	s = New(Options{Router: routerFunc(func(string) (routing.Decision, error) { return routing.Decision{}, errors.New("boom") })})
	if code, _, body := call(t, s, http.MethodGet, "/api/v1/route?user=x", ""); code != http.StatusInternalServerError || body["error"] != "boom" {
		t.Errorf("route error: %d %v", code, body)
	}
}

type routerFunc func(string) (routing.Decision, error)

func (f routerFunc) Lookup(user string) (routing.Decision, error) { return f(user) }

func TestTraceEndpoint(t *testing.T) {
	fp := &fakeProxy{}
	core, logs := observer.New(zap.InfoLevel)
	s := New(Options{Proxy: fp, Logger: zap.New(core)})

	start := time.Now()
	code, _, body := call(t, s, http.MethodPost, "/api/v1/trace", `{"user": "alice@example.com"}`)
	if code != http.StatusOK || body["user"] != "alice@example.com" {
		t.Fatalf("trace: %d %v", code, body)
	}
	until := fp.traces["alice@example.com"]
	if d := until.Sub(start); d < 10*time.Minute-2*time.Second || d > 10*time.Minute+time.Second {
		t.Errorf("default trace until %v, %v from now; want 10 minutes", until, d)
	}
	if got, _ := time.Parse(time.RFC3339, body["until"].(string)); !got.Equal(until) {
		t.Errorf("answer until %v, proxy got %v", body["until"], until)
	}

	call(t, s, http.MethodPost, "/api/v1/trace", `{"user": "bob@example.org", "minutes": 1440}`)
	if d := time.Until(fp.traces["bob@example.org"]); d < 1439*time.Minute {
		t.Errorf("1440 minutes: until in %v", d)
	}
	code, _, body = call(t, s, http.MethodPost, "/api/v1/trace", `{"user": "bob@example.org", "minutes": 0}`)
	if until, ok := fp.traces["bob@example.org"]; code != http.StatusOK || !ok || !until.IsZero() || body["stopped"] != true {
		t.Errorf("minutes 0: %d %v, proxy got %v", code, body, until)
	}
	if logs.FilterMessage("admin: trace started").Len() != 2 || logs.FilterMessage("admin: trace stopped").Len() != 1 {
		t.Errorf("trace log lines: %v", logs.All())
	}

	for _, tc := range []struct{ body, want string }{
		{`{"minutes": 5}`, `missing "user"`},
		{`{"user": "a", "minutes": -1}`, `"minutes" must be from 1 to 1440`},
		{`{"user": "a", "minutes": 1441}`, `"minutes" must be from 1 to 1440`},
		{`{"user": "a", "minutes": 1.5}`, "invalid JSON body"},
		{`{"user": "a", "until": "x"}`, `unknown field "until"`},
	} {
		code, _, body := call(t, s, http.MethodPost, "/api/v1/trace", tc.body)
		if code != http.StatusBadRequest || !strings.Contains(body["error"].(string), tc.want) {
			t.Errorf("trace %s: %d %v, want 400 %q", tc.body, code, body, tc.want)
		}
	}
}

func TestHealthAndReadiness(t *testing.T) {
	var mu sync.Mutex
	var listenersErr error = errors.New("not accepting connections (starting or stopping)")
	s := New(Options{Checks: []Check{
		{Name: "listeners", Ready: func() error { mu.Lock(); defer mu.Unlock(); return listenersErr }},
		{Name: "routing", Ready: func() error { return nil }},
	}})
	if code, _, body := call(t, s, http.MethodGet, "/healthz", ""); code != http.StatusOK || body["status"] != "ok" {
		t.Errorf("healthz: %d %v", code, body)
	}
	code, _, body := call(t, s, http.MethodGet, "/readyz", "")
	checks, _ := body["checks"].(map[string]any)
	if code != http.StatusServiceUnavailable || body["status"] != "not ready" ||
		checks["listeners"] != "not accepting connections (starting or stopping)" || checks["routing"] != "ok" {
		t.Errorf("readyz while starting: %d %v", code, body)
	}
	mu.Lock()
	listenersErr = nil
	mu.Unlock()
	if code, _, body := call(t, s, http.MethodGet, "/readyz", ""); code != http.StatusOK || body["status"] != "ready" {
		t.Errorf("readyz: %d %v", code, body)
	}
	if code, _, _ := call(t, New(Options{}), http.MethodGet, "/readyz", ""); code != http.StatusOK {
		t.Errorf("readyz without checks: %d", code)
	}
}

func TestRoutingErrors(t *testing.T) {
	s := New(Options{Proxy: &fakeProxy{}, Metrics: NewMetrics(MetricsOptions{NoRuntimeCollectors: true})})
	for _, tc := range []struct {
		method, path string
		code         int
		allow, want  string
	}{
		{http.MethodGet, "/nope", http.StatusNotFound, "", "no such endpoint /nope"},
		{http.MethodGet, "/api/v1/sessions/", http.StatusNotFound, "", "no such endpoint"},
		{http.MethodPost, "/metrics", http.StatusMethodNotAllowed, "GET, HEAD", "/metrics needs GET, not POST"},
		{http.MethodGet, "/api/v1/kick", http.StatusMethodNotAllowed, "POST", "/api/v1/kick needs POST, not GET"},
		{http.MethodDelete, "/api/v1/trace", http.StatusMethodNotAllowed, "POST", "needs POST"},
		{http.MethodGet, "/api/v1/route?user=x", http.StatusNotImplemented, "", "no routing table"},
	} {
		code, hdr, body := call(t, s, tc.method, tc.path, "")
		if code != tc.code || hdr.Get("Allow") != tc.allow || !strings.Contains(body["error"].(string), tc.want) {
			t.Errorf("%s %s: %d Allow %q %v; want %d Allow %q %q", tc.method, tc.path, code, hdr.Get("Allow"), body, tc.code, tc.allow, tc.want)
		}
	}
	if code, _, _ := call(t, s, http.MethodHead, "/healthz", ""); code != http.StatusOK {
		t.Errorf("HEAD /healthz: %d", code)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK || !strings.HasPrefix(rec.Header().Get("Content-Type"), "text/plain") ||
		!strings.Contains(rec.Body.String(), "imapgate_build_info") {
		t.Errorf("/metrics: %d %s", rec.Code, rec.Header().Get("Content-Type"))
	}
	if code, _, _ := call(t, New(Options{}), http.MethodGet, "/metrics", ""); code != http.StatusNotImplemented {
		t.Errorf("/metrics without Metrics: %d", code)
	}
	if code, _, _ := call(t, New(Options{}), http.MethodGet, "/api/v1/sessions", ""); code != http.StatusNotImplemented {
		t.Errorf("sessions without Proxy: %d", code)
	}
}

// TestToken: with a token, every endpoint refuses requests without it, and the token never
// shows in logs or answers.
func TestToken(t *testing.T) {
	const token = "s3cret-t0ken-abcdef0123456789"
	core, logs := observer.New(zap.DebugLevel)
	fp := &fakeProxy{sessions: sampleSessions()}
	s := New(Options{Proxy: fp, Router: testTable(t), Metrics: NewMetrics(MetricsOptions{NoRuntimeCollectors: true}),
		Token: token, Logger: zap.New(core)})
	endpoints := []struct{ method, path, body string }{
		{http.MethodGet, "/metrics", ""},
		{http.MethodGet, "/healthz", ""},
		{http.MethodGet, "/readyz", ""},
		{http.MethodGet, "/api/v1/sessions", ""},
		{http.MethodGet, "/api/v1/route?user=alice@example.com", ""},
		{http.MethodPost, "/api/v1/kick", `{"user": "alice@example.com"}`},
		{http.MethodPost, "/api/v1/trace", `{"user": "alice@example.com"}`},
		{http.MethodGet, "/nope", ""}, // 401, not 404: nothing is revealed without the token
	}
	for _, ep := range endpoints {
		for _, tc := range []struct {
			name, header, challenge string
		}{
			{"no header", "", `Bearer realm="imapgate"`},
			{"empty bearer", "Bearer ", `Bearer realm="imapgate"`},
			{"basic", "Basic " + token, `Bearer realm="imapgate"`},
			{"wrong token", "Bearer " + token + "x", `Bearer realm="imapgate", error="invalid_token"`},
			{"prefix of the token", "Bearer " + token[:10], `Bearer realm="imapgate", error="invalid_token"`},
		} {
			var hdr []string
			if tc.header != "" {
				hdr = []string{"Authorization", tc.header}
			}
			code, h, body := call(t, s, ep.method, ep.path, ep.body, hdr...)
			if code != http.StatusUnauthorized || h.Get("WWW-Authenticate") != tc.challenge || body["error"] == "" {
				t.Errorf("%s %s, %s: %d %q %v", ep.method, ep.path, tc.name, code, h.Get("WWW-Authenticate"), body)
			}
			if strings.Contains(toJSON(body), token[:10]) {
				t.Errorf("%s %s, %s: the answer shows the token: %v", ep.method, ep.path, tc.name, body)
			}
		}
	}
	if len(fp.kicked) != 0 || len(fp.traces) != 0 {
		t.Fatalf("unauthorized requests acted: kicked %v, traces %v", fp.kicked, fp.traces)
	}
	for _, ep := range endpoints {
		want := http.StatusOK
		if ep.path == "/nope" {
			want = http.StatusNotFound
		}
		code, _, _ := call(t, s, ep.method, ep.path, ep.body, "Authorization", "bearer "+token)
		if code != want {
			t.Errorf("%s %s with the token: %d, want %d", ep.method, ep.path, code, want)
		}
	}
	if len(fp.kicked) != 2 {
		t.Errorf("kick with the token: %v", fp.kicked)
	}
	if logs.FilterMessage("admin: wrong token").Len() == 0 {
		t.Error("wrong tokens are not logged")
	}
	for _, e := range logs.All() {
		if strings.Contains(e.Message+toJSON(e.ContextMap()), token[:10]) {
			t.Errorf("log line shows the token: %s %v", e.Message, e.ContextMap())
		}
	}
}

// TestServeOverTCP runs the server on a loopback listener: Serve, Shutdown and the token
// over a real connection.
func TestServeOverTCP(t *testing.T) {
	e := startEnv(t)
	if code, body := doRequest(t, e.http, http.MethodGet, e.url+"/healthz", "", ""); code != http.StatusUnauthorized || !strings.Contains(string(body), "needs a token") {
		t.Errorf("healthz without the token: %d %s", code, body)
	}
	if code, _ := e.request(http.MethodGet, "/healthz", ""); code != http.StatusOK {
		t.Errorf("healthz: %d", code)
	}
}
