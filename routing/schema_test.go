package routing

import (
	"slices"
	"testing"

	"github.com/hashicorp/go-memdb"
)

func TestSchemaValid(t *testing.T) {
	if err := schema().Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestWalkTablesAndIndexes reads every row through every index of every table, checks the
// counts, and finds each row again through its table's id index. A new table or index must
// be added here.
func TestWalkTablesAndIndexes(t *testing.T) {
	tab := mustTable(t, TableSpec{
		Shards: []ShardSpec{
			{Name: "a", Backends: backends("a", 3)},
			{Name: "b", Weight: 2, Backends: backends("b", 2)},
		},
		Users:   map[string]string{"Alice@example.org": "a", "bob": "b", "carol@example.org": "b"},
		Domains: map[string]string{"example.org": "a", "*.example.org": "b", "*.mail.example.org": "a", "example.net": "b"},
	})
	if err := tab.SetBackendUp("b", "b-1:143", false); err != nil {
		t.Fatal(err)
	}

	// idArgs gives the arguments that find a row through its table's id index.
	idArgs := map[string]func(obj any) []any{
		tableShard:   func(obj any) []any { return []any{obj.(*shardRow).Name} },
		tableBackend: func(obj any) []any { r := obj.(*backendRow); return []any{r.Shard, r.Address} },
		tableUser:    func(obj any) []any { return []any{obj.(*userRow).User} },
		tableDomain:  func(obj any) []any { return []any{obj.(*domainRow).Pattern} },
	}
	// want is the number of rows each index holds.
	want := map[string]map[string]int{
		tableShard:   {indexID: 2},
		tableBackend: {indexID: 5, indexShardUp: 5},
		tableUser:    {indexID: 3, indexShard: 3},
		tableDomain:  {indexID: 4, indexShard: 4, indexWildcard: 2},
	}

	txn := tab.db.Txn(false)
	defer txn.Abort()
	for tableName, table := range schema().Tables {
		if want[tableName] == nil || idArgs[tableName] == nil {
			t.Errorf("table %q is not covered by this test", tableName)
			continue
		}
		for indexName := range table.Indexes {
			n, ok := want[tableName][indexName]
			if !ok {
				t.Errorf("index %q of table %q is not covered by this test", indexName, tableName)
				continue
			}
			it, err := txn.Get(tableName, indexName)
			if err != nil {
				t.Fatalf("%s.%s: %v", tableName, indexName, err)
			}
			got := 0
			for obj := it.Next(); obj != nil; obj = it.Next() {
				got++
				again, err := txn.First(tableName, indexID, idArgs[tableName](obj)...)
				if err != nil || again != obj {
					t.Errorf("%s.%s: row %+v not found again by id: %v, %v", tableName, indexName, obj, again, err)
				}
			}
			if got != n {
				t.Errorf("%s.%s has %d rows, want %d", tableName, indexName, got, n)
			}
		}
	}

	// Spot checks of the content.
	for _, tc := range []struct {
		table, index string
		args         []any
		want         int
	}{
		{tableBackend, indexShardUp, []any{"a", true}, 3},
		{tableBackend, indexShardUp, []any{"b", true}, 1},
		{tableBackend, indexShardUp, []any{"b", false}, 1},
		{tableBackend, indexID + "_prefix", []any{"b"}, 2},
		{tableUser, indexShard, []any{"b"}, 2},
		{tableDomain, indexShard, []any{"a"}, 2},
	} {
		it, err := txn.Get(tc.table, tc.index, tc.args...)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for obj := it.Next(); obj != nil; obj = it.Next() {
			got++
		}
		if got != tc.want {
			t.Errorf("%s.%s %v: %d rows, want %d", tc.table, tc.index, tc.args, got, tc.want)
		}
	}
	shard, _ := txn.First(tableShard, indexID, "b")
	if w := shard.(*shardRow).Weight; w != 2 {
		t.Errorf("shard b weight %v", w)
	}
	shard, _ = txn.First(tableShard, indexID, "a")
	if w := shard.(*shardRow).Weight; w != 1 {
		t.Errorf("shard a weight %v, want the default 1", w)
	}
	user, _ := txn.First(tableUser, indexID, "ALICE@EXAMPLE.ORG")
	if u, ok := user.(*userRow); !ok || u.User != "alice@example.org" || u.Shard != "a" {
		t.Errorf("user row %+v", user)
	}
}

// TestWildcardIndex exercises the reversed-suffix index and LongestPrefix directly.
func TestWildcardIndex(t *testing.T) {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		t.Fatal(err)
	}
	txn := db.Txn(true)
	for _, p := range []string{"*.mail.example.com", "*.example.com", "mail.example.com", "*.com"} {
		suffix, wildcard, err := parseDomainPattern(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := txn.Insert(tableDomain, &domainRow{Pattern: p, Suffix: suffix, Wildcard: wildcard, Shard: p}); err != nil {
			t.Fatal(err)
		}
	}
	txn.Commit()

	txn = db.Txn(false)
	var keys []string
	it, err := txn.Get(tableDomain, indexWildcard)
	if err != nil {
		t.Fatal(err)
	}
	for obj := it.Next(); obj != nil; obj = it.Next() {
		keys = append(keys, wildcardKey(obj.(*domainRow).Suffix))
	}
	// The exact domain is not in the index; keys sort as reversed domains.
	if want := []string{"com.", "com.example.", "com.example.mail."}; !slices.Equal(keys, want) {
		t.Errorf("wildcard index keys %q, want %q", keys, want)
	}

	for _, tc := range []struct{ query, want string }{
		{"com.example.mail.a.", "*.mail.example.com"}, // the key a lookup would use, with its final dot
		{"com.example.mail.a", "*.mail.example.com"},  // and without, as Lookup does
		{"com.example.mail", "*.example.com"},         // mail.example.com itself
		{"com.example.xmail", "*.example.com"},
		{"com.example", "*.com"},
		{"com", ""},
		{"org.example.mail.a", ""},
		{"", ""},
	} {
		obj, err := txn.LongestPrefix(tableDomain, indexWildcard+"_prefix", tc.query)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if obj != nil {
			got = obj.(*domainRow).Pattern
		}
		if got != tc.want {
			t.Errorf("LongestPrefix(%q) = %q, want %q", tc.query, got, tc.want)
		}
	}
}

func TestReversedSuffixIndexErrors(t *testing.T) {
	var ix reversedSuffixIndex
	if _, _, err := ix.FromObject(&userRow{}); err == nil {
		t.Error("FromObject(*userRow) succeeded")
	}
	if ok, _, err := ix.FromObject(&domainRow{Pattern: "example.org", Suffix: "example.org"}); ok || err != nil {
		t.Errorf("FromObject(exact domain) = %v, %v; want not indexed", ok, err)
	}
	for _, args := range [][]any{nil, {"a", "b"}, {1}} {
		if _, err := ix.FromArgs(args...); err == nil {
			t.Errorf("FromArgs(%v) succeeded", args)
		}
		if _, err := ix.PrefixFromArgs(args...); err == nil {
			t.Errorf("PrefixFromArgs(%v) succeeded", args)
		}
	}
}
