package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Server accepts client connections on any number of listeners and proxies each session.
// Create it with New; it is safe for concurrent use.
//
// Ownership: Serve owns each listener passed to it until it returns (Close closes them).
// Each accepted connection is owned by its session goroutine until login, and the backend
// connection by the same goroutine once dialed; after login both belong to the session's
// splice (its two flows), which closes them.
type Server struct {
	opts    Options
	log     *zap.Logger
	metrics Metrics

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{} // the session registry: shutdown now, kick and the admin API later
	closed    bool
	wg        sync.WaitGroup
	traces    traceSet

	// Started by the first Serve: the dormancy poller and its sweeper (dormant.go).
	bgOnce    sync.Once
	dormancy  *dormancy // nil: flows never go dormant
	sweepStop chan struct{}
}

// New returns a Server. It starts nothing until Serve is called.
func New(opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	m := opts.Metrics
	if m == nil {
		m = nopMetrics{}
	}
	return &Server{
		opts:      opts,
		log:       log,
		metrics:   m,
		listeners: make(map[net.Listener]struct{}),
		sessions:  make(map[*session]struct{}),
	}
}

func (s *Server) connectTimeout() time.Duration {
	if s.opts.ConnectTimeout > 0 {
		return s.opts.ConnectTimeout
	}
	return 5 * time.Second
}

func (s *Server) loginTimeout() time.Duration {
	if s.opts.LoginTimeout > 0 {
		return s.opts.LoginTimeout
	}
	return 15 * time.Second
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("imapgate: server closed")

// Serve accepts connections on ln until ln is closed or Close is called, and returns then.
// The Server owns every accepted connection. Serve may be called for several listeners at
// once.
func (s *Server) Serve(ln net.Listener, lo ListenerOptions) error {
	if s.opts.Router == nil {
		return errors.New("imapgate: Options.Router is nil")
	}
	if lo.TLS != 0 && lo.TLSConfig == nil {
		return errors.New("imapgate: listener " + lo.Name + " uses TLS but has no TLSConfig")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	s.bgOnce.Do(s.startBackground)
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporaryAccept(err) {
				// Out of file descriptors and the like: wait and retry, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", zap.String("listener", lo.Name),
					zap.Error(err), zap.Duration("retry_in", backoff))
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s.startSession(conn, &lo)
	}
}

func (s *Server) startSession(conn net.Conn, lo *ListenerOptions) {
	ctx, cancel := context.WithCancel(context.Background())
	sess := &session{
		id:     newSessionID(),
		srv:    s,
		lo:     lo,
		start:  time.Now(),
		ctx:    ctx,
		cancel: cancel,
		raw:    newSockConn(conn),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		conn.Close()
		return
	}
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.metrics.ConnOpened(lo.Name)
	sessionWorkers.goRun(func() { s.handle(sess) })
}

// handle is the session goroutine (a worker of the pool, workers.go); named so it shows in
// stack dumps. After login the splice (its flows, in the dormancy loops or on goroutines of
// their own) takes the session over and finishes it.
func (s *Server) handle(sess *session) {
	finish := func() {
		s.mu.Lock()
		delete(s.sessions, sess)
		s.mu.Unlock()
		s.metrics.ConnClosed(sess.lo.Name)
		s.wg.Done()
	}
	if !sess.run(finish) {
		finish()
	}
}

// Close stops every listener passed to Serve and ends every session (clients before login get
// BYE). It returns when all sessions have ended; their goroutines, workers of a pool shared
// by the process (workers.go), may wait up to a second more for another session.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		_ = ln.Close()
	}
	for sess := range s.sessions {
		sess.interrupt()
	}
	stop, d := s.sweepStop, s.dormancy
	s.sweepStop = nil
	s.mu.Unlock()
	if stop != nil {
		close(stop)
	}
	s.wg.Wait()
	if d != nil {
		d.close()
	}
	return nil
}

// startBackground starts the dormancy poller and its sweeper, unless DormantAfter is
// negative. Without an epoll instance the proxy works on, with a goroutine per direction.
func (s *Server) startBackground() {
	every := s.dormantAfter()
	if every < 0 {
		return
	}
	d, err := newDormancy(s.metrics)
	if err != nil {
		s.log.Warn("idle sessions keep their goroutines: no dormancy poller", zap.Error(err))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		d.close()
		return
	}
	s.dormancy, s.sweepStop = d, make(chan struct{})
	d.start()
	go s.sweepLoop(max(every/2, time.Millisecond), s.sweepStop)
}

// ActiveSessions returns how many sessions are open (before and after login).
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}
