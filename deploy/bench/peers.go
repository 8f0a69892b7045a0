package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imapgate/imapgate/deploy/dovecot"
	"github.com/imapgate/imapgate/deploy/memdemo"
	"github.com/imapgate/imapgate/tlsconf"
)

// Target names, in the order a run uses them.
const (
	Direct          = "direct"
	Relay           = "relay"
	RelayLoop       = "relay-loop"
	LoginLoop       = "login-loop"
	Imapgate        = "imapgate"
	ImapgateTLS     = "imapgate-tls"
	DovecotProxy    = "dovecot-proxy"
	DovecotProxyTLS = "dovecot-proxy-tls"
	Nginx           = "nginx"
	NginxTLS        = "nginx-tls"
)

// AllTargets are the targets a run compares by default.
var AllTargets = []string{Direct, Relay, RelayLoop, LoginLoop, Imapgate, ImapgateTLS, DovecotProxy, DovecotProxyTLS, Nginx, NginxTLS}

// isTLS reports whether the load generator reaches target with implicit TLS.
func isTLS(target string) bool { return strings.HasSuffix(target, "-tls") }

// baseTarget is target without its "-tls" suffix: "nginx" for "nginx-tls".
func baseTarget(target string) string { return strings.TrimSuffix(target, "-tls") }

// user is an account on the backend.
type user struct{ name, password string }

// backend is the IMAP server behind every target.
type backend struct {
	kind string // "dovecot" or "memory"
	addr string // plain IMAP
	// haproxyAddr is plain IMAP behind a PROXY protocol header (Dovecot's haproxy listener),
	// where the proxies that can send one forward the client's address; "" for the memory
	// backend.
	haproxyAddr string
	pgid        int // Dovecot's process group; 0 for the in-process memory server
	version     string
	users       []user // the login scenarios' users
	bulk        user   // owner of the throughput mailbox
	inst        *dovecot.Instance
	mem         *memdemo.Shard
}

func (b *backend) close() error {
	if b.inst != nil {
		return b.inst.Close()
	}
	if b.mem != nil {
		return b.mem.Close()
	}
	return nil
}

// makeUsers returns n users and the bulk user.
func makeUsers(n int) ([]user, user) {
	users := make([]user, n)
	for i := range users {
		users[i] = user{fmt.Sprintf("user%04d@bench.example", i+1), fmt.Sprintf("pw-%04d-secret", i+1)}
	}
	return users, user{"bulk@bench.example", "pw-bulk-secret"}
}

func userMap(users []user, bulk user) map[string]string {
	m := make(map[string]string, len(users)+1)
	for _, u := range users {
		m[u.name] = u.password
	}
	m[bulk.name] = bulk.password
	return m
}

// backendDovecotConfig is added to deploy/dovecot's configuration for the backend.
//
// Process model: by default Dovecot forks and execs an imap process for every login, which
// costs about 20 ms of CPU on a small VM and caps the backend near 50 logins/s; the logins
// scenario would measure only that, and opening thousands of idle sessions would take
// minutes (with reused processes waiting, each new session even wakes all of them). Here an
// imap process serves up to 100 sessions at once and lives on (service_count = 0,
// client_limit = 100), which Dovecot allows because all bench users share one uid: the
// setting for a busy Dovecot that the backend must be here, so that the proxies' costs
// show.
//
// Idle polling: the generated configuration polls idle mailboxes every second (inotify
// instances run out with thousands of sessions of one uid); a hold of thousands of IDLE
// sessions would then measure the polling. Nothing changes the mailboxes during a hold.
const backendDovecotConfig = `# imapgate bench: the backend.
service imap {
  service_count = 0
  client_limit = 100
  process_min_avail = 4
}
mailbox_idle_check_interval = 30 secs
`

// startBackend starts the backend the options ask for. maxConns sizes Dovecot's limits.
func startBackend(ctx context.Context, o *Options, dir string, maxConns int) (*backend, error) {
	users, bulk := makeUsers(o.Users)
	b := &backend{kind: o.Backend, users: users, bulk: bulk}
	switch o.Backend {
	case "dovecot":
		if _, ok := dovecot.Available(); !ok {
			return nil, dovecot.ErrNotInstalled
		}
		inst, err := dovecot.Start(ctx, dovecot.Options{
			Dir:            filepath.Join(dir, "backend"),
			Users:          userMap(users, bulk),
			MaxConnections: maxConns,
			ExtraConfig:    backendDovecotConfig,
		})
		if err != nil {
			return nil, err
		}
		b.inst, b.addr, b.haproxyAddr, b.pgid = inst, inst.Addr, inst.HAProxyAddr, inst.Pid()
		b.version = "Dovecot " + commandVersion("dovecot", "--version") +
			" (imap processes serve up to 100 sessions each: service_count=0, client_limit=100)"
	case "memory":
		s, err := memdemo.StartShardWith(ctx, memdemo.ShardOptions{Name: "bench", Users: userMap(users, bulk)})
		if err != nil {
			return nil, err
		}
		b.mem, b.addr = s, s.Addr
		b.version = "go-imap imapmemserver, in the bench's own process"
	default:
		return nil, fmt.Errorf("unknown backend %q (want dovecot or memory)", o.Backend)
	}
	return b, nil
}

// seed appends small sample messages to every user's INBOX and the throughput messages to
// the bulk user's, over IMAP.
func (b *backend) seed(ctx context.Context, perUser, bulkMessages, bulkSize int) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	jobs := make(chan user)
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range jobs {
				if err := b.appendTo(ctx, u, perUser, 0, 0); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	go func() {
		defer close(jobs)
		for _, u := range b.users {
			select {
			case jobs <- u:
			case <-ctx.Done():
				return
			}
		}
	}()
	bulkErr := b.appendTo(ctx, b.bulk, 0, bulkMessages, bulkSize)
	wg.Wait()
	close(errc)
	for err := range errc {
		return err
	}
	if bulkErr != nil {
		return bulkErr
	}
	return ctx.Err()
}

func (b *backend) appendTo(ctx context.Context, u user, samples, big, size int) error {
	c, err := Dial(ctx, b.addr, nil, 64<<10)
	if err != nil {
		return fmt.Errorf("seed %s: %w", u.name, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if err := c.Login(u.name, u.password); err != nil {
		return fmt.Errorf("seed %s: %w", u.name, err)
	}
	for i := range samples {
		msg, _ := memdemo.SampleMessage(u.name, "bench", i)
		if err := c.Append("INBOX", msg); err != nil {
			return fmt.Errorf("seed %s: %w", u.name, err)
		}
	}
	for i := range big {
		if err := c.Append("INBOX", bigMessage(u.name, i, size)); err != nil {
			return fmt.Errorf("seed %s: %w", u.name, err)
		}
	}
	return c.Logout()
}

// bigMessage is a text message of exactly size bytes (CRLF lines of 76 characters).
func bigMessage(to string, i, size int) []byte {
	var b bytes.Buffer
	b.Grow(size)
	fmt.Fprintf(&b, "From: imapgate bench <bench@imapgate.example>\r\nTo: <%s>\r\n"+
		"Subject: bulk message %d\r\nMessage-ID: <bulk.%d@bench.imapgate.example>\r\n"+
		"Date: Mon, 03 Mar 2025 09:14:00 +0100\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n\r\n", to, i, i)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	x := uint64(i)*0x9e3779b97f4a7c15 + 1
	for b.Len() < size {
		n := min(76, size-b.Len()-2)
		if n <= 0 {
			b.WriteString("\r\n"[:size-b.Len()])
			break
		}
		for range n {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			b.WriteByte(alphabet[x&63])
		}
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// running is a started target.
type running struct {
	addr string
	tls  *tls.Config // nil: plain
	pgid int         // the proxy's process group; 0 for direct
	stop func() error
	// check, if set, runs after one session went through: it proves the target really
	// proxied (Dovecot's proxy logs "started proxying").
	check func() error
}

// peerEnv is what starting a target needs.
type peerEnv struct {
	opts    *Options
	dir     string
	backend *backend
	seq     int // numbers the work directories of successive starts
	certPEM []byte
	keyPEM  []byte
	pool    *x509.CertPool
	slots   int // connections a target must hold: idle sessions + concurrency + margin
}

// clientTLS is the load generator's TLS configuration for the bench's own certificate.
// Only X25519 is offered for the key exchange so that every server makes the same one (Go
// servers would otherwise pick the larger post-quantum hybrid that OpenSSL 3.0 lacks);
// P-256 is listed too because the certificates are ECDSA P-256, which TLS 1.2 needs.
func clientTLS(pool *x509.CertPool, serverName string) *tls.Config {
	return &tls.Config{
		RootCAs:            pool,
		ServerName:         serverName,
		MinVersion:         tls.VersionTLS12,
		CurvePreferences:   []tls.CurveID{tls.X25519, tls.CurveP256},
		ClientSessionCache: nil, // every login is a full handshake
	}
}

// available reports why target cannot run here, "" if it can.
func available(target string, o *Options) string {
	switch baseTarget(target) {
	case Direct:
		if isTLS(target) {
			return "unknown target"
		}
		return ""
	case Imapgate, Relay, RelayLoop, LoginLoop: // the relays are `imapgate bench-relay`
		if o.Imapgate.Path == "" {
			return "no imapgate command given"
		}
		return ""
	case DovecotProxy:
		if _, ok := dovecot.Available(); !ok {
			return "dovecot is not installed (apt-get install dovecot-imapd)"
		}
		return ""
	case Nginx:
		if _, err := exec.LookPath(nginxBinary()); err != nil {
			return "nginx is not installed (apt-get install nginx-light libnginx-mod-mail)"
		}
		if _, err := os.Stat(nginxMailModule); err != nil {
			return "nginx's mail module is not installed (" + nginxMailModule + ": apt-get install libnginx-mod-mail)"
		}
		return ""
	}
	return "unknown target"
}

// start starts target, fresh, and returns once it accepts connections.
func (e *peerEnv) start(ctx context.Context, target string) (*running, error) {
	e.seq++
	switch baseTarget(target) {
	case Direct:
		return &running{addr: e.backend.addr, stop: func() error { return nil }}, nil
	case Imapgate:
		return e.startImapgate(ctx, isTLS(target))
	case Relay, RelayLoop, LoginLoop:
		return e.startRelay(ctx, target)
	case DovecotProxy:
		return e.startDovecotProxy(ctx, isTLS(target))
	case Nginx:
		return e.startNginx(ctx, isTLS(target))
	}
	return nil, fmt.Errorf("unknown target %q", target)
}

// startImapgate runs `imapgate serve` as a child process with one listener, plain with
// plaintext login allowed or implicit TLS, in front of the backend.
func (e *peerEnv) startImapgate(ctx context.Context, useTLS bool) (*running, error) {
	dir := filepath.Join(e.dir, fmt.Sprintf("imapgate-%d", e.seq))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{"cert.pem": e.certPEM, "key.pem": e.keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return retryPorts(1, func(ports []int) (*running, error) {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		path := filepath.Join(dir, "imapgate.yaml")
		if err := os.WriteFile(path, []byte(imapgateConfig(addr, useTLS, e.backend)), 0o600); err != nil {
			return nil, err
		}
		c := e.opts.Imapgate
		args := append(append([]string{}, c.Args...), "-config", path)
		return startChild(ctx, childSpec{
			name: "imapgate", path: c.Path, args: args, env: c.Env, dir: dir,
			logPath: filepath.Join(dir, "imapgate.log"), addr: addr, tls: useTLS, pool: e.pool,
		})
	})
}

// startRelay runs the bare byte relay (relay.go, or with loop relayloop_linux.go) as
// `imapgate bench-relay` in front of the backend.
func (e *peerEnv) startRelay(ctx context.Context, target string) (*running, error) {
	dir := filepath.Join(e.dir, fmt.Sprintf("relay-%d", e.seq))
	args := []string{"bench-relay", "-to", e.backend.addr}
	switch {
	case target == RelayLoop:
		args = append(args, "-loop")
	case target == LoginLoop && e.backend.haproxyAddr != "":
		// The client's address in a PROXY header to the backend's listener for it, as
		// imapgate's configuration here does.
		args = []string{"bench-relay", "-to", e.backend.haproxyAddr, "-proxy-protocol", "-login"}
	case target == LoginLoop:
		args = append(args, "-login")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return retryPorts(1, func(ports []int) (*running, error) {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
		c := e.opts.Imapgate
		return startChild(ctx, childSpec{
			name: "relay", path: c.Path, args: append(args, "-listen", addr),
			env: c.Env, dir: dir, logPath: filepath.Join(dir, "relay.log"), addr: addr,
		})
	})
}

// imapgateConfig is the configuration of the imapgate child: the listener, the backend
// (forwarding the client's address to Dovecot in a PROXY v2 header, the cheaper of the two
// ways the README gives), defaults otherwise (JSON logs at info: one line per login and one
// per session end).
func imapgateConfig(addr string, useTLS bool, b *backend) string {
	q := strconv.Quote
	var s strings.Builder
	s.WriteString("# Written by imapgate bench.\nlisteners:\n  - name: bench\n")
	fmt.Fprintf(&s, "    address: %s\n", q(addr))
	if useTLS {
		s.WriteString("    tls: implicit\ntls:\n  cert_file: cert.pem\n  key_file: key.pem\n")
	} else {
		s.WriteString("    tls: none\n    allow_plaintext_auth: true\n")
	}
	s.WriteString("log:\n  format: json\n  level: info\nrouting:\n  shards:\n    - name: a\n      backends:\n")
	if b.haproxyAddr != "" {
		fmt.Fprintf(&s, "        - address: %s\n          proxy_protocol: v2\n", q(b.haproxyAddr))
	} else {
		fmt.Fprintf(&s, "        - address: %s\n", q(b.addr))
	}
	return s.String()
}

// startDovecotProxy starts a second Dovecot whose only passdb entry for every user is
// static: proxy=y host=127.0.0.1 port=<backend>, nopassword=y. The proxy accepts any
// password and logs in to the backend with the client's, so the backend decides, as
// with imapgate. Its passwd-file has no users, so the generated passwd-file passdb
// answers "unknown user" and Dovecot goes on to the static one.
func (e *peerEnv) startDovecotProxy(ctx context.Context, useTLS bool) (*running, error) {
	_, port, err := net.SplitHostPort(e.backend.addr)
	if err != nil {
		return nil, err
	}
	inst, err := dovecot.Start(ctx, dovecot.Options{
		Dir:            filepath.Join(e.dir, fmt.Sprintf("dovecot-proxy-%d", e.seq)),
		MaxConnections: e.slots,
		ExtraConfig:    dovecotProxyConfig(port),
	})
	if err != nil {
		return nil, err
	}
	r := &running{addr: inst.Addr, pgid: inst.Pid(), stop: inst.Close}
	if useTLS {
		r.addr = inst.TLSAddr
		r.tls = clientTLS(inst.RootCAs, inst.ServerName)
	}
	r.check = func() error {
		// imap-login hands the line to Dovecot's log process, which writes it when it gets
		// to it: the session can be over before the line is in the file (seen once in a
		// full run). Look again for a while before calling it a failure.
		for deadline := time.Now().Add(5 * time.Second); ; {
			log, err := inst.Log()
			if err != nil {
				return err
			}
			if strings.Contains(log, ",127.0.0.1:"+port+"): Started proxying") {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("dovecot-proxy: its log (%s) does not show a proxied session", inst.LogPath)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return r, nil
}

func dovecotProxyConfig(backendPort string) string {
	return fmt.Sprintf(`# imapgate bench: this instance is a proxy (Dovecot's login proxy in imap-login).
passdb {
  driver = static
  args = proxy=y host=127.0.0.1 port=%s nopassword=y
}
`, backendPort)
}

// nginxMailModule is where Debian's libnginx-mod-mail puts the module.
const nginxMailModule = "/usr/lib/nginx/modules/ngx_mail_module.so"

func nginxBinary() string {
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	return "/usr/sbin/nginx"
}

// startNginx runs nginx (master and workers, in the foreground) with a generated
// configuration: a mail proxy on a plain and an implicit-TLS port whose auth_http is a
// location of the same nginx that accepts every login and names the backend.
func (e *peerEnv) startNginx(ctx context.Context, useTLS bool) (*running, error) {
	dir := filepath.Join(e.dir, fmt.Sprintf("nginx-%d", e.seq))
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{"cert.pem": e.certPEM, "key.pem": e.keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	// nginx forwards the client's address as imapgate does, in a PROXY header (v1, the only
	// one nginx writes) to the backend's haproxy listener.
	baddr, proxyProtocol := e.backend.addr, false
	if e.backend.haproxyAddr != "" {
		baddr, proxyProtocol = e.backend.haproxyAddr, true
	}
	_, bport, err := net.SplitHostPort(baddr)
	if err != nil {
		return nil, err
	}
	return retryPorts(3, func(ports []int) (*running, error) {
		p := nginxParams{dir: dir, imapPort: ports[0], imapsPort: ports[1], authPort: ports[2],
			backendPort: bport, proxyProtocol: proxyProtocol, workers: nproc(), files: fileLimit(), conns: 2*e.slots + 512}
		conf := filepath.Join(dir, "nginx.conf")
		if err := os.WriteFile(conf, []byte(nginxConfig(p)), 0o644); err != nil {
			return nil, err
		}
		port := p.imapPort
		if useTLS {
			port = p.imapsPort
		}
		return startChild(ctx, childSpec{
			name: "nginx", path: nginxBinary(),
			args: []string{"-p", dir + "/", "-c", conf, "-e", filepath.Join(dir, "error.log")},
			dir:  dir, logPath: filepath.Join(dir, "nginx.stderr"),
			addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), tls: useTLS, pool: e.pool,
			errorLog: filepath.Join(dir, "error.log"),
		})
	})
}

type nginxParams struct {
	dir                           string
	imapPort, imapsPort, authPort int
	backendPort                   string
	proxyProtocol                 bool // proxy_protocol on: a PROXY v1 header to the backend
	workers, files, conns         int
}

func nginxConfig(p nginxParams) string {
	conns := min(p.conns, p.files-64)
	pp := "off"
	if p.proxyProtocol {
		pp = "on"
	}
	return fmt.Sprintf(`# Written by imapgate bench: nginx's mail proxy in front of the bench backend.
load_module %[1]s;
daemon off;
master_process on;
worker_processes %[2]d;          # one per core, as "auto" would
worker_rlimit_nofile %[3]d;
pid %[4]s/nginx.pid;
lock_file %[4]s/nginx.lock;
error_log %[4]s/error.log warn;

events {
    worker_connections %[5]d;
}

http {
    access_log off;
    client_body_temp_path %[4]s/tmp/body;
    proxy_temp_path %[4]s/tmp/proxy;
    fastcgi_temp_path %[4]s/tmp/fastcgi;
    uwsgi_temp_path %[4]s/tmp/uwsgi;
    scgi_temp_path %[4]s/tmp/scgi;
    # auth_http endpoint: every login is accepted here and sent to the backend, which
    # checks the password.
    server {
        listen 127.0.0.1:%[6]d;
        location = /auth {
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port %[7]s;
            return 204;
        }
    }
}

mail {
    server_name localhost;
    auth_http 127.0.0.1:%[6]d/auth;
    proxy_pass_error_message on;
    imap_auth plain login;
    proxy_protocol %[10]s;
    # nginx 1.22 leaves TLS 1.3 out by default; imapgate and Dovecot offer it.
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate %[4]s/cert.pem;
    ssl_certificate_key %[4]s/key.pem;
    server {
        listen 127.0.0.1:%[8]d;
        protocol imap;
        proxy on;
    }
    server {
        listen 127.0.0.1:%[9]d ssl;
        protocol imap;
        proxy on;
    }
}
`, nginxMailModule, p.workers, p.files, p.dir, conns, p.authPort, p.backendPort, p.imapPort, p.imapsPort, pp)
}

// childSpec describes a proxy run as a child process.
type childSpec struct {
	name, path string
	args, env  []string
	dir        string
	logPath    string // stdout and stderr
	errorLog   string // another log to quote on failure
	addr       string // where it listens once ready
	tls        bool
	pool       *x509.CertPool
	stopSignal syscall.Signal // 0: SIGTERM
}

var errAddrInUse = errors.New("address already in use")

// startChild starts a proxy in its own process group and waits until addr greets.
func startChild(ctx context.Context, s childSpec) (*running, error) {
	out, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(s.path, s.args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = setGroupAttr(cmd.SysProcAttr)
	err = cmd.Start()
	out.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	pgid := cmd.Process.Pid
	sig := s.stopSignal
	if sig == 0 {
		sig = syscall.SIGTERM
	}
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			select {
			case <-done:
				stopErr = fmt.Errorf("%s exited before it was stopped: %v\n%s", s.name, waitErr, tails(s.logPath, s.errorLog))
			default:
				_ = cmd.Process.Signal(sig)
				select {
				case <-done:
				case <-time.After(15 * time.Second):
					stopErr = fmt.Errorf("%s did not stop within 15s; killed", s.name)
					killGroup(pgid, syscall.SIGKILL)
					<-done
				}
			}
			// Workers normally go with the master; make sure.
			for i := 0; i < 100; i++ {
				if st, _ := groupStats(pgid, false); st.Procs == 0 {
					return
				}
				if i == 50 {
					killGroup(pgid, syscall.SIGKILL)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
		return stopErr
	}
	var tlsConf *tls.Config
	if s.tls {
		tlsConf = clientTLS(s.pool, "localhost")
	}
	deadline := time.Now().Add(20 * time.Second)
	var probeErr error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			tail := tails(s.logPath, s.errorLog)
			err := fmt.Errorf("%s exited during start-up: %v\n%s", s.name, waitErr, tail)
			if strings.Contains(tail, "in use") {
				err = fmt.Errorf("%w: %w", errAddrInUse, err)
			}
			return nil, err
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(30 * time.Millisecond):
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := Dial(pctx, s.addr, tlsConf, 0)
		cancel()
		if err == nil {
			c.Close()
			return &running{addr: s.addr, tls: tlsConf, pgid: pgid, stop: stop}, nil
		}
		probeErr = err
	}
	stop()
	return nil, fmt.Errorf("%s not ready after 20s (last probe: %v)\n%s", s.name, probeErr, tails(s.logPath, s.errorLog))
}

// tails quotes the last lines of the given files that exist.
func tails(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		if p == "" {
			continue
		}
		data, err := os.ReadFile(p)
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 20 {
			lines = lines[len(lines)-20:]
		}
		fmt.Fprintf(&b, "--- %s, last lines:\n%s\n", p, strings.Join(lines, "\n"))
	}
	return b.String()
}

// retryPorts calls start with n loopback ports that were free a moment ago, and again with
// new ones (three tries in all) while start fails because another program took one of them
// in between.
func retryPorts(n int, start func(ports []int) (*running, error)) (*running, error) {
	var err error
	for range 3 {
		var ports []int
		if ports, err = freePorts(n); err != nil {
			return nil, err
		}
		var r *running
		if r, err = start(ports); !errors.Is(err, errAddrInUse) {
			return r, err
		}
	}
	return nil, err
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// selfSigned makes the certificate the TLS targets present (imapgate and nginx; Dovecot's
// proxy has its own, made the same way: ECDSA P-256).
func selfSigned() (certPEM, keyPEM []byte, pool *x509.CertPool, err error) {
	certPEM, keyPEM, err = tlsconf.SelfSignedPEM()
	if err != nil {
		return nil, nil, nil, err
	}
	pool = x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		return nil, nil, nil, errors.New("bench: cannot parse the self-signed certificate")
	}
	return certPEM, keyPEM, pool, nil
}

// commandVersion runs name with args and returns the first line of its output.
func commandVersion(name string, args ...string) string {
	path, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/usr/local/sbin"} {
			if p := filepath.Join(dir, name); fileExists(p) {
				path = p
				break
			}
		}
	}
	if path == "" {
		return "?"
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		return "?"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
