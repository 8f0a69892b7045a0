package config

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// writeTLSFiles writes a self-signed certificate and key for localhost into dir.
func writeTLSFiles(t *testing.T, dir string) (certPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := tlsconf.SelfSignedPEM("localhost", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"cert.pem": certPEM, "key.pem": keyPEM, "ca.pem": certPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certPEM
}

// buildDoc uses relative paths: they must be resolved against the configuration's directory.
const buildDoc = `listeners:
  - name: imap
    address: 127.0.0.1:0
    tls: starttls
    allow_plaintext_auth: true
    preauth_timeout: 10s
  - name: imaps
    address: 127.0.0.1:0
    tls: implicit
  - name: plain
    address: 127.0.0.1:0
tls:
  cert_file: cert.pem
  key_file: key.pem
upstream:
  connect_timeout: 2s
  login_timeout: 7s
routing:
  shards:
    - name: a
      backends:
        - address: 127.0.0.1:10143
          forward_client_ip: true
        - address: localhost:10993
          tls: implicit
          ca_file: ca.pem
    - name: b
      weight: 2
      backends:
        - address: "[::1]:10143"
          tls: starttls
          server_name: mail-b.internal
          insecure_skip_verify: true
  users: {"alice@example.com": a}
  domains: {"example.org": b}
`

func loadBuildDoc(t *testing.T) (*Config, []byte) {
	t.Helper()
	dir := t.TempDir()
	certPEM := writeTLSFiles(t, dir)
	path := filepath.Join(dir, "imapgate.yaml")
	if err := os.WriteFile(path, []byte(buildDoc), 0o600); err != nil {
		t.Fatal(err)
	}
	// Load from another working directory's point of view: only the config's directory
	// makes the relative paths work.
	cfg, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, certPEM
}

func TestListeners(t *testing.T) {
	cfg, certPEM := loadBuildDoc(t)
	ls, err := cfg.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 3 {
		t.Fatalf("%d listeners", len(ls))
	}
	imap, imaps, plain := ls[0], ls[1], ls[2]
	if imap.Address != "127.0.0.1:0" || imap.Options.Name != "imap" || imap.Options.TLS != tlsconf.STARTTLS ||
		!imap.Options.AllowPlaintextAuth || imap.Options.PreAuthTimeout != 10*time.Second {
		t.Errorf("imap = %+v", imap)
	}
	if imaps.Options.TLS != tlsconf.Implicit || imaps.Options.AllowPlaintextAuth || imaps.Options.PreAuthTimeout != 0 {
		t.Errorf("imaps = %+v", imaps)
	}
	if imap.Options.TLSConfig == nil || imap.Options.TLSConfig != imaps.Options.TLSConfig {
		t.Error("the certificate is not loaded once and shared")
	}
	if plain.Options.TLSConfig != nil || plain.Options.TLS != tlsconf.None {
		t.Errorf("plain = %+v", plain)
	}
	// The loaded certificate is the one on disk.
	pool, _ := tlsconf.CertPool(certPEM)
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	go tls.Server(c1, imap.Options.TLSConfig).Handshake()
	if err := tls.Client(c2, &tls.Config{RootCAs: pool, ServerName: "localhost"}).Handshake(); err != nil {
		t.Errorf("handshake: %v", err)
	}
}

func TestListenersMissingCertificate(t *testing.T) {
	doc := `listeners:
  - name: imaps
    address: 127.0.0.1:0
    tls: implicit
tls:
  cert_file: /nonexistent/cert.pem
  key_file: /nonexistent/key.pem
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`
	cfg, err := Parse("t.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.Listeners()
	if err == nil || !strings.HasPrefix(err.Error(), "t.yaml:6: tls.cert_file: ") || !strings.Contains(err.Error(), "/nonexistent/cert.pem") {
		t.Errorf("Listeners: %v", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("errors.Is(%v, fs.ErrNotExist) is false", err)
	}
}

func TestRoutingSpec(t *testing.T) {
	cfg, _ := loadBuildDoc(t)
	spec, err := cfg.RoutingSpec()
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Shards) != 2 || spec.Shards[1].Weight != 2 || spec.Shards[0].Weight != 0 {
		t.Fatalf("shards = %+v", spec.Shards)
	}
	plain, verified := spec.Shards[0].Backends[0], spec.Shards[0].Backends[1]
	if plain.Shard != "a" || plain.Address != "127.0.0.1:10143" || plain.TLS != tlsconf.None || plain.TLSConfig != nil || !plain.ForwardClientIP {
		t.Errorf("plain backend = %+v", plain)
	}
	if verified.TLS != tlsconf.Implicit || verified.TLSConfig == nil || verified.TLSConfig.ServerName != "localhost" ||
		verified.TLSConfig.RootCAs == nil || verified.TLSConfig.InsecureSkipVerify {
		t.Errorf("verified backend = %+v, TLS %+v", verified, verified.TLSConfig)
	}
	insecure := spec.Shards[1].Backends[0]
	if insecure.Shard != "b" || insecure.TLS != tlsconf.STARTTLS || insecure.TLSConfig.ServerName != "mail-b.internal" ||
		!insecure.TLSConfig.InsecureSkipVerify || insecure.TLSConfig.RootCAs != nil {
		t.Errorf("insecure backend = %+v, TLS %+v", insecure, insecure.TLSConfig)
	}
	if spec.Users["alice@example.com"] != "a" || spec.Domains["example.org"] != "b" {
		t.Errorf("users %v, domains %v", spec.Users, spec.Domains)
	}
	spec.Users["mallory"] = "a"
	if _, ok := cfg.Routing.Users["mallory"]; ok {
		t.Error("RoutingSpec shares its Users map with the Config")
	}
	delete(spec.Users, "mallory")

	table, err := routing.NewTable(spec)
	if err != nil {
		t.Fatalf("routing.NewTable: %v", err)
	}
	for user, shard := range map[string]string{"alice@example.com": "a", "bob@example.org": "b"} {
		d, err := (&routing.Static{Table: table}).Route(context.Background(), routing.Request{User: user})
		if err != nil || d.Shard != shard {
			t.Errorf("Route(%s) = %+v, %v; want shard %s", user, d, err, shard)
		}
	}
}

func TestRoutingSpecMissingCA(t *testing.T) {
	doc := `listeners: [{name: imap, address: "127.0.0.1:0"}]
routing:
  shards:
    - name: a
      backends:
        - address: 10.0.0.1:993
          tls: implicit
          ca_file: /nonexistent/ca.pem
`
	cfg, err := Parse("t.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cfg.RoutingSpec()
	if err == nil || !strings.HasPrefix(err.Error(), "t.yaml:8: routing.shards[0].backends[0].ca_file: ") {
		t.Errorf("RoutingSpec: %v", err)
	}
}

func TestProxyOptions(t *testing.T) {
	cfg, _ := loadBuildDoc(t)
	r := &routing.Static{}
	o := cfg.ProxyOptions(r, nil)
	if o.Router != r || o.ConnectTimeout != 2*time.Second || o.LoginTimeout != 7*time.Second {
		t.Errorf("ProxyOptions = %+v", o)
	}
	if o := (&Config{}).ProxyOptions(r, nil); o.ConnectTimeout != 0 || o.LoginTimeout != 0 {
		t.Errorf("zero config gives timeouts %v, %v; want the proxy's defaults (0)", o.ConnectTimeout, o.LoginTimeout)
	}
}

func TestLogger(t *testing.T) {
	t.Run("json by default", func(t *testing.T) {
		var buf bytes.Buffer
		log, err := (&Config{}).LoggerTo(&buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Debug("hidden")
		log.Info("shown", zap.String("user", "alice"))
		if err := log.Sync(); err != nil {
			t.Fatal(err)
		}
		var line map[string]any
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
			t.Fatalf("not one JSON line: %q", buf.String())
		}
		if line["msg"] != "shown" || line["user"] != "alice" || line["level"] != "info" {
			t.Errorf("line = %v", line)
		}
	})
	t.Run("lines wait for the flush", func(t *testing.T) {
		var buf bytes.Buffer
		log, err := (&Config{Log: LogConfig{FlushInterval: Duration(time.Hour)}}).LoggerTo(&buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("first")
		log.Info("second")
		if buf.String() != "" {
			t.Errorf("written before the flush: %q", buf.String())
		}
		if err := log.Sync(); err != nil {
			t.Fatal(err)
		}
		if s := buf.String(); strings.Count(s, "\n") != 2 || !strings.Contains(s, `"msg":"second"`) {
			t.Errorf("after Sync: %q", s)
		}
	})
	t.Run("0s in the file writes each line at once", func(t *testing.T) {
		cfg, err := Parse("t.yaml", []byte(minimal+"log:\n  flush_interval: 0s\n"))
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		log, err := cfg.LoggerTo(&buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("now")
		if !strings.Contains(buf.String(), `"msg":"now"`) {
			t.Errorf("not written at once: %q", buf.String())
		}
	})
	t.Run("console at debug", func(t *testing.T) {
		var buf bytes.Buffer
		log, err := (&Config{Log: LogConfig{Format: "console", Level: "debug"}}).logger(zapcore.AddSync(&buf))
		if err != nil {
			t.Fatal(err)
		}
		log.Debug("visible")
		if s := buf.String(); !strings.Contains(s, "DEBUG\tvisible") {
			t.Errorf("console output %q", s)
		}
	})
	t.Run("warn hides info", func(t *testing.T) {
		var buf bytes.Buffer
		log, _ := (&Config{Log: LogConfig{Level: "warn"}}).logger(zapcore.AddSync(&buf))
		log.Info("hidden")
		if buf.Len() != 0 {
			t.Errorf("output %q", buf.String())
		}
	})
	for _, lc := range []LogConfig{{Format: "text"}, {Level: "loud"}} {
		if _, err := (&Config{Log: lc}).Logger(); err == nil {
			t.Errorf("Logger with %+v succeeded", lc)
		}
	}
	if log, err := (&Config{}).Logger(); err != nil || log == nil {
		t.Errorf("Logger() = %v, %v", log, err)
	}
}

func TestPath(t *testing.T) {
	c := &Config{dir: "/etc/imapgate"}
	for in, want := range map[string]string{"": "", "cert.pem": "/etc/imapgate/cert.pem", "/x/cert.pem": "/x/cert.pem", "../k.pem": "/etc/k.pem"} {
		if got := c.Path(in); got != want {
			t.Errorf("Path(%q) = %q, want %q", in, got, want)
		}
	}
	if got := (&Config{}).Path("cert.pem"); got != "cert.pem" {
		t.Errorf("Path on a hand-built Config = %q", got)
	}
}
