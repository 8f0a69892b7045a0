package routing

import (
	"context"
	"errors"
)

// Static routes every request with one Table, by the user name alone: the proxy's Router
// (proxy.Router) for a routing table built from configuration. The Table can still change
// underneath (SetBackendUp); "static" means no external source is asked.
type Static struct {
	// Table is the routing table. Required.
	Table *Table
}

// Route returns s.Table.Lookup(req.User). It does no I/O and does not block; it returns
// ctx's error if ctx is already done. Errors of type *UnavailableError mean the user's shard
// or every backend of it is unavailable.
func (s *Static) Route(ctx context.Context, req Request) (Decision, error) {
	if err := ctx.Err(); err != nil {
		return Decision{}, err
	}
	if s.Table == nil {
		return Decision{}, errNoTable
	}
	return s.Table.Lookup(req.User)
}

var errNoTable = errors.New("routing: Static has no Table")
