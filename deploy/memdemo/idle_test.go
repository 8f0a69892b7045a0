package memdemo

import (
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
)

// A client that starts IDLE hears of the message another session appended while it was
// between commands, and of the one appended while it idles (RFC 9051 section 6.3.13), before
// its DONE. imapmemserver's own IDLE held the first until DONE.
func TestIdleSendsPendingChanges(t *testing.T) {
	addr, closeShard, err := StartShard(map[string]string{"u@example.com": "pw"}, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer closeShard()

	exists := make(chan uint32, 8)
	idler, err := imapclient.DialInsecure(addr, &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					exists <- *d.NumMessages
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer idler.Close()
	if got := inbox(t, idler, "u@example.com", "pw"); len(got) != 3 {
		t.Fatalf("INBOX holds %d messages, want 3", len(got))
	}

	other, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.Login("u@example.com", "pw").Wait(); err != nil {
		t.Fatal(err)
	}
	appendOne := func() {
		t.Helper()
		msg := "Subject: new\r\n\r\nhello\r\n"
		cmd := other.Append("INBOX", int64(len(msg)), nil)
		if _, err := cmd.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	expectExists := func(want uint32) {
		t.Helper()
		select {
		case n := <-exists:
			if n != want {
				t.Fatalf("* %d EXISTS, want %d", n, want)
			}
		case <-time.After(20 * time.Second): // a failure's bound, not a synchronisation
			t.Fatalf("no * %d EXISTS while idling", want)
		}
	}

	appendOne() // the idler is between commands
	idle, err := idler.Idle()
	if err != nil {
		t.Fatal(err)
	}
	expectExists(4)
	appendOne() // the idler idles
	expectExists(5)
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
}
