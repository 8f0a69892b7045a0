package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/config"
	"github.com/imapgate/imapgate/deploy/dovecot"
	"github.com/imapgate/imapgate/deploy/memdemo"
	"github.com/imapgate/imapgate/routing"
)

func TestLiteralSize(t *testing.T) {
	for _, tc := range []struct {
		line string
		n    int64
		ok   bool
	}{
		{"* 1 FETCH (BODY[] {1000000}\r\n", 1000000, true},
		{"* 1 FETCH (BODY[] {12+}\r\n", 12, true},
		{"* OK {0}\r\n", 0, true},
		{"* OK [ALERT] hello\r\n", 0, false},
		{"* OK {}\r\n", 0, false},
		{"* OK {1a}\r\n", 0, false},
		{"* OK {1234567890123}\r\n", 0, false},
		{"}\r\n", 0, false},
	} {
		n, ok := literalSize([]byte(tc.line))
		if n != tc.n || ok != tc.ok {
			t.Errorf("literalSize(%q) = %d, %v; want %d, %v", tc.line, n, ok, tc.n, tc.ok)
		}
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i))
	}
	if p50, p99 := percentiles(d); p50 != 50 || p99 != 99 {
		t.Errorf("percentiles of 1..100 = %d, %d; want 50, 99", p50, p99)
	}
	if p50, p99 := percentiles([]time.Duration{7}); p50 != 7 || p99 != 7 {
		t.Errorf("percentiles of one = %d, %d", p50, p99)
	}
	if p50, p99 := percentiles(nil); p50 != 0 || p99 != 0 {
		t.Errorf("percentiles of none = %d, %d", p50, p99)
	}
}

func TestMedian(t *testing.T) {
	rs := []Result{
		{Scenario: Logins, Rate: 500, Count: 1}, {Scenario: Logins, Rate: 300, Count: 2}, {Scenario: Logins, Rate: 400, Count: 3},
	}
	m := median(rs)
	if m.Count != 3 || m.Rounds != 3 || len(m.Runs) != 3 || m.Runs[0] != 500 {
		t.Errorf("median = %+v", m)
	}
	if got := runsText(&m); got != "500 300 400 logins/s" {
		t.Errorf("runsText = %q", got)
	}
	lat := []Result{{Scenario: Latency, P50: 90_000}, {Scenario: Latency, P50: 70_000}}
	if m := median(lat); m.P50 != 70_000 || runsText(&m) != "90 70 µs p50" {
		t.Errorf("latency median = %+v, %q", m, runsText(&m))
	}
	rs[1].Error = "boom"
	if m := median(rs); m.Error != "boom" {
		t.Errorf("a failed round is not reported: %+v", m)
	}
}

func TestBigMessage(t *testing.T) {
	for _, size := range []int{1000, 1001, 1002, 1_000_000} {
		m := bigMessage("a@b.example", 3, size)
		if len(m) != size {
			t.Errorf("size %d: got %d bytes", size, len(m))
		}
		if !bytes.HasSuffix(m, []byte("\r\n")) && !bytes.HasSuffix(m, []byte("\r")) {
			t.Errorf("size %d: does not end a line: %q", size, m[len(m)-4:])
		}
	}
	if !bytes.Equal(bigMessage("x@y", 1, 5000), bigMessage("x@y", 1, 5000)) {
		t.Error("bigMessage is not deterministic")
	}
}

// TestConn drives the load generator's client against the in-process server: every
// command the scenarios use, literals both ways.
func TestConn(t *testing.T) {
	users := map[string]string{"u@bench.example": `pa"ss\word`}
	s, err := memdemo.StartShardWith(context.Background(), memdemo.ShardOptions{Users: users})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A small buffer: FETCH lines and literals cross it.
	c, err := Dial(ctx, s.Addr, nil, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("u@bench.example", "wrong"); err == nil {
		t.Fatal("login with a wrong password succeeded")
	} else if pe := (*ProtocolError)(nil); !errors.As(err, &pe) || !strings.Contains(pe.Line, "NO") {
		t.Fatalf("wrong password: %v", err)
	}
	if err := c.Login("u@bench.example", users["u@bench.example"]); err != nil {
		t.Fatal(err)
	}
	msgs := [][]byte{bigMessage("u@bench.example", 0, 3000), bigMessage("u@bench.example", 1, 70000)}
	for _, m := range msgs {
		if err := c.Append("INBOX", m); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Examine("INBOX"); err != nil {
		t.Fatal(err)
	}
	n, err := c.FetchAll()
	if err != nil || n != 73000 {
		t.Fatalf("FetchAll = %d, %v; want 73000 bytes", n, err)
	}
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Select("INBOX"); err != nil {
		t.Fatal(err)
	}
	if err := c.Idle(); err != nil {
		t.Fatal(err)
	}
	if err := c.Done(); err != nil {
		t.Fatal(err)
	}
	if err := c.Select("Nope"); err == nil {
		t.Error("SELECT of a missing mailbox succeeded")
	}
	if err := c.Logout(); err != nil {
		t.Fatal(err)
	}
}

// TestImapgateConfig checks that the configuration written for the imapgate child loads.
func TestImapgateConfig(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		dir := t.TempDir()
		certPEM, keyPEM, _, err := selfSigned()
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o600)
		os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600)
		path := filepath.Join(dir, "imapgate.yaml")
		doc := imapgateConfig("127.0.0.1:1993", useTLS, &backend{kind: "dovecot", addr: "127.0.0.1:10143", haproxyAddr: "127.0.0.1:10144"})
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatalf("tls %v: %v\n%s", useTLS, err, doc)
		}
		if _, err := cfg.Listeners(); err != nil {
			t.Fatalf("tls %v: %v", useTLS, err)
		}
		spec, err := cfg.RoutingSpec()
		if err != nil {
			t.Fatal(err)
		}
		// The client's address goes to Dovecot's haproxy listener in a PROXY header.
		if b := spec.Shards[0].Backends[0]; b.Address != "127.0.0.1:10144" || b.ProxyProtocol != routing.ProxyProtocolV2 || b.ForwardClientIP {
			t.Errorf("tls %v: backend %+v, want 127.0.0.1:10144 with PROXY v2 and no ID", useTLS, b)
		}
	}
}

func TestNginxConfig(t *testing.T) {
	c := nginxConfig(nginxParams{dir: "/w", imapPort: 1, imapsPort: 2, authPort: 3, backendPort: "4",
		workers: 2, files: 20000, conns: 50000})
	for _, want := range []string{
		"load_module " + nginxMailModule, "worker_processes 2;", "worker_rlimit_nofile 20000;",
		"worker_connections 19936;", "listen 127.0.0.1:1;", "listen 127.0.0.1:2 ssl;",
		"auth_http 127.0.0.1:3/auth;", "add_header Auth-Port 4;", "error_log /w/error.log", "proxy_protocol off;",
	} {
		if !strings.Contains(c, want) {
			t.Errorf("nginx.conf lacks %q:\n%s", want, c)
		}
	}
	if c := nginxConfig(nginxParams{dir: "/w", proxyProtocol: true, files: 20000}); !strings.Contains(c, "proxy_protocol on;") {
		t.Errorf("nginx.conf with the PROXY protocol lacks proxy_protocol on:\n%s", c)
	}
}

func TestOptions(t *testing.T) {
	o := Options{}
	if err := o.setDefaults(); err != nil {
		t.Fatal(err)
	}
	if o.Backend != "dovecot" || o.Sessions != 2000 || o.Duration != 5*time.Second || len(o.Targets) != len(AllTargets) {
		t.Errorf("defaults: %+v", o)
	}
	pinned := Options{BackendCPUs: []int{0}}
	if err := pinned.setDefaults(); err != nil {
		t.Errorf("backend CPU 0 with the dovecot backend: %v", err)
	}
	for _, bad := range []Options{{Backend: "x"}, {Targets: []string{"haproxy"}}, {Scenarios: []string{"x"}},
		{Sessions: -1}, {Duration: 2 * time.Hour}, {Targets: []string{"relay-tls"}},
		{Backend: "memory", BackendCPUs: []int{0}}, {BackendCPUs: []int{-1}}, {BackendCPUs: []int{1 << 20}}} {
		if err := bad.setDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// TestPeers runs the latency scenario, briefly, through every peer against a real
// Dovecot: each peer starts, really proxies (Dovecot's proxy logs it; every session logs
// in on the backend) and stops. Skipped where Dovecot or nginx is missing.
func TestPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Dovecot and nginx")
	}
	if _, ok := dovecot.Available(); !ok {
		t.Skip("dovecot is not installed")
	}
	targets := []string{Direct, DovecotProxy, DovecotProxyTLS, Nginx, NginxTLS}
	var progress strings.Builder
	rep, err := Run(context.Background(), Options{
		Backend: "dovecot", Scenarios: []string{Latency}, Targets: targets,
		Duration: 100 * time.Millisecond, Users: 2, Messages: 1, Sessions: 5, Concurrency: 2, Rounds: 1,
		WorkDir: t.TempDir(), Progress: &progress,
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	for _, r := range rep.Results {
		switch {
		case r.Skipped != "":
			t.Logf("%s skipped: %s", r.Target, r.Skipped)
		case r.Error != "":
			t.Errorf("%s: %s", r.Target, r.Error)
		case r.Count == 0 || r.P50 <= 0:
			t.Errorf("%s: no figures: %+v", r.Target, r)
		}
	}
	var table strings.Builder
	if err := WriteTable(&table, rep); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + table.String())
}

// A run whose machine sped up in its last round: the medians of each target's rounds come
// from different rounds, the round-by-round comparison does not.
func TestPairWithDirect(t *testing.T) {
	direct := []Result{
		{Scenario: Logins, Target: Direct, Rate: 818}, {Scenario: Logins, Target: Direct, Rate: 930},
		{Scenario: Logins, Target: Direct, Rate: 1269},
	}
	ig := []Result{
		{Scenario: Logins, Target: Imapgate, Rate: 625}, {Scenario: Logins, Target: Imapgate, Rate: 898},
		{Scenario: Logins, Target: Imapgate, Rate: 929},
	}
	m := median(ig)
	pairWithDirect(&m, ig, direct)
	if got := fmt.Sprintf("%.2f", m.Ratio); got != "0.76" {
		t.Errorf("ratio = %s, want 0.76 (the median of 0.76 0.97 0.73; medians alone gave 898/930 = 0.97)", got)
	}
	if got := roundsVsText(&m); got != "0.76 0.97 0.73× direct" {
		t.Errorf("roundsVsText = %q", got)
	}
	rs := []Result{m, median(direct)}
	computeRatios(rs)
	if got := fmt.Sprintf("%.2f", rs[0].Ratio); got != "0.76" {
		t.Errorf("computeRatios replaced the paired ratio: %s", got)
	}

	// A round in which direct failed is left out of the ratio, and the rounds' own ratios,
	// which would no longer line up with the rounds' figures, are not shown.
	direct[2].Error = "boom"
	m = median(ig)
	pairWithDirect(&m, ig, direct)
	if got := fmt.Sprintf("%.2f", m.Ratio); got != "0.76" || roundsVsText(&m) != "" {
		t.Errorf("with direct failed in a round: ratio %s, rounds %q", got, roundsVsText(&m))
	}
	// A target that failed in a round is reported failed, with no ratio.
	direct[2].Error, ig[1].Error = "", "boom"
	m = median(ig)
	pairWithDirect(&m, ig, direct)
	if m.Error != "boom" || m.Ratio != 0 {
		t.Errorf("a target failed in a round: %+v", m)
	}

	lat := []Result{{Scenario: Latency, P50: 150_000, P99: 300_000}, {Scenario: Latency, P50: 140_000, P99: 250_000}, {Scenario: Latency, P50: 190_000, P99: 330_000}}
	dlat := []Result{{Scenario: Latency, P50: 80_000, P99: 200_000}, {Scenario: Latency, P50: 60_000, P99: 150_000}, {Scenario: Latency, P50: 120_000, P99: 240_000}}
	m = median(lat)
	pairWithDirect(&m, lat, dlat)
	if m.AddedP50 != 70_000 || m.AddedP99 != 100_000 || roundsVsText(&m) != "+70 +80 +70 µs" {
		t.Errorf("latency: added p50 %v, p99 %v, rounds %q", m.AddedP50, m.AddedP99, roundsVsText(&m))
	}
}

func TestPeerNotes(t *testing.T) {
	targets := []string{Direct, Imapgate, DovecotProxy, Nginx}
	rounds := func(tg string, rates ...float64) []Result {
		var rs []Result
		for _, r := range rates {
			rs = append(rs, Result{Scenario: Logins, Target: tg, Rate: r})
		}
		return rs
	}
	runs := [][]Result{
		rounds(Direct, 818, 930, 1269), rounds(Imapgate, 625, 898, 929),
		rounds(DovecotProxy, 535, 863, 897), rounds(Nginx, 730, 979, 1048),
	}
	got := peerNotes(Logins, targets, runs)
	want := []string{
		"logins: imapgate ÷ dovecot-proxy, round by round: 1.17 1.04 1.04× (median 1.04×).",
		"logins: imapgate ÷ nginx, round by round: 0.86 0.92 0.89× (median 0.89×).",
	}
	if !slices.Equal(got, want) {
		t.Errorf("peerNotes =\n%q\nwant\n%q", got, want)
	}
	lat := [][]Result{nil, {{Scenario: Latency, P50: 150_000}}, nil, {{Scenario: Latency, P50: 145_000}}}
	if got := peerNotes(Latency, targets, lat); len(got) != 1 || got[0] != "latency: imapgate's p50 − nginx's, round by round: +5.0 µs (median +5.0 µs)." {
		t.Errorf("latency peerNotes = %q", got)
	}
	if got := peerNotes(Idle, targets, runs); got != nil {
		t.Errorf("idle has no round-by-round note: %q", got)
	}
	// nginx failed a round: the table says it failed, and no note compares with it.
	runs[3][1].Error = "boom"
	if got := peerNotes(Logins, targets, runs); len(got) != 1 || !strings.Contains(got[0], "dovecot-proxy") {
		t.Errorf("with nginx failed in a round: %q", got)
	}
}
