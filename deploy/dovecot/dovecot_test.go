package dovecot

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// requireDovecot skips without Dovecot, except in CI, which installs it.
func requireDovecot(t *testing.T) {
	t.Helper()
	if _, ok := Available(); ok {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("dovecot is not installed; deploy/test.sh installs it (apt-get install dovecot-imapd)")
	}
	t.Skip("dovecot is not installed (apt-get install dovecot-imapd)")
}

const bobPassword = `b:ob "pass" {3}`

func startInstance(t *testing.T, o Options) *Instance {
	t.Helper()
	requireDovecot(t)
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	inst, err := Start(ctx, o)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := inst.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return inst
}

func (i *Instance) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: i.RootCAs, ServerName: i.ServerName}
}

func login(t *testing.T, c *imapclient.Client, user, pass string) {
	t.Helper()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatalf("LOGIN %s: %v", user, err)
	}
}

func logout(t *testing.T, c *imapclient.Client) {
	t.Helper()
	if err := c.Logout().Wait(); err != nil {
		t.Errorf("LOGOUT: %v", err)
	}
	c.Close()
}

func TestDovecot(t *testing.T) {
	inst := startInstance(t, Options{Users: map[string]string{"alice": "alice-pw", "Bob": bobPassword}})
	const msg = "From: bob@example.org\r\nTo: alice@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"

	t.Run("plain LOGIN, APPEND, SELECT", func(t *testing.T) {
		conn, err := net.Dial("tcp", inst.Addr)
		if err != nil {
			t.Fatal(err)
		}
		c := imapclient.New(conn, nil)
		defer c.Close()
		login(t, c, "alice", "alice-pw")
		app := c.Append("INBOX", int64(len(msg)), nil)
		if _, err := app.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if err := app.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := app.Wait(); err != nil {
			t.Fatalf("APPEND: %v", err)
		}
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil {
			t.Fatalf("SELECT: %v", err)
		}
		if sel.NumMessages != 1 {
			t.Errorf("INBOX has %d messages, want 1", sel.NumMessages)
		}
		logout(t, c)
		files, _ := filepath.Glob(filepath.Join(inst.MaildirFor("alice"), "*", "*"))
		found := false
		for _, f := range files {
			if data, err := os.ReadFile(f); err == nil && string(data) == strings.ReplaceAll(msg, "\r\n", "\n") { // Maildir stores LF
				found = true
			}
		}
		if !found {
			t.Errorf("message not found in %s (files %v)", inst.MaildirFor("alice"), files)
		}
	})

	t.Run("STARTTLS", func(t *testing.T) {
		c, err := imapclient.DialStartTLS(inst.Addr, &imapclient.Options{TLSConfig: inst.tlsConfig()})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		login(t, c, "bob", bobPassword) // stored lower-cased
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			t.Fatalf("SELECT: %v", err)
		}
		logout(t, c)
	})

	t.Run("implicit TLS", func(t *testing.T) {
		c, err := imapclient.DialTLS(inst.TLSAddr, &imapclient.Options{TLSConfig: inst.tlsConfig()})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		login(t, c, "alice", "alice-pw")
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil {
			t.Fatalf("SELECT: %v", err)
		}
		if sel.NumMessages != 1 {
			t.Errorf("INBOX has %d messages, want 1", sel.NumMessages)
		}
		logout(t, c)
	})

	t.Run("certificate IP SAN", func(t *testing.T) {
		conf := &tls.Config{RootCAs: inst.RootCAs, ServerName: "127.0.0.1"}
		conn, err := tls.Dial("tcp", inst.TLSAddr, conf)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
	})

	t.Run("wrong password", func(t *testing.T) {
		for _, pass := range []string{"wrong", "alice-pw "} {
			conn, err := net.Dial("tcp", inst.Addr)
			if err != nil {
				t.Fatal(err)
			}
			c := imapclient.New(conn, nil)
			err = c.Login("alice", pass).Wait()
			var imapErr *imap.Error
			if !errors.As(err, &imapErr) || imapErr.Code != imap.ResponseCodeAuthenticationFailed {
				t.Errorf("LOGIN with password %q: got %v, want NO [AUTHENTICATIONFAILED]", pass, err)
			}
			c.Close()
		}
	})

	t.Run("forwarded client IP", func(t *testing.T) {
		conn, err := net.Dial("tcp", inst.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(conn)
		cmd := func(tag, line string) string {
			t.Helper()
			if line != "" {
				fmt.Fprintf(conn, "%s %s\r\n", tag, line)
			}
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					t.Fatalf("%s %s: %v", tag, line, err)
				}
				if tag == "*" || strings.HasPrefix(l, tag+" ") {
					return l
				}
			}
		}
		cmd("*", "") // greeting
		id := `ID ("x-originating-ip" "192.0.2.7" "x-originating-port" "40123" "x-connected-ip" "127.0.0.1" "x-connected-port" "143" "x-session-id" "imapgateTest1")`
		if l := cmd("a", id); !strings.HasPrefix(l, "a OK") {
			t.Fatalf("ID: %q", l)
		}
		if l := cmd("b", `LOGIN alice alice-pw`); !strings.HasPrefix(l, "b OK") {
			t.Fatalf("LOGIN: %q", l)
		}
		cmd("c", "LOGOUT")
		waitLog(t, inst, regexp.MustCompile(`imap-login: Info: Login: user=<alice>, method=PLAIN, rip=192\.0\.2\.7, rport=40123, .*session=<imapgateTest1>`))
	})

	t.Run("concurrent IDLE sessions", func(t *testing.T) {
		// The proxy's tests run 200 sessions from 127.0.0.1 for one user; half
		// of them here are TLS, which imap-login proxies for their life. More
		// IDLE processes than the 128 inotify instances per uid exist here:
		// IDLE still notices a new message (mailbox_idle_check_interval).
		const n = 200
		var all, ready sync.WaitGroup
		ready.Add(n)
		release := make(chan struct{})
		notified := make(chan int, n)
		errs := make(chan error, n)
		for k := range n {
			all.Go(func() {
				idling := false
				defer func() {
					if !idling {
						ready.Done()
					}
				}()
				var once sync.Once
				opts := &imapclient.Options{
					TLSConfig: inst.tlsConfig(),
					UnilateralDataHandler: &imapclient.UnilateralDataHandler{
						Mailbox: func(d *imapclient.UnilateralDataMailbox) {
							if d.NumMessages != nil && *d.NumMessages >= 2 {
								once.Do(func() { notified <- k })
							}
						},
					},
				}
				var c *imapclient.Client
				var err error
				if k%2 == 0 {
					c, err = imapclient.DialTLS(inst.TLSAddr, opts)
				} else {
					c, err = imapclient.DialInsecure(inst.Addr, opts)
				}
				if err != nil {
					errs <- fmt.Errorf("session %d: %w", k, err)
					return
				}
				defer c.Close()
				if err := c.Login("alice", "alice-pw").Wait(); err != nil {
					errs <- fmt.Errorf("session %d: LOGIN: %w", k, err)
					return
				}
				if _, err := c.Select("INBOX", nil).Wait(); err != nil {
					errs <- fmt.Errorf("session %d: SELECT: %w", k, err)
					return
				}
				idle, err := c.Idle()
				if err != nil {
					errs <- fmt.Errorf("session %d: IDLE: %w", k, err)
					return
				}
				idling = true
				ready.Done()
				<-release
				if err := idle.Close(); err != nil {
					errs <- fmt.Errorf("session %d: DONE: %w", k, err)
				}
				if err := idle.Wait(); err != nil {
					errs <- fmt.Errorf("session %d: IDLE: %w", k, err)
				}
				if err := c.Logout().Wait(); err != nil {
					errs <- fmt.Errorf("session %d: LOGOUT: %w", k, err)
				}
			})
		}
		ready.Wait()

		// All sessions are open at once; deliver a message to them.
		c, err := imapclient.DialInsecure(inst.Addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		login(t, c, "alice", "alice-pw")
		app := c.Append("INBOX", int64(len(msg)), nil)
		_, _ = app.Write([]byte(msg))
		_ = app.Close()
		if _, err := app.Wait(); err != nil {
			t.Errorf("APPEND: %v", err)
		}
		logout(t, c)
		count := 0
		timeout := time.After(15 * time.Second)
	wait:
		for count < n {
			select {
			case <-notified:
				count++
			case <-timeout:
				break wait
			}
		}
		close(release)
		all.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if count < n {
			t.Errorf("%d of %d IDLE sessions saw the new message", count, n)
		}
	})

	pid := inst.Pid()
	if pids, err := groupMembers(pid); err != nil || len(pids) < 4 {
		t.Errorf("Dovecot's process group %d has %v (err %v); want the master and its children", pid, pids, err)
	}
	if procs := processesMentioning(t, inst.instanceName); len(procs) < 4 {
		t.Errorf("processes titled with %q: %v; want the master's children", inst.instanceName, procs)
	}
	if err := inst.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if pids, err := groupMembers(pid); err != nil || len(pids) > 0 {
		t.Errorf("after Close, processes %v (err %v) remain in group %d", pids, err, pid)
	}
	if procs := processesMentioning(t, inst.instanceName); len(procs) > 0 {
		t.Errorf("after Close, processes remain: %v", procs)
	}
	if err := inst.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	log, err := inst.Log()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "master: Warning: Killed with signal 15") || // Close's SIGTERM
			strings.Contains(line, "Warning: Inotify instance limit") { // IDLE polls instead
			continue
		}
		if strings.Contains(line, "Warning:") || strings.Contains(line, "Error:") || strings.Contains(line, "Fatal:") {
			t.Errorf("log: %s", line)
		}
	}
	if t.Failed() {
		t.Logf("log tail:\n%s", tailLines(log, 40))
	}
}

// processesMentioning lists live processes whose command line contains s
// (Dovecot titles its children "dovecot-<instance_name>/<service>").
func processesMentioning(t *testing.T, s string) []string {
	t.Helper()
	paths, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var procs []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), s) {
			procs = append(procs, filepath.Base(filepath.Dir(p))+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return procs
}

func waitLog(t *testing.T, inst *Instance, re *regexp.Regexp) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if log, err := inst.WaitLog(ctx, re); err != nil {
		t.Fatalf("%v:\n%s", err, log)
	}
}

func TestStartValidation(t *testing.T) {
	ctx := context.Background()
	if _, ok := Available(); !ok {
		if _, err := Start(ctx, Options{Dir: t.TempDir()}); !errors.Is(err, ErrNotInstalled) {
			t.Errorf("Start without dovecot: %v, want ErrNotInstalled", err)
		}
		return
	}
	for name, o := range map[string]Options{
		"no dir":         {},
		"bad dir":        {Dir: filepath.Join(t.TempDir(), "a:b")},
		"bad user":       {Dir: t.TempDir(), Users: map[string]string{"a/b": "x"}},
		"duplicate user": {Dir: t.TempDir(), Users: map[string]string{"Al": "x", "al": "y"}},
		"negative limit": {Dir: t.TempDir(), MaxConnections: -1},
	} {
		if inst, err := Start(ctx, o); err == nil {
			inst.Close()
			t.Errorf("%s: Start succeeded", name)
		}
	}
}

func TestStartFailureReportsLog(t *testing.T) {
	requireDovecot(t)
	_, err := Start(context.Background(), Options{Dir: t.TempDir(), ExtraConfig: "no_such_setting = 1\n"})
	if err == nil || !strings.Contains(err.Error(), "no_such_setting") {
		t.Fatalf("Start with a bad setting: %v, want an error quoting Dovecot's complaint", err)
	}
}

func TestLongDirUsesShortBaseDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 80))
	inst := startInstance(t, Options{Dir: dir, Users: map[string]string{"alice": "pw"}, MaxConnections: 10})
	if inst.tempBaseDir == "" {
		t.Fatal("expected a temporary base_dir")
	}
	c, err := imapclient.DialInsecure(inst.Addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	login(t, c, "alice", "pw")
	logout(t, c)
	if err := inst.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(inst.tempBaseDir); !os.IsNotExist(err) {
		t.Errorf("temporary base_dir %s not removed: %v", inst.tempBaseDir, err)
	}
}

func TestStartRetriesWhenPortsAreTaken(t *testing.T) {
	requireDovecot(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	calls := 0
	pickPorts = func(n int) ([]int, error) {
		calls++
		if calls == 1 {
			ports, err := freePorts(n)
			if err == nil {
				ports[1] = taken.Addr().(*net.TCPAddr).Port
			}
			return ports, err
		}
		return freePorts(n)
	}
	defer func() { pickPorts = freePorts }()
	inst := startInstance(t, Options{MaxConnections: 10})
	if calls != 2 {
		t.Errorf("ports picked %d times, want 2", calls)
	}
	if inst.TLSAddr == taken.Addr().String() {
		t.Errorf("TLSAddr %s is the taken port", inst.TLSAddr)
	}
	if log, _ := inst.Log(); !strings.Contains(log, "Address already in use") {
		t.Errorf("log does not show the failed first attempt:\n%s", log)
	}
}
