package memdemo

import (
	"errors"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
)

// This file gives the shards an IDLE (RFC 9051 section 6.3.13, RFC 2177) that tells the client
// of every change it has not seen, whenever the change came.
//
// imapmemserver's own IDLE (go-imap v2.0.0-beta.8: imapserver/idle.go, tracker.go) sends
// "+ idling" and only then starts SessionTracker.Idle, which announces updates queued after
// it has registered and never sends those queued before. A message appended by another
// session while the client was between two commands, or between "+ idling" and that
// registration, reached the client only after its DONE: up to the 29 minutes a client idles.
// Tests that idle and then append from another session failed about once in a few hundred
// runs on a loaded machine (TestDormantSessionWakesBothWays; the backend's socket held nothing,
// the EXISTS came after DONE). Here IDLE first registers for the shard's changes, then sends
// what is pending (Poll), then waits: a change made at any time is either pending at the
// Poll or wakes it after.
//
// go-imap keeps the queue of updates per session (SessionTracker) and offers no public way to
// be told of them; so the session's commands that queue updates for others (APPEND, COPY,
// MOVE, EXPUNGE, STORE, and FETCH of a body, which sets \Seen) announce a change of the shard
// when they return, and every idling session of the shard polls. A poll that finds nothing
// sends nothing.

// changes tells idling sessions that a session of the shard has changed a mailbox: a channel
// closed on each change, made when a session waits.
type changes struct {
	mu sync.Mutex
	ch chan struct{} // nil while no session waits
}

// next is the channel closed at the next change.
func (c *changes) next() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.ch
}

// changed wakes the sessions that wait.
func (c *changes) changed() {
	c.mu.Lock()
	if c.ch != nil {
		close(c.ch)
		c.ch = nil
	}
	c.mu.Unlock()
}

// session is imapmemserver's session with the IDLE above; the rest, Login included, is
// imapmemserver's.
type session struct {
	imapserver.SessionIMAP4rev2 // imapmemserver.Server.NewSession's

	changes *changes // the shard's
}

// newSession is imapserver.Options.NewSession for a shard served by mem.
func newSession(mem *imapmemserver.Server, ch *changes) (imapserver.Session, *imapserver.GreetingData, error) {
	inner, ok := mem.NewSession().(imapserver.SessionIMAP4rev2)
	if !ok { // a go-imap that changed its session: the shards announce IMAP4rev2
		return nil, nil, errors.New("memdemo: imapmemserver's session does not implement IMAP4rev2")
	}
	return &session{SessionIMAP4rev2: inner, changes: ch}, nil, nil
}

// Idle sends pending updates, and then each update as it comes, until stop.
func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	for {
		next := s.changes.next() // before the poll: a change after it closes next
		if err := s.Poll(w, true); err != nil {
			return err
		}
		select {
		case <-next:
		case <-stop:
			return nil
		}
	}
}

func (s *session) Append(mailbox string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	defer s.changes.changed()
	return s.SessionIMAP4rev2.Append(mailbox, r, options)
}

func (s *session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	defer s.changes.changed()
	return s.SessionIMAP4rev2.Copy(numSet, dest)
}

func (s *session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	defer s.changes.changed()
	return s.SessionIMAP4rev2.Move(w, numSet, dest)
}

func (s *session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	defer s.changes.changed()
	return s.SessionIMAP4rev2.Expunge(w, uids)
}

func (s *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	defer s.changes.changed()
	return s.SessionIMAP4rev2.Store(w, numSet, flags, options)
}

// Fetch announces a change only when it sets \Seen: a body section without PEEK (RFC 9051
// section 6.4.5), as imapmemserver's Fetch decides.
func (s *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	for _, bs := range options.BodySection {
		if !bs.Peek {
			defer s.changes.changed()
			break
		}
	}
	return s.SessionIMAP4rev2.Fetch(w, numSet, options)
}
