package admin

import (
	"net/http"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/imapgate/imapgate/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Label values of imapgate_bytes_total, as the proxy passes them to Metrics.Bytes.
const (
	DirClientToBackend = "client_to_backend"
	DirBackendToClient = "backend_to_client"
)

// LoginResults are the values of the result label of imapgate_logins_total, and
// LoginMechanisms those of its mechanism label (proxy.Metrics.Login documents them).
var (
	LoginResults    = []string{"ok", "auth_failed", "unavailable", "error", "aborted"}
	LoginMechanisms = []string{"LOGIN", "PLAIN"}
)

// Histogram buckets, in seconds.
var (
	// loginBuckets: accept to login done includes the TLS handshake, the client's own pace
	// and the backend's password check.
	loginBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
	// connectBuckets: dial, greeting and TLS handshake; the default connect timeout is 5 s.
	connectBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	// sessionBuckets: from seconds (a curl fetch) to a day (a desktop client left open).
	sessionBuckets = []float64{1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400}
	// commandBuckets: a NOOP in a millisecond to an IDLE of the 29 minutes RFC 9051
	// section 6.3.13 suggests.
	commandBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800}
)

// MetricsOptions configure NewMetrics. The zero value is usable.
type MetricsOptions struct {
	// Version is the version label of imapgate_build_info. Empty means the main module's
	// version from the build information ("(devel)" for a build from a checkout).
	Version string
	// NoRuntimeCollectors leaves out the Go runtime (go_*) and process (process_*) metrics.
	NoRuntimeCollectors bool
}

// Metrics implements proxy.Metrics with Prometheus metrics on a registry of its own (not
// the global default registry, so that two Metrics in one process, as in tests, never
// clash). Handler serves them; Registry gives the registry itself.
//
// The methods called per chunk of data and per IMAP command (Bytes, Command) look their
// label values up without allocating; the others run once per connection or session.
type Metrics struct {
	reg *prometheus.Registry

	connActive    *prometheus.GaugeVec
	connTotal     *prometheus.CounterVec
	logins        *prometheus.CounterVec
	loginDuration prometheus.Histogram
	upConnect     *prometheus.HistogramVec
	sessActive    *prometheus.GaugeVec
	upFailures    *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	c2b, b2c      prometheus.Counter
	sessDuration  prometheus.Histogram
	commands      *prometheus.CounterVec
	cmdDuration   *prometheus.HistogramVec
	idle          prometheus.Gauge
	dormant       prometheus.Gauge

	listeners sync.Map // listener name → *listenerMetrics
	cmds      sync.Map // command name → *commandMetrics
}

var _ proxy.Metrics = (*Metrics)(nil)

type listenerMetrics struct {
	active prometheus.Gauge
	total  prometheus.Counter
}

type commandMetrics struct {
	count    prometheus.Counter
	duration prometheus.Observer
}

// NewMetrics returns Metrics with every imapgate_* metric registered, plus the Go runtime
// and process collectors unless opts.NoRuntimeCollectors.
func NewMetrics(opts MetricsOptions) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		connActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imapgate_connections_active",
			Help: "Client connections open now, before and after login, by listener.",
		}, []string{"listener"}),
		connTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgate_connections_total",
			Help: "Client connections accepted, by listener.",
		}, []string{"listener"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgate_logins_total",
			Help: "Login attempts by result (ok, auth_failed, unavailable, error, aborted) and mechanism (LOGIN, PLAIN).",
		}, []string{"result", "mechanism"}),
		loginDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "imapgate_login_duration_seconds",
			Help:    "Time from accepting a connection to its successful login (TLS, the client's commands, routing and the upstream login).",
			Buckets: loginBuckets,
		}),
		upConnect: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "imapgate_upstream_connect_duration_seconds",
			Help:    "Time to dial a backend and read its greeting, TLS included, successful or not, by shard.",
			Buckets: connectBuckets,
		}, []string{"shard"}),
		upFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgate_upstream_connect_failures_total",
			Help: "Backend connection attempts that failed (refused, timed out, no greeting, TLS failed), by shard and backend address.",
		}, []string{"shard", "backend"}),
		sessActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "imapgate_sessions_active",
			Help: "Logged-in sessions open now, by shard and backend.",
		}, []string{"shard", "backend"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgate_bytes_total",
			Help: "Bytes copied after login, by direction (client_to_backend, backend_to_client).",
		}, []string{"direction"}),
		sessDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "imapgate_session_duration_seconds",
			Help:    "Duration of logged-in sessions, from the handoff to the end.",
			Buckets: sessionBuckets,
		}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imapgate_imap_commands_total",
			Help: "IMAP commands completed after login, as the traffic observer sees them, by command (other for names outside the known list).",
		}, []string{"command"}),
		cmdDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "imapgate_imap_command_duration_seconds",
			Help:    "Time from an IMAP command to its tagged completion, by command.",
			Buckets: commandBuckets,
		}, []string{"command"}),
		idle: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imapgate_imap_idle_sessions",
			Help: "Sessions in IDLE now, as the traffic observer sees them.",
		}),
		dormant: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imapgate_dormant_directions",
			Help: "Directions of logged-in sessions silent long enough to wait in the shared poller, holding no goroutine.",
		}),
	}
	m.c2b = m.bytes.WithLabelValues(DirClientToBackend)
	m.b2c = m.bytes.WithLabelValues(DirBackendToClient)
	for _, r := range LoginResults {
		for _, mech := range LoginMechanisms {
			m.logins.WithLabelValues(r, mech)
		}
	}

	version := opts.Version
	if version == "" {
		version = "(unknown)"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
			version = bi.Main.Version
		}
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "imapgate_build_info",
		Help: "Always 1; the labels tell the imapgate version and the Go version it was built with.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(version, runtime.Version()).Set(1)

	m.reg.MustRegister(m.connActive, m.connTotal, m.logins, m.loginDuration, m.upConnect,
		m.sessActive, m.upFailures, m.bytes, m.sessDuration, m.commands, m.cmdDuration, m.idle, m.dormant, build)
	if !opts.NoRuntimeCollectors {
		m.reg.MustRegister(collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return m
}

// Registry returns the registry holding the metrics, to add more collectors or to gather.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus text exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Declare creates the series of the listeners and of the shards' backends (shard name →
// backend addresses) at zero, so that they are scraped before their first event: rate()
// and absent() then see the first connection, and dashboards list every backend.
func (m *Metrics) Declare(listeners []string, backends map[string][]string) {
	for _, l := range listeners {
		m.listener(l)
	}
	for shard, addrs := range backends {
		m.upConnect.WithLabelValues(shard)
		for _, a := range addrs {
			m.sessActive.WithLabelValues(shard, a)
			m.upFailures.WithLabelValues(shard, a)
		}
	}
}

func (m *Metrics) listener(name string) *listenerMetrics {
	if v, ok := m.listeners.Load(name); ok {
		return v.(*listenerMetrics)
	}
	v, _ := m.listeners.LoadOrStore(name, &listenerMetrics{
		active: m.connActive.WithLabelValues(name),
		total:  m.connTotal.WithLabelValues(name),
	})
	return v.(*listenerMetrics)
}

// ConnOpened implements proxy.Metrics.
func (m *Metrics) ConnOpened(listener string) {
	lm := m.listener(listener)
	lm.total.Inc()
	lm.active.Inc()
}

// ConnClosed implements proxy.Metrics.
func (m *Metrics) ConnClosed(listener string) { m.listener(listener).active.Dec() }

// Login implements proxy.Metrics. Only successful logins are observed in
// imapgate_login_duration_seconds: failures are counted by result, and a failure's duration
// (a password typed wrong, a connect timeout) says nothing about the service's latency.
func (m *Metrics) Login(result, mechanism string, d time.Duration) {
	m.logins.WithLabelValues(result, mechanism).Inc()
	if result == "ok" {
		m.loginDuration.Observe(d.Seconds())
	}
}

// UpstreamConnect implements proxy.Metrics.
func (m *Metrics) UpstreamConnect(shard, backend string, d time.Duration, ok bool) {
	m.upConnect.WithLabelValues(shard).Observe(d.Seconds())
	if !ok {
		m.upFailures.WithLabelValues(shard, backend).Inc()
	}
}

// SessionStarted implements proxy.Metrics.
func (m *Metrics) SessionStarted(shard, backend string) {
	m.sessActive.WithLabelValues(shard, backend).Inc()
}

// SessionEnded implements proxy.Metrics.
func (m *Metrics) SessionEnded(shard, backend string, d time.Duration) {
	m.sessActive.WithLabelValues(shard, backend).Dec()
	m.sessDuration.Observe(d.Seconds())
}

// Bytes implements proxy.Metrics. It is called per chunk copied: the two directions'
// counters are resolved once, in NewMetrics.
func (m *Metrics) Bytes(direction string, n int64) {
	switch direction {
	case DirClientToBackend:
		m.c2b.Add(float64(n))
	case DirBackendToClient:
		m.b2c.Add(float64(n))
	default:
		m.bytes.WithLabelValues(direction).Add(float64(n))
	}
}

// Command implements proxy.Metrics. Each command name's counter and histogram are resolved
// on its first use and kept (the names come from a fixed list).
func (m *Metrics) Command(name string, d time.Duration) {
	var cm *commandMetrics
	if v, ok := m.cmds.Load(name); ok {
		cm = v.(*commandMetrics)
	} else {
		v, _ := m.cmds.LoadOrStore(name, &commandMetrics{
			count:    m.commands.WithLabelValues(name),
			duration: m.cmdDuration.WithLabelValues(name),
		})
		cm = v.(*commandMetrics)
	}
	cm.count.Inc()
	cm.duration.Observe(d.Seconds())
}

// Idle implements proxy.Metrics.
func (m *Metrics) Idle(delta int) { m.idle.Add(float64(delta)) }

// Dormant implements proxy.Metrics.
func (m *Metrics) Dormant(delta int) { m.dormant.Add(float64(delta)) }
