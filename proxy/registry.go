package proxy

import "time"

// This file is the session registry's public face: the live sessions for the admin API, and
// kick. The registry itself is Server.sessions, maintained by startSession and handle.

// info describes the session now. Safe to call from any goroutine.
func (s *session) info() SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	si := SessionInfo{
		ID:       s.id,
		Listener: s.lo.Name,
		Client:   s.raw.RemoteAddr().String(),
		Start:    s.start,
		LoggedIn: s.up != nil,
		User:     s.user,
		Shard:    s.shard,
		Backend:  s.backend,
	}
	si.BytesClientToBackend = s.c2b.Load()
	si.BytesBackendToClient = s.b2c.Load()
	if obs := s.observer; obs != nil {
		si.Idle, si.Command = obs.state()
	}
	return si
}

// Sessions returns a snapshot of the live sessions, before and after login.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess)
	}
	s.mu.Unlock()
	out := make([]SessionInfo, 0, len(list))
	for _, sess := range list {
		out = append(out, sess.info())
	}
	return out
}

// Kick ends every logged-in session for which match returns true and returns how many it
// ended. A client whose session is between commands or in IDLE (as the traffic observer
// sees it) gets "* BYE" first; otherwise its connection is closed.
func (s *Server) Kick(match func(SessionInfo) bool) int {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess)
	}
	s.mu.Unlock()
	n := 0
	for _, sess := range list {
		if sess.closing.Load() {
			continue // already being ended (an earlier kick, shutdown): not counted again
		}
		si := sess.info()
		if !si.LoggedIn || !match(si) {
			continue
		}
		sess.kick()
		n++
	}
	return n
}

// Trace logs the IMAP traffic of user's sessions that log in from now until the given time
// (both directions, literals summarised by size, credentials never) at info level. A zero
// time ends a trace. Sessions already spliced without the traffic observer are not traced.
func (s *Server) Trace(user string, until time.Time) {
	s.traces.set(user, until)
}
