package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
)

// The error tests write configurations in which the line an error must point at carries the
// comment "# <-"; markedLine finds it, so the cases need no line counting.
func markedLine(t *testing.T, doc string) int {
	t.Helper()
	for i, l := range strings.Split(doc, "\n") {
		if strings.Contains(l, "# <-") {
			return i + 1
		}
	}
	t.Fatal("no # <- marker in the case")
	return 0
}

const validDoc = `
listeners:
  - name: imap
    address: 127.0.0.1:1143
    tls: starttls
    allow_plaintext_auth: false
    preauth_timeout: 30s
  - name: imaps
    address: 127.0.0.1:1993
    tls: implicit
tls:
  cert_file: /etc/imapgate/cert.pem
  key_file: /etc/imapgate/key.pem
upstream:
  connect_timeout: 5s
  login_timeout: 1m30s
log:
  format: console
  level: debug
routing:
  shards:
    - name: a
      weight: 1
      backends:
        - address: 127.0.0.1:10143
          tls: none
          forward_client_ip: true
          proxy_protocol: v2
        - address: 127.0.0.1:10993
          tls: implicit
          ca_file: /etc/imapgate/backend-ca.pem
          server_name: mail-a.internal
    - name: b
      weight: 2.5
      backends:
        - address: "[::1]:10143"
          tls: starttls
          insecure_skip_verify: true
  users: {"alice@example.com": a}
  domains: {"example.org": b, "*.example.net": b}
`

func TestParseValid(t *testing.T) {
	cfg, err := Parse("t.yaml", []byte(validDoc))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(cfg.ListenerConfigs); got != 2 {
		t.Fatalf("%d listeners", got)
	}
	l := cfg.ListenerConfigs[0]
	if l.Name != "imap" || l.Address != "127.0.0.1:1143" || l.TLS != tlsconf.STARTTLS || l.AllowPlaintextAuth ||
		time.Duration(l.PreAuthTimeout) != 30*time.Second {
		t.Errorf("listeners[0] = %+v", l)
	}
	if cfg.ListenerConfigs[1].TLS != tlsconf.Implicit {
		t.Errorf("listeners[1].tls = %v", cfg.ListenerConfigs[1].TLS)
	}
	if cfg.TLS.CertFile != "/etc/imapgate/cert.pem" || cfg.TLS.KeyFile != "/etc/imapgate/key.pem" {
		t.Errorf("tls = %+v", cfg.TLS)
	}
	if time.Duration(cfg.Upstream.ConnectTimeout) != 5*time.Second || time.Duration(cfg.Upstream.LoginTimeout) != 90*time.Second {
		t.Errorf("upstream = %+v", cfg.Upstream)
	}
	if cfg.Log != (LogConfig{Format: "console", Level: "debug"}) {
		t.Errorf("log = %+v", cfg.Log)
	}
	r := cfg.Routing
	if len(r.Shards) != 2 || r.Shards[1].Weight != 2.5 || len(r.Shards[0].Backends) != 2 {
		t.Fatalf("shards = %+v", r.Shards)
	}
	want := BackendConfig{Address: "127.0.0.1:10993", TLS: tlsconf.Implicit, CAFile: "/etc/imapgate/backend-ca.pem", ServerName: "mail-a.internal"}
	if got := r.Shards[0].Backends[1]; got != want {
		t.Errorf("backend = %+v, want %+v", got, want)
	}
	if !r.Shards[0].Backends[0].ForwardClientIP || r.Shards[0].Backends[0].ProxyProtocol != routing.ProxyProtocolV2 ||
		!r.Shards[1].Backends[0].InsecureSkipVerify {
		t.Errorf("backend flags lost: %+v", r.Shards)
	}
	if r.Users["alice@example.com"] != "a" || r.Domains["*.example.net"] != "b" || len(r.Domains) != 2 {
		t.Errorf("users %v, domains %v", r.Users, r.Domains)
	}
	if cfg.File() != "t.yaml" {
		t.Errorf("File() = %q", cfg.File())
	}
}

// minimal is the smallest valid configuration; the error cases grow from it.
const minimal = `listeners:
  - name: imap
    address: 127.0.0.1:1143
routing:
  shards:
    - name: a
      backends:
        - address: 127.0.0.1:10143
`

func TestParseMinimal(t *testing.T) {
	cfg, err := Parse("t.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ListenerConfigs[0].TLS != tlsconf.None || cfg.Routing.Shards[0].Weight != 0 {
		t.Errorf("unexpected defaults: %+v", cfg)
	}
}

// errorCases are configurations with exactly one problem. field is the field path the error
// must name ("" for syntax errors), msg a part of the message.
var errorCases = []struct {
	name, doc, field, msg string
}{
	{"unknown top-level field", `listener: # <-
  - name: imap
`, "listener", `unknown field (did you mean "listeners"?)`},
	{"unknown listener field", `listeners:
  - name: imap
    address: 127.0.0.1:1143
    tlss: implicit # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].tlss", "unknown field"},
	{"unknown TLS mode", `listeners:
  - name: imap
    address: 127.0.0.1:1143
  - name: imaps
    address: 127.0.0.1:1993
    tls: tls # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[1].tls", `unknown TLS mode "tls" (want none, starttls or implicit)`},
	{"no listeners", `listeners: [] # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners", "at least one listener"},
	{"listener without name", `listeners:
  - address: 127.0.0.1:1143 # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].name", "missing"},
	{"bad listener name", `listeners:
  - name: "my imap" # <-
    address: 127.0.0.1:1143
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].name", "invalid name"},
	{"duplicate listener name", `listeners:
  - name: imap
    address: 127.0.0.1:1143
  - name: imap # <-
    address: 127.0.0.1:1144
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[1].name", "already used by listeners[0]"},
	{"duplicate listener address", `listeners:
  - name: imap
    address: 127.0.0.1:1143
  - name: imap2
    address: 127.0.0.1:1143 # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[1].address", "already used by listeners[0]"},
	{"listener without address", `listeners:
  - name: imap # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].address", "missing"},
	{"listener address without port", `listeners:
  - name: imap
    address: localhost # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].address", "want host:port"},
	{"listener port out of range", `listeners:
  - name: imap
    address: 127.0.0.1:99999 # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].address", "port must be a number"},
	{"starttls without certificate", `listeners:
  - name: imap
    address: 127.0.0.1:1143
    tls: starttls # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].tls", "set tls.cert_file and tls.key_file"},
	{"cert_file without key_file", `listeners:
  - name: imap
    address: 127.0.0.1:1143
tls: # <-
  cert_file: cert.pem
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "tls.key_file", "missing"},
	{"preauth_timeout without unit", `listeners:
  - name: imap
    address: 127.0.0.1:1143
    preauth_timeout: 30 # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].preauth_timeout", `want a duration such as "5s"`},
	{"negative preauth_timeout", `listeners:
  - name: imap
    address: 127.0.0.1:1143
    preauth_timeout: -5s # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].preauth_timeout", "negative duration"},
	{"connect_timeout not a duration", minimal + `upstream:
  connect_timeout: soon # <-
`, "upstream.connect_timeout", `got "soon"`},
	{"login_timeout a list", minimal + `upstream:
  login_timeout: [1s] # <-
`, "upstream.login_timeout", "want a duration"},
	{"unknown upstream field", minimal + `upstream:
  timeout: 5s # <-
`, "upstream.timeout", "unknown field (want connect_timeout, login_timeout)"},
	{"unknown log format", minimal + `log:
  format: text # <-
`, "log.format", `unknown format "text" (want json or console)`},
	{"unknown log level", minimal + `log:
  level: verbose # <-
`, "log.level", `unknown level "verbose" (want debug, info, warn or error)`},
	{"no routing", `listeners: # <-
  - name: imap
    address: 127.0.0.1:1143
`, "routing.shards", "at least one shard"},
	{"no shards", `listeners:
  - name: imap
    address: 127.0.0.1:1143
routing: # <-
  users: {}
`, "routing.shards", "at least one shard"},
	{"shard without name", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - backends: [{address: "127.0.0.1:10143"}] # <-
`, "routing.shards[0].name", "missing"},
	{"bad shard name", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: "a/b" # <-
      backends: [{address: "127.0.0.1:10143"}]
`, "routing.shards[0].name", "invalid name"},
	{"duplicate shard", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends: [{address: "127.0.0.1:10143"}]
    - name: a # <-
      backends: [{address: "127.0.0.1:10144"}]
`, "routing.shards[1].name", `name "a" already used`},
	{"negative weight", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      weight: -1 # <-
      backends: [{address: "127.0.0.1:10143"}]
`, "routing.shards[0].weight", "want a positive number"},
	{"zero weight", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      weight: 0 # <-
      backends: [{address: "127.0.0.1:10143"}]
`, "routing.shards[0].weight", "leave it out for 1"},
	{"infinite weight", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      weight: .inf # <-
      backends: [{address: "127.0.0.1:10143"}]
`, "routing.shards[0].weight", "want a positive number"},
	{"weight not a number", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      weight: heavy # <-
      backends: [{address: "127.0.0.1:10143"}]
`, "routing.shards[0].weight", `want a number, got "heavy"`},
	{"shard without backends", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a # <-
`, "routing.shards[0].backends", "at least one backend"},
	{"backend without address", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - tls: none # <-
`, "routing.shards[0].backends[0].address", "missing"},
	{"backend without host", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: ":143" # <-
`, "routing.shards[0].backends[0].address", "host is missing"},
	{"backend port 0", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: "10.0.0.1:0" # <-
`, "routing.shards[0].backends[0].address", "port must be a number from 1"},
	{"duplicate backend", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: "mail.example.com:143"
        - address: "MAIL.example.com:143" # <-
`, "routing.shards[0].backends[1].address", "already listed as backends[0]"},
	{"unknown backend TLS mode", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: "10.0.0.1:993"
          tls: ssl # <-
`, "routing.shards[0].backends[0].tls", `unknown TLS mode "ssl"`},
	{"unknown PROXY protocol version", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: "10.0.0.1:143"
          proxy_protocol: v3 # <-
`, "routing.shards[0].backends[0].proxy_protocol", `unknown PROXY protocol version "v3" (want off, v1 or v2)`},
	{"unknown backend field", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: "10.0.0.1:993"
          ca: ca.pem # <-
`, "routing.shards[0].backends[0].ca", "unknown field"},
	{"ca_file with tls none", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: "10.0.0.1:143"
          ca_file: ca.pem # <-
`, "routing.shards[0].backends[0].ca_file", "tls is none"},
	{"server_name with tls none", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: "10.0.0.1:143"
          server_name: mail # <-
`, "routing.shards[0].backends[0].server_name", "tls is none"},
	{"insecure_skip_verify and ca_file", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: "10.0.0.1:993"
          tls: implicit
          ca_file: ca.pem
          insecure_skip_verify: true # <-
`, "routing.shards[0].backends[0].insecure_skip_verify", "ca_file is set too"},
	{"forward_client_ip not a bool", `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing:
  shards:
    - name: a
      backends:
        - address: "10.0.0.1:993"
          forward_client_ip: sometimes # <-
`, "routing.shards[0].backends[0].forward_client_ip", `want true or false, got "sometimes"`},
	{"user on unknown shard", minimal + `  users:
    alice@example.com: c # <-
`, `routing.users["alice@example.com"]`, `unknown shard "c" (have a)`},
	{"user with empty shard", minimal + `  users:
    alice@example.com: # <-
`, `routing.users["alice@example.com"]`, `missing shard name`},
	{"user twice ignoring case", minimal + `  users:
    alice@example.com: a
    Alice@Example.com: a # <-
`, `routing.users["Alice@Example.com"]`, `same user as "alice@example.com"`},
	{"user key given twice", minimal + `  users:
    alice@example.com: a
    alice@example.com: a # <-
`, `routing.users["alice@example.com"]`, "key given twice (first on line"},
	{"user name with a space", minimal + `  users:
    "alice smith": a # <-
`, `routing.users["alice smith"]`, "space"},
	{"domain on unknown shard", minimal + `  domains:
    example.org: b # <-
`, `routing.domains["example.org"]`, `unknown shard "b"`},
	{"bad wildcard", minimal + `  domains:
    "*example.org": a # <-
`, `routing.domains["*example.org"]`, `"*" is only allowed as the whole first label`},
	{"wildcard in the middle", minimal + `  domains:
    "mail.*.org": a # <-
`, `routing.domains["mail.*.org"]`, `"*" is only allowed`},
	{"domain with @", minimal + `  domains:
    "@example.org": a # <-
`, `routing.domains["@example.org"]`, `has no "@"`},
	{"domain with empty label", minimal + `  domains:
    "example..org": a # <-
`, `routing.domains["example..org"]`, "empty label"},
	{"users not a mapping", minimal + `  users: [alice] # <-
`, "routing.users", "want a mapping"},
	{"users value a list", minimal + `  users:
    alice: [a] # <-
`, `routing.users["alice"]`, "want a single value, got a list"},
	{"listeners not a list", `listeners: imap # <-
`, "listeners", `want a list, got "imap"`},
	{"listener a scalar", `listeners:
  - imap # <-
`, "listeners[0]", "want a mapping"},
	{"allow_plaintext_auth not a bool", `listeners:
  - name: imap
    address: 127.0.0.1:1143
    allow_plaintext_auth: perhaps # <-
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].allow_plaintext_auth", "want true or false"},
	{"field given twice", `listeners:
  - name: imap
    name: imap2 # <-
    address: 127.0.0.1:1143
routing:
  shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]
`, "listeners[0].name", "field given twice (first on line 2)"},
	{"merge key", `listeners:
  - &d {name: imap, address: "127.0.0.1:1143"}
  - <<: *d # <-
    name: imap2
`, "listeners[1]", "merge keys"},
	{"document not a mapping", `- listeners # <-
`, "", "want a mapping"},
	{"syntax error", `listeners:
  - name: imap # <- yaml.v3 reports the start of the unclosed mapping
    address: [127.0.0.1:1143
`, "", ""},
	{"tab indentation", "listeners:\n\t- name: imap # <-\n", "", ""},
	{"two documents", minimal + `--- # <-
listeners: []
`, "", "more than one YAML document"},
}

func TestParseErrors(t *testing.T) {
	for _, tc := range errorCases {
		t.Run(tc.name, func(t *testing.T) {
			line := markedLine(t, tc.doc)
			_, err := Parse("t.yaml", []byte(tc.doc))
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if strings.Count(msg, "\n") != 0 {
				t.Errorf("want exactly one error, got:\n%s", msg)
			}
			want := fmt.Sprintf("t.yaml:%d: ", line)
			if tc.field != "" {
				want += tc.field + ": "
			}
			if !strings.HasPrefix(msg, want) {
				t.Errorf("error %q does not start with %q", msg, want)
			}
			if !strings.Contains(msg, tc.msg) {
				t.Errorf("error %q does not contain %q", msg, tc.msg)
			}
			var e *Error
			if !errors.As(err, &e) || e.File != "t.yaml" || e.Line != line || e.Field != tc.field {
				t.Errorf("errors.As: %#v", e)
			}
		})
	}
}

func TestParseEmpty(t *testing.T) {
	for _, doc := range []string{"", "# nothing\n", "~\n", "{}\n"} {
		_, err := Parse("t.yaml", []byte(doc))
		want := "t.yaml:1: listeners: at least one listener is required\nt.yaml:1: routing.shards: at least one shard is required"
		if err == nil || err.Error() != want {
			t.Errorf("Parse(%q) = %v, want\n%s", doc, err, want)
		}
	}
}

func TestParseReportsEveryError(t *testing.T) {
	doc := `listeners:
  - name: imap
    address: nowhere
    tls: starttls
log:
  level: loud
routing:
  shards:
    - name: a
      backends: [{address: "10.0.0.1:143"}]
  users: {alice: z}
`
	_, err := Parse("t.yaml", []byte(doc))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"t.yaml:3: listeners[0].address: ",
		"t.yaml:4: listeners[0].tls: ",
		"t.yaml:6: log.level: ",
		`t.yaml:11: routing.users["alice"]: `,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%v", want, err)
		}
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 4 {
		t.Errorf("%d errors, want 4:\n%v", n, err)
	}
}

func TestParseAliases(t *testing.T) {
	doc := `listeners:
  - name: imap
    address: 127.0.0.1:1143
routing:
  shards:
    - name: a
      backends: &backends
        - address: 10.0.0.1:143
          forward_client_ip: true
    - name: b
      backends: *backends
`
	cfg, err := Parse("t.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if b := cfg.Routing.Shards[1].Backends; len(b) != 1 || !b[0].ForwardClientIP {
		t.Errorf("aliased backends = %+v", b)
	}
}

func TestParseAliasBomb(t *testing.T) {
	// 15 KB that expand to a million backends: the walker checks the anchored values once,
	// and yaml.v3 refuses to decode so many aliases.
	refs := strings.Repeat("*x, ", 1000)
	doc := "listeners: [{name: imap, address: \"127.0.0.1:1143\"}]\n" +
		"routing:\n  shards:\n" +
		"    - &s {name: a, backends: [&x {address: \"10.0.0.1:143\"}, " + refs + "]}\n" +
		strings.Repeat("    - *s\n", 1000)
	start := time.Now()
	_, err := Parse("t.yaml", []byte(doc))
	if err == nil || !strings.Contains(err.Error(), "alias") {
		t.Errorf("error = %.200v, want one about aliasing", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load("testdata/does-not-exist.yaml"); err == nil || !strings.Contains(err.Error(), "does-not-exist.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "f", Line: 3, Field: "a.b", Err: errors.New("bad")}, "f:3: a.b: bad"},
		{Error{File: "f", Err: errors.New("bad")}, "f: bad"},
		{Error{Field: "a", Err: errors.New("bad")}, "a: bad"},
		{Error{Line: 2, Err: errors.New("bad")}, "line 2: bad"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("%#v: %q, want %q", tc.e, got, tc.want)
		}
	}
}

func TestValidateByHand(t *testing.T) {
	cfg := &Config{
		ListenerConfigs: []ListenerConfig{{Name: "imap", Address: "127.0.0.1:0", PreAuthTimeout: -1}},
		Routing:         RoutingConfig{Shards: []ShardConfig{{Name: "a", Backends: []BackendConfig{{Address: "10.0.0.1:143"}}}}},
	}
	err := cfg.Validate()
	if err == nil || err.Error() != "listeners[0].preauth_timeout: negative duration -1ns" {
		t.Errorf("Validate = %v", err)
	}
	cfg.ListenerConfigs[0].PreAuthTimeout = 0
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate = %v", err)
	}
}

func TestDuration(t *testing.T) {
	d := Duration(90 * time.Second)
	v, err := d.MarshalYAML()
	if err != nil || v != "1m30s" {
		t.Errorf("MarshalYAML = %v, %v", v, err)
	}
}

func TestParentPath(t *testing.T) {
	for in, want := range map[string]string{
		"a":                       "",
		"a.b":                     "a",
		"a.b[2]":                  "a.b",
		"a.b[2].c":                "a.b[2]",
		`routing.users["x.y[1]"]`: "routing.users",
	} {
		if got := parentPath(in); got != want {
			t.Errorf("parentPath(%q) = %q, want %q", in, got, want)
		}
	}
}
