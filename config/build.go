package config

import (
	"crypto/tls"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imapgate/imapgate/proxy"
	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Listener is one client-facing listener, ready for proxy.Server.Serve.
type Listener struct {
	// Address is the host:port to listen on, as configured.
	Address string
	// Options configure the proxy for connections on this listener; TLSConfig holds the
	// loaded server certificate when the listener uses TLS.
	Options proxy.ListenerOptions
}

// File returns the name the configuration was loaded or parsed under; empty for a Config
// built by hand.
func (c *Config) File() string { return c.file }

// Path resolves a file path from the configuration: relative paths are relative to the
// directory of the configuration file.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

// Listeners returns the listeners in configuration order. It loads the server certificate
// (tls.cert_file, tls.key_file) once, when a listener uses TLS, and shares it between them.
// It does not listen.
func (c *Config) Listeners() ([]Listener, error) {
	var server *tls.Config
	out := make([]Listener, 0, len(c.ListenerConfigs))
	for i, l := range c.ListenerConfigs {
		o := proxy.ListenerOptions{
			Name:               l.Name,
			TLS:                l.TLS,
			AllowPlaintextAuth: l.AllowPlaintextAuth,
			PreAuthTimeout:     time.Duration(l.PreAuthTimeout),
		}
		switch l.Observe {
		case ObserveOn:
			o.Observe = proxy.ObserveOn
		case ObserveOff:
			o.Observe = proxy.ObserveOff
		default:
			o.Observe = proxy.ObserveAuto
		}
		if l.TLS != tlsconf.None {
			if server == nil {
				if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
					return nil, c.errorAt(fmt.Sprintf("listeners[%d].tls", i), fmt.Errorf("%s needs tls.cert_file and tls.key_file", l.TLS))
				}
				var err error
				server, err = tlsconf.ServerConfig(c.Path(c.TLS.CertFile), c.Path(c.TLS.KeyFile))
				if err != nil {
					return nil, c.errorAt("tls.cert_file", err)
				}
			}
			o.TLSConfig = server
		}
		out = append(out, Listener{Address: l.Address, Options: o})
	}
	return out, nil
}

// RoutingSpec returns the routing table specification for routing.NewTable. It reads each
// TLS backend's ca_file and builds its client TLS configuration with tlsconf.UpstreamConfig,
// the server name defaulting to the host part of the address. Users and Domains are copies.
func (c *Config) RoutingSpec() (routing.TableSpec, error) {
	spec := routing.TableSpec{
		Shards:  make([]routing.ShardSpec, 0, len(c.Routing.Shards)),
		Users:   make(map[string]string, len(c.Routing.Users)),
		Domains: make(map[string]string, len(c.Routing.Domains)),
	}
	for i, s := range c.Routing.Shards {
		ss := routing.ShardSpec{Name: s.Name, Weight: s.Weight}
		for j, b := range s.Backends {
			rb := &routing.Backend{
				Shard:           s.Name,
				Address:         b.Address,
				TLS:             b.TLS,
				ForwardClientIP: b.ForwardClientIP,
				ProxyProtocol:   b.ProxyProtocol,
			}
			if b.TLS != tlsconf.None {
				name := b.ServerName
				if name == "" {
					host, _, err := net.SplitHostPort(b.Address)
					if err != nil {
						return routing.TableSpec{}, c.errorAt(fmt.Sprintf("routing.shards[%d].backends[%d].address", i, j), err)
					}
					name = host
				}
				cfg, err := tlsconf.UpstreamConfig(c.Path(b.CAFile), name, b.InsecureSkipVerify)
				if err != nil {
					return routing.TableSpec{}, c.errorAt(fmt.Sprintf("routing.shards[%d].backends[%d].ca_file", i, j), err)
				}
				rb.TLSConfig = cfg
			}
			ss.Backends = append(ss.Backends, rb)
		}
		spec.Shards = append(spec.Shards, ss)
	}
	maps.Copy(spec.Users, c.Routing.Users)
	maps.Copy(spec.Domains, c.Routing.Domains)
	return spec, nil
}

// ProxyOptions returns the proxy's options with the given router and logger and the
// upstream timeouts of the configuration (zero: the proxy's defaults).
func (c *Config) ProxyOptions(router proxy.Router, log *zap.Logger) proxy.Options {
	return proxy.Options{
		Router:         router,
		Logger:         log,
		ConnectTimeout: time.Duration(c.Upstream.ConnectTimeout),
		LoginTimeout:   time.Duration(c.Upstream.LoginTimeout),
	}
}

// Logger returns a logger writing to standard error in the configured format (JSON by
// default) at the configured level (info by default). It does not sample: every session's
// lines are kept. Lines are written in batches (log.flush_interval): call the logger's Sync
// before the process exits, so the last batch is written.
func (c *Config) Logger() (*zap.Logger, error) {
	return c.LoggerTo(os.Stderr)
}

// LoggerTo is Logger writing to w instead of standard error. Writes are serialised, so w
// need not be safe for concurrent use; but a batch reaches w from a timer's goroutine, so a
// reader of w while the logger lives (a test reading a bytes.Buffer) calls the logger's Sync
// first, or guards w with a mutex of its own.
func (c *Config) LoggerTo(w io.Writer) (*zap.Logger, error) {
	return c.logger(c.logWriter(w))
}

// logWriter is w as log.flush_interval says: lines written in batches (batchWriter), or, when
// the file says "0s", each at once.
//
// Why batches: each write(2) of a log line was a syscall.Syscall, which wakes the Go
// runtime's sysmon thread when the proxy was idle (see proxy/sock.go); with a login line and
// a session-end line per session, those were half of the proxy's remaining wake-ups in the
// logins benchmark.
func (c *Config) logWriter(w io.Writer) zapcore.WriteSyncer {
	every := time.Duration(c.Log.FlushInterval)
	if every == 0 {
		if c.present("log.flush_interval") {
			return zapcore.Lock(zapcore.AddSync(w))
		}
		every = DefaultLogFlushInterval
	}
	return newBatchWriter(w, every)
}

func (c *Config) logger(w zapcore.WriteSyncer) (*zap.Logger, error) {
	level := zapcore.InfoLevel
	if c.Log.Level != "" {
		if err := level.Set(c.Log.Level); err != nil {
			return nil, c.errorAt("log.level", err)
		}
	}
	var enc zapcore.Encoder
	switch c.Log.Format {
	case "", "json":
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		ec := zap.NewDevelopmentEncoderConfig()
		ec.CallerKey = ""
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, c.errorAt("log.format", fmt.Errorf("unknown format %q (want %s)", c.Log.Format, orList(logFormats)))
	}
	return zap.New(zapcore.NewCore(enc, w, level), zap.ErrorOutput(w)), nil
}

// Admin is the admin HTTP API as configured, ready for admin.New.
type Admin struct {
	// Address is the host:port to listen on.
	Address string
	// Token is the bearer token read from token_file; empty when there is none.
	Token string
}

// AdminEnabled reports whether the configuration turns the admin API on: the file has an
// "admin" section (even an empty one), or, for a Config built by hand, Admin has a field set.
func (c *Config) AdminEnabled() bool {
	return c.present("admin") || c.Admin != AdminConfig{}
}

// minTokenLen is the shortest admin token accepted: 16 characters of `openssl rand -hex`
// carry 64 bits.
const minTokenLen = 16

// AdminAPI returns the admin API's settings, or nil when AdminEnabled is false. It reads the
// token file: surrounding white space (a final newline) is ignored; the token must be at
// least 16 printable ASCII characters without spaces.
func (c *Config) AdminAPI() (*Admin, error) {
	if !c.AdminEnabled() {
		return nil, nil
	}
	a := &Admin{Address: c.Admin.Address}
	if a.Address == "" {
		a.Address = DefaultAdminAddress
	}
	if c.Admin.TokenFile == "" {
		return a, nil
	}
	data, err := os.ReadFile(c.Path(c.Admin.TokenFile))
	if err != nil {
		return nil, c.errorAt("admin.token_file", err)
	}
	tok := strings.TrimSpace(string(data))
	switch {
	case tok == "":
		return nil, c.errorAt("admin.token_file", fmt.Errorf("%s is empty", c.Path(c.Admin.TokenFile)))
	case strings.ContainsFunc(tok, func(r rune) bool { return r <= ' ' || r >= 0x7f }):
		return nil, c.errorAt("admin.token_file", fmt.Errorf("%s: the token must be one word of printable ASCII characters (no spaces, no second line)", c.Path(c.Admin.TokenFile)))
	case len(tok) < minTokenLen:
		return nil, c.errorAt("admin.token_file", fmt.Errorf("%s: the token has %d characters; use at least %d, such as the output of `openssl rand -hex 32`", c.Path(c.Admin.TokenFile), len(tok), minTokenLen))
	}
	a.Token = tok
	return a, nil
}
