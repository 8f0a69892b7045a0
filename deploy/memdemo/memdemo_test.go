package memdemo

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/imapgate/imapgate/tlsconf"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// inbox logs in as user and returns the subjects in INBOX.
func inbox(t *testing.T, c *imapclient.Client, user, password string) []string {
	t.Helper()
	if err := c.Login(user, password).Wait(); err != nil {
		t.Fatalf("login %s: %v", user, err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages == 0 {
		return nil
	}
	var all imap.SeqSet
	all.AddRange(1, sel.NumMessages)
	msgs, err := c.Fetch(all, &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var subjects []string
	for _, m := range msgs {
		subjects = append(subjects, m.Envelope.Subject)
	}
	return subjects
}

func TestStartShard(t *testing.T) {
	addr, closeShard, err := StartShard(map[string]string{"u@example.com": "pw"}, 5)
	if err != nil {
		t.Fatal(err)
	}
	defer closeShard()
	if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
		t.Errorf("addr = %q", addr)
	}

	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("u@example.com", "wrong").Wait(); err == nil {
		t.Error("login with a wrong password succeeded")
	}
	got := inbox(t, c, "u@example.com", "pw")
	want := []string{"Welcome to imapgate", "Lunch on Thursday?", "[ci] main: all checks passed", "Welcome to imapgate (2)", "Lunch on Thursday? (2)"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("subjects = %q, want %q", got, want)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Error(err)
	}
	if err := closeShard(); err != nil {
		t.Error(err)
	}
	if err := closeShard(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestShardTLS(t *testing.T) {
	srv, certPEM, err := tlsconf.SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := tlsconf.CertPool(certPEM)
	client := &imapclient.Options{TLSConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}}
	users := map[string]string{"u": "pw"}
	for _, mode := range []tlsconf.Mode{tlsconf.STARTTLS, tlsconf.Implicit} {
		t.Run(mode.String(), func(t *testing.T) {
			s, err := StartShardWith(context.Background(), ShardOptions{Users: users, Messages: 1, TLS: mode, TLSConfig: srv})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var c *imapclient.Client
			if mode == tlsconf.STARTTLS {
				c, err = imapclient.DialStartTLS(s.Addr, client)
			} else {
				c, err = imapclient.DialTLS(s.Addr, client)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := inbox(t, c, "u", "pw"); len(got) != 1 {
				t.Errorf("subjects = %q", got)
			}
		})
	}
	if _, err := StartShardWith(context.Background(), ShardOptions{TLS: tlsconf.Implicit}); err == nil {
		t.Error("implicit TLS without a certificate was accepted")
	}
}

func TestDemo(t *testing.T) {
	d, err := Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(d.Shards) != 2 || d.Shard("a") != d.Shards[0] || d.Shard("b") != d.Shards[1] || d.Shard("c") != nil {
		t.Fatalf("shards = %+v", d.Shards)
	}
	for _, u := range d.Users {
		for _, s := range d.Shards {
			t.Run(u.Name+"@"+s.Name, func(t *testing.T) {
				c, err := imapclient.DialInsecure(s.Addr, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				err = c.Login(u.Name, u.Password).Wait()
				if (err == nil) != (u.Shard == s.Name) {
					t.Fatalf("login on shard %s: %v (user's shard is %s)", s.Name, err, u.Shard)
				}
				if err != nil {
					return
				}
				msgs, err := c.Select("INBOX", nil).Wait()
				if err != nil || msgs.NumMessages != DemoMessages {
					t.Errorf("INBOX: %+v, %v", msgs, err)
				}
				body, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
				if err != nil || len(body) != 1 {
					t.Fatalf("fetch: %v", err)
				}
				text := string(body[0].FindBodySection(&imap.FetchItemBodySection{}))
				if !strings.Contains(text, `shard "`+s.Name+`"`) || !strings.Contains(text, "To: <"+u.Name+">") {
					t.Errorf("message 1:\n%s", text)
				}
			})
		}
	}
	if got := d.RoutingUsers(); got["alice@example.com"] != "a" || got["carol@example.com"] != "a" {
		t.Errorf("RoutingUsers = %v", got)
	}
	if got := d.RoutingDomains(); got["example.org"] != "b" {
		t.Errorf("RoutingDomains = %v", got)
	}
}

func TestSampleMessage(t *testing.T) {
	for i := range 7 {
		msg, date := SampleMessage("x@example.com", "a", i)
		s := string(msg)
		if strings.Contains(s, "%!") {
			t.Errorf("message %d has a formatting error:\n%s", i, s)
		}
		if strings.Contains(strings.ReplaceAll(s, "\r\n", ""), "\n") {
			t.Errorf("message %d has a bare LF", i)
		}
		if !strings.Contains(s, "\r\n\r\n") || !strings.HasPrefix(s, "Date: "+date.Format("Mon, 02 Jan 2006")) {
			t.Errorf("message %d:\n%s", i, s)
		}
		again, _ := SampleMessage("x@example.com", "a", i)
		if string(again) != s {
			t.Errorf("message %d is not deterministic", i)
		}
	}
}
