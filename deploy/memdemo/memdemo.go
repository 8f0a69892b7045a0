// Package memdemo runs in-process IMAP servers with sample users and messages: the shards
// behind `imapgate demo`, and real backends for tests. Each shard is a go-imap v2
// imapmemserver on a loopback port.
//
// Usage in a test:
//
//	addr, closeShard, err := memdemo.StartShard(map[string]string{"alice@example.com": "alice"}, 3)
//	if err != nil {
//		t.Fatal(err)
//	}
//	defer closeShard()
//	// point a routing.Backend at addr
//
// The servers keep everything in memory and lose it on Close. They allow LOGIN and
// AUTHENTICATE PLAIN over cleartext, because imapgate logs in to them over loopback: never
// expose one beyond the machine. imapmemserver compares user names exactly (case-sensitive),
// so a client must log in with the name as written in Users. The servers do not support the
// ID command (imapgate then does not forward the client's address). Their IDLE sends every
// change the client has not seen, those made before it started included (idle.go), which
// imapmemserver's own does not.
package memdemo

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/imapgate/imapgate/tlsconf"
)

// ShardOptions configure one in-process IMAP server.
type ShardOptions struct {
	// Name labels the shard in its sample messages. Empty means "demo".
	Name string
	// Address is where to listen. Empty means 127.0.0.1:0 (a free port).
	Address string
	// Users maps user names to passwords. Names are compared exactly.
	Users map[string]string
	// Messages is how many sample messages each user's INBOX gets (realistic RFC 5322
	// text messages, the same for every run). Zero means none.
	Messages int
	// TLS is how clients reach the server: None (cleartext), STARTTLS (offered with
	// TLSConfig) or Implicit (TLS from the first byte, with TLSConfig).
	TLS tlsconf.Mode
	// TLSConfig is the server certificate; required for STARTTLS and Implicit.
	// tlsconf.SelfSigned makes one.
	TLSConfig *tls.Config
	// Logger receives the server's error messages. Nil discards them.
	Logger imapserver.Logger
}

// Shard is a running in-process IMAP server.
type Shard struct {
	// Name is ShardOptions.Name.
	Name string
	// Addr is the address the server listens on (host:port, port resolved).
	Addr string
	// Users are the user names and passwords it accepts.
	Users map[string]string

	srv       *imapserver.Server
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// StartShardWith starts an IMAP server as opts says and returns once it accepts connections.
// ctx bounds only the start.
func StartShardWith(ctx context.Context, opts ShardOptions) (*Shard, error) {
	if opts.Name == "" {
		opts.Name = "demo"
	}
	if opts.Address == "" {
		opts.Address = "127.0.0.1:0"
	}
	if opts.TLS != tlsconf.None && opts.TLSConfig == nil {
		return nil, fmt.Errorf("memdemo: shard %s: TLS %v needs a TLSConfig", opts.Name, opts.TLS)
	}
	mem := imapmemserver.New()
	for _, name := range slices.Sorted(maps.Keys(opts.Users)) {
		u, err := newUser(name, opts.Users[name], opts.Name, opts.Messages)
		if err != nil {
			return nil, fmt.Errorf("memdemo: shard %s: %w", opts.Name, err)
		}
		mem.AddUser(u)
	}
	ch := new(changes)
	logger := opts.Logger
	if logger == nil {
		logger = discard{}
	}
	so := &imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return newSession(mem, ch)
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		Logger:       logger,
		InsecureAuth: true, // imapgate logs in over cleartext loopback
	}
	if opts.TLS == tlsconf.STARTTLS {
		so.TLSConfig = opts.TLSConfig
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", opts.Address)
	if err != nil {
		return nil, fmt.Errorf("memdemo: shard %s: %w", opts.Name, err)
	}
	addr := ln.Addr().String()
	if opts.TLS == tlsconf.Implicit {
		ln = tls.NewListener(ln, opts.TLSConfig)
	}
	s := &Shard{
		Name:  opts.Name,
		Addr:  addr,
		Users: maps.Clone(opts.Users),
		srv:   imapserver.New(so),
		done:  make(chan struct{}),
	}
	go s.serve(ln)
	return s, nil
}

// serve is a named function so that the shard's goroutine is recognisable in stack dumps.
func (s *Shard) serve(ln net.Listener) {
	defer close(s.done)
	s.srv.Serve(ln) // returns nil once Close closes ln
}

// Close stops the server: its listener and every connection are closed. Calling it again
// does nothing.
func (s *Shard) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.srv.Close()
		<-s.done
	})
	return s.closeErr
}

// StartShard starts a cleartext IMAP server on 127.0.0.1 with users (name → password),
// each with messages sample messages in INBOX. It returns the server's address and the
// function that stops it.
func StartShard(users map[string]string, messages int) (addr string, close func() error, err error) {
	s, err := StartShardWith(context.Background(), ShardOptions{Users: users, Messages: messages})
	if err != nil {
		return "", nil, err
	}
	return s.Addr, s.Close, nil
}

// User is one sample user of the demo.
type User struct {
	// Name is the user name to log in with (an email address).
	Name string
	// Password is the user's password.
	Password string
	// Shard is the name of the shard holding the user's mailbox.
	Shard string
}

// DemoUsers are the sample users of Start: alice and carol on shard "a" (pinned there by
// user), bob and dave on shard "b" (sent there by their domain, example.org). The password
// is the part before '@'.
var DemoUsers = []User{
	{Name: "alice@example.com", Password: "alice", Shard: "a"},
	{Name: "carol@example.com", Password: "carol", Shard: "a"},
	{Name: "bob@example.org", Password: "bob", Shard: "b"},
	{Name: "dave@example.org", Password: "dave", Shard: "b"},
}

// DemoMessages is how many sample messages each demo user's INBOX holds.
const DemoMessages = 3

// Demo is the two-shard setup of `imapgate demo`.
type Demo struct {
	// Shards are shard "a" and shard "b", in that order.
	Shards []*Shard
	// Users are DemoUsers.
	Users []User
}

// Start starts shards "a" and "b" on free loopback ports with DemoUsers, each INBOX holding
// DemoMessages messages. ctx bounds only the start.
func Start(ctx context.Context) (*Demo, error) {
	d := &Demo{Users: slices.Clone(DemoUsers)}
	for _, name := range []string{"a", "b"} {
		users := make(map[string]string)
		for _, u := range d.Users {
			if u.Shard == name {
				users[u.Name] = u.Password
			}
		}
		s, err := StartShardWith(ctx, ShardOptions{Name: name, Users: users, Messages: DemoMessages})
		if err != nil {
			d.Close()
			return nil, err
		}
		d.Shards = append(d.Shards, s)
	}
	return d, nil
}

// Shard returns the shard with the given name, nil if there is none.
func (d *Demo) Shard(name string) *Shard {
	for _, s := range d.Shards {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// RoutingUsers is the routing the demo expects for users: alice and carol pinned to "a".
func (d *Demo) RoutingUsers() map[string]string {
	return map[string]string{"alice@example.com": "a", "carol@example.com": "a"}
}

// RoutingDomains is the routing the demo expects for domains: example.org on "b".
func (d *Demo) RoutingDomains() map[string]string {
	return map[string]string{"example.org": "b"}
}

// Close stops every shard.
func (d *Demo) Close() error {
	var errs []error
	for _, s := range d.Shards {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// newUser makes a user with the usual mailboxes and n sample messages in INBOX.
func newUser(name, password, shard string, n int) (*imapmemserver.User, error) {
	u := imapmemserver.NewUser(name, password)
	mailboxes := []struct {
		name string
		attr imap.MailboxAttr
	}{{"INBOX", ""}, {"Drafts", imap.MailboxAttrDrafts}, {"Sent", imap.MailboxAttrSent}, {"Trash", imap.MailboxAttrTrash}}
	for _, m := range mailboxes {
		var opts *imap.CreateOptions
		if m.attr != "" {
			opts = &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{m.attr}}
		}
		if err := u.Create(m.name, opts); err != nil {
			return nil, fmt.Errorf("user %s: create %s: %w", name, m.name, err)
		}
		if err := u.Subscribe(m.name); err != nil {
			return nil, fmt.Errorf("user %s: subscribe %s: %w", name, m.name, err)
		}
	}
	for i := range n {
		msg, date := SampleMessage(name, shard, i)
		var flags []imap.Flag
		if i == 0 {
			flags = []imap.Flag{imap.FlagSeen}
		}
		if _, err := u.Append("INBOX", bytes.NewReader(msg), &imap.AppendOptions{Flags: flags, Time: date}); err != nil {
			return nil, fmt.Errorf("user %s: append: %w", name, err)
		}
	}
	return u, nil
}

// discard is an imapserver.Logger that drops everything.
type discard struct{}

func (discard) Printf(string, ...any) {}

// sampleEpoch is the date of the first sample message; the others follow a day apart, so
// every run makes the same messages.
var sampleEpoch = time.Date(2025, time.March, 3, 9, 14, 0, 0, time.FixedZone("CET", 3600))
