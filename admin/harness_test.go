package admin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/deploy/memdemo"
	"github.com/imapgate/imapgate/proxy"
	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// The proxy's closer is one goroutine for the process, alive for up to two batch intervals
// after the last connection closed (proxy/sock.go).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/imapgate/imapgate/proxy.(*batchCloser).run"),
		goleak.IgnoreTopFunction("github.com/imapgate/imapgate/proxy.(*workerPool).work")) // waiting workers (proxy/workers.go)
}

// testToken is the admin token of the end-to-end environment.
const testToken = "test-token-0123456789abcdef"

// env is a real proxy.Server with two listeners (implicit TLS and cleartext with plaintext
// login allowed) in front of in-process imapmemserver shards, routed by a routing.Table,
// with Metrics and the admin API on loopback.
//
//	shard a: alice, carol (backend addrA)
//	shard b: bob (backend addrB)
//	shard down: a backend that refuses connections; domain down.example goes there
type env struct {
	t          *testing.T
	proxy      *proxy.Server
	metrics    *Metrics
	events     *eventMetrics
	api        *Server
	url        string // http://127.0.0.1:port
	http       *http.Client
	tlsAddr    string // implicit TLS listener "imaps"
	plainAddr  string // cleartext listener "imap"
	clientTLS  *tls.Config
	addrA      string
	addrB      string
	addrDown   string
	logs       *observer.ObservedLogs
	table      *routing.Table
	serveErrs  chan error
	messageLen int // size of alice's message 1
}

// eventMetrics passes every event to Metrics and reports the ends of connections and
// sessions on channels, so that tests wait for the event itself instead of sleeping.
type eventMetrics struct {
	*Metrics
	connClosed   chan string // listener name
	sessionEnded chan string // backend address
}

func (e *eventMetrics) ConnClosed(listener string) {
	e.Metrics.ConnClosed(listener)
	e.connClosed <- listener
}

func (e *eventMetrics) SessionEnded(shard, backend string, d time.Duration) {
	e.Metrics.SessionEnded(shard, backend, d)
	e.sessionEnded <- backend
}

func startEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, serveErrs: make(chan error, 3)}
	shardA, err := memdemo.StartShardWith(context.Background(), memdemo.ShardOptions{Name: "a",
		Users: map[string]string{"alice@example.com": "alice", "carol@example.com": "carol"}, Messages: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shardA.Close() })
	shardB, err := memdemo.StartShardWith(context.Background(), memdemo.ShardOptions{Name: "b",
		Users: map[string]string{"bob@example.org": "bob"}, Messages: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shardB.Close() })
	e.addrA, e.addrB = shardA.Addr, shardB.Addr
	msg, _ := memdemo.SampleMessage("alice@example.com", "a", 0)
	e.messageLen = len(msg)

	// A port nothing listens on: connections to it are refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addrDown = ln.Addr().String()
	ln.Close()

	e.table, err = routing.NewTable(routing.TableSpec{
		Shards: []routing.ShardSpec{
			{Name: "a", Backends: []*routing.Backend{{Shard: "a", Address: e.addrA}}},
			{Name: "b", Backends: []*routing.Backend{{Shard: "b", Address: e.addrB}}},
			{Name: "down", Backends: []*routing.Backend{{Shard: "down", Address: e.addrDown}}},
		},
		Users:   map[string]string{"alice@example.com": "a", "carol@example.com": "a"},
		Domains: map[string]string{"example.org": "b", "down.example": "down"},
	})
	if err != nil {
		t.Fatal(err)
	}

	core, logs := observer.New(zap.DebugLevel)
	e.logs = logs
	log := zap.New(core)
	e.metrics = NewMetrics(MetricsOptions{Version: "v0.0.0-test"})
	e.metrics.Declare([]string{"imaps", "imap"}, map[string][]string{"a": {e.addrA}, "b": {e.addrB}, "down": {e.addrDown}})
	e.events = &eventMetrics{Metrics: e.metrics, connClosed: make(chan string, 1000), sessionEnded: make(chan string, 1000)}
	e.proxy = proxy.New(proxy.Options{Router: &routing.Static{Table: e.table}, Logger: log,
		ConnectTimeout: 5 * time.Second, Metrics: e.events})

	serverTLS, certPEM, err := tlsconf.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pool, err := tlsconf.CertPool(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	e.clientTLS = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.tlsAddr, e.plainAddr = tlsLn.Addr().String(), plainLn.Addr().String()
	go func() {
		e.serveErrs <- e.proxy.Serve(tlsLn, proxy.ListenerOptions{Name: "imaps", TLS: tlsconf.Implicit, TLSConfig: serverTLS})
	}()
	go func() {
		e.serveErrs <- e.proxy.Serve(plainLn, proxy.ListenerOptions{Name: "imap", AllowPlaintextAuth: true})
	}()

	e.api = New(Options{Proxy: e.proxy, Router: e.table, Metrics: e.metrics, Token: testToken, Logger: log})
	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.url = "http://" + apiLn.Addr().String()
	go func() { e.serveErrs <- e.api.Serve(apiLn) }()
	e.http = &http.Client{Transport: &http.Transport{}}

	t.Cleanup(func() {
		e.http.CloseIdleConnections()
		e.api.Close()
		e.proxy.Close()
		for range 3 {
			<-e.serveErrs
		}
		for _, entry := range logs.All() {
			if strings.Contains(entry.Message+toJSON(entry.ContextMap()), testToken) {
				t.Errorf("log line shows the admin token: %s %v", entry.Message, entry.ContextMap())
			}
		}
	})
	return e
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// request sends a request to the admin API with the token and returns the status and body.
func (e *env) request(method, path string, body string) (int, []byte) {
	e.t.Helper()
	return doRequest(e.t, e.http, method, e.url+path, body, testToken)
}

func doRequest(t testing.TB, c *http.Client, method, url, body, token string) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, data
}

// getJSON GETs path and decodes the 200 answer into v.
func (e *env) getJSON(path string, v any) {
	e.t.Helper()
	code, body := e.request(http.MethodGet, path, "")
	if code != http.StatusOK {
		e.t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		e.t.Fatalf("GET %s: %v\n%s", path, err, body)
	}
}

// kick posts body to /api/v1/kick and returns how many sessions were kicked.
func (e *env) kick(body string) int {
	e.t.Helper()
	code, data := e.request(http.MethodPost, "/api/v1/kick", body)
	var resp KickResponse
	if code != http.StatusOK || json.Unmarshal(data, &resp) != nil {
		e.t.Fatalf("kick %s: %d %s", body, code, data)
	}
	return resp.Kicked
}

// scrape reads /metrics through the API and returns every sample by series
// (`name{label="value",…}`, labels sorted), checking the exposition with promlint.
func (e *env) scrape() series {
	e.t.Helper()
	code, body := e.request(http.MethodGet, "/metrics", "")
	if code != http.StatusOK {
		e.t.Fatalf("GET /metrics: %d %s", code, body)
	}
	return parseExposition(e.t, body)
}

// waitConnClosed waits until n client connections have ended in the proxy.
func (e *env) waitConnClosed(n int) {
	e.t.Helper()
	for range n {
		select {
		case <-e.events.connClosed:
		case <-time.After(10 * time.Second):
			e.t.Fatal("a client connection did not end in the proxy")
		}
	}
}

// waitSessionEnded waits until n logged-in sessions have ended in the proxy.
func (e *env) waitSessionEnded(n int) {
	e.t.Helper()
	for range n {
		select {
		case <-e.events.sessionEnded:
		case <-time.After(10 * time.Second):
			e.t.Fatal("a session did not end in the proxy")
		}
	}
}

// series maps `name{labels}` to a value. Histograms appear as name_bucket{…,le=…},
// name_sum and name_count, as in the text format.
type series map[string]float64

func seriesKey(name string, labels []*dto.LabelPair, extra ...string) string {
	var parts []string
	for _, l := range labels {
		parts = append(parts, l.GetName()+"="+`"`+l.GetValue()+`"`)
	}
	parts = append(parts, extra...)
	if len(parts) == 0 {
		return name
	}
	slices.Sort(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

// key builds a series key from a name and label name-value pairs, in any order.
func key(name string, labelPairs ...string) string {
	var parts []string
	for i := 0; i+1 < len(labelPairs); i += 2 {
		parts = append(parts, labelPairs[i]+"="+`"`+labelPairs[i+1]+`"`)
	}
	if len(parts) == 0 {
		return name
	}
	slices.Sort(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

// parseExposition parses the text format, lints it as `promtool check metrics` does, and
// flattens it into series.
func parseExposition(t testing.TB, body []byte) series {
	t.Helper()
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	out := make(series)
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				out[seriesKey(name, m.GetLabel())] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[seriesKey(name, m.GetLabel())] = m.GetGauge().GetValue()
			case dto.MetricType_UNTYPED:
				out[seriesKey(name, m.GetLabel())] = m.GetUntyped().GetValue()
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				out[seriesKey(name+"_count", m.GetLabel())] = float64(h.GetSampleCount())
				out[seriesKey(name+"_sum", m.GetLabel())] = h.GetSampleSum()
				for _, b := range h.GetBucket() {
					out[seriesKey(name+"_bucket", m.GetLabel(), `le="`+strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)+`"`)] = float64(b.GetCumulativeCount())
				}
			case dto.MetricType_SUMMARY:
				s := m.GetSummary()
				out[seriesKey(name+"_count", m.GetLabel())] = float64(s.GetSampleCount())
				out[seriesKey(name+"_sum", m.GetLabel())] = s.GetSampleSum()
			}
		}
	}
	return out
}

// promtool returns the path of promtool, or skips the part of the test that needs it.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian: apt-get install prometheus); checked with the Go parsers only")
	}
	return p
}

// rawClient is a transcript client for what imapclient cannot do (sit in IDLE and read
// everything until the connection ends).
type rawClient struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func (e *env) dialRaw(tlsOn bool) *rawClient {
	e.t.Helper()
	var conn net.Conn
	var err error
	if tlsOn {
		conn, err = tls.Dial("tcp", e.tlsAddr, e.clientTLS)
	} else {
		conn, err = net.Dial("tcp", e.plainAddr)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	c := &rawClient{t: e.t, conn: conn, br: bufio.NewReader(conn)}
	c.expect("* OK")
	return c
}

// send writes one command line.
func (c *rawClient) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatal(err)
	}
}

// expect reads lines until one starts with prefix, and returns it.
func (c *rawClient) expect(prefix string) string {
	c.t.Helper()
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("waiting for %q: %v", prefix, err)
		}
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
}

// rest reads until the connection ends and returns what came.
func (c *rawClient) rest() (string, error) {
	data, err := io.ReadAll(c.br)
	return string(data), err
}
