package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imapgate/imapgate/routing"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Go benchmarks of the data path's parts, allocations reported. The end-to-end comparison
// with direct connections, Dovecot's proxy and nginx is `imapgate bench` (README,
// "Performance").

func BenchmarkCommandReader(b *testing.B) {
	for _, bc := range []struct{ name, input string }{
		{"login", "a1 LOGIN alice@example.com \"correct horse\"\r\n"},
		{"id with literals", "a1 ID (\"name\" {7+}\r\nOutlook \"version\" \"16.0\" \"os\" NIL)\r\n"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			rd := strings.NewReader(bc.input)
			br := bufio.NewReaderSize(rd, 4096)
			cr := &commandReader{br: br, maxLine: defaultMaxLineBytes, maxLiteral: defaultMaxLiteralBytes,
				cont: func() error { return nil }}
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.input)))
			for b.Loop() {
				rd.Reset(bc.input)
				br.Reset(rd)
				if _, err := cr.read(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkUpstreamLogin: dial, greeting, capabilities, AUTHENTICATE PLAIN, LOGOUT against an
// in-process imapmemserver.
func BenchmarkUpstreamLogin(b *testing.B) {
	be := startMemBackend(b, map[string]string{"alice@example.com": "alice"})
	backend := &routing.Backend{Address: be.addr}
	cr := credentials{user: "alice@example.com", password: "alice"}
	b.ReportAllocs()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		up, err := dialUpstream(ctx, backend, 5*time.Second, clientInfo{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := up.login(cr); err != nil {
			b.Fatal(err)
		}
		up.close()
		cancel()
	}
}

// BenchmarkCopy: bulk bytes through each copy loop (splice socket to socket; a pooled
// 16 KiB buffer where a side is TLS). Compare with BenchmarkCopy/direct, the same sockets
// without the proxy's copy in between.
func BenchmarkCopy(b *testing.B) {
	data := make([]byte, 64<<20)
	rand.Read(data)
	for _, tc := range copyModes {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				b.StopTimer()
				r := newCopyRig(b, tc.srcTLS, tc.dstTLS)
				b.StartTimer()
				if _, _, err := r.run(data, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("direct", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			b.StopTimer()
			s, r := tcpPair(b)
			b.StartTimer()
			go func() { s.Write(data); s.CloseWrite() }()
			buf := make([]byte, 256<<10)
			for {
				if _, err := r.Read(buf); err != nil {
					break
				}
			}
		}
	})
}

// BenchmarkObserver: the traffic observer's cost on the copy loop, over an IMAP-shaped
// stream (FETCH responses with 256 KiB bodies as literals, text lines in between). "off" is
// the same loop without it; the observer is to cost under 10 % (issue 4).
func BenchmarkObserver(b *testing.B) {
	var stream []byte
	body := make([]byte, 256<<10)
	rand.Read(body)
	for i := 1; len(stream) < 64<<20; i++ {
		stream = fmt.Appendf(stream, "* %d FETCH (UID %d FLAGS (\\Seen) BODY[] {%d}\r\n", i, i, len(body))
		stream = append(stream, body...)
		stream = append(stream, ")\r\n"...)
	}
	stream = append(stream, "a1 OK FETCH completed\r\n"...)
	for _, tc := range []struct {
		name    string
		srcTLS  bool
		observe bool
	}{
		{"plain/off (splice)", false, false}, {"plain/on", false, true},
		{"tls/off", true, false}, {"tls/on", true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(stream)))
			for b.Loop() {
				b.StopTimer()
				r := newCopyRig(b, tc.srcTLS, false)
				if tc.observe {
					o := newTrafficObserver(nopMetrics{})
					o.fromClient([]byte("a1 FETCH 1:* BODY.PEEK[]\r\n"))
					r.acc.tap = o.fromBackend
				}
				b.StartTimer()
				if _, _, err := r.run(stream, false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchNoop(b *testing.B, addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	br.ReadString('\n')
	c.Write([]byte("a LOGIN alice@example.com alice\r\n"))
	for {
		l, _ := br.ReadString('\n')
		if strings.HasPrefix(l, "a ") {
			break
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		c.Write([]byte("n NOOP\r\n"))
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			if strings.HasPrefix(l, "n ") {
				break
			}
		}
	}
}

// BenchmarkSession: whole sessions one after another (connect, greeting, LOGIN, SELECT
// INBOX, LOGOUT), directly to an in-process backend and through the proxy (plain, JSON logs
// at info to io.Discard, as imapgate serve logs). cpu-µs/op is the process's CPU time per
// session (getrusage: client, proxy and backend together): the proxy's own is the difference
// between the two. allocs/op likewise.
func BenchmarkSession(b *testing.B) {
	be := startMemBackend(b, map[string]string{"alice@example.com": "alice"})
	b.Run("direct", func(b *testing.B) { benchSession(b, be.addr) })
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(io.Discard), zap.InfoLevel))
	tp := startProxy(b, toBackends(&routing.Backend{Address: be.addr}), ListenerOptions{AllowPlaintextAuth: true},
		func(o *Options) { o.Logger = log })
	b.Run("proxy", func(b *testing.B) { benchSession(b, tp.addr) })
}

func benchSession(b *testing.B, addr string) {
	b.ReportAllocs()
	cpu0 := processCPU(b)
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		br := bufio.NewReader(c)
		if _, err := br.ReadString('\n'); err != nil {
			b.Fatal(err)
		}
		for _, cmd := range []string{"a LOGIN alice@example.com alice\r\n", "b SELECT INBOX\r\n", "c LOGOUT\r\n"} {
			if _, err := c.Write([]byte(cmd)); err != nil {
				b.Fatal(err)
			}
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					b.Fatal(err)
				}
				if strings.HasPrefix(l, cmd[:2]) { // the tag and its space
					break
				}
			}
		}
		if _, err := br.ReadString('\n'); err != io.EOF {
			b.Fatalf("after LOGOUT: %v, want EOF", err)
		}
		c.Close()
	}
	b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
}

// processCPU is the user and system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkNoopRoundTrip: one logged-in session, sequential NOOPs, directly to an
// in-process backend and through the proxy (plain, splice path). Client, proxy and backend
// share this process's two cores; `imapgate bench` measures with separate processes.
func BenchmarkNoopRoundTrip(b *testing.B) {
	be := startMemBackend(b, map[string]string{"alice@example.com": "alice"})
	b.Run("direct", func(b *testing.B) { benchNoop(b, be.addr) })
	tp := startProxy(b, toBackends(&routing.Backend{Address: be.addr}), ListenerOptions{AllowPlaintextAuth: true})
	b.Run("proxy", func(b *testing.B) { benchNoop(b, tp.addr) })
}
