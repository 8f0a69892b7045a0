package config

import (
	"fmt"
	"time"

	"github.com/imapgate/imapgate/routing"
	"github.com/imapgate/imapgate/tlsconf"
	"gopkg.in/yaml.v3"
)

// Config is one configuration file, decoded. Load and Parse return it validated; a Config
// built by hand should be checked with Validate before the builders are used. Treat a Config
// as read-only once it is in use: the builders read it and other goroutines may too.
//
// Each field's YAML name is in its tag; the repository's README.md documents them all.
type Config struct {
	// ListenerConfigs are the client-facing listeners (YAML "listeners"); at least one.
	ListenerConfigs []ListenerConfig `yaml:"listeners"`
	// TLS is the server certificate offered on STARTTLS and implicit-TLS listeners.
	TLS TLSConfig `yaml:"tls"`
	// Upstream holds the timeouts for reaching backends.
	Upstream UpstreamConfig `yaml:"upstream"`
	// Log chooses the log format and level.
	Log LogConfig `yaml:"log"`
	// Routing is the routing table: shards, their backends, users and domains.
	Routing RoutingConfig `yaml:"routing"`
	// Admin is the admin HTTP API (metrics, health, sessions, kick). It is off unless the
	// section is in the file (an empty "admin:" turns it on with the defaults); see
	// AdminEnabled.
	Admin AdminConfig `yaml:"admin"`

	// file names the configuration in errors; dir is the base of relative paths.
	file, dir string
	// nodes maps a field path ("listeners[1].tls") to its YAML nodes, for line numbers.
	// Nil for a Config built by hand.
	nodes map[string]position
}

// ListenerConfig is one entry of "listeners".
type ListenerConfig struct {
	// Name labels the listener in logs; required, unique.
	Name string `yaml:"name"`
	// Address is host:port to listen on; an empty host means every interface.
	Address string `yaml:"address"`
	// TLS is how clients use TLS on this listener: none (the default), starttls or implicit.
	TLS tlsconf.Mode `yaml:"tls"`
	// AllowPlaintextAuth allows LOGIN and AUTHENTICATE before TLS. Off by default
	// (RFC 9051 section 6.2.3): cleartext connections then advertise LOGINDISABLED.
	AllowPlaintextAuth bool `yaml:"allow_plaintext_auth"`
	// PreAuthTimeout ends a connection that has not logged in and sends nothing for this
	// long. Zero means the proxy's default (60 s).
	PreAuthTimeout Duration `yaml:"preauth_timeout"`
	// Observe says whether sessions run the traffic observer after login: absent means
	// automatic (on when the client or the backend side uses TLS).
	Observe Observe `yaml:"observe"`
}

// Observe is a listener's "observe" field: ObserveAuto when absent, else true or false.
type Observe int

const (
	// ObserveAuto: the field is absent; the observer runs when a side uses TLS.
	ObserveAuto Observe = iota
	// ObserveOn: observe: true.
	ObserveOn
	// ObserveOff: observe: false.
	ObserveOff
)

// UnmarshalYAML implements yaml.Unmarshaler: true or false.
func (o *Observe) UnmarshalYAML(n *yaml.Node) error {
	var b bool
	if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
		return fmt.Errorf("want true or false (leave it out for automatic: on when a side uses TLS), got %q", n.Value)
	}
	*o = ObserveOff
	if b {
		*o = ObserveOn
	}
	return nil
}

// MarshalYAML implements yaml.Marshaler: true, false, or null for automatic.
func (o Observe) MarshalYAML() (any, error) {
	switch o {
	case ObserveOn:
		return true, nil
	case ObserveOff:
		return false, nil
	}
	return nil, nil
}

// TLSConfig is the "tls" section.
type TLSConfig struct {
	// CertFile is the PEM certificate chain (leaf first) for the listeners. Required when any
	// listener uses starttls or implicit.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of CertFile.
	KeyFile string `yaml:"key_file"`
}

// UpstreamConfig is the "upstream" section.
type UpstreamConfig struct {
	// ConnectTimeout bounds dialing a backend, its greeting and the TLS handshake. Zero
	// means the proxy's default (5 s).
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// LoginTimeout bounds the whole upstream login conversation. Zero means the proxy's
	// default (15 s).
	LoginTimeout Duration `yaml:"login_timeout"`
}

// LogConfig is the "log" section.
type LogConfig struct {
	// Format is "json" (the default: one JSON object per line) or "console" (for people).
	Format string `yaml:"format"`
	// Level is "debug", "info" (the default), "warn" or "error".
	Level string `yaml:"level"`
	// FlushInterval is how long a log line may wait in the buffer before it is written: lines
	// are written in batches, at the latest this long after the first of a batch (or when 64
	// KiB wait). Unset (and zero in a Config built by hand): DefaultLogFlushInterval. An
	// explicit "0s" in the file writes each line as it comes.
	FlushInterval Duration `yaml:"flush_interval"`
}

// DefaultLogFlushInterval is log.flush_interval's default. Short enough that a person
// watching the log sees no delay; long enough that a busy proxy writes a batch of lines per
// system call, not one per line.
const DefaultLogFlushInterval = 100 * time.Millisecond

// RoutingConfig is the "routing" section.
type RoutingConfig struct {
	// Shards are the shards; at least one.
	Shards []ShardConfig `yaml:"shards"`
	// Users pins user names (compared case-insensitively) to shard names.
	Users map[string]string `yaml:"users"`
	// Domains sends domains ("example.org") and wildcard domains ("*.example.net") to shard
	// names.
	Domains map[string]string `yaml:"domains"`
}

// ShardConfig is one entry of "routing.shards".
type ShardConfig struct {
	// Name identifies the shard; required, unique.
	Name string `yaml:"name"`
	// Weight is the shard's share of users placed by hashing, relative to the other shards.
	// Omitted (zero) means 1; an explicit 0 is rejected.
	Weight float64 `yaml:"weight"`
	// Backends are the IMAP servers holding the shard's mailboxes; at least one.
	Backends []BackendConfig `yaml:"backends"`
}

// BackendConfig is one entry of "routing.shards[].backends".
type BackendConfig struct {
	// Address is the backend's host:port.
	Address string `yaml:"address"`
	// TLS is how imapgate reaches the backend: none (the default), starttls or implicit.
	TLS tlsconf.Mode `yaml:"tls"`
	// ForwardClientIP sends Dovecot's ID forwarding keys (x-originating-ip and friends)
	// before logging in, when the backend advertises ID.
	ForwardClientIP bool `yaml:"forward_client_ip"`
	// ProxyProtocol sends a PROXY protocol header (v1 or v2; off by default) with the
	// client's address first on each connection to the backend, before TLS.
	ProxyProtocol routing.ProxyProtocol `yaml:"proxy_protocol"`
	// CAFile is a PEM bundle of the CAs that sign the backend's certificate. Empty means the
	// system roots. Only with tls starttls or implicit.
	CAFile string `yaml:"ca_file"`
	// ServerName is the name the backend's certificate must carry. Empty means the host part
	// of Address. Only with tls starttls or implicit.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify turns off verification of the backend's certificate. Never in
	// production: anyone in the path can read the passwords.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// DefaultAdminAddress is where the admin API listens when the "admin" section gives no
// address: loopback only, as the API can end sessions and lists user names.
const DefaultAdminAddress = "127.0.0.1:9143"

// AdminConfig is the "admin" section.
type AdminConfig struct {
	// Address is host:port for the admin HTTP API. Empty means DefaultAdminAddress.
	Address string `yaml:"address"`
	// TokenFile names a file holding the bearer token every admin request must carry. Empty
	// means no token: anyone who can reach Address may use the API.
	TokenFile string `yaml:"token_file"`
}

// Duration is a time.Duration written as a Go duration string in YAML: "5s", "1m30s",
// "250ms". A bare 0 is accepted; other bare numbers are not (is 5 seconds or nanoseconds
// meant?), nor are negative durations.
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("want a duration such as \"5s\" or \"1m30s\"")
	}
	if n.Value == "0" {
		*d = 0
		return nil
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("want a duration such as \"5s\" or \"1m30s\", got %q", n.Value)
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// String returns the duration in Go syntax ("1m30s").
func (d Duration) String() string { return time.Duration(d).String() }
