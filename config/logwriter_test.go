package config

import (
	"strings"
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
		if out.writes != 1 || out.bytes != 64<<10 {
			t.Errorf("after 65 KiB: %d writes of %d bytes; want one of 64 KiB", out.writes, out.bytes)
		}
		big := strings.Repeat("y", 100<<10)
		b.Write([]byte(big))
		if out.writes != 3 || out.bytes != 64<<10+1<<10+100<<10 {
			t.Errorf("a line bigger than a batch: %d writes, %d bytes; want the waiting line, then it", out.writes, out.bytes)
		}
		b.Sync()
		if out.writes != 3 {
			t.Errorf("Sync with nothing waiting wrote")
		}
	})
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
