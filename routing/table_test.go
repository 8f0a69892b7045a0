package routing

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
)

// backends returns n backends "<shard>-<i>:143".
func backends(shard string, n int) []*Backend {
	var bs []*Backend
	for i := range n {
		bs = append(bs, &Backend{Address: fmt.Sprintf("%s-%d:143", shard, i)})
	}
	return bs
}

// equalShards returns n shards "s0", "s1", … of weight 1 with three backends each.
func equalShards(n int) []ShardSpec {
	var ss []ShardSpec
	for i := range n {
		name := fmt.Sprintf("s%d", i)
		ss = append(ss, ShardSpec{Name: name, Backends: backends(name, 3)})
	}
	return ss
}

func mustTable(t testing.TB, spec TableSpec) *Table {
	t.Helper()
	tab, err := NewTable(spec)
	if err != nil {
		t.Fatalf("NewTable: %v", err)
	}
	return tab
}

func mustLookup(t testing.TB, tab *Table, user string) Decision {
	t.Helper()
	d, err := tab.Lookup(user)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", user, err)
	}
	return d
}

func addresses(bs []*Backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.Address)
	}
	return out
}

func TestBackendOrderStable(t *testing.T) {
	tab := mustTable(t, TableSpec{Shards: []ShardSpec{{Name: "a", Backends: backends("a", 5)}}})
	for i := range 100 {
		user := fmt.Sprintf("user%d@example.com", i)
		first := mustLookup(t, tab, user)
		if len(first.Backends) != 5 {
			t.Fatalf("%s: %d backends, want 5", user, len(first.Backends))
		}
		again := mustLookup(t, tab, user)
		if !slices.Equal(first.Backends, again.Backends) {
			t.Fatalf("%s: order changed between lookups: %v, then %v", user,
				addresses(first.Backends), addresses(again.Backends))
		}
	}
}

func TestBackendOrderSpreads(t *testing.T) {
	tab := mustTable(t, TableSpec{Shards: []ShardSpec{{Name: "a", Backends: backends("a", 4)}}})
	counts := map[string]int{}
	const n = 4000
	for i := range n {
		counts[mustLookup(t, tab, fmt.Sprintf("user%d@example.com", i)).Backends[0].Address]++
	}
	for addr, c := range counts {
		if c < n/4*9/10 || c > n/4*11/10 {
			t.Errorf("%s is the first choice of %d users, want %d ± 10 %%", addr, c, n/4)
		}
	}
}

func TestSetBackendUp(t *testing.T) {
	tab := mustTable(t, TableSpec{Shards: []ShardSpec{{Name: "a", Backends: backends("a", 4)}}})
	const users = 1000
	before := make([]Decision, users)
	for i := range users {
		before[i] = mustLookup(t, tab, fmt.Sprintf("user%d@example.com", i))
	}
	const down = "a-2:143"
	// Any case: addresses compare case-insensitively.
	if err := tab.SetBackendUp("a", "A-2:143", false); err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i := range users {
		user := fmt.Sprintf("user%d@example.com", i)
		after := mustLookup(t, tab, user)
		// The order is the old one with the down backend taken out: users on other backends
		// keep their choice, users of the down one get their previous second choice.
		want := slices.DeleteFunc(slices.Clone(before[i].Backends), func(b *Backend) bool { return b.Address == down })
		if !slices.Equal(after.Backends, want) {
			t.Fatalf("%s: after %s went down: %v, want %v", user, down, addresses(after.Backends), addresses(want))
		}
		if before[i].Backends[0].Address == down {
			moved++
		}
		// Decisions already returned are not affected.
		if len(before[i].Backends) != 4 {
			t.Fatalf("%s: an earlier Decision changed: %v", user, addresses(before[i].Backends))
		}
	}
	if moved == 0 || moved > users/2 {
		t.Errorf("%d users had %s as first choice, want about %d", moved, down, users/4)
	}

	// Back up: the original order again.
	if err := tab.SetBackendUp("a", down, true); err != nil {
		t.Fatal(err)
	}
	for i := range users {
		after := mustLookup(t, tab, fmt.Sprintf("user%d@example.com", i))
		if !slices.Equal(after.Backends, before[i].Backends) {
			t.Fatalf("user%d: after %s came back: %v, want %v", i, down, addresses(after.Backends), addresses(before[i].Backends))
		}
	}
}

func TestSetBackendUpAllDown(t *testing.T) {
	tab := mustTable(t, TableSpec{Shards: []ShardSpec{
		{Name: "a", Backends: backends("a", 2)},
		{Name: "b", Backends: backends("b", 1)},
	}, Users: map[string]string{"alice": "a", "bob": "b"}})
	for _, addr := range []string{"a-0:143", "a-1:143"} {
		if err := tab.SetBackendUp("a", addr, false); err != nil {
			t.Fatal(err)
		}
	}
	// Idempotent.
	if err := tab.SetBackendUp("a", "a-0:143", false); err != nil {
		t.Fatal(err)
	}
	_, err := tab.Lookup("Alice")
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("Lookup(Alice) = %v, want *UnavailableError", err)
	}
	if ue.User != "Alice" || ue.Shard != "a" || ue.Reason == "" {
		t.Errorf("UnavailableError = %+v", ue)
	}
	// Users are never sent to another shard, but other shards are not affected.
	if d := mustLookup(t, tab, "bob"); d.Shard != "b" || len(d.Backends) != 1 {
		t.Errorf("bob: %+v", d)
	}
}

func TestSetBackendUpUnknown(t *testing.T) {
	tab := mustTable(t, TableSpec{Shards: []ShardSpec{{Name: "a", Backends: backends("a", 1)}}})
	for _, tc := range []struct{ shard, addr string }{
		{"a", "nope:143"},
		{"b", "a-0:143"},
		{"", ""},
		{"a", ""},
		{"a\x00a-0:143", ""},
		{"a", "a-0:143\x00"},
	} {
		err := tab.SetBackendUp(tc.shard, tc.addr, false)
		if !errors.Is(err, ErrUnknownBackend) {
			t.Errorf("SetBackendUp(%q, %q) = %v, want ErrUnknownBackend", tc.shard, tc.addr, err)
		}
	}
	if d := mustLookup(t, tab, "x"); len(d.Backends) != 1 {
		t.Errorf("a failed SetBackendUp changed the table: %+v", d)
	}
}

func TestNewTableCopiesBackends(t *testing.T) {
	b := &Backend{Address: "a-0:143", ForwardClientIP: true}
	tab := mustTable(t, TableSpec{Shards: []ShardSpec{{Name: "a", Backends: []*Backend{b}}}})
	b.Address = "changed:143"
	got := mustLookup(t, tab, "x").Backends[0]
	if got == b || got.Address != "a-0:143" || got.Shard != "a" || !got.ForwardClientIP {
		t.Errorf("table backend = %+v, want a copy of the original with Shard set", got)
	}
}

// TestConcurrent runs lookups while a writer flips a backend; run with -race.
func TestConcurrent(t *testing.T) {
	tab := mustTable(t, TableSpec{Shards: equalShards(3)})
	stop := make(chan struct{})
	var writer sync.WaitGroup
	writer.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := tab.SetBackendUp("s1", "s1-1:143", i%2 == 0); err != nil {
				t.Error(err)
				return
			}
		}
	})
	var readers sync.WaitGroup
	for g := range 4 {
		readers.Go(func() {
			for i := range 2000 {
				d, err := tab.Lookup(fmt.Sprintf("user%d-%d", g, i))
				if err != nil {
					t.Error(err)
					return
				}
				if n := len(d.Backends); n != 2 && n != 3 {
					t.Errorf("%d backends", n)
					return
				}
			}
		})
	}
	readers.Wait()
	close(stop)
	writer.Wait()
}
