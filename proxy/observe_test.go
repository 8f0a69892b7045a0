package proxy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
	"go.uber.org/zap/zaptest/observer"
)

// recordingMetrics keeps what the data path reports, for tests.
type recordingMetrics struct {
	mu       sync.Mutex
	commands map[string]int
	idle     int
	dormant  int
	upFailed map[string]int // backend address → failed connects
	logins   map[string]int
	bytes    map[string]int64
}

func newRecordingMetrics() *recordingMetrics {
	return &recordingMetrics{commands: map[string]int{}, logins: map[string]int{}, bytes: map[string]int64{}}
}

func (r *recordingMetrics) ConnOpened(string) {}
func (r *recordingMetrics) ConnClosed(string) {}
func (r *recordingMetrics) UpstreamConnect(_, backend string, _ time.Duration, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !ok {
		if r.upFailed == nil {
			r.upFailed = map[string]int{}
		}
		r.upFailed[backend]++
	}
}
func (r *recordingMetrics) SessionStarted(string, string) {}
func (r *recordingMetrics) SessionEnded(string, string, time.Duration) {
}
func (r *recordingMetrics) Login(result, mech string, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logins[result+" "+mech]++
}
func (r *recordingMetrics) Bytes(dir string, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bytes[dir] += n
}
func (r *recordingMetrics) Command(name string, _ time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.commands[name]++
}
func (r *recordingMetrics) Idle(d int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.idle += d
}
func (r *recordingMetrics) Dormant(d int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dormant += d
}

func (r *recordingMetrics) dormantNow() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dormant
}

func (r *recordingMetrics) snapshot() (map[string]int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.commands), r.idle
}

// A recorded session, both directions, in the order the bytes flowed. Literals go both
// ways: a synchronising APPEND upload, a non-synchronising one, literal8, FETCH bodies.
var observedTranscript = []struct{ dir, data string }{
	{"C", "a1 SELECT INBOX\r\n"},
	{"S", "* 2 EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\na1 OK [READ-WRITE] SELECT completed\r\n"},
	{"C", "a2 APPEND INBOX (\\Seen) {23}\r\n"},
	{"S", "+ Ready for literal data\r\n"},
	{"C", "Subject: x\r\n\r\na2 NOOP\r\n\r\n"}, // a tagged line inside a literal is data
	{"S", "a2 OK [APPENDUID 1 3] APPEND completed\r\n"},
	{"C", "a3 APPEND INBOX {12+}\r\nhello\r\nworld\r\n"},
	{"S", "a3 OK APPEND completed\r\n"},
	{"C", "a4 APPEND INBOX ~{4+}\r\n\x01\x02\r\n\r\n"},
	{"S", "a4 OK APPEND completed\r\n"},
	{"C", "a5 UID FETCH 1:2 (BODY.PEEK[])\r\na6 NOOP\r\n"}, // pipelined
	{"S", "* 1 FETCH (UID 1 BODY[] {14}\r\na5 OK fake\r\n\r\n)\r\n* 2 FETCH (UID 2 BODY[] {0}\r\n)\r\na5 OK FETCH completed\r\na6 OK NOOP completed\r\n"},
	{"C", "a7 IDLE\r\n"},
	{"S", "+ idling\r\n"},
	{"S", "* 3 EXISTS\r\n"},
	{"C", "DONE\r\n"},
	{"S", "a7 OK IDLE terminated\r\n"},
	{"C", "a8 XYZZY\r\n"},
	{"S", "a8 BAD unknown command\r\n"},
}

var wantTranscriptCommands = map[string]int{
	"SELECT": 1, "APPEND": 3, "UID FETCH": 1, "NOOP": 1, "IDLE": 1, "other": 1,
}

// feedTranscript gives the observer the transcript split into pieces of at most size
// bytes (0: whole messages), and checks the state at the IDLE points.
func feedTranscript(t *testing.T, o *trafficObserver, size int) {
	t.Helper()
	for i, step := range observedTranscript {
		data := []byte(step.data)
		for len(data) > 0 {
			n := len(data)
			if size > 0 {
				n = min(size, n)
			}
			if step.dir == "C" {
				o.fromClient(data[:n])
			} else {
				o.fromBackend(data[:n])
			}
			data = data[n:]
		}
		if i == 14 { // after "+ idling" and an EXISTS
			if idle, _ := o.state(); !idle {
				t.Fatalf("split %d: not in IDLE after + idling", size)
			}
			if !o.atBoundary() {
				t.Fatalf("split %d: an IDLE session is not at a boundary", size)
			}
		}
	}
}

func TestObserverTranscriptEverySplit(t *testing.T) {
	for size := 0; size <= 40; size++ {
		m := newRecordingMetrics()
		o := newTrafficObserver(m)
		feedTranscript(t, o, size)
		cmds, idle := m.snapshot()
		if !maps.Equal(cmds, wantTranscriptCommands) {
			t.Fatalf("split %d: commands %v, want %v", size, cmds, wantTranscriptCommands)
		}
		if idle != 0 {
			t.Fatalf("split %d: idle gauge %d after DONE", size, idle)
		}
		if idle, cmd := o.state(); idle || cmd != "" {
			t.Fatalf("split %d: state idle=%v command=%q at the end", size, idle, cmd)
		}
		if !o.atBoundary() {
			t.Fatalf("split %d: not at a boundary at the end", size)
		}
	}
}

// FETCH literals split across reads at every offset: the command in progress stays
// FETCH until its tagged OK, and the observer is never at a boundary inside the literal.
func TestObserverFetchLiteralEveryOffset(t *testing.T) {
	resp := "* 1 FETCH (BODY[] {20}\r\nx1 OK not the end\r\n)\r\nx1 OK FETCH completed\r\n"
	for cut := 1; cut < len(resp); cut++ {
		m := newRecordingMetrics()
		o := newTrafficObserver(m)
		o.fromClient([]byte("x1 FETCH 1 BODY[]\r\n"))
		o.fromBackend([]byte(resp[:cut]))
		if _, cmd := o.state(); cmd != "FETCH" {
			t.Fatalf("cut %d: command in progress %q, want FETCH", cut, cmd)
		}
		o.fromBackend([]byte(resp[cut:]))
		if cmds, _ := m.snapshot(); cmds["FETCH"] != 1 {
			t.Fatalf("cut %d: FETCH counted %d times", cut, cmds["FETCH"])
		}
	}
}

// After COMPRESS (RFC 4978) or STARTTLS succeeds, the stream is no longer IMAP text: the
// observer stops parsing and counts nothing more, whatever bytes follow.
func TestObserverStopsAfterCompressOrStartTLS(t *testing.T) {
	for _, cmd := range []string{"COMPRESS DEFLATE", "STARTTLS"} {
		m := newRecordingMetrics()
		o := newTrafficObserver(m)
		o.fromClient([]byte("c1 " + cmd + "\r\n"))
		o.fromBackend([]byte("c1 OK begin\r\n"))
		garbage := make([]byte, 4096)
		rand.Read(garbage)
		o.fromClient(garbage)
		o.fromBackend(garbage)
		o.fromClient([]byte("c2 NOOP\r\n"))
		o.fromBackend([]byte("c2 OK\r\n"))
		cmds, _ := m.snapshot()
		if len(cmds) != 1 || cmds[strings.Fields(cmd)[0]] != 1 {
			t.Fatalf("%s: counted %v after the stream stopped being IMAP", cmd, cmds)
		}
		if o.atBoundary() {
			t.Fatalf("%s: a stopped observer must not allow a BYE to be injected", cmd)
		}
	}
	// A refused COMPRESS keeps the observer going.
	m := newRecordingMetrics()
	o := newTrafficObserver(m)
	o.fromClient([]byte("c1 COMPRESS DEFLATE\r\nc2 NOOP\r\n"))
	o.fromBackend([]byte("c1 NO [COMPRESSIONACTIVE] no\r\nc2 OK\r\n"))
	if cmds, _ := m.snapshot(); cmds["NOOP"] != 1 {
		t.Fatalf("after a refused COMPRESS: %v", cmds)
	}
}

// FuzzObserver feeds random bytes in random chunks to both directions: the observer never
// panics, never changes a byte it is shown, and counts the same whatever the chunking.
func FuzzObserver(f *testing.F) {
	var all bytes.Buffer
	for _, s := range observedTranscript {
		all.WriteString(s.data)
	}
	f.Add(all.Bytes(), uint8(7))
	f.Add([]byte("a LOGIN {5}\r\nx"), uint8(1))
	f.Add([]byte("* 1 FETCH (BODY[] {99999999999}\r\n"), uint8(3))
	f.Add([]byte("a IDLE\r\n+ \r\nDONE\r\na OK\r\n\x00\x01"), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		size := int(chunk%64) + 1
		orig := bytes.Clone(data)
		whole := newRecordingMetrics()
		ow := newTrafficObserver(whole)
		ow.fromClient(data)
		ow.fromBackend(data)
		if !bytes.Equal(data, orig) {
			t.Fatal("the observer changed the bytes it was shown")
		}
		split := newRecordingMetrics()
		os := newTrafficObserver(split)
		for i := 0; i < len(data); i += size {
			os.fromClient(data[i:min(i+size, len(data))])
		}
		for i := 0; i < len(data); i += size {
			os.fromBackend(data[i:min(i+size, len(data))])
		}
		a, _ := whole.snapshot()
		b, _ := split.snapshot()
		if !maps.Equal(a, b) {
			t.Fatalf("chunking changed the counts: %v vs %v", a, b)
		}
		ow.end()
		os.end()
	})
}

// The observer watches without changing a byte: bulk data through the observed copy loop
// (plain TCP, which would otherwise splice) arrives intact.
func TestObservedCopyChangesNoByte(t *testing.T) {
	want := make([]byte, 8<<20)
	rand.Read(want)
	copy(want, "a1 APPEND INBOX {100}\r\n") // start as IMAP, then noise
	r := newCopyRig(t, false, false)
	o := newTrafficObserver(nopMetrics{})
	r.acc.tap = o.fromClient
	got, n, err := r.run(want, true)
	if err != nil || n != int64(len(want)) || !bytes.Equal(got, want) {
		t.Fatalf("copy with observer: %d bytes, %v, intact=%v", n, err, bytes.Equal(got, want))
	}
}

// Through the real proxy with the observer on: per-command metrics, IDLE seen in the
// session list, the session end line with command counts, and a kicked IDLE client gets BYE.
func TestObserverEndToEnd(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	m := newRecordingMetrics()
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{Name: "imap", AllowPlaintextAuth: true, Observe: ObserveOn},
		func(o *Options) { o.Metrics = m })
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	c.send("a2 SELECT INBOX\r\n")
	for !strings.HasPrefix(c.line(), "a2 OK") {
	}
	c.send("a3 APPEND INBOX {20+}\r\nSubject: hi\r\n\r\nhello\r\n")
	for !strings.HasPrefix(c.line(), "a3 OK") {
	}
	c.send("a4 IDLE\r\n")
	c.expect("+ …")
	waitFor(t, "session in IDLE", func() bool {
		s := tp.srv.Sessions()
		return len(s) == 1 && s[0].Idle
	})
	if n := tp.srv.Kick(func(si SessionInfo) bool { return si.User == "alice@example.com" }); n != 1 {
		t.Fatalf("kicked %d sessions", n)
	}
	c.expect("* BYE Session ended by the administrator.")
	c.expectClosed()
	e := tp.waitLog(t, "session end")
	fields := e.ContextMap()
	if fields["closed_by"] != "kick" {
		t.Errorf("closed_by = %v", fields["closed_by"])
	}
	if cmds := fmt.Sprint(fields["commands"]); !strings.Contains(cmds, "APPEND:1") || !strings.Contains(cmds, "SELECT:1") {
		t.Errorf("session end commands = %v", cmds)
	}
	if fields["slowest_command"] == nil {
		t.Errorf("session end has no slowest command: %v", fields)
	}
	cmds, idle := m.snapshot()
	if cmds["SELECT"] != 1 || cmds["APPEND"] != 1 || idle != 0 {
		t.Errorf("metrics: commands %v, idle gauge %d", cmds, idle)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.logins["ok LOGIN"] != 1 {
		t.Errorf("logins %v", m.logins)
	}
}

// Kicking a session in the middle of a command closes it without a BYE (a BYE inside a
// response would corrupt it); without the observer a kick closes too.
func TestKickWithoutObserverCloses(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{AllowPlaintextAuth: true, Observe: ObserveOff})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	waitFor(t, "logged-in session", func() bool {
		s := tp.srv.Sessions()
		return len(s) == 1 && s[0].LoggedIn
	})
	if n := tp.srv.Kick(func(SessionInfo) bool { return true }); n != 1 {
		t.Fatalf("kicked %d", n)
	}
	c.expectClosed()
}

// A traced user's traffic is logged line by line, literals by size, credentials never.
func TestTraceUser(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{AllowPlaintextAuth: true, Observe: ObserveOff})
	tp.srv.Trace("Alice@Example.com", time.Now().Add(time.Minute))
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com alice\r\n")
	c.expect("a1 OK …")
	c.send("a2 APPEND INBOX {27+}\r\nSubject: secret-body\r\n\r\nhi\r\n")
	for !strings.HasPrefix(c.line(), "a2 OK") {
	}
	c.send("a3 LOGOUT\r\n")
	c.expect("* BYE …")
	c.expect("a3 OK …")
	c.conn.Close()
	tp.waitLog(t, "session end")
	traces := tp.logs.FilterMessage("trace").All()
	var lines []string
	for _, e := range traces {
		m := e.ContextMap()
		lines = append(lines, fmt.Sprintf("%v %v %v", m["dir"], m["line"], m["literal_bytes"]))
	}
	all := strings.Join(lines, "\n")
	for _, want := range []string{"C a2 APPEND INBOX {27+} [27]", "S a2 OK", "C a3 LOGOUT"} {
		if !strings.Contains(all, want) {
			t.Errorf("trace lacks %q:\n%s", want, all)
		}
	}
	if strings.Contains(all, "secret-body") {
		t.Errorf("trace shows literal contents:\n%s", all)
	}
	if !slices.ContainsFunc(traces, func(e observer.LoggedEntry) bool { return e.ContextMap()["user"] == "alice@example.com" }) {
		t.Errorf("trace lines do not name the user")
	}
}

// waitFor polls cond on a ticker until it holds (bounded): for state that has no event to
// wait on.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// Commands pipelined behind LOGIN reach the backend before the copy loops start: the
// observer must see them too.
func TestObserverSeesCommandsPipelinedAfterLogin(t *testing.T) {
	be := startMemBackend(t, map[string]string{"alice@example.com": "alice"})
	m := newRecordingMetrics()
	tp := startProxy(t, toBackends(&routing.Backend{Shard: "a", Address: be.addr}),
		ListenerOptions{AllowPlaintextAuth: true, Observe: ObserveOn},
		func(o *Options) { o.Metrics = m })
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("a1 LOGIN alice@example.com alice\r\na2 SELECT INBOX\r\na3 IDLE\r\n")
	c.expect("a1 OK …")
	for !strings.HasPrefix(c.line(), "+") {
	}
	waitFor(t, "session in IDLE", func() bool {
		s := tp.srv.Sessions()
		return len(s) == 1 && s[0].Idle
	})
	if cmds, _ := m.snapshot(); cmds["SELECT"] != 1 {
		t.Errorf("commands %v", cmds)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.bytes["client_to_backend"] == 0 {
		t.Errorf("pipelined bytes not counted: %v", m.bytes)
	}
}

// A kick must not wait for a client that stopped reading: the backend→client copy is parked
// writing to it, holding the lock a BYE would need. The kick gives up the BYE (the client is
// in the middle of a response anyway) and closes the session.
func TestKickWhileClientStopsReading(t *testing.T) {
	addr := scriptedBackend(t, func(s *transcript) {
		s.send("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] ready\r\n")
		s.expect("ig1 AUTHENTICATE PLAIN AGFsaWNlAGFsaWNl")
		s.send("ig1 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
		s.expect("c2 FETCH 1:* BODY[]")
		_ = s.conn.SetDeadline(time.Time{})
		line := []byte("* 1 FETCH (FLAGS (\\Seen)) " + strings.Repeat("x", 1000) + "\r\n")
		for { // until the proxy closes the connection
			if _, err := s.conn.Write(line); err != nil {
				return
			}
		}
	})
	tp := startProxy(t, toBackends(&routing.Backend{Address: addr}),
		ListenerOptions{AllowPlaintextAuth: true, Observe: ObserveOn})
	c := dialTranscript(t, tp.addr)
	c.expect(greetPlainAllowed)
	c.send("c1 LOGIN alice alice\r\n")
	c.expect("c1 OK [CAPABILITY IMAP4rev1] Logged in")
	c.send("c2 FETCH 1:* BODY[]\r\n") // and read nothing more
	deadline := time.Now().Add(20 * time.Second)
	for !flowWaitsToWrite() {
		if time.Now().After(deadline) {
			t.Fatal("the backend→client copy never waited on the client")
		}
		runtime.Gosched()
	}
	kicked := make(chan int)
	go func() { kicked <- tp.srv.Kick(func(SessionInfo) bool { return true }) }()
	select {
	case n := <-kicked:
		if n != 1 {
			t.Fatalf("kicked %d sessions", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Kick hung on a session whose client stopped reading")
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, c.conn); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the kicked session did not end: %v", err)
	}
}
