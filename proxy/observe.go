package proxy

import (
	"bytes"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// This file is the traffic observer: after login, a passive IMAP tokenizer watches both
// directions without changing a byte (it only reads the chunks the copy loop moves). It
// tracks literals both ways (APPEND uploads, FETCH bodies; RFC 9051 section 4.3, RFC 7888,
// RFC 3516 literal8), pairs each tagged command with its tagged completion to time it
// (RFC 9051 section 2.2.2), counts commands by name and knows when a session is in IDLE
// (RFC 2177). When the stream stops being IMAP text — after a successful COMPRESS
// (RFC 4978) or STARTTLS — it stops parsing; the bytes still flow.
//
// It is on by default when a side is TLS (the bytes pass through user space anyway) and
// configurable per listener; with it off on plain TCP, splice applies unchanged.

// ObserveMode says whether a listener's sessions run the traffic observer after login.
type ObserveMode int

const (
	// ObserveAuto: on when the client side or the backend side uses TLS.
	ObserveAuto ObserveMode = iota
	// ObserveOn: always; plain TCP sessions then copy through user space instead of splice.
	ObserveOn
	// ObserveOff: never (a traced user's sessions are still observed).
	ObserveOff
)

// scanHeadMax bounds the bytes of a line kept for parsing and tracing; the rest of a long
// line is scanned for its end, not kept.
const scanHeadMax = 256

// maxPendingCommands bounds the commands in flight the observer tracks; a client that
// pipelines more stops being observed (never stops being proxied).
const maxPendingCommands = 1024

// lineScanner splits one direction's byte stream into logical lines: a line with its
// literals (whose bytes are counted and skipped, never kept). It is fed chunks as they come,
// split anywhere.
type lineScanner struct {
	head    []byte // the first scanHeadMax bytes of the logical line, without literal data
	tail    []byte // the last bytes of the current physical line (literal detection)
	lineLen int    // bytes of the current physical line so far
	litLeft int64  // literal bytes still to skip
	lits    []int64
}

const scanTailMax = 24 // enough for "~{4294967295+}\r\n"

// atBoundary reports whether the stream is between two lines.
func (sc *lineScanner) atBoundary() bool {
	return sc.litLeft == 0 && sc.lineLen == 0 && len(sc.head) == 0
}

// feed scans b and calls onLine for every logical line completed in it. onLine must not keep
// line or lits. It returns false if the stream is not IMAP text (a NUL outside a literal).
func (sc *lineScanner) feed(b []byte, onLine func(line []byte, lits []int64)) bool {
	for len(b) > 0 {
		if sc.litLeft > 0 {
			n := min(sc.litLeft, int64(len(b)))
			sc.litLeft -= n
			b = b[n:]
			continue
		}
		i := bytes.IndexByte(b, '\n')
		seg := b
		if i >= 0 {
			seg = b[:i+1]
		}
		b = b[len(seg):]
		if bytes.IndexByte(seg, 0) >= 0 {
			return false
		}
		sc.lineLen += len(seg)
		if room := scanHeadMax - len(sc.head); room > 0 {
			sc.head = append(sc.head, seg[:min(room, len(seg))]...)
		}
		if len(seg) >= scanTailMax {
			sc.tail = append(sc.tail[:0], seg[len(seg)-scanTailMax:]...)
		} else {
			sc.tail = append(sc.tail, seg...)
			if over := len(sc.tail) - scanTailMax; over > 0 {
				sc.tail = append(sc.tail[:0], sc.tail[over:]...)
			}
		}
		if i < 0 {
			continue
		}
		// A physical line ended. Does it announce a literal?
		end := bytes.TrimRight(sc.tail, "\r\n")
		if _, size, _, ok := literalAtEnd(end); ok {
			sc.litLeft = size
			if len(sc.lits) < 16 {
				sc.lits = append(sc.lits, size)
			}
			sc.lineLen = 0
			sc.tail = sc.tail[:0]
			continue
		}
		line := bytes.TrimRight(sc.head, "\r\n")
		onLine(line, sc.lits)
		sc.head = sc.head[:0]
		sc.tail = sc.tail[:0]
		sc.lits = sc.lits[:0]
		sc.lineLen = 0
	}
	return true
}

type pendingCommand struct {
	name  string
	start time.Time
}

// trafficObserver watches one logged-in session. Both copy goroutines feed it; its state is
// read by the admin API and kick.
type trafficObserver struct {
	mu      sync.Mutex
	m       Metrics
	client  lineScanner // client → backend
	server  lineScanner // backend → client
	pending map[string]pendingCommand
	stopped bool

	idle     bool
	idleTag  string // the IDLE command in flight
	authTag  string // AUTHENTICATE in flight: client lines are SASL data, never parsed
	stopTag  string // COMPRESS or STARTTLS in flight: parsing stops after its OK
	counts   map[string]int
	slowName string
	slowDur  time.Duration

	trace      *zap.Logger // non-nil while the user is traced
	traceUntil time.Time
}

func newTrafficObserver(m Metrics) *trafficObserver {
	return &trafficObserver{m: m, pending: make(map[string]pendingCommand), counts: make(map[string]int)}
}

// fromClient and fromBackend are the copy loops' taps. They never modify b.
func (o *trafficObserver) fromClient(b []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stopped {
		return
	}
	if !o.client.feed(b, o.clientLine) {
		o.stopLocked()
	}
}

func (o *trafficObserver) fromBackend(b []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stopped {
		return
	}
	if !o.server.feed(b, o.serverLine) {
		o.stopLocked()
	}
}

// stopLocked ends parsing: the stream is no longer IMAP text we can follow.
func (o *trafficObserver) stopLocked() {
	o.stopped = true
	if o.idle {
		o.idle = false
		o.m.Idle(-1)
	}
	clear(o.pending)
}

// observedCommands are the command names counted under their own label; everything else
// counts as "other" (label values from a bounded set).
var observedCommands = func() map[string]string {
	m := map[string]string{}
	for _, c := range []string{
		"CAPABILITY", "NOOP", "LOGOUT", "ID", "ENABLE", "SELECT", "EXAMINE", "CREATE", "DELETE",
		"RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "LIST", "LSUB", "NAMESPACE", "STATUS", "APPEND",
		"IDLE", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE",
		"CHECK", "GETQUOTA", "GETQUOTAROOT", "SETQUOTA", "GETACL", "SETACL", "MYRIGHTS",
		"LISTRIGHTS", "DELETEACL", "GETMETADATA", "SETMETADATA", "COMPRESS", "STARTTLS", "NOTIFY",
		"SORT", "THREAD", "ESEARCH", "REPLACE", "UNAUTHENTICATE", "AUTHENTICATE", "LOGIN",
		"UID FETCH", "UID SEARCH", "UID STORE", "UID COPY", "UID MOVE", "UID EXPUNGE",
		"UID SORT", "UID THREAD", "UID REPLACE",
	} {
		m[c] = c
	}
	return m
}()

// commandName returns the canonical name of a command line's command and its tag.
func commandName(line []byte) (tag, name string) {
	t, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok {
		return string(t), "other"
	}
	word, rest, _ := bytes.Cut(rest, []byte(" "))
	n := strings.ToUpper(string(word))
	if n == "UID" {
		sub, _, _ := bytes.Cut(rest, []byte(" "))
		n = "UID " + strings.ToUpper(string(sub))
	}
	if c, ok := observedCommands[n]; ok {
		return string(t), c
	}
	return string(t), "other"
}

func (o *trafficObserver) clientLine(line []byte, lits []int64) {
	if o.authTag != "" {
		o.traceLine("C", []byte("<SASL data>"), nil)
		return
	}
	if o.idleTag != "" && bytes.EqualFold(line, []byte("DONE")) {
		o.traceLine("C", line, nil)
		return
	}
	if len(line) == 0 {
		return
	}
	tag, name := commandName(line)
	switch name {
	case "LOGIN":
		o.traceLine("C", []byte(tag+" LOGIN <credentials>"), nil)
	case "AUTHENTICATE":
		o.authTag = tag
		o.traceLine("C", []byte(tag+" AUTHENTICATE <credentials>"), nil)
	default:
		o.traceLine("C", line, lits)
	}
	switch name {
	case "IDLE":
		o.idleTag = tag
	case "COMPRESS", "STARTTLS":
		o.stopTag = tag
	}
	if len(o.pending) >= maxPendingCommands {
		o.stopLocked()
		return
	}
	o.pending[tag] = pendingCommand{name: name, start: time.Now()}
}

func (o *trafficObserver) serverLine(line []byte, lits []int64) {
	o.traceLine("S", line, lits)
	if len(line) == 0 {
		return
	}
	switch line[0] {
	case '+':
		if o.idleTag != "" && !o.idle {
			o.idle = true
			o.m.Idle(1)
		}
		return
	case '*':
		return
	}
	tag, rest, _ := bytes.Cut(line, []byte(" "))
	p, ok := o.pending[string(tag)]
	if !ok {
		return
	}
	delete(o.pending, string(tag))
	d := time.Since(p.start)
	o.m.Command(p.name, d)
	o.counts[p.name]++
	if d > o.slowDur {
		o.slowName, o.slowDur = p.name, d
	}
	switch string(tag) {
	case o.idleTag:
		o.idleTag = ""
		if o.idle {
			o.idle = false
			o.m.Idle(-1)
		}
	case o.authTag:
		o.authTag = ""
	case o.stopTag:
		o.stopTag = ""
		if bytes.HasPrefix(bytes.ToUpper(rest), []byte("OK")) {
			// COMPRESS or STARTTLS took effect: what follows is not IMAP text.
			o.stopLocked()
		}
	}
}

// traceLine logs one line of a traced session: the line's head, literals by size only.
func (o *trafficObserver) traceLine(dir string, line []byte, lits []int64) {
	if o.trace == nil {
		return
	}
	if time.Now().After(o.traceUntil) {
		o.trace = nil
		return
	}
	fields := []zap.Field{zap.String("dir", dir), zap.String("line", string(line))} // line is reused: copied by string()
	if len(lits) > 0 {
		fields = append(fields, zap.Int64s("literal_bytes", lits))
	}
	o.trace.Info("trace", fields...)
}

// state reports whether the session is in IDLE and the name of a command in progress.
func (o *trafficObserver) state() (idle bool, command string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	var oldest time.Time
	for _, p := range o.pending {
		if command == "" || p.start.Before(oldest) {
			command, oldest = p.name, p.start
		}
	}
	return o.idle, command
}

// atBoundary reports whether a BYE can be put into the backend→client stream now: the
// observer follows the stream, it is between two responses, and the client is between
// commands or in IDLE. The caller holds the lock that serialises writes to the client.
func (o *trafficObserver) atBoundary() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return !o.stopped && o.server.atBoundary() && o.client.atBoundary() &&
		(o.idle || len(o.pending) == 0)
}

// end closes the observer's books at the end of a session and returns the fields for the
// session end log line.
func (o *trafficObserver) end() []zap.Field {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.idle {
		o.idle = false
		o.m.Idle(-1)
	}
	o.stopped = true
	fields := []zap.Field{zap.Any("commands", o.counts)}
	if o.slowName != "" {
		fields = append(fields, zap.String("slowest_command", o.slowName),
			zap.Duration("slowest_command_duration", o.slowDur))
	}
	return fields
}
