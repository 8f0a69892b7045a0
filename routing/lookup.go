package routing

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/go-memdb"
)

// Values of Decision.Reason: how the user's shard was found.
const (
	// ReasonUser: the user's address is in TableSpec.Users.
	ReasonUser = "user"
	// ReasonDomain: the user's domain is in TableSpec.Domains.
	ReasonDomain = "domain"
	// ReasonWildcard: a wildcard in TableSpec.Domains matches the user's domain.
	ReasonWildcard = "wildcard"
	// ReasonHash: none of the above; rendezvous hashing picked the shard.
	ReasonHash = "hash"
)

// Lookup finds the user's shard and orders that shard's backends for the user (see the
// package documentation for the order of the steps). User names are compared
// case-insensitively (strings.ToLower), the domain is the part after the last '@'. The
// Decision's Backends are the shard's backends that are up, the user's stable choice first;
// when none is up, the error is an *UnavailableError naming the shard. Lookup runs in one read
// transaction and never blocks on writers.
func (t *Table) Lookup(user string) (Decision, error) {
	txn := t.db.Txn(false)
	defer txn.Abort()
	return lookupTxn(txn, user)
}

// lookupTxn is Lookup within txn.
func lookupTxn(txn *memdb.Txn, user string) (Decision, error) {
	key := strings.ToLower(user)
	shard, reason, err := shardTxn(txn, key)
	if err != nil {
		return Decision{}, fmt.Errorf("routing: user %q: %w", user, err)
	}
	if shard == "" {
		return Decision{}, &UnavailableError{User: user, Reason: "no shards"}
	}
	backends, err := backendsTxn(txn, shard, key)
	if err != nil {
		return Decision{}, fmt.Errorf("routing: user %q: shard %q: %w", user, shard, err)
	}
	if len(backends) == 0 {
		return Decision{}, &UnavailableError{User: user, Shard: shard, Reason: "no backend is up"}
	}
	return Decision{Shard: shard, Backends: backends, Reason: reason}, nil
}

// shardTxn finds the shard of the lower-cased user key, and why. It returns "" when the
// table has no shards.
func shardTxn(txn *memdb.Txn, key string) (shard, reason string, err error) {
	raw, err := txn.First(tableUser, indexID, key)
	if err != nil {
		return "", "", err
	}
	if row, ok := raw.(*userRow); ok {
		return row.Shard, ReasonUser, nil
	}

	if at := strings.LastIndexByte(key, '@'); at >= 0 && at < len(key)-1 {
		domain := key[at+1:]
		raw, err := txn.First(tableDomain, indexID, domain)
		if err != nil {
			return "", "", err
		}
		// The id index holds wildcards too: a user "x@*.example.org" must not match the
		// wildcard "*.example.org" as if it were an exact domain.
		if row, ok := raw.(*domainRow); ok && !row.Wildcard {
			return row.Shard, ReasonDomain, nil
		}

		raw, err = txn.LongestPrefix(tableDomain, indexWildcard+"_prefix", reverseDomain(domain))
		if err != nil {
			return "", "", err
		}
		if row, ok := raw.(*domainRow); ok {
			return row.Shard, ReasonWildcard, nil
		}
	}

	shard, err = hashShardTxn(txn, key)
	return shard, ReasonHash, err
}

// hashShardTxn picks the shard of the lower-cased user key by weighted rendezvous hashing
// over all shards. Ties, which need equal 52-bit hashes, go to the smaller name.
func hashShardTxn(txn *memdb.Txn, key string) (string, error) {
	it, err := txn.Get(tableShard, indexID)
	if err != nil {
		return "", err
	}
	uh := userHash(key)
	var best *shardRow
	var bestScore float64
	for raw := it.Next(); raw != nil; raw = it.Next() {
		row := raw.(*shardRow)
		score := weightedScore(pairHash(uh, tagShard, row.Name), row.Weight)
		// The iterator yields names in ascending order: only a strictly higher score wins.
		if best == nil || score > bestScore {
			best, bestScore = row, score
		}
	}
	if best == nil {
		return "", nil
	}
	return best.Name, nil
}

// backendsTxn returns the shard's up backends in the order the lower-cased user key should
// try them: by descending rendezvous hash of (key, lower-cased address), so that each
// backend's position depends only on the user and that backend, and taking one out leaves
// the others in order.
func backendsTxn(txn *memdb.Txn, shard, key string) ([]*Backend, error) {
	it, err := txn.Get(tableBackend, indexShardUp, shard, true)
	if err != nil {
		return nil, err
	}
	type scored struct {
		hash uint64
		addr string
		b    *Backend
	}
	var buf [8]scored
	list := buf[:0]
	uh := userHash(key)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		row := raw.(*backendRow)
		list = append(list, scored{pairHash(uh, tagBackend, row.Address), row.Address, row.Backend})
	}
	if len(list) == 0 {
		return nil, nil
	}
	slices.SortFunc(list, func(a, b scored) int {
		if c := cmp.Compare(b.hash, a.hash); c != 0 {
			return c
		}
		return strings.Compare(a.addr, b.addr)
	})
	out := make([]*Backend, len(list))
	for i, s := range list {
		out[i] = s.b
	}
	return out, nil
}
