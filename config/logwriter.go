package config

import (
	"io"
	"sync"
	"time"
)

// logBatchSize is how many bytes of log lines wait at most before they are written.
const logBatchSize = 64 << 10

// batchWriter keeps log lines in a buffer and writes them with one write: at the latest
// `every` after the first line of a batch, when logBatchSize bytes wait, or at Sync. It is a
// zapcore.WriteSyncer, safe for concurrent use.
//
// Why not zap's BufferedWriteSyncer, which does the same: it runs a ticker goroutine for as
// long as it lives, which wakes the process every interval even when no line waits and has
// to be stopped by hand; this one arms a timer only while lines wait, and holds no goroutine.
type batchWriter struct {
	every time.Duration

	mu    sync.Mutex
	w     io.Writer
	buf   []byte
	timer *time.Timer
	armed bool // the timer will fire for the lines in buf
}

func newBatchWriter(w io.Writer, every time.Duration) *batchWriter {
	return &batchWriter{w: w, every: every}
}

func (b *batchWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf)+len(p) > logBatchSize {
		if err := b.flush(); err != nil {
			return 0, err
		}
		if len(p) > logBatchSize {
			return b.w.Write(p)
		}
	}
	b.buf = append(b.buf, p...)
	if !b.armed {
		b.armed = true
		if b.timer == nil {
			b.timer = time.AfterFunc(b.every, b.tick)
		} else {
			b.timer.Reset(b.every)
		}
	}
	return len(p), nil
}

// tick writes what waits when the interval has passed.
func (b *batchWriter) tick() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.armed = false
	_ = b.flush() // no one to tell: the log is where errors would go
}

// Sync writes what waits.
func (b *batchWriter) Sync() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flush()
}

func (b *batchWriter) flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}
