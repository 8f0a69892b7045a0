package config

import (
	"io"
	"sync"
	"time"
)

// logBatchSize is how many bytes of log lines wait at most before they are written.
const logBatchSize = 64 << 10

// logBacklogMax is how many bytes of log lines may wait while a batch is being written
// before a logger waits for that write. Below it a slow log (a pipe whose reader drains it
// slowly, journald throttling) holds up no logger: package proxy's event loops log the end
// of sessions, and a loop that waited on the log would hold up every session it copies.
// Above it loggers wait: lines are not dropped (login lines are what an operator audits),
// and memory stays bounded.
const logBacklogMax = 1 << 20

// batchWriter keeps log lines in a buffer and writes them with one write: at the latest
// `every` after the first line of a batch, when more than logBatchSize bytes wait, or at
// Sync. It is a zapcore.WriteSyncer, safe for concurrent use. A batch is written outside the
// lock that Write takes: lines keep coming into the other buffer meanwhile (logBacklogMax).
//
// Why not zap's BufferedWriteSyncer, which batches too: it runs a ticker goroutine for as
// long as it lives, which wakes the process every interval even when no line waits and has
// to be stopped by hand, and it writes under the lock its Write takes, so every logger waits
// while a slow log takes a batch. This one arms a timer only while lines wait, and holds no
// goroutine.
type batchWriter struct {
	every time.Duration
	w     io.Writer

	// wmu is held while batches are written to w: one writer at a time, so batches go out
	// in order. Taken before mu, never while holding it.
	wmu sync.Mutex

	mu    sync.Mutex
	buf   []byte // the lines waiting
	spare []byte // the other buffer, when no write holds it
	timer *time.Timer
	armed bool // the timer will fire for the lines in buf
}

func newBatchWriter(w io.Writer, every time.Duration) *batchWriter {
	return &batchWriter{w: w, every: every}
}

func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.buf = append(b.buf, p...)
	waiting := len(b.buf)
	if !b.armed {
		b.armed = true
		if b.timer == nil {
			b.timer = time.AfterFunc(b.every, b.tick)
		} else {
			b.timer.Reset(b.every)
		}
	}
	b.mu.Unlock()
	switch {
	case waiting <= logBatchSize:
		return len(p), nil
	case waiting <= logBacklogMax:
		// A write in progress writes this batch too when it is done (writeOut goes on while
		// more than a batch waits), or the timer does.
		if !b.wmu.TryLock() {
			return len(p), nil
		}
	default:
		b.wmu.Lock()
	}
	defer b.wmu.Unlock()
	if err := b.writeOut(logBatchSize); err != nil {
		return 0, err
	}
	return len(p), nil
}

// tick writes what waits when the interval has passed.
func (b *batchWriter) tick() {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	b.mu.Lock()
	b.armed = false // what waits goes now; the next line arms the timer again
	b.mu.Unlock()
	_ = b.writeOut(0) // no one to tell: the log is where errors would go
}

// Sync writes what waits.
func (b *batchWriter) Sync() error {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	return b.writeOut(0)
}

// writeOut writes what waits, a batch at a time, while more than keep bytes wait; with wmu
// held. A batch that is written is everything waiting then, whatever its size.
func (b *batchWriter) writeOut(keep int) error {
	for {
		b.mu.Lock()
		batch := b.buf
		if len(batch) <= keep {
			b.mu.Unlock()
			return nil
		}
		b.buf, b.spare = b.spare[:0], nil
		b.mu.Unlock()
		_, err := b.w.Write(batch)
		b.mu.Lock()
		if cap(batch) <= 2*logBatchSize {
			b.spare = batch[:0] // a backlog's larger buffer is not kept
		}
		b.mu.Unlock()
		if err != nil {
			return err
		}
	}
}
