package routing

import (
	"fmt"
	"strings"

	"github.com/hashicorp/go-memdb"
)

// Table is the routing table: shards and their backends, users and domains pinned to shards.
// Build one with NewTable. It is safe for concurrent use: lookups read immutable snapshots;
// writers (SetBackendUp) take turns and replace rows instead of modifying them.
type Table struct {
	db *memdb.MemDB
}

// NewTable validates spec and builds a Table from it. It reports every problem at once, each
// naming the offending shard, backend, user or domain: no shards, an empty or duplicate shard
// name, a negative or non-finite weight, a shard without backends, an empty, malformed
// (not host:port) or duplicate backend address within a shard, a backend whose Shard names
// another shard, an empty user or domain, a user or domain pointing to an unknown shard, a
// bad wildcard ("*foo", "a.*.b", "*"), two keys differing only in case that point to
// different shards, and control characters anywhere.
//
// All backends start up. The table keeps copies of spec's Backends, with Shard filled in.
func NewTable(spec TableSpec) (*Table, error) {
	if err := spec.validate(); err != nil {
		return nil, err
	}
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		return nil, fmt.Errorf("routing: schema: %w", err)
	}
	txn := db.Txn(true)
	defer txn.Abort()
	if err := insertSpecTxn(txn, &spec); err != nil {
		return nil, fmt.Errorf("routing: %w", err)
	}
	txn.Commit()
	return &Table{db: db}, nil
}

// insertSpecTxn inserts a validated spec.
func insertSpecTxn(txn *memdb.Txn, spec *TableSpec) error {
	for _, s := range spec.Shards {
		weight := s.Weight
		if weight == 0 {
			weight = 1
		}
		if err := txn.Insert(tableShard, &shardRow{Name: s.Name, Weight: weight}); err != nil {
			return fmt.Errorf("shard %q: %w", s.Name, err)
		}
		for _, b := range s.Backends {
			c := *b
			c.Shard = s.Name
			row := &backendRow{Shard: s.Name, Address: strings.ToLower(c.Address), Up: true, Backend: &c}
			if err := txn.Insert(tableBackend, row); err != nil {
				return fmt.Errorf("shard %q: backend %q: %w", s.Name, b.Address, err)
			}
		}
	}
	for u, shard := range spec.Users {
		if err := txn.Insert(tableUser, &userRow{User: strings.ToLower(u), Shard: shard}); err != nil {
			return fmt.Errorf("user %q: %w", u, err)
		}
	}
	for d, shard := range spec.Domains {
		pattern := strings.ToLower(d)
		suffix, wildcard, err := parseDomainPattern(pattern)
		if err != nil {
			return fmt.Errorf("domain %q: %w", d, err)
		}
		row := &domainRow{Pattern: pattern, Suffix: suffix, Wildcard: wildcard, Shard: shard}
		if err := txn.Insert(tableDomain, row); err != nil {
			return fmt.Errorf("domain %q: %w", d, err)
		}
	}
	return nil
}

// SetBackendUp marks the backend with the given address (case-insensitive) in the given
// shard up or down. Lookups leave down backends out of Decision.Backends; users whose first
// choice is still up keep it. Marking a backend as it already is does nothing. The error
// wraps ErrUnknownBackend when the shard has no such backend.
//
// This is the hook for health checks: the row is replaced, never modified, so lookups in
// progress keep their snapshot.
func (t *Table) SetBackendUp(shard, address string, up bool) error {
	txn := t.db.Txn(true)
	defer txn.Abort()
	changed, err := setBackendUpTxn(txn, shard, address, up)
	if err != nil {
		return err
	}
	if changed {
		txn.Commit()
	}
	return nil
}

// setBackendUpTxn replaces the backend's row if its up state changes, and says whether it did.
func setBackendUpTxn(txn *memdb.Txn, shard, address string, up bool) (bool, error) {
	raw, err := txn.First(tableBackend, indexID, shard, address)
	if err != nil {
		return false, fmt.Errorf("routing: backend %q in shard %q: %w", address, shard, err)
	}
	old, ok := raw.(*backendRow)
	if !ok {
		return false, fmt.Errorf("routing: backend %q in shard %q: %w", address, shard, ErrUnknownBackend)
	}
	if old.Up == up {
		return false, nil
	}
	row := *old
	row.Up = up
	if err := txn.Insert(tableBackend, &row); err != nil {
		return false, fmt.Errorf("routing: backend %q in shard %q: %w", address, shard, err)
	}
	return true, nil
}
