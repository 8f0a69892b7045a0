package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Scenario names.
const (
	Logins     = "logins"
	Throughput = "throughput"
	Latency    = "latency"
	Idle       = "idle"
)

// AllScenarios are the scenarios a run has by default, in order.
var AllScenarios = []string{Logins, Throughput, Latency, Idle}

// opTimeout bounds every single network step of the load generator (dial, handshake,
// command); a scenario's loop is bounded by its duration.
const opTimeout = 30 * time.Second

// Caps on the count of operations, besides the time bound.
const (
	maxLoginSessions = 2_000_000
	maxNoops         = 20_000_000
	maxFetches       = 100_000
)

// scenarioEnv is one scenario run against one started target.
type scenarioEnv struct {
	o       *Options
	t       *running
	backend *backend
}

func (e *scenarioEnv) dial(ctx context.Context, bufSize int) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return Dial(ctx, e.t.addr, e.t.tls, bufSize)
}

// session dials, logs in as u and selects INBOX, all within opTimeout.
func (e *scenarioEnv) session(ctx context.Context, u user, bufSize int) (*Conn, error) {
	c, err := e.dial(ctx, bufSize)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	if err := c.Login(u.name, u.password); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Select("INBOX"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// checkSession is one full session, run once after a target starts.
func (e *scenarioEnv) checkSession(ctx context.Context) error {
	c, err := e.session(ctx, e.backend.users[0], 0)
	if err != nil {
		return fmt.Errorf("first session: %w", err)
	}
	defer c.Close()
	return c.Logout()
}

// logins runs full sessions (connect, greeting, LOGIN, SELECT INBOX, LOGOUT) from
// Concurrency workers for Duration.
func (e *scenarioEnv) logins(ctx context.Context, r *Result) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conc := e.o.Concurrency
	var (
		next     atomic.Uint64
		failures atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
	)
	times := make([][]time.Duration, conc)
	start := time.Now()
	end := start.Add(e.o.Duration)
	for w := range conc {
		times[w] = make([]time.Duration, 0, 4096)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				i := next.Add(1)
				if i > maxLoginSessions {
					return
				}
				u := e.backend.users[int(i)%len(e.backend.users)]
				t0 := time.Now()
				err := e.oneLogin(ctx, u)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					// A few failures are reported; many end the scenario.
					if failures.Add(1) > 10 {
						cancel()
						return
					}
					continue
				}
				times[w] = append(times[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(times...)
	r.Count = len(all)
	r.Failures = int(failures.Load())
	r.Elapsed = elapsed
	r.Rate = float64(len(all)) / elapsed.Seconds()
	r.P50, r.P99 = percentiles(all)
	if r.Failures > 0 {
		return fmt.Errorf("%d of %d sessions failed, first: %w", r.Failures, r.Count+r.Failures, firstErr)
	}
	return nil
}

func (e *scenarioEnv) oneLogin(ctx context.Context, u user) error {
	c, err := e.session(ctx, u, 0)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Logout()
}

// throughput fetches the bulk mailbox (FETCH 1:* BODY.PEEK[]) over one session, again and
// again for Duration.
func (e *scenarioEnv) throughput(ctx context.Context, r *Result) error {
	c, err := e.session(ctx, e.backend.bulk, 256<<10)
	if err != nil {
		return err
	}
	defer c.Close()
	want := int64(e.o.Messages) * int64(e.o.MessageSize)
	start := time.Now()
	var total int64
	for n := 0; n < maxFetches && ctx.Err() == nil; n++ {
		_ = c.SetDeadline(time.Now().Add(opTimeout))
		got, err := c.FetchAll()
		total += got
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("FETCH 1:* returned %d bytes of messages, want %d", got, want)
		}
		r.Count++
		if time.Since(start) >= e.o.Duration {
			break
		}
	}
	r.Elapsed = time.Since(start)
	r.Bytes = total
	r.Rate = float64(total) / 1e6 / r.Elapsed.Seconds()
	_ = c.Logout()
	return ctx.Err()
}

// latency sends NOOPs one after the other over one session for Duration.
func (e *scenarioEnv) latency(ctx context.Context, r *Result) error {
	c, err := e.session(ctx, e.backend.users[0], 0)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(e.o.Duration + opTimeout))
	rtts := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	end := start.Add(e.o.Duration)
	for len(rtts) < maxNoops && ctx.Err() == nil {
		t0 := time.Now()
		if err := c.Noop(); err != nil {
			return err
		}
		t1 := time.Now()
		rtts = append(rtts, t1.Sub(t0))
		if t1.After(end) {
			break
		}
	}
	r.Elapsed = time.Since(start)
	r.Count = len(rtts)
	r.Rate = float64(len(rtts)) / r.Elapsed.Seconds()
	r.P50, r.P99 = percentiles(rtts)
	_ = c.Logout()
	return ctx.Err()
}

// idleOpeners is how many sessions the idle scenario opens at once.
const idleOpeners = 32

// idle opens Sessions sessions (LOGIN, SELECT INBOX, IDLE), holds them for Duration, then
// ends IDLE on each (DONE) and counts the tagged OKs: a session that was dropped during
// the hold fails there. The proxy's memory and descriptors are read at the end of the
// hold and compared with those before the first session.
func (e *scenarioEnv) idle(ctx context.Context, r *Result) error {
	n := e.o.Sessions
	r.Count = n
	before, err := groupStats(e.t.pgid, true)
	if err != nil && !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	conns := make([]*Conn, n)
	defer func() {
		parallel(n, idleOpeners, func(i int) {
			if c := conns[i]; c != nil {
				c.Close()
			}
		})
	}()
	var failures atomic.Int64
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) {
		failures.Add(1)
		errOnce.Do(func() { firstErr = err })
	}
	start := time.Now()
	parallel(n, idleOpeners, func(i int) {
		if ctx.Err() != nil || failures.Load() > 10 {
			return
		}
		c, err := e.session(ctx, e.backend.users[i%len(e.backend.users)], 1024)
		if err == nil {
			if err = c.Idle(); err != nil {
				c.Close()
			}
		}
		if err != nil {
			fail(fmt.Errorf("open session %d: %w", i+1, err))
			return
		}
		_ = c.SetDeadline(time.Time{})
		conns[i] = c
	})
	r.OpenTime = time.Since(start)
	opened := 0
	for _, c := range conns {
		if c != nil {
			opened++
		}
	}
	r.Opened = opened
	if opened < n {
		if firstErr == nil {
			firstErr = ctx.Err()
		}
		return fmt.Errorf("opened %d of %d sessions: %w", opened, n, firstErr)
	}

	select {
	case <-time.After(e.o.Duration):
	case <-ctx.Done():
		return ctx.Err()
	}
	after, err := groupStats(e.t.pgid, true)
	if err != nil && !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	r.Elapsed = time.Since(start)

	var held atomic.Int64
	parallel(n, idleOpeners, func(i int) {
		c := conns[i]
		_ = c.SetDeadline(time.Now().Add(opTimeout))
		if err := c.Done(); err != nil {
			fail(fmt.Errorf("session %d after the hold: %w", i+1, err))
			return
		}
		held.Add(1)
		_ = c.Logout()
	})
	r.Held = int(held.Load())
	if e.t.pgid > 0 {
		r.Procs = after.Procs
		r.RSSBefore, r.RSSAfter = before.RSS, after.RSS
		r.RSSPerSession = float64(after.RSS-before.RSS) / float64(n)
		r.FDsPerSession = float64(after.FDs-before.FDs) / float64(n)
	}
	if r.Held < n {
		return fmt.Errorf("%d of %d sessions did not survive the hold: %w", n-r.Held, n, firstErr)
	}
	return nil
}

// parallel calls f(0..n-1) from at most workers goroutines and returns when all are done.
func parallel(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(n, workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// percentiles returns the 50th and 99th percentiles (nearest rank) of d, sorting it.
func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	slices.Sort(d)
	rank := func(p int) time.Duration {
		i := (p*len(d)+99)/100 - 1
		return d[max(0, min(i, len(d)-1))]
	}
	return rank(50), rank(99)
}
