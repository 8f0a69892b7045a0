package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/imapgate/imapgate/config"
	"github.com/imapgate/imapgate/deploy/memdemo"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/zap"
)

// demoOptions are the demo's flags.
type demoOptions struct {
	imap, imaps string // proxy listener addresses
	admin       string // admin API address; empty: no admin API
	logLevel    string
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var o demoOptions
	fs.StringVar(&o.imap, "imap", "127.0.0.1:1143", "`address` of the STARTTLS listener (plaintext login allowed)")
	fs.StringVar(&o.imaps, "imaps", "127.0.0.1:1993", "`address` of the implicit-TLS listener")
	fs.StringVar(&o.admin, "admin", config.DefaultAdminAddress, "`address` of the admin API (metrics, sessions, kick; no token); empty for none")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	err := demo(ctx, o, stdout, stderr, nil)
	if errors.Is(err, syscall.EADDRINUSE) {
		err = fmt.Errorf("%w (choose other addresses with -imap, -imaps and -admin)", err)
	}
	return err
}

// demoInfo is what the demo tells its user (and tests) once it runs.
type demoInfo struct {
	dir         string // temporary directory with cert.pem, key.pem, imapgate.yaml
	imap, imaps net.Addr
	admin       net.Addr // nil without the admin API
	shards      []*memdemo.Shard
	users       []memdemo.User
}

func (d *demoInfo) certFile() string { return filepath.Join(d.dir, "cert.pem") }

// demo starts the in-process shards, makes a self-signed certificate and a configuration
// for them in a temporary directory, and serves that configuration as `imapgate serve`
// would until ctx is done. ready, if not nil, is called once the proxy accepts connections.
func demo(ctx context.Context, o demoOptions, stdout, stderr io.Writer, ready func(*demoInfo)) error {
	d, err := memdemo.Start(ctx)
	if err != nil {
		return err
	}
	defer d.Close()

	dir, err := os.MkdirTemp("", "imapgate-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	info := &demoInfo{dir: dir, shards: d.Shards, users: d.Users}

	certPEM, keyPEM, err := tlsconf.SelfSignedPEM(certHosts(o.imap, o.imaps)...)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600); err != nil {
		return err
	}
	path := filepath.Join(dir, "imapgate.yaml")
	if err := os.WriteFile(path, []byte(demoConfig(o, d)), 0o644); err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return fmt.Errorf("demo configuration: %w", err) // a bad -log-level, or a bug
	}
	log, err := cfg.LoggerTo(stderr)
	if err != nil {
		return err
	}
	defer log.Sync()
	g, err := build(cfg, log)
	if err != nil {
		return err
	}
	for _, s := range d.Shards {
		log.Info("demo shard started", zap.String("shard", s.Name), zap.String("address", s.Addr))
	}
	return serve(ctx, g, log, func(addrs []net.Addr) {
		info.imap, info.imaps = addrs[0], addrs[1]
		info.admin = g.adminAddr
		printDemo(stdout, info)
		if ready != nil {
			ready(info)
		}
	})
}

// certHosts are the names the demo certificate carries: loopback, plus the hosts of the
// listener addresses when they are specific.
func certHosts(addrs ...string) []string {
	hosts := slices.Clone(tlsconf.DefaultSelfSignedHosts)
	for _, a := range addrs {
		h, _, err := net.SplitHostPort(a)
		if err != nil || h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
			continue
		}
		if !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts
}

// demoConfig writes the demo's configuration: it goes through config.Load like any other,
// and stays in the temporary directory for the curious.
func demoConfig(o demoOptions, d *memdemo.Demo) string {
	q := strconv.Quote // a Go quoted string is a valid YAML double-quoted string
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by imapgate demo. The shards are in-process imapmemservers on loopback
# ports that change on every run, so this file works only while the demo runs.
listeners:
  - name: imap
    address: %s
    tls: starttls
    allow_plaintext_auth: true   # demo only: lets curl log in without TLS
  - name: imaps
    address: %s
    tls: implicit
tls:
  cert_file: cert.pem
  key_file: key.pem
log:
  format: console
  level: %s
routing:
  shards:
`, q(o.imap), q(o.imaps), q(o.logLevel))
	for _, s := range d.Shards {
		fmt.Fprintf(&b, "    - name: %s\n      backends:\n        - address: %s\n", q(s.Name), q(s.Addr))
	}
	b.WriteString("  users:\n")
	users := d.RoutingUsers()
	for _, u := range slices.Sorted(maps.Keys(users)) {
		fmt.Fprintf(&b, "    %s: %s\n", q(u), q(users[u]))
	}
	b.WriteString("  domains:\n")
	domains := d.RoutingDomains()
	for _, dom := range slices.Sorted(maps.Keys(domains)) {
		fmt.Fprintf(&b, "    %s: %s\n", q(dom), q(domains[dom]))
	}
	if o.admin != "" {
		fmt.Fprintf(&b, "admin:\n  address: %s   # no token_file: for the demo only\n", q(o.admin))
	}
	return b.String()
}

// printDemo tells the user how to connect.
func printDemo(w io.Writer, d *demoInfo) {
	imap, imaps := connectAddr(d.imap), connectAddr(d.imaps)
	cert := d.certFile()
	alice, bob := d.users[0], d.users[0]
	for _, u := range d.users {
		if u.Shard != alice.Shard {
			bob = u
			break
		}
	}

	fmt.Fprintf(w, "\nimapgate demo is running; Ctrl-C stops it.\n\n")
	fmt.Fprintf(w, "Proxy:\n")
	fmt.Fprintf(w, "  %-22s STARTTLS; plaintext login allowed (demo only)\n", d.imap)
	fmt.Fprintf(w, "  %-22s implicit TLS\n", d.imaps)
	fmt.Fprintf(w, "  certificate (self-signed, made now): %s\n", cert)
	fmt.Fprintf(w, "  configuration: %s\n\n", filepath.Join(d.dir, "imapgate.yaml"))
	fmt.Fprintf(w, "Shards (in-process imapmemserver):\n")
	for _, s := range d.shards {
		fmt.Fprintf(w, "  %s  %s\n", s.Name, s.Addr)
	}
	if d.admin != nil {
		admin := "http://" + connectAddr(d.admin)
		ctl := "imapgate ctl"
		if admin != "http://"+config.DefaultAdminAddress {
			ctl += " -admin " + admin
		}
		fmt.Fprintf(w, "\nAdmin API (no token, demo only): %s\n", admin)
		fmt.Fprintf(w, "  curl %s/metrics\n", admin)
		fmt.Fprintf(w, "  %s sessions\n", ctl)
		fmt.Fprintf(w, "  %s route %s\n", ctl, d.users[0].Name)
		fmt.Fprintf(w, "  %s kick -user %s\n", ctl, d.users[0].Name)
	}
	fmt.Fprintf(w, "\nUsers (the password is the part before @):\n")
	for _, u := range d.users {
		fmt.Fprintf(w, "  %-20s %-7s shard %s\n", u.Name, u.Password, u.Shard)
	}
	fmt.Fprintf(w, `
Try it:
  curl -v --url imap://%[1]s/INBOX --user %[3]s:%[4]s
  curl --ssl-reqd --cacert %[7]s --url 'imap://%[1]s/INBOX;UID=1' --user %[5]s:%[6]s
  curl --cacert %[7]s --url 'imaps://%[2]s/INBOX;UID=1' --user %[5]s:%[6]s
  openssl s_client -quiet -connect %[2]s -CAfile %[7]s
  openssl s_client -quiet -starttls imap -connect %[1]s -CAfile %[7]s
    then type:  a LOGIN %[3]s %[4]s
                b SELECT INBOX
                c FETCH 1 ENVELOPE
                d LOGOUT

Mail client (Thunderbird, Apple Mail, Evolution, ...):
  IMAP server %[8]s, port %[9]s with SSL/TLS (or port %[10]s with STARTTLS),
  normal password, user %[3]s, password %[4]s; accept the self-signed
  certificate or import %[7]s. There is no SMTP server in the demo.

`, imap, imaps, alice.Name, alice.Password, bob.Name, bob.Password, cert,
		hostOf(imaps), portOf(imaps), portOf(imap))
}

// connectAddr is addr with an unspecified host (0.0.0.0, ::) replaced by loopback, for
// instructions a client can follow.
func connectAddr(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func hostOf(addr string) string {
	h, _, _ := net.SplitHostPort(addr)
	return h
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
