package routing

import (
	"context"
	"errors"
	"testing"
)

func TestStaticRoute(t *testing.T) {
	tab := mustTable(t, TableSpec{
		Shards: []ShardSpec{{Name: "a", Backends: backends("a", 2)}, {Name: "b", Backends: backends("b", 1)}},
		Users:  map[string]string{"alice@example.org": "a"},
	})
	s := &Static{Table: tab}

	d, err := s.Route(t.Context(), Request{User: "Alice@Example.org", Mechanism: "PLAIN"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Shard != "a" || d.Reason != ReasonUser || len(d.Backends) != 2 {
		t.Errorf("Route = %+v", d)
	}

	tab2 := mustTable(t, TableSpec{Shards: []ShardSpec{{Name: "b", Backends: backends("b", 1)}}})
	if err := tab2.SetBackendUp("b", "b-0:143", false); err != nil {
		t.Fatal(err)
	}
	_, err = (&Static{Table: tab2}).Route(t.Context(), Request{User: "anyone"})
	var ue *UnavailableError
	if !errors.As(err, &ue) || ue.Shard != "b" || ue.User != "anyone" {
		t.Errorf("Route with every backend down = %v, want *UnavailableError for shard b", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Route(ctx, Request{User: "alice@example.org"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Route with a canceled context = %v", err)
	}

	if _, err := (&Static{}).Route(t.Context(), Request{User: "x"}); err == nil {
		t.Error("Route without a Table succeeded")
	}
}
