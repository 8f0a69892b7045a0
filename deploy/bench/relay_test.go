package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/imapgate/imapgate/deploy/memdemo"
)

// TestRelay runs a session through the bare relay to an in-process IMAP server: login,
// an upload and a download larger than the relay's buffer, logout. The server's BYE and
// its close reach the client. login-loop too, without a PROXY header (as with -backend
// memory): the login goes through its own conversation, the rest through its relay.
func TestRelay(t *testing.T) {
	sessionRelays := maps.Clone(relays)
	sessionRelays[LoginLoop] = func(ctx context.Context, ln *net.TCPListener, to string) error {
		return RunLoopLogin(ctx, ln, to, false)
	}
	for name, run := range sessionRelays {
		t.Run(name, func(t *testing.T) {
			users := map[string]string{"u@bench.example": "secret"}
			s, err := memdemo.StartShardWith(context.Background(), memdemo.ShardOptions{Users: users})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			addr, stop := startTestRelay(t, run, s.Addr)
			defer stop()

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := Dial(ctx, addr, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Login("u@bench.example", "secret"); err != nil {
				t.Fatal(err)
			}
			if err := c.Append("INBOX", bigMessage("u@bench.example", 0, 3*relayBufSize+17)); err != nil {
				t.Fatal(err)
			}
			if err := c.Examine("INBOX"); err != nil {
				t.Fatal(err)
			}
			if n, err := c.FetchAll(); err != nil || n != 3*relayBufSize+17 {
				t.Fatalf("FetchAll = %d, %v; want %d bytes", n, err, 3*relayBufSize+17)
			}
			if err := c.Logout(); err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if rest, err := io.ReadAll(c.r); err != nil || len(rest) != 0 {
				t.Fatalf("after LOGOUT: %q, %v; want the server's close", rest, err)
			}
		})
	}
}

// TestRelayHalfClose: the client's end of stream reaches the backend as a half-close, and
// what the backend sends after it still reaches the client.
func TestRelayHalfClose(t *testing.T) {
	for name, run := range relays {
		t.Run(name, func(t *testing.T) {
			backend := testBackend(t, func(c net.Conn) {
				got, _ := io.ReadAll(c) // until the client's half-close
				_, _ = c.Write(append([]byte("got: "), got...))
			})
			c := dialTestRelay(t, run, backend)
			if _, err := c.Write([]byte("a LOGOUT\r\n")); err != nil {
				t.Fatal(err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if got, err := io.ReadAll(c); err != nil || string(got) != "got: a LOGOUT\r\n" {
				t.Fatalf("read %q, %v", got, err)
			}
		})
	}
}

// TestRelayStop: ending the relay's context closes the sessions it relays and RunRelay
// returns nil.
func TestRelayStop(t *testing.T) {
	for name, run := range relays {
		t.Run(name, func(t *testing.T) {
			backend := testBackend(t, func(c net.Conn) {
				_, _ = c.Write([]byte("* OK ready\r\n"))
				_, _ = io.Copy(io.Discard, c) // open until the relay closes the session
			})
			addr, stop := startTestRelay(t, run, backend)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(c)
			if line, err := r.ReadString('\n'); err != nil || line != "* OK ready\r\n" {
				t.Fatalf("greeting %q, %v", line, err)
			}
			stop()
			if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
				t.Fatalf("after stop: %q, %v; want the connection closed", rest, err)
			}
		})
	}
}

// TestRelayClientReset: a client that resets its connection ends the session: the relay
// closes the backend connection too, instead of waiting on a backend with nothing to say.
func TestRelayClientReset(t *testing.T) {
	for name, run := range relays {
		t.Run(name, func(t *testing.T) {
			closed := make(chan error, 1)
			backend := testBackend(t, func(c net.Conn) {
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, err := io.Copy(io.Discard, c) // until the relay closes its side
				closed <- err
			})
			c := dialTestRelay(t, run, backend)
			if _, err := c.Write([]byte("a NOOP\r\n")); err != nil {
				t.Fatal(err)
			}
			_ = c.SetLinger(0) // Close sends RST
			_ = c.Close()
			if err := <-closed; err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("backend side: %v; want it closed by the relay", err)
			}
		})
	}
}

// TestRelayBackendDown: when the backend cannot be reached the client's connection is
// closed.
func TestRelayBackendDown(t *testing.T) {
	for name, run := range relays {
		t.Run(name, func(t *testing.T) {
			down, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			downAddr := down.Addr().String()
			_ = down.Close() // nothing listens there now: connect is refused
			c := dialTestRelay(t, run, downAddr)
			if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
				t.Fatalf("read %q, %v; want the relay's close", got, err)
			}
		})
	}
}

// relayFunc runs a relay on ln in front of to until ctx ends.
type relayFunc func(ctx context.Context, ln *net.TCPListener, to string) error

// relays are the two relays every relay test runs against: goroutines per connection
// (relay) and event loops (relay-loop).
var relays = map[string]relayFunc{
	Relay:     func(ctx context.Context, ln *net.TCPListener, to string) error { return RunRelay(ctx, ln, to) },
	RelayLoop: RunLoopRelay,
}

// testBackend listens on a loopback port until the test ends and runs serve on each
// connection, closing it when serve returns. It returns the address.
func testBackend(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// dialTestRelay runs the relay in front of to for the rest of the test and connects to it,
// with a deadline of 10 s.
func dialTestRelay(t *testing.T, run relayFunc, to string) *net.TCPConn {
	t.Helper()
	addr, stop := startTestRelay(t, run, to)
	t.Cleanup(stop)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.(*net.TCPConn)
}

// startTestRelay runs the relay in front of to; stop ends it and fails the test if it did
// not return nil.
func startTestRelay(t *testing.T, run relayFunc, to string) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, ln.(*net.TCPListener), to) }()
	stopped := false
	return ln.Addr().String(), func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("relay: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("the relay did not return after its context ended")
		}
	}
}

// TestRelayBulk: 8 MiB each way arrive intact, through full socket buffers (the loop keeps
// what a full socket does not take and reads on once it drains).
func TestRelayBulk(t *testing.T) {
	want := bigMessage("u@bench.example", 1, 8<<20)
	for name, run := range relays {
		t.Run(name, func(t *testing.T) {
			backend := testBackend(t, func(c net.Conn) {
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				wrote := make(chan struct{})
				go func() {
					defer close(wrote)
					_, _ = c.Write(want)
				}()
				got, _ := io.ReadAll(c) // the client's upload, until its half-close
				if !bytes.Equal(got, want) {
					t.Errorf("backend got %d bytes, not the %d sent", len(got), len(want))
				}
				<-wrote // then serve returns and the connection closes
			})
			c := dialTestRelay(t, run, backend)
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			go func() {
				_, _ = c.Write(want)
				_ = c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("client got %d bytes (%v), not the %d sent", len(got), err, len(want))
			}
		})
	}
}
