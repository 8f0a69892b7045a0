package routing

import (
	"github.com/hashicorp/go-memdb"
)

// Table and index names. The "id" index of every table is its primary key.
const (
	tableShard   = "shard"
	tableBackend = "backend"
	tableUser    = "user"
	tableDomain  = "domain"

	indexID = "id"
	// indexShard indexes user and domain rows by the shard they point to.
	indexShard = "shard"
	// indexShardUp indexes backend rows by shard and up state.
	indexShardUp = "shard_up"
	// indexWildcard indexes wildcard domain rows by their reversed suffix, for LongestPrefix.
	indexWildcard = "wildcard"
)

// schema is the routing database schema.
func schema() *memdb.DBSchema {
	return &memdb.DBSchema{
		Tables: map[string]*memdb.TableSchema{
			tableShard:   shardTableSchema(),
			tableBackend: backendTableSchema(),
			tableUser:    userTableSchema(),
			tableDomain:  domainTableSchema(),
		},
	}
}

// shardRow is one shard. Weight is already defaulted (never 0).
type shardRow struct {
	Name   string
	Weight float64
}

// shardTableSchema: shards by name (case-sensitive).
func shardTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableShard,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {
				Name:    indexID,
				Unique:  true,
				Indexer: &memdb.StringFieldIndex{Field: "Name"},
			},
		},
	}
}

// backendRow is one backend of one shard and whether it accepts connections. Backend.Shard
// equals Shard; Address is Backend.Address lower-cased, as it is compared and hashed.
type backendRow struct {
	Shard   string
	Address string
	Up      bool
	Backend *Backend
}

// backendTableSchema: backends by shard and address (the address compared
// case-insensitively: host names are), and by shard and up state.
func backendTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableBackend,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {
				Name:   indexID,
				Unique: true,
				Indexer: &memdb.CompoundIndex{Indexes: []memdb.Indexer{
					&memdb.StringFieldIndex{Field: "Shard"},
					&memdb.StringFieldIndex{Field: "Address", Lowercase: true},
				}},
			},
			indexShardUp: {
				Name: indexShardUp,
				Indexer: &memdb.CompoundIndex{Indexes: []memdb.Indexer{
					&memdb.StringFieldIndex{Field: "Shard"},
					&memdb.BoolFieldIndex{Field: "Up"},
				}},
			},
		},
	}
}

// userRow pins one user (lower-cased address) to a shard.
type userRow struct {
	User  string
	Shard string
}

// userTableSchema: users by lower-cased address, and by shard.
func userTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableUser,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {
				Name:    indexID,
				Unique:  true,
				Indexer: &memdb.StringFieldIndex{Field: "User", Lowercase: true},
			},
			indexShard: {
				Name:    indexShard,
				Indexer: &memdb.StringFieldIndex{Field: "Shard"},
			},
		},
	}
}

// domainRow sends a domain to a shard. Pattern is the lower-cased domain as configured,
// "example.org" or "*.example.net"; for a wildcard, Suffix is the part after "*." and
// Wildcard is true; for an exact domain, Suffix equals Pattern.
type domainRow struct {
	Pattern  string
	Suffix   string
	Wildcard bool
	Shard    string
}

// domainTableSchema: exact and wildcard domains by lower-cased pattern, wildcard domains by
// reversed suffix (see reversedSuffixIndex), and both by shard.
func domainTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableDomain,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {
				Name:    indexID,
				Unique:  true,
				Indexer: &memdb.StringFieldIndex{Field: "Pattern", Lowercase: true},
			},
			indexWildcard: {
				Name:         indexWildcard,
				Unique:       true, // LongestPrefix requires it
				AllowMissing: true, // exact domains are not in this index
				Indexer:      reversedSuffixIndex{},
			},
			indexShard: {
				Name:    indexShard,
				Indexer: &memdb.StringFieldIndex{Field: "Shard"},
			},
		},
	}
}
