package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/imapgate/imapgate/tlsconf"
)

// Log formats and levels accepted in "log".
var (
	logFormats = []string{"json", "console"}
	logLevels  = []string{"debug", "info", "warn", "error"}
)

// nameRE is what listener and shard names may look like: they end up in logs and, later,
// metric labels and admin API paths.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

const nameRule = "letters, digits, '.', '_' and '-', starting with a letter or digit"

// Validate checks c without touching the file system or the network and returns every
// problem found (see Error). Load and Parse call it; call it on a Config built by hand.
func (c *Config) Validate() error {
	v := validator{c: c}
	v.listeners()
	v.tls()
	v.upstream()
	v.log()
	v.routing()
	v.admin()
	return errors.Join(v.errs...)
}

type validator struct {
	c    *Config
	errs []error
}

func (v *validator) errorf(path, format string, args ...any) {
	v.errs = append(v.errs, v.c.errorAt(path, fmt.Errorf(format, args...)))
}

// errorAt wraps err in an *Error for the field at path, with the line of that field's value
// or, when the field is not in the file, of the key of the nearest enclosing field ("tls:"
// for a missing tls.key_file).
func (c *Config) errorAt(path string, err error) *Error {
	e := &Error{File: c.file, Field: path, Err: err}
	for p := path; c.nodes != nil; p = parentPath(p) {
		if pos, ok := c.nodes[p]; ok {
			e.Line = pos.value.Line
			if p != path && pos.key != nil {
				e.Line = pos.key.Line
			}
			break
		}
		if p == "" {
			e.Line = 1
			break
		}
	}
	return e
}

// present reports whether the field at path was written in the file.
func (c *Config) present(path string) bool {
	_, ok := c.nodes[path]
	return ok
}

func (v *validator) listeners() {
	c := v.c
	if len(c.ListenerConfigs) == 0 {
		v.errorf("listeners", "at least one listener is required")
	}
	names := make(map[string]int)
	addrs := make(map[string]int)
	for i, l := range c.ListenerConfigs {
		p := fmt.Sprintf("listeners[%d]", i)
		switch {
		case l.Name == "":
			v.errorf(p+".name", "missing: every listener needs a name")
		case !nameRE.MatchString(l.Name):
			v.errorf(p+".name", "invalid name %q: use %s", l.Name, nameRule)
		default:
			if j, dup := names[l.Name]; dup {
				v.errorf(p+".name", "name %q already used by listeners[%d]", l.Name, j)
			}
			names[l.Name] = i
		}
		if l.Address == "" {
			v.errorf(p+".address", "missing: want host:port, such as 127.0.0.1:1143 or :993")
		} else if port, err := checkHostPort(l.Address, true); err != nil {
			v.errorf(p+".address", "%v", err)
		} else if port != 0 {
			key := strings.ToLower(l.Address)
			if j, dup := addrs[key]; dup {
				v.errorf(p+".address", "address %s already used by listeners[%d]", l.Address, j)
			}
			addrs[key] = i
		}
		switch l.TLS {
		case tlsconf.None:
		case tlsconf.STARTTLS, tlsconf.Implicit:
			if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
				v.errorf(p+".tls", "%s needs a certificate: set tls.cert_file and tls.key_file", l.TLS)
			}
		default:
			v.errorf(p+".tls", "invalid TLS mode %v", l.TLS)
		}
		if l.Observe < ObserveAuto || l.Observe > ObserveOff {
			v.errorf(p+".observe", "invalid value %d", l.Observe)
		}
		if l.PreAuthTimeout < 0 {
			v.errorf(p+".preauth_timeout", "negative duration %v", l.PreAuthTimeout)
		}
	}
}

func (v *validator) tls() {
	t := v.c.TLS
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		v.errorf("tls.key_file", "missing: tls.cert_file is set, so its key is needed too")
	case t.CertFile == "" && t.KeyFile != "":
		v.errorf("tls.cert_file", "missing: tls.key_file is set, so its certificate is needed too")
	}
}

func (v *validator) upstream() {
	u := v.c.Upstream
	if u.ConnectTimeout < 0 {
		v.errorf("upstream.connect_timeout", "negative duration %v", u.ConnectTimeout)
	}
	if u.LoginTimeout < 0 {
		v.errorf("upstream.login_timeout", "negative duration %v", u.LoginTimeout)
	}
}

func (v *validator) log() {
	l := v.c.Log
	if l.Format != "" && !slices.Contains(logFormats, l.Format) {
		v.errorf("log.format", "unknown format %q (want %s)", l.Format, orList(logFormats))
	}
	if l.Level != "" && !slices.Contains(logLevels, l.Level) {
		v.errorf("log.level", "unknown level %q (want %s)", l.Level, orList(logLevels))
	}
	if l.FlushInterval < 0 {
		v.errorf("log.flush_interval", "negative duration %v", l.FlushInterval)
	}
}

func (v *validator) admin() {
	c := v.c
	a := c.Admin
	if a.Address == "" {
		return
	}
	if _, err := checkHostPort(a.Address, true); err != nil {
		v.errorf("admin.address", "%v", err)
		return
	}
	for i, l := range c.ListenerConfigs {
		if strings.EqualFold(l.Address, a.Address) && !strings.HasSuffix(a.Address, ":0") {
			v.errorf("admin.address", "address %s already used by listeners[%d]", a.Address, i)
		}
	}
}

func (v *validator) routing() {
	c := v.c
	r := c.Routing
	if len(r.Shards) == 0 {
		v.errorf("routing.shards", "at least one shard is required")
	}
	shards := make(map[string]int)
	var shardNames []string
	for i, s := range r.Shards {
		p := fmt.Sprintf("routing.shards[%d]", i)
		switch {
		case s.Name == "":
			v.errorf(p+".name", "missing: every shard needs a name")
		case !nameRE.MatchString(s.Name):
			v.errorf(p+".name", "invalid name %q: use %s", s.Name, nameRule)
		default:
			if j, dup := shards[s.Name]; dup {
				v.errorf(p+".name", "name %q already used by routing.shards[%d]", s.Name, j)
			} else {
				shardNames = append(shardNames, s.Name)
			}
			shards[s.Name] = i
		}
		switch {
		case math.IsNaN(s.Weight) || math.IsInf(s.Weight, 0) || s.Weight < 0:
			v.errorf(p+".weight", "weight %v: want a positive number", s.Weight)
		case s.Weight == 0 && c.present(p+".weight"):
			v.errorf(p+".weight", "weight 0: want a positive number (leave it out for 1)")
		}
		if len(s.Backends) == 0 {
			v.errorf(p+".backends", "at least one backend is required")
		}
		addrs := make(map[string]int)
		for j, b := range s.Backends {
			v.backend(fmt.Sprintf("%s.backends[%d]", p, j), b, addrs, j)
		}
	}

	ref := func(path, shard string) {
		if _, ok := shards[shard]; !ok {
			if shard == "" {
				v.errorf(path, "missing shard name (have %s)", strings.Join(shardNames, ", "))
			} else {
				v.errorf(path, "unknown shard %q (have %s)", shard, strings.Join(shardNames, ", "))
			}
		}
	}
	users := make(map[string]string)
	for _, u := range c.keysInOrder("routing.users", r.Users) {
		p := "routing.users[" + strconv.Quote(u) + "]"
		if err := checkUser(u); err != nil {
			v.errorf(p, "%v", err)
		}
		if prev, dup := users[strings.ToLower(u)]; dup {
			v.errorf(p, "same user as %q: user names are compared case-insensitively", prev)
		} else {
			users[strings.ToLower(u)] = u
		}
		ref(p, r.Users[u])
	}
	domains := make(map[string]string)
	for _, d := range c.keysInOrder("routing.domains", r.Domains) {
		p := "routing.domains[" + strconv.Quote(d) + "]"
		if err := checkDomainPattern(d); err != nil {
			v.errorf(p, "%v", err)
		}
		if prev, dup := domains[strings.ToLower(d)]; dup {
			v.errorf(p, "same domain as %q: domains are compared case-insensitively", prev)
		} else {
			domains[strings.ToLower(d)] = d
		}
		ref(p, r.Domains[d])
	}
}

func (v *validator) backend(p string, b BackendConfig, addrs map[string]int, j int) {
	if b.Address == "" {
		v.errorf(p+".address", "missing: want host:port, such as 10.0.0.1:143")
	} else if _, err := checkHostPort(b.Address, false); err != nil {
		v.errorf(p+".address", "%v", err)
	} else {
		key := strings.ToLower(b.Address)
		if k, dup := addrs[key]; dup {
			v.errorf(p+".address", "address %s already listed as backends[%d] of this shard", b.Address, k)
		}
		addrs[key] = j
	}
	switch b.TLS {
	case tlsconf.None:
		for _, f := range []struct {
			name string
			set  bool
		}{{"ca_file", b.CAFile != ""}, {"server_name", b.ServerName != ""}, {"insecure_skip_verify", b.InsecureSkipVerify}} {
			if f.set {
				v.errorf(p+"."+f.name, "only meaningful with tls starttls or implicit, and tls is none")
			}
		}
	case tlsconf.STARTTLS, tlsconf.Implicit:
		if b.InsecureSkipVerify && b.CAFile != "" {
			v.errorf(p+".insecure_skip_verify", "ca_file is set too: certificates are either verified or not")
		}
	default:
		v.errorf(p+".tls", "invalid TLS mode %v", b.TLS)
	}
	if b.ServerName != "" && strings.ContainsFunc(b.ServerName, isSpaceOrControl) {
		v.errorf(p+".server_name", "invalid server name %q", b.ServerName)
	}
}

// checkHostPort checks a host:port address and returns the port. A listener may leave the
// host empty (every interface) and use port 0 (any free port, for tests); a backend may not.
func checkHostPort(addr string, listener bool) (int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, fmt.Errorf("invalid address %q: want host:port (IPv6 in brackets: [::1]:993)", addr)
	}
	if host == "" && !listener {
		return 0, fmt.Errorf("invalid address %q: the host is missing", addr)
	}
	if strings.ContainsFunc(host, isSpaceOrControl) {
		return 0, fmt.Errorf("invalid address %q: the host contains a space or control character", addr)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || (n == 0 && !listener) {
		return 0, fmt.Errorf("invalid address %q: the port must be a number from 1 to 65535", addr)
	}
	return int(n), nil
}

func checkUser(u string) error {
	switch {
	case u == "":
		return errors.New("empty user name")
	case strings.ContainsFunc(u, isSpaceOrControl):
		return fmt.Errorf("user name %q contains a space or control character", u)
	}
	return nil
}

// checkDomainPattern accepts "example.org" and "*.example.net", as routing does.
func checkDomainPattern(d string) error {
	suffix := strings.TrimPrefix(d, "*.")
	switch {
	case d == "":
		return errors.New("empty domain")
	case strings.Contains(suffix, "*"):
		return fmt.Errorf(`invalid domain %q: "*" is only allowed as the whole first label ("*.example.org")`, d)
	case suffix == "":
		return fmt.Errorf("invalid domain %q: nothing after \"*.\"", d)
	case strings.Contains(d, "@"):
		return fmt.Errorf(`invalid domain %q: a domain has no "@"`, d)
	case strings.HasPrefix(suffix, ".") || strings.HasSuffix(suffix, ".") || strings.Contains(suffix, ".."):
		return fmt.Errorf("invalid domain %q: empty label", d)
	case strings.ContainsFunc(d, isSpaceOrControl):
		return fmt.Errorf("invalid domain %q: contains a space or control character", d)
	}
	return nil
}

func isSpaceOrControl(r rune) bool { return r <= ' ' || r == 0x7f }

// orList formats ["a", "b", "c"] as "a, b or c".
func orList(list []string) string {
	if len(list) == 1 {
		return list[0]
	}
	return strings.Join(list[:len(list)-1], ", ") + " or " + list[len(list)-1]
}
