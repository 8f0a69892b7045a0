package routing

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"slices"
	"strings"
)

// ShardSpec describes one shard: a set of backends that serve the same mailboxes.
type ShardSpec struct {
	// Name identifies the shard in TableSpec.Users and TableSpec.Domains, in logs and in
	// Decision.Shard. Case-sensitive; it also feeds the hash, so renaming a shard moves the
	// users that were hashed to it.
	Name string
	// Weight is the shard's share of hashed users relative to the other shards: a shard of
	// weight 2 gets about twice the users of a shard of weight 1. 0 means 1; negative,
	// infinite and NaN weights are rejected.
	Weight float64
	// Backends are the shard's backends; at least one. Each Backend's Shard must be empty or
	// Name, and addresses (host:port, compared case-insensitively) must differ. NewTable
	// copies them, so the caller may reuse the values.
	Backends []*Backend
}

// TableSpec is the whole routing configuration NewTable builds a Table from.
type TableSpec struct {
	// Shards are the shards; at least one.
	Shards []ShardSpec
	// Users pins addresses to shards: address (any case) → shard name. An address may be
	// any user name the clients log in with, with or without '@'.
	Users map[string]string
	// Domains sends domains to shards: "example.org" (exactly that domain, any case) or
	// "*.example.net" (any domain ending in ".example.net", not "example.net" itself) →
	// shard name.
	Domains map[string]string
}

// validate checks spec and returns every problem found, each naming the offending shard,
// backend, user or domain, in a stable order.
func (spec *TableSpec) validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if len(spec.Shards) == 0 {
		add("no shards")
	}
	shards := make(map[string]bool, len(spec.Shards))
	for i, s := range spec.Shards {
		switch {
		case s.Name == "":
			add("shard #%d: empty name", i+1)
		case shards[s.Name]:
			add("shard %q: defined twice", s.Name)
		default:
			if err := checkNoControl(s.Name); err != nil {
				add("shard %q: name %v", s.Name, err)
			}
		}
		shards[s.Name] = true
		if s.Weight < 0 || math.IsNaN(s.Weight) || math.IsInf(s.Weight, 0) {
			add("shard %q: weight %v: want a finite number ≥ 0", s.Name, s.Weight)
		}
		if len(s.Backends) == 0 {
			add("shard %q: no backends", s.Name)
		}
		addrs := make(map[string]bool, len(s.Backends))
		for j, b := range s.Backends {
			switch {
			case b == nil:
				add("shard %q: backend #%d is nil", s.Name, j+1)
				continue
			case b.Address == "":
				add("shard %q: backend #%d: empty address", s.Name, j+1)
				continue
			}
			if b.Shard != "" && b.Shard != s.Name {
				add("shard %q: backend %q says it belongs to shard %q", s.Name, b.Address, b.Shard)
			}
			if err := checkNoControl(b.Address); err != nil {
				add("shard %q: backend %q: address %v", s.Name, b.Address, err)
			} else if _, _, err := net.SplitHostPort(b.Address); err != nil {
				add("shard %q: backend %q: want host:port: %v", s.Name, b.Address, err)
			}
			if !b.ProxyProtocol.Valid() {
				add("shard %q: backend %q: invalid PROXY protocol version %d (want off, v1 or v2)", s.Name, b.Address, int(b.ProxyProtocol))
			}
			key := strings.ToLower(b.Address)
			if addrs[key] {
				add("shard %q: backend %q: listed twice", s.Name, b.Address)
			}
			addrs[key] = true
		}
	}

	checkShard := func(kind, key, shard string) {
		switch {
		case shard == "":
			add("%s %q: empty shard name", kind, key)
		case !shards[shard]:
			add("%s %q: unknown shard %q", kind, key, shard)
		}
	}
	// sameKey reports keys that differ only in case but name different shards; which one
	// would win would depend on map order.
	type entry struct{ key, shard string }
	seen := make(map[string]entry)
	sameKey := func(kind, key, lower, shard string) {
		if prev, ok := seen[kind+"\x00"+lower]; ok && prev.shard != shard {
			add("%s %q: same as %q (case-insensitive) but a different shard (%q, %q)",
				kind, key, prev.key, shard, prev.shard)
		}
		seen[kind+"\x00"+lower] = entry{key, shard}
	}

	for _, u := range slices.Sorted(maps.Keys(spec.Users)) {
		shard := spec.Users[u]
		if u == "" {
			add("user %q: empty address", u)
		} else if err := checkNoControl(u); err != nil {
			add("user %q: %v", u, err)
		}
		checkShard("user", u, shard)
		sameKey("user", u, strings.ToLower(u), shard)
	}
	for _, d := range slices.Sorted(maps.Keys(spec.Domains)) {
		shard := spec.Domains[d]
		if _, _, err := parseDomainPattern(strings.ToLower(d)); err != nil {
			add("domain %q: %v", d, err)
		}
		checkShard("domain", d, shard)
		sameKey("domain", d, strings.ToLower(d), shard)
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("routing: invalid table: %w", errors.Join(errs...))
}
