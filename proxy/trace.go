package proxy

import (
	"strings"
	"sync"
	"time"
)

// traceSet holds the users being traced and until when.
type traceSet struct {
	mu    sync.Mutex
	until map[string]time.Time // lower-cased user → end
}

func (t *traceSet) set(user string, until time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.until == nil {
		t.until = make(map[string]time.Time)
	}
	user = strings.ToLower(user)
	if until.IsZero() {
		delete(t.until, user)
		return
	}
	t.until[user] = until
}

// active reports whether user is traced now, and until when.
func (t *traceSet) active(user string) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	until, ok := t.until[strings.ToLower(user)]
	if ok && time.Now().After(until) {
		delete(t.until, strings.ToLower(user))
		return time.Time{}, false
	}
	return until, ok
}
