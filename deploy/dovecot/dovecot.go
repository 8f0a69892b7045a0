// Package dovecot runs a real Dovecot as an unprivileged-port IMAP backend for
// tests, benchmarks and local trials.
//
// Start generates a Dovecot 2.3 configuration in a work directory (typically
// t.TempDir()) with passwd-file users, Maildir storage, a self-signed
// certificate, plain IMAP with STARTTLS and implicit TLS on free loopback
// ports, and runs `dovecot -F` as a child process until Close. It is not a
// production deployment of Dovecot: passwords are stored in clear (base64),
// fsync is off and limits are sized for one machine's tests.
//
// As root (the CI case) the master, log, config and auth processes run as
// root, login processes as the package's "dovenull" user, and every mail
// user's imap process as one unprivileged system user ("mail", else
// "dovecot"), chrooted into <Dir>/mail so that Dir's ancestors may stay mode
// 0700. As another user, everything runs as that user without chroots.
package dovecot

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNotInstalled is returned by Start when no dovecot binary is found.
var ErrNotInstalled = errors.New("dovecot: not installed (apt-get install dovecot-imapd)")

// Available reports whether a dovecot binary is installed (and its path).
func Available() (path string, ok bool) {
	if platformSupported() != nil {
		return "", false
	}
	if p, err := exec.LookPath("dovecot"); err == nil {
		return p, true
	}
	// PATH may lack the sbin directories (non-login shells, CI).
	for _, p := range []string{"/usr/sbin/dovecot", "/usr/local/sbin/dovecot"} {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

// Options configures Start.
type Options struct {
	// Dir is the work directory (config, maildirs, logs, runtime); required.
	// Tests pass t.TempDir(). It must be a path without whitespace or any of
	// the characters " \ % : $ # { } <, which Dovecot's configuration or
	// passwd-file would interpret.
	Dir string
	// Users maps user name to password. Dovecot lower-cases login names
	// (auth_username_format = %Lu), so names are stored lower-cased; they
	// may use letters, digits and . - _ @. Passwords may hold any byte.
	Users map[string]string
	// TrustedNetworks is login_trusted_networks and haproxy_trusted_networks:
	// connections from there may forward the client's address with ID
	// x-originating-ip, or with a PROXY header on HAProxyAddr. "" means
	// "127.0.0.0/8 ::1/128".
	TrustedNetworks string
	// MaxConnections sizes the process and client limits and
	// mail_max_userip_connections; 0 means 1000.
	MaxConnections int
	// ExtraConfig is appended verbatim to the generated dovecot.conf. A
	// top-level setting given again here overrides the generated one.
	ExtraConfig string
}

// Instance is a running Dovecot.
type Instance struct {
	Addr    string // 127.0.0.1:port, plain IMAP with STARTTLS available
	TLSAddr string // 127.0.0.1:port, implicit TLS
	// HAProxyAddr is 127.0.0.1:port, plain IMAP as Addr, for clients that send a PROXY
	// protocol header (v1 or v2) first: Dovecot takes the client's address from it when the
	// connection comes from TrustedNetworks (haproxy_trusted_networks), and refuses a
	// connection without one.
	HAProxyAddr string
	RootCAs     *x509.CertPool // trusts the instance's self-signed certificate
	ServerName  string         // DNS name in that certificate; it also has IP SANs 127.0.0.1 and ::1
	LogPath     string         // Dovecot's log file (log_path, info_log_path, debug_log_path)
	Dir         string         // the absolute work directory

	cmd          *exec.Cmd
	done         chan struct{} // closed when the master has been waited for
	waitErr      error         // set before done is closed
	tempBaseDir  string        // removed by Close; "" if base_dir is inside Dir
	instanceName string        // Dovecot's instance_name, in its processes' titles

	closeOnce sync.Once
	closeErr  error
}

const (
	defaultTrusted  = "127.0.0.0/8 ::1/128"
	defaultMaxConns = 1000
	startTimeout    = 30 * time.Second
	stopTimeout     = 15 * time.Second
	bindAttempts    = 5
	maxBaseDirLen   = 70 // unix socket paths (base_dir/login/...) must stay < 108 bytes
)

// Start writes the configuration into o.Dir, starts `dovecot -F` and returns
// once both ports accept connections and send a greeting. ctx bounds the
// start-up only, not the instance's life: call Close. If Dovecot fails to bind
// its ports (picked free just before), Start retries with new ones; on any
// other failure it stops Dovecot and returns an error with the log's tail.
func Start(ctx context.Context, o Options) (*Instance, error) {
	if err := platformSupported(); err != nil {
		return nil, err
	}
	bin, ok := Available()
	if !ok {
		return nil, ErrNotInstalled
	}
	if o.Dir == "" {
		return nil, errors.New("dovecot: Options.Dir is required")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}
	if i := strings.IndexFunc(dir, badPathRune); i >= 0 {
		return nil, fmt.Errorf("dovecot: Dir %q: character %q is not supported in Dovecot's configuration", dir, dir[i])
	}
	users := make(map[string]string, len(o.Users))
	for name, pw := range o.Users {
		lower := strings.ToLower(name)
		if err := checkUserName(lower); err != nil {
			return nil, err
		}
		if _, dup := users[lower]; dup {
			return nil, fmt.Errorf("dovecot: user %q given twice (names are case-insensitive)", name)
		}
		users[lower] = pw
	}
	trusted := o.TrustedNetworks
	if trusted == "" {
		trusted = defaultTrusted
	}
	if strings.ContainsAny(trusted, "\n\r") {
		return nil, errors.New("dovecot: TrustedNetworks must be one line")
	}
	maxConns := o.MaxConnections
	if maxConns < 0 {
		return nil, errors.New("dovecot: MaxConnections must not be negative")
	}
	if maxConns == 0 {
		maxConns = defaultMaxConns
	}
	mu, err := lookupMailUser()
	if err != nil {
		return nil, err
	}
	cert, err := newSelfSigned()
	if err != nil {
		return nil, fmt.Errorf("dovecot: certificate: %w", err)
	}
	if err := prepareDir(dir, users, mu, cert); err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}

	baseDir, tempBaseDir := filepath.Join(dir, "run"), ""
	if len(baseDir) > maxBaseDirLen {
		if tempBaseDir, err = os.MkdirTemp("", "dovecot-run-"); err != nil {
			return nil, fmt.Errorf("dovecot: %w", err)
		}
		baseDir = tempBaseDir
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	params := configParams{
		instanceName:    "imapgate-" + hex.EncodeToString(suffix[:]),
		dir:             dir,
		baseDir:         baseDir,
		trustedNetworks: trusted,
		maxConns:        maxConns,
		user:            mu,
		extra:           o.ExtraConfig,
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert.cert)

	var lastErr error
	for attempt := 0; attempt < bindAttempts; attempt++ {
		ports, err := pickPorts(3)
		if err != nil {
			lastErr = err
			break
		}
		params.port, params.tlsPort, params.haproxyPort = ports[0], ports[1], ports[2]
		if err := os.WriteFile(confPath(dir), []byte(renderConfig(params)), 0o600); err != nil {
			lastErr = err
			break
		}
		// A stale pid file from a failed attempt could name a live process.
		_ = os.Remove(filepath.Join(baseDir, "master.pid"))
		inst := &Instance{
			Addr:         net.JoinHostPort("127.0.0.1", strconv.Itoa(params.port)),
			TLSAddr:      net.JoinHostPort("127.0.0.1", strconv.Itoa(params.tlsPort)),
			HAProxyAddr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(params.haproxyPort)),
			RootCAs:      pool,
			ServerName:   certServerName,
			LogPath:      logPath(dir),
			Dir:          dir,
			tempBaseDir:  tempBaseDir,
			instanceName: params.instanceName,
		}
		retry, err := inst.launch(ctx, bin)
		if err == nil {
			return inst, nil
		}
		lastErr = err
		if !retry {
			break
		}
	}
	if tempBaseDir != "" {
		_ = os.RemoveAll(tempBaseDir)
	}
	return nil, lastErr
}

// launch starts the master and waits until it serves both ports. On failure
// it leaves no process behind and reports whether new ports might help.
func (i *Instance) launch(ctx context.Context, bin string) (retry bool, err error) {
	out, err := os.OpenFile(stderrPath(i.Dir), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return false, fmt.Errorf("dovecot: %w", err)
	}
	cmd := exec.Command(bin, "-F", "-c", confPath(i.Dir))
	cmd.Dir = i.Dir
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdout, cmd.Stderr = out, out
	setProcAttr(cmd)
	err = cmd.Start()
	out.Close()
	if err != nil {
		return false, fmt.Errorf("dovecot: start %s: %w", bin, err)
	}
	i.cmd = cmd
	i.done = make(chan struct{})
	go func() {
		i.waitErr = cmd.Wait()
		close(i.done)
	}()

	fail := func(cause error) (bool, error) {
		exited := false
		select {
		case <-i.done:
			exited = true
		default:
		}
		i.tempBaseDir = "" // Start reuses or removes it
		_ = i.Close()
		tail := i.diagnostics()
		if exited && strings.Contains(tail, "Address already in use") {
			return true, fmt.Errorf("dovecot: %w\n%s", cause, tail)
		}
		return false, fmt.Errorf("dovecot: %w\n%s", cause, tail)
	}

	tlsConf := &tls.Config{RootCAs: i.RootCAs, ServerName: i.ServerName, MinVersion: tls.VersionTLS12}
	timeout := time.NewTimer(startTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	plainOK, tlsOK := false, false
	var probeErr error
	for {
		select {
		case <-i.done:
			return fail(fmt.Errorf("master exited during start-up: %v", i.waitErr))
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-timeout.C:
			return fail(fmt.Errorf("not ready after %v (last probe: %v)", startTimeout, probeErr))
		case <-tick.C:
		}
		if !plainOK {
			if probeErr = probe(ctx, i.Addr, nil); probeErr == nil {
				plainOK = true
			}
		}
		if plainOK && !tlsOK {
			if probeErr = probe(ctx, i.TLSAddr, tlsConf); probeErr == nil {
				tlsOK = true
			}
		}
		if plainOK && tlsOK {
			return false, nil
		}
	}
}

// probe connects (with TLS if conf is set), reads the greeting and logs out.
func probe(ctx context.Context, addr string, conf *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if conf != nil {
		tc := tls.Client(conn, conf)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		conn = tc
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "* OK") {
		return fmt.Errorf("unexpected greeting %q", line)
	}
	_, _ = conn.Write([]byte("p LOGOUT\r\n"))
	return nil
}

// Close stops the Dovecot master (SIGTERM, which stops its children; SIGKILL
// to the whole process group after a timeout), waits for it and for every
// process of its group. It reports an error if the master had exited before
// Close or if processes remain. Calling it again returns the same result.
func (i *Instance) Close() error {
	i.closeOnce.Do(func() { i.closeErr = i.stop() })
	return i.closeErr
}

func (i *Instance) stop() error {
	var errs []error
	if i.cmd != nil {
		pid := i.cmd.Process.Pid
		select {
		case <-i.done:
			errs = append(errs, fmt.Errorf("dovecot: master exited before Close: %v", i.waitErr))
		default:
			if err := signalProcess(pid, syscall.SIGTERM); err != nil {
				errs = append(errs, fmt.Errorf("dovecot: SIGTERM: %w", err))
			}
			select {
			case <-i.done:
			case <-time.After(stopTimeout):
				errs = append(errs, fmt.Errorf("dovecot: master did not stop within %v; killed", stopTimeout))
				_ = signalGroup(pid, syscall.SIGKILL)
				<-i.done
			}
		}
		// The master normally takes its children with it; make sure.
		if err := waitGroupGone(pid); err != nil {
			errs = append(errs, err)
		}
	}
	if i.tempBaseDir != "" {
		if err := os.RemoveAll(i.tempBaseDir); err != nil {
			errs = append(errs, fmt.Errorf("dovecot: %w", err))
		}
	}
	return errors.Join(errs...)
}

// waitGroupGone waits for the processes of group pgid to go, killing them if
// they have not after a short grace period.
func waitGroupGone(pgid int) error {
	deadline := time.Now().Add(5 * time.Second)
	killed := false
	for start := time.Now(); ; {
		pids, err := groupMembers(pgid)
		if errors.Is(err, errors.ErrUnsupported) || err == nil && len(pids) == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("dovecot: listing processes: %w", err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dovecot: processes %v of group %d remain after Close", pids, pgid)
		}
		if !killed && time.Since(start) > time.Second {
			_ = signalGroup(pgid, syscall.SIGKILL)
			killed = true
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Pid is the Dovecot master's process id (also its process group id).
func (i *Instance) Pid() int {
	if i.cmd == nil || i.cmd.Process == nil {
		return 0
	}
	return i.cmd.Process.Pid
}

// Log returns the whole content of Dovecot's log file.
func (i *Instance) Log() (string, error) {
	b, err := os.ReadFile(i.LogPath)
	return string(b), err
}

// WaitLog waits until a line of Dovecot's log matches re and returns that line, or returns
// ctx's error with the log as it was. Dovecot's log process writes a session's lines after
// the client has had its answers, and a file written by another process gives nothing to
// wait on but polling: every 20 ms.
func (i *Instance) WaitLog(ctx context.Context, re *regexp.Regexp) (string, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		log, err := i.Log()
		if err != nil {
			return "", err
		}
		for _, line := range strings.Split(log, "\n") {
			if re.MatchString(line) {
				return line, nil
			}
		}
		select {
		case <-ctx.Done():
			return log, fmt.Errorf("no line of Dovecot's log matches %s: %w", re, ctx.Err())
		case <-tick.C:
		}
	}
}

// MaildirFor returns the Maildir of user (lower-cased, as Dovecot stores it).
// Start creates it, owned by the mail processes' uid; files dropped in by a
// test must be made readable by that uid.
func (i *Instance) MaildirFor(user string) string {
	return filepath.Join(mailRoot(i.Dir), strings.ToLower(user), "Maildir")
}

// diagnostics is the tail of Dovecot's log and of the master's own output.
func (i *Instance) diagnostics() string {
	var b strings.Builder
	for _, f := range []struct{ name, path string }{{"log", i.LogPath}, {"stderr", stderrPath(i.Dir)}} {
		data, err := os.ReadFile(f.path)
		if err != nil || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		fmt.Fprintf(&b, "--- dovecot %s (%s), last lines:\n%s\n", f.name, f.path, tailLines(string(data), 30))
	}
	return b.String()
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// badPathRune reports characters that Dovecot's configuration parser, its
// %variables or the passwd-file format would interpret.
func badPathRune(r rune) bool {
	return r <= ' ' || r == 0x7f || strings.ContainsRune(`"\%:$#{}<`, r)
}

// checkUserName accepts Dovecot's default auth_username_chars.
func checkUserName(name string) error {
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("dovecot: invalid user name %q", name)
	}
	for _, r := range name {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || strings.ContainsRune(".-_@", r)) {
			return fmt.Errorf("dovecot: user name %q: character %q is not allowed", name, r)
		}
	}
	return nil
}

// lookupMailUser picks the uid/gid for mail processes.
func lookupMailUser() (mailUser, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return mailUser{}, fmt.Errorf("dovecot: current user: %w", err)
		}
		g, err := user.LookupGroupId(strconv.Itoa(os.Getegid()))
		if err != nil {
			return mailUser{}, fmt.Errorf("dovecot: current group: %w", err)
		}
		return mailUser{uid: os.Geteuid(), gid: os.Getegid(), name: u.Username, group: g.Name}, nil
	}
	for _, name := range []string{"mail", "dovecot"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 != nil || err2 != nil || uid == 0 || gid == 0 {
			continue
		}
		return mailUser{uid: uid, gid: gid, name: name, root: true}, nil
	}
	return mailUser{}, errors.New(`dovecot: running as root needs a non-root system user "mail" or "dovecot" for mail processes`)
}

// prepareDir creates the work directory's files: certificate, passwd-file,
// state directory and one Maildir per user owned by the mail uid.
func prepareDir(dir string, users map[string]string, mu mailUser, cert *selfSigned) error {
	for _, d := range []string{dir, filepath.Dir(certPath(dir)), stateDir(dir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(mailRoot(dir), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(mailRoot(dir), 0o755); err != nil {
		return err
	}
	files := []struct {
		path string
		data []byte
	}{
		{certPath(dir), cert.certPEM},
		{keyPath(dir), cert.keyPEM},
		{passwdPath(dir), []byte(passwdFile(dir, users, mu))},
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return err
		}
	}
	for name := range users {
		home := filepath.Join(mailRoot(dir), name)
		paths := []string{home, filepath.Join(home, "Maildir")}
		for _, sub := range []string{"cur", "new", "tmp"} {
			paths = append(paths, filepath.Join(home, "Maildir", sub))
		}
		for _, p := range paths {
			if err := os.MkdirAll(p, 0o700); err != nil {
				return err
			}
			if err := os.Lchown(p, mu.uid, mu.gid); err != nil {
				return err
			}
		}
	}
	return nil
}

// pickPorts is freePorts; tests replace it.
var pickPorts = freePorts

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("dovecot: pick a port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
