package config

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// A batch is written as one write: when the interval has passed, when it is full, at Sync.
func TestBatchWriter(t *testing.T) {
	t.Run("after the interval", func(t *testing.T) {
		out := make(chanWriter, 4)
		b := newBatchWriter(out, time.Millisecond)
		b.Write([]byte("one\n"))
		b.Write([]byte("two\n"))
		// One batch, or two if the timer fired between the writes (a loaded machine).
		got := out.next(t)
		if got == "one\n" {
			got += out.next(t)
		}
		if got != "one\ntwo\n" {
			t.Errorf("written %q", got)
		}
		b.Write([]byte("three\n")) // a new batch arms the timer again
		if got := out.next(t); got != "three\n" {
			t.Errorf("second batch %q", got)
		}
	})
	t.Run("when full", func(t *testing.T) {
		var out countingWriter
		b := newBatchWriter(&out, time.Hour)
		line := strings.Repeat("x", 1023) + "\n"
		for range 64 {
			b.Write([]byte(line))
		}
		if out.writes != 0 {
			t.Fatalf("%d writes for 64 KiB", out.writes)
		}
		b.Write([]byte(line))
		if out.writes != 1 || out.bytes != 65<<10 {
			t.Errorf("after 65 KiB: %d writes of %d bytes; want one of 65 KiB", out.writes, out.bytes)
		}
		big := strings.Repeat("y", 100<<10)
		b.Write([]byte(big))
		if out.writes != 2 || out.bytes != 165<<10 {
			t.Errorf("a line bigger than a batch: %d writes, %d bytes; want it in one more", out.writes, out.bytes)
		}
		b.Sync()
		if out.writes != 2 {
			t.Errorf("Sync with nothing waiting wrote")
		}
	})
}

// While the log takes a batch, loggers go on: the lines wait in the other buffer, up to
// logBacklogMax, and reach the log after it, in order.
func TestBatchWriterSlowLog(t *testing.T) {
	out := &gateWriter{entered: make(chan struct{}), release: make(chan struct{})}
	b := newBatchWriter(out, time.Hour)
	line := func(i int) []byte { return fmt.Appendf(nil, "%07d %s\n", i, strings.Repeat("x", 1015)) }
	go func() { // its 65th line makes it write the batch, and the log does not take it yet
		for i := range 65 {
			b.Write(line(i))
		}
	}()
	<-out.entered // all 65 lines are in the batch being written
	n := 65
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ; n < logBacklogMax>>10; n++ {
			b.Write(line(n))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a logger waited for the stuck log below logBacklogMax")
	}
	close(out.release)
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(got) != n {
		t.Fatalf("%d lines reached the log, want %d", len(got), n)
	}
	for i, l := range got {
		if want := fmt.Sprintf("%07d ", i); !strings.HasPrefix(l, want) {
			t.Fatalf("line %d is %.8q: out of order", i, l)
		}
	}
	if out.writes > 1+n/64 {
		t.Errorf("%d writes for %d lines of 1 KiB: batches of 64 KiB or more expected", out.writes, n)
	}
}

// gateWriter's first write tells entered and waits for release; it keeps what is written.
type gateWriter struct {
	entered, release chan struct{}
	mu               sync.Mutex
	b                strings.Builder
	writes           int
}

func (g *gateWriter) Write(p []byte) (int, error) {
	g.mu.Lock()
	first := g.writes == 0
	g.writes++
	g.mu.Unlock()
	if first {
		close(g.entered)
		<-g.release
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.b.Write(p)
}

func (g *gateWriter) String() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.b.String()
}

type countingWriter struct{ writes, bytes int }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.writes++
	c.bytes += len(p)
	return len(p), nil
}

// chanWriter passes each write on to the test.
type chanWriter chan string

func (c chanWriter) Write(p []byte) (int, error) {
	c <- string(p)
	return len(p), nil
}

func (c chanWriter) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-c:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("nothing written")
		return ""
	}
}
