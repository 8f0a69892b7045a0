package routing

import (
	"errors"
	"fmt"
)

// UnavailableError says that no shard or no backend accepts connections for a user: the
// table has no shards, or every backend of the user's shard is down. The proxy answers
// NO [UNAVAILABLE] (RFC 5530 section 3). Users are never sent to another shard than theirs:
// their mail is not there.
type UnavailableError struct {
	// User is the user name as given to Lookup.
	User string
	// Shard is the user's shard; empty when no shard was found.
	Shard string
	// Reason says why, for logs: "no shards", "no backend is up".
	Reason string
}

// Error returns a message naming the user, the shard and the reason.
func (e *UnavailableError) Error() string {
	if e.Shard == "" {
		return fmt.Sprintf("routing: no shard for user %q: %s", e.User, e.Reason)
	}
	return fmt.Sprintf("routing: shard %q of user %q is unavailable: %s", e.Shard, e.User, e.Reason)
}

// ErrUnknownBackend is returned, wrapped, by SetBackendUp for a shard and address that are
// not in the table.
var ErrUnknownBackend = errors.New("unknown backend")
