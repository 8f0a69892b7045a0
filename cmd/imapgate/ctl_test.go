package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgate/imapgate/admin"
	"github.com/imapgate/imapgate/config"
	"github.com/imapgate/imapgate/deploy/memdemo"
	"github.com/imapgate/imapgate/proxy"
	"go.uber.org/zap"
)

// startDemo runs the demo with every address on a free loopback port and returns what it
// printed once it is ready; it stops with the test.
func startDemo(t *testing.T) (*demoInfo, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	readyc := make(chan *demoInfo, 1)
	done := make(chan error, 1)
	go func() {
		done <- demo(ctx, demoOptions{imap: "127.0.0.1:0", imaps: "127.0.0.1:0", admin: "127.0.0.1:0", logLevel: "info"},
			&stdout, &stderr, func(d *demoInfo) { readyc <- d })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	})
	select {
	case d := <-readyc:
		return d, &stdout
	case err := <-done:
		t.Fatalf("demo ended: %v\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not start")
	}
	return nil, nil
}

// httpGet GETs url with an optional bearer token and returns the status and body.
func httpGet(t *testing.T, url, token string) (int, string) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestCtl(t *testing.T) {
	d, stdout := startDemo(t)
	if d.admin == nil {
		t.Fatal("the demo has no admin API")
	}
	url := "http://" + d.admin.String()
	if !strings.Contains(stdout.String(), "Admin API (no token, demo only): "+url) ||
		!strings.Contains(stdout.String(), "imapgate ctl -admin "+url+" sessions") {
		t.Errorf("the banner does not show the admin API:\n%s", stdout.String())
	}
	if code, body := httpGet(t, url+"/readyz", ""); code != http.StatusOK || !strings.Contains(body, `"ready"`) {
		t.Errorf("readyz: %d %s", code, body)
	}
	if code, body := httpGet(t, url+"/metrics", ""); code != http.StatusOK || !strings.Contains(body, `imapgate_connections_total{listener="imaps"} 0`) {
		t.Errorf("metrics: %d %.300s", code, body)
	}

	alice, err := imapclient.DialInsecure(d.imap.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer alice.Close()
	if err := alice.Login("alice@example.com", "alice").Wait(); err != nil {
		t.Fatal(err)
	}

	ctl := func(args ...string) (int, string, string) {
		t.Helper()
		return runCmd(t, append([]string{"ctl", "-admin", url}, args...)...)
	}
	ok := func(want string, args ...string) string {
		t.Helper()
		code, out, errOut := ctl(args...)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("ctl %q: exit %d, stdout %q, stderr %q; want %q", args, code, out, errOut, want)
		}
		return out
	}

	out := ok("alice@example.com", "sessions")
	for _, want := range []string{"ID", "USER", "BACKEND", "imap ", "1 session"} {
		if !strings.Contains(out, want) {
			t.Errorf("sessions table lacks %q:\n%s", want, out)
		}
	}
	out = ok(`"user": "alice@example.com"`, "sessions", "-json", "-user", "ALICE@example.com")
	var list []proxy.SessionInfo
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].Shard != "a" || !list[0].LoggedIn {
		t.Errorf("sessions -json: %v %+v", err, list)
	}
	ok("0 sessions", "sessions", "-shard", "b")
	ok("carol@example.com → shard a (pinned in routing.users)", "route", "carol@example.com")
	for _, args := range [][]string{{"route", "-json", "bob@example.org"}, {"route", "bob@example.org", "-json"}} {
		var r admin.RouteResponse
		if err := json.Unmarshal([]byte(ok(`"shard": "b"`, args...)), &r); err != nil || len(r.Backends) != 1 || r.Reason != "domain" {
			t.Errorf("ctl %q: %v %+v", args, err, r)
		}
	}
	ok("tracing bob@example.org until ", "trace", "-minutes", "5", "bob@example.org")
	ok("tracing dave@example.org until ", "trace", "dave@example.org")
	ok("trace of bob@example.org stopped", "trace", "bob@example.org", "-minutes", "0")
	ok("kicked 0 sessions", "kick", "-session", "nope")
	ok("kicked 1 session\n", "kick", "-user", "alice@example.com")
	select {
	case <-alice.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("alice's connection did not end after ctl kick")
	}
	// A bare host:port works too.
	if code, out, errOut := runCmd(t, "ctl", "-admin", d.admin.String(), "kick", "-shard", "b"); code != 0 || out != "kicked 0 sessions\n" {
		t.Errorf("ctl -admin host:port: exit %d %q %q", code, out, errOut)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string // in stderr
	}{
		{nil, 2, "missing command"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"kick"}, 2, "give exactly one of -user, -backend, -shard or -session"},
		{[]string{"kick", "-user", "a", "-shard", "b"}, 2, "give exactly one"},
		{[]string{"route"}, 2, "Usage: imapgate ctl route"},
		{[]string{"route", "a", "b"}, 2, "Usage: imapgate ctl route"},
		{[]string{"sessions", "stray"}, 2, `unexpected argument "stray"`},
		{[]string{"trace", "-minutes", "99999", "x"}, 1, `admin API: 400 Bad Request: "minutes" must be from 1 to 1440`},
	} {
		code, _, errOut := ctl(tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("ctl %q: exit %d, stderr %q; want exit %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	code, _, errOut := runCmd(t, "ctl", "-admin", "http://"+freeAddr, "sessions")
	if code != 1 || !strings.Contains(errOut, "imapgate ctl: cannot reach the admin API at http://"+freeAddr) {
		t.Errorf("unreachable: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCmd(t, "ctl", "-admin", "ftp://x", "sessions"); code != 1 || !strings.Contains(errOut, "want a URL such as http://127.0.0.1:9143") {
		t.Errorf("bad -admin: exit %d, %q", code, errOut)
	}
}

// TestServeAdminToken runs serve's code with an admin section and a token file: the API
// refuses requests without the token, ctl passes it with -token-file, and check accepts the
// configuration.
func TestServeAdminToken(t *testing.T) {
	shard, closeShard, err := memdemo.StartShard(map[string]string{"alice@example.com": "alice"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer closeShard()
	const token = "0123456789abcdef0123456789abcdef"
	doc := `listeners:
  - {name: imap, address: "127.0.0.1:0", allow_plaintext_auth: true, observe: true}
routing:
  shards: [{name: a, backends: [{address: "` + shard + `"}]}]
admin:
  address: 127.0.0.1:0
  token_file: admin.token
`
	path := writeConfig(t, doc)
	tokenFile := filepath.Join(filepath.Dir(path), "admin.token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCmd(t, "check", "-config", path); code != 0 {
		t.Errorf("check: exit %d %s %s", code, out, errOut)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g, err := build(cfg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if g.metrics == nil || g.admin == nil || g.admin.Token != token {
		t.Fatalf("build: admin %+v, metrics %v", g.admin, g.metrics)
	}
	if g.listeners[0].Options.Observe != proxy.ObserveOn {
		t.Errorf("observe: true gave %v", g.listeners[0].Options.Observe)
	}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, g, zap.NewNop(), func(a []net.Addr) { addrc <- a[0] }) }()
	imapAddr := (<-addrc).String()
	url := "http://" + g.adminAddr.String()

	c, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice@example.com", "alice").Wait(); err != nil {
		t.Fatal(err)
	}

	if code, body := httpGet(t, url+"/metrics", ""); code != http.StatusUnauthorized {
		t.Errorf("metrics without the token: %d %s", code, body)
	}
	if code, body := httpGet(t, url+"/metrics", token); code != http.StatusOK || !strings.Contains(body, `imapgate_logins_total{mechanism="LOGIN",result="ok"} 1`) {
		t.Errorf("metrics with the token: %d %.500s", code, body)
	}
	if code, body := httpGet(t, url+"/readyz", token); code != http.StatusOK {
		t.Errorf("readyz: %d %s", code, body)
	}
	code, _, errOut := runCmd(t, "ctl", "-admin", url, "sessions")
	if code != 1 || !strings.Contains(errOut, "401 Unauthorized") || !strings.Contains(errOut, "-token-file") {
		t.Errorf("ctl without the token: exit %d, %q", code, errOut)
	}
	if code, out, errOut := runCmd(t, "ctl", "-admin", url, "-token-file", tokenFile, "sessions", "-user", "alice@example.com"); code != 0 || !strings.Contains(out, "1 session") {
		t.Errorf("ctl with the token: exit %d, %q %q", code, out, errOut)
	}
	if code, out, errOut := runCmd(t, "ctl", "-admin", url, "-token-file", tokenFile, "kick", "-user", "alice@example.com"); code != 0 || out != "kicked 1 session\n" {
		t.Errorf("ctl kick with the token: exit %d, %q %q", code, out, errOut)
	}
	select {
	case <-c.Closed():
	case <-time.After(10 * time.Second):
		t.Fatal("kicked connection did not end")
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("serve: %v", err)
	}
	if g.accepting.Load() {
		t.Error("still ready after serve returned")
	}
}

func TestServeAdminAddressBusy(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	doc := "listeners: [{name: imap, address: \"127.0.0.1:0\"}]\n" +
		"routing: {shards: [{name: a, backends: [{address: \"127.0.0.1:1\"}]}]}\n" +
		"admin: {address: \"" + busy.Addr().String() + "\"}\n"
	code, _, errOut := runCmd(t, "serve", "-config", writeConfig(t, doc))
	if code != 1 || !strings.Contains(errOut, "imapgate serve: admin API: ") || !strings.Contains(errOut, "address already in use") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
