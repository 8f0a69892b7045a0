package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imapgate/imapgate/deploy/bench"
)

// benchChildEnv makes the test binary act as `imapgate` (for the bench's `imapgate serve`
// children): init runs before the testing flags are parsed, so the child never runs tests.
const benchChildEnv = "IMAPGATE_TEST_RUN_AS_IMAPGATE"

func init() {
	if os.Getenv(benchChildEnv) != "1" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// TestBenchSmoke runs every scenario against direct, the relay and imapgate on the
// in-process backend with tiny numbers, so that the bench keeps working; the figures mean
// nothing here.
// (TLS on the client side is covered by deploy/bench's TestPeers with the other proxies.)
func TestBenchSmoke(t *testing.T) {
	saved := benchChild
	defer func() { benchChild = saved }()
	benchChild = func() (bench.Command, error) {
		exe, err := os.Executable()
		return bench.Command{Path: exe, Args: []string{"serve"}, Env: []string{benchChildEnv + "=1"}}, err
	}
	out := filepath.Join(t.TempDir(), "bench.json")
	start := time.Now()
	code, stdout, stderr := runCmd(t, "bench", "-backend", "memory", "-targets", "direct,relay,login-loop,imapgate",
		"-n", "20", "-duration", "200ms", "-rounds", "1", "-concurrency", "4", "-users", "5", "-messages", "2",
		"-message-size", "100000", "-out", out)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	t.Logf("took %v\n%s", time.Since(start), stdout)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^command: +imapgate bench -backend memory -targets direct,relay,login-loop,imapgate -n 20 -duration 200ms -rounds 1 `),
		regexp.MustCompile(`(?m)^machine: +\d+ CPUs .*, TCP congestion control \S+, go1\.`),
		regexp.MustCompile(`(?m)^logins +direct +\d+ logins/s +1\.00× direct`),
		regexp.MustCompile(`(?m)^peer: +relay: a bare byte relay`),
		regexp.MustCompile(`(?m)^logins +relay +\d+ logins/s +\d+\.\d\d× direct .*proxy CPU `),
		regexp.MustCompile(`(?m)^latency +relay +p50 [\d.]+ [µm]s +[-+][\d.]+ [µm]s p50`),
		regexp.MustCompile(`(?m)^peer: +login-loop: relay-loop with the least an IMAP login proxy does`),
		regexp.MustCompile(`(?m)^logins +login-loop +\d+ logins/s +\d+\.\d\d× direct .*proxy CPU `),
		regexp.MustCompile(`(?m)^idle +login-loop +-?[\d.]+ KiB/session .*; 20/20 held`),
		regexp.MustCompile(`(?m)^logins +imapgate +\d+ logins/s +\d+\.\d\d× direct .*session p50 .*; machine CPU [\d.]+ [µm]s/login`),
		regexp.MustCompile(`(?m)^throughput +direct +\d+ MB/s .*; machine CPU [\d.]+ [µm]s/MB`),
		regexp.MustCompile(`(?m)^- machine CPU per login or MB: `),
		regexp.MustCompile(`(?m)^throughput +imapgate +\d+ MB/s +\d+\.\d\d× direct .*FETCH 1:\* of 0\.2 MB`),
		regexp.MustCompile(`(?m)^latency +imapgate +p50 [\d.]+ [µm]s +[-+][\d.]+ [µm]s p50`),
		regexp.MustCompile(`(?m)^idle +direct +20/20 held`),
		regexp.MustCompile(`(?m)^idle +imapgate +-?[\d.]+ KiB/session .*fds/session; 20/20 held`),
	} {
		if !want.MatchString(stdout) {
			t.Errorf("table lacks %s", want)
		}
	}
	if strings.Contains(stdout, "FAILED") {
		t.Error("a run failed")
	}
	if !strings.Contains(stderr, "bench: idle imapgate: running") {
		t.Errorf("no progress on stderr: %q", stderr)
	}

	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 4*4 {
		t.Fatalf("%d results in the JSON, want 16", len(rep.Results))
	}
	for _, r := range rep.Results {
		if r.Error != "" || r.Skipped != "" || r.Elapsed <= 0 {
			t.Errorf("%s %s: %+v", r.Scenario, r.Target, r)
		}
		if r.Scenario == bench.Idle && r.Target != bench.Direct && (r.Held != 20 || r.Procs != 1 || r.RSSAfter <= 0) {
			t.Errorf("idle %s: %+v", r.Target, r)
		}
	}
}

func TestBenchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "-targets", "haproxy", "-backend", "memory"},
		{"bench", "-backend", "sqlite"},
	} {
		code, _, errOut := runCmd(t, args...)
		if code != 1 || !strings.Contains(errOut, "unknown") {
			t.Errorf("%q: exit %d, %q", args, code, errOut)
		}
	}
	if code, _, _ := runCmd(t, "bench", "stray"); code != 2 {
		t.Errorf("stray argument: exit %d", code)
	}
	if code, _, errOut := runCmd(t, "bench", "-backend-cpus", "0,x"); code != 2 || !strings.Contains(errOut, `"x" is not a CPU number`) {
		t.Errorf("-backend-cpus 0,x: exit %d, %q", code, errOut)
	}
	// The relay child is run by bench, not by people: not in the usage, and strict.
	if _, out, _ := runCmd(t, "help"); strings.Contains(out, "bench-relay") {
		t.Errorf("usage lists the internal bench-relay:\n%s", out)
	}
	if code, _, errOut := runCmd(t, "bench-relay", "-listen", "127.0.0.1:0"); code != 2 || !strings.Contains(errOut, "-to") {
		t.Errorf("bench-relay without -to: exit %d, %q", code, errOut)
	}
}

func TestCommandLine(t *testing.T) {
	got := commandLine("imapgate bench", []string{"-n", "5000", "-targets", "direct,nginx", "-out", "a b.json", "-x", "it's"})
	want := `imapgate bench -n 5000 -targets direct,nginx -out 'a b.json' -x 'it'\''s'`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// TestServePprof checks `imapgate serve -pprof`: the profiles answer on their own address.
func TestServePprof(t *testing.T) {
	doc := "listeners:\n  - {name: imap, address: \"127.0.0.1:0\", allow_plaintext_auth: true}\n" +
		"routing: {shards: [{name: a, backends: [{address: \"127.0.0.1:1\"}]}]}\n"
	path := writeConfig(t, doc)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "-config", path, "-pprof", "127.0.0.1:0"}, &stdout, &stderr)
	}()
	urlRE := regexp.MustCompile(`"url":"(http://127\.0\.0\.1:\d+/debug/pprof/)"`)
	var url string
	for deadline := time.Now().Add(20 * time.Second); url == "" && time.Now().Before(deadline); {
		if m := urlRE.FindStringSubmatch(stderr.String()); m != nil {
			url = m[1]
			break
		}
		select {
		case code := <-done:
			t.Fatalf("serve exited %d: %s", code, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if url == "" {
		t.Fatalf("no pprof URL in the log: %s", stderr.String())
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	for _, u := range []string{url, url + "goroutine?debug=1", url + "cmdline"} {
		resp, err := client.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || len(body) == 0 {
			t.Errorf("GET %s: %s, %d bytes", u, resp.Status, len(body))
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("serve: exit %d: %s", code, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop")
	}
}

// TestBenchEnvFlag checks -env: KEY=VALUE pairs are kept in order, anything else refused.
func TestBenchEnvFlag(t *testing.T) {
	var l envList
	for _, v := range []string{"GOMAXPROCS=1", "GOGC=400", "GODEBUG="} {
		if err := l.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	if got := l.String(); got != "GOMAXPROCS=1 GOGC=400 GODEBUG=" {
		t.Fatalf("got %q", got)
	}
	for _, v := range []string{"GOMAXPROCS", "=1", ""} {
		if err := l.Set(v); err == nil {
			t.Errorf("Set(%q) accepted", v)
		}
	}
}
