package admin

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
)

// scrapeHandler serves m's /metrics in process and returns the parsed, linted series.
func scrapeHandler(t *testing.T, m *Metrics) (series, []byte) {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	body := rec.Body.Bytes()
	return parseExposition(t, body), body
}

func TestMetricsHooks(t *testing.T) {
	m := NewMetrics(MetricsOptions{Version: "v1.2.3", NoRuntimeCollectors: true})
	m.Declare([]string{"imap"}, map[string][]string{"a": {"10.0.0.1:143", "10.0.0.2:143"}})
	before, _ := scrapeHandler(t, m)
	for k, want := range map[string]float64{
		key("imapgate_connections_total", "listener", "imap"):                                    0,
		key("imapgate_connections_active", "listener", "imap"):                                   0,
		key("imapgate_sessions_active", "shard", "a", "backend", "10.0.0.2:143"):                 0,
		key("imapgate_upstream_connect_duration_seconds_count", "shard", "a"):                    0,
		key("imapgate_upstream_connect_failures_total", "shard", "a", "backend", "10.0.0.2:143"): 0,
		key("imapgate_logins_total", "result", "unavailable", "mechanism", "LOGIN"):              0,
		key("imapgate_build_info", "version", "v1.2.3", "goversion", runtime.Version()):          1,
		key("imapgate_bytes_total", "direction", DirBackendToClient):                             0,
		"imapgate_imap_idle_sessions":                                                            0,
		"imapgate_dormant_directions":                                                            0,
		"imapgate_login_duration_seconds_count":                                                  0,
		"imapgate_session_duration_seconds_count":                                                0,
		key("imapgate_login_duration_seconds_bucket", "le", "+Inf"):                              0,
		key("imapgate_upstream_connect_duration_seconds_bucket", "shard", "a", "le", "0.001"):    0,
	} {
		if got, ok := before[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	for k := range before {
		if strings.HasPrefix(k, "go_") || strings.HasPrefix(k, "process_") {
			t.Errorf("%s with NoRuntimeCollectors", k)
		}
	}

	m.ConnOpened("imap")
	m.ConnOpened("imap")
	m.ConnClosed("imap")
	m.Login("ok", "LOGIN", 30*time.Millisecond)
	m.Login("auth_failed", "PLAIN", time.Second)
	m.UpstreamConnect("a", "10.0.0.1:143", 2*time.Millisecond, true)
	m.UpstreamConnect("a", "10.0.0.2:143", 5*time.Second, false)
	m.SessionStarted("a", "10.0.0.1:143")
	m.SessionStarted("a", "10.0.0.1:143")
	m.SessionEnded("a", "10.0.0.1:143", 90*time.Second)
	m.Bytes(DirClientToBackend, 100)
	m.Bytes(DirBackendToClient, 1000)
	m.Bytes(DirBackendToClient, 24)
	m.Command("FETCH", 40*time.Millisecond)
	m.Command("FETCH", 60*time.Millisecond)
	m.Command("other", time.Millisecond)
	m.Idle(1)
	m.Idle(1)
	m.Idle(-1)
	m.Dormant(1)
	m.Dormant(1)
	m.Dormant(-1)
	after, _ := scrapeHandler(t, m)
	for k, want := range map[string]float64{
		key("imapgate_connections_total", "listener", "imap"):                                    2,
		key("imapgate_connections_active", "listener", "imap"):                                   1,
		key("imapgate_logins_total", "result", "ok", "mechanism", "LOGIN"):                       1,
		key("imapgate_logins_total", "result", "auth_failed", "mechanism", "PLAIN"):              1,
		"imapgate_login_duration_seconds_count":                                                  1, // failures are not timed
		key("imapgate_login_duration_seconds_bucket", "le", "0.025"):                             0,
		key("imapgate_login_duration_seconds_bucket", "le", "0.05"):                              1,
		key("imapgate_upstream_connect_duration_seconds_count", "shard", "a"):                    2,
		key("imapgate_upstream_connect_failures_total", "shard", "a", "backend", "10.0.0.1:143"): 0,
		key("imapgate_upstream_connect_failures_total", "shard", "a", "backend", "10.0.0.2:143"): 1,
		key("imapgate_upstream_connect_duration_seconds_bucket", "shard", "a", "le", "0.001"):    0,
		key("imapgate_upstream_connect_duration_seconds_bucket", "shard", "a", "le", "0.0025"):   1,
		key("imapgate_sessions_active", "shard", "a", "backend", "10.0.0.1:143"):                 1,
		key("imapgate_sessions_active", "shard", "a", "backend", "10.0.0.2:143"):                 0,
		"imapgate_session_duration_seconds_count":                                                1,
		"imapgate_session_duration_seconds_sum":                                                  90,
		key("imapgate_bytes_total", "direction", DirClientToBackend):                             100,
		key("imapgate_bytes_total", "direction", DirBackendToClient):                             1024,
		key("imapgate_imap_commands_total", "command", "FETCH"):                                  2,
		key("imapgate_imap_commands_total", "command", "other"):                                  1,
		key("imapgate_imap_command_duration_seconds_count", "command", "FETCH"):                  2,
		key("imapgate_imap_command_duration_seconds_bucket", "command", "FETCH", "le", "0.05"):   1,
		"imapgate_imap_idle_sessions":                                                            1,
		"imapgate_dormant_directions":                                                            1,
	} {
		if got, ok := after[k]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, want)
		}
	}
	if got := after["imapgate_imap_command_duration_seconds_sum{command=\"FETCH\"}"]; got < 0.099 || got > 0.101 {
		t.Errorf("FETCH duration sum %v, want 0.1", got)
	}
}

func TestMetricsDefaultVersion(t *testing.T) {
	m := NewMetrics(MetricsOptions{})
	s, _ := scrapeHandler(t, m)
	found := false
	for k, v := range s {
		if strings.HasPrefix(k, "imapgate_build_info{") && v == 1 && !strings.Contains(k, `version=""`) {
			found = true
		}
	}
	if !found {
		t.Error("no imapgate_build_info with a version")
	}
	for _, k := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_open_fds", "process_max_fds",
		"process_resident_memory_bytes", "process_cpu_seconds_total"} {
		if _, ok := s[k]; !ok && runtime.GOOS == "linux" {
			t.Errorf("%s missing", k)
		}
	}
}

// TestMetricsHotPathAllocs: Bytes runs per chunk copied and Command per IMAP command.
func TestMetricsHotPathAllocs(t *testing.T) {
	m := NewMetrics(MetricsOptions{NoRuntimeCollectors: true})
	m.Command("FETCH", time.Millisecond) // first use resolves the children
	if n := testing.AllocsPerRun(1000, func() {
		m.Bytes(DirClientToBackend, 16384)
		m.Bytes(DirBackendToClient, 16384)
	}); n != 0 {
		t.Errorf("Bytes allocates %v times per call", n)
	}
	if n := testing.AllocsPerRun(1000, func() { m.Command("FETCH", time.Millisecond) }); n != 0 {
		t.Errorf("Command allocates %v times per call", n)
	}
	if n := testing.AllocsPerRun(1000, func() { m.Idle(1); m.Idle(-1) }); n != 0 {
		t.Errorf("Idle allocates %v times per call", n)
	}
}

func BenchmarkMetricsBytes(b *testing.B) {
	m := NewMetrics(MetricsOptions{NoRuntimeCollectors: true})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Bytes(DirBackendToClient, 16384)
		}
	})
}

func BenchmarkMetricsCommand(b *testing.B) {
	m := NewMetrics(MetricsOptions{NoRuntimeCollectors: true})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Command("FETCH", time.Millisecond)
		}
	})
}

// TestPromtoolCheckMetrics runs `promtool check metrics` on a full exposition (every hook
// used, runtime collectors on). parseExposition has already linted it with promlint, the
// linter promtool uses.
func TestPromtoolCheckMetrics(t *testing.T) {
	m := NewMetrics(MetricsOptions{})
	m.Declare([]string{"imap", "imaps"}, map[string][]string{"a": {"10.0.0.1:143"}})
	exercise(m)
	_, body := scrapeHandler(t, m)
	tool := promtool(t)
	cmd := exec.Command(tool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || out.Len() > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out.String())
	}
}
