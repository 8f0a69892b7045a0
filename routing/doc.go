// Package routing decides where an IMAP session goes: which shard holds the user's mail, and
// which of that shard's backends the proxy should dial first.
//
// The routing table lives in an in-memory go-memdb database (github.com/hashicorp/go-memdb)
// with four tables: shard, backend, user and domain. A user is placed on a shard by the first
// of these that matches, in this order:
//
//  1. "user": the user's address, compared case-insensitively;
//  2. "domain": the part after the last '@', compared case-insensitively;
//  3. "wildcard": the longest wildcard domain "*.suffix" whose suffix ends the user's domain
//     on a label boundary ("*.mail.example.com" matches "a.mail.example.com" and
//     "b.a.mail.example.com", not "xmail.example.com"). As for DNS and TLS wildcards,
//     "*.example.net" does not match "example.net" itself: list that as an exact domain;
//  4. "hash": weighted rendezvous (highest random weight) hashing of the lower-cased user name
//     over all shards. Adding or removing a shard only moves the users that go to or came
//     from that shard.
//
// A user name without '@' skips steps 2 and 3. Within the shard, the backends that are up
// are ordered by rendezvous hashing of the lower-cased user name and the backend address:
// the first is the user's stable choice (the same across processes and restarts, so a
// user's sessions meet on one backend), the rest are fallbacks. Marking a backend down moves
// only the users whose first choice it was.
//
// Usage:
//
//	table, err := routing.NewTable(routing.TableSpec{
//		Shards: []routing.ShardSpec{
//			{Name: "a", Backends: []*routing.Backend{{Address: "10.0.0.1:143"}, {Address: "10.0.0.2:143"}}},
//			{Name: "b", Weight: 2, Backends: []*routing.Backend{{Address: "10.0.1.1:143"}}},
//		},
//		Users:   map[string]string{"ceo@example.org": "a"},
//		Domains: map[string]string{"example.org": "b", "*.example.net": "a"},
//	})
//	if err != nil {
//		return err
//	}
//	router := &routing.Static{Table: table} // a proxy.Router
//	d, err := router.Route(ctx, routing.Request{User: "Alice@Example.ORG"})
//	// d.Shard == "b", d.Reason == "domain", d.Backends[0] is the backend to dial.
//
// A Table is safe for concurrent use. Lookups run in read transactions, which are lock-free
// snapshots; changes (SetBackendUp) go through go-memdb's single writer and replace objects
// instead of modifying them, so the *Backend values a Decision holds are constants that stay
// valid after the table changes.
//
// The package does not authenticate anyone (the password never reaches it: the backend
// checks it), does no network I/O and does no health checks: a backend is up until
// SetBackendUp says otherwise. Health checks, etcd as a source of the table and live moves
// of users between shards come in later issues; the single-writer table leaves room for them.
package routing
