package routing

import (
	"errors"
	"fmt"
	"testing"
)

// lookupSpec has one shard per way of being found, so a test can tell them apart.
func lookupSpec() TableSpec {
	var shards []ShardSpec
	for _, name := range []string{"pinned", "exact", "wide", "narrow", "narrower", "other"} {
		shards = append(shards, ShardSpec{Name: name, Backends: backends(name, 2)})
	}
	return TableSpec{
		Shards: shards,
		Users: map[string]string{
			"Boss@Example.org":   "pinned",
			"admin":              "pinned", // no '@'
			"x@mail.example.com": "pinned",
		},
		Domains: map[string]string{
			"Example.ORG":          "exact",
			"*.example.com":        "wide",
			"*.mail.example.com":   "narrow",
			"*.a.mail.example.com": "narrower",
			"mail.example.com":     "exact",
			"*.net":                "wide",
			"*.example.net":        "narrow",
		},
	}
}

func TestLookup(t *testing.T) {
	tab := mustTable(t, lookupSpec())
	for _, tc := range []struct {
		user, shard, reason string
	}{
		// Exact users win over everything, in any case.
		{"boss@example.org", "pinned", ReasonUser},
		{"BOSS@EXAMPLE.ORG", "pinned", ReasonUser},
		{"Boss@Example.org", "pinned", ReasonUser},
		{"admin", "pinned", ReasonUser},
		{"ADMIN", "pinned", ReasonUser},
		{"x@mail.example.com", "pinned", ReasonUser}, // over domain and wildcard

		// Exact domains, after the last '@', in any case; they win over wildcards.
		{"alice@example.org", "exact", ReasonDomain},
		{"Alice@EXAMPLE.org", "exact", ReasonDomain},
		{"a@b@example.org", "exact", ReasonDomain},
		{"bob@mail.example.com", "exact", ReasonDomain}, // not "*.example.com"

		// Wildcards: the longest matching suffix wins, at any depth.
		{"u@www.example.com", "wide", ReasonWildcard},
		{"u@x.y.example.com", "wide", ReasonWildcard},
		{"u@b.mail.example.com", "narrow", ReasonWildcard},
		{"u@B.MAIL.Example.COM", "narrow", ReasonWildcard},
		{"u@a.mail.example.com", "narrow", ReasonWildcard}, // "*.a.mail…" needs one more label
		{"u@z.a.mail.example.com", "narrower", ReasonWildcard},
		{"u@xmail.example.com", "wide", ReasonWildcard}, // not "*.mail.example.com"
		{"u@xa.mail.example.com", "narrow", ReasonWildcard},
		// "*.example.net" does not match example.net itself; "*.net" does.
		{"u@example.net", "wide", ReasonWildcard},
		{"u@www.example.net", "narrow", ReasonWildcard},
		{"u@www.xexample.net", "wide", ReasonWildcard},

		// Nothing matches: hashing, which for this user picks some shard (checked below).
		{"u@example.com", "", ReasonHash}, // "*.example.com" does not match the apex
		{"u@example.org.evil", "", ReasonHash},
		{"u@org", "", ReasonHash},
		{"u@", "", ReasonHash},
		{"@", "", ReasonHash},
		{"", "", ReasonHash},
		{"nobody", "", ReasonHash},
		{"boss@example.org ", "", ReasonHash},         // no trimming
		{"u@*.example.net", "narrow", ReasonWildcard}, // a wildcard is not an exact domain
	} {
		t.Run(tc.user, func(t *testing.T) {
			d := mustLookup(t, tab, tc.user)
			if d.Reason != tc.reason || (tc.shard != "" && d.Shard != tc.shard) {
				t.Errorf("Lookup(%q) = shard %q by %q, want %q by %q", tc.user, d.Shard, d.Reason, tc.shard, tc.reason)
			}
			if len(d.Backends) != 2 || d.Backends[0].Shard != d.Shard || d.UpstreamUser != "" {
				t.Errorf("Lookup(%q) = %+v", tc.user, d)
			}
		})
	}
}

// Hashing is on the lower-cased name: case does not change the shard or the backend.
func TestLookupHashCaseInsensitive(t *testing.T) {
	tab := mustTable(t, TableSpec{Shards: equalShards(5)})
	for i := range 200 {
		lower := mustLookup(t, tab, fmt.Sprintf("user%d@example.com", i))
		upper := mustLookup(t, tab, fmt.Sprintf("USER%d@Example.COM", i))
		if lower.Shard != upper.Shard || lower.Backends[0] != upper.Backends[0] || lower.Reason != ReasonHash {
			t.Fatalf("user%d: %s/%s by case, %s", i, lower.Shard, upper.Shard, lower.Reason)
		}
	}
}

// TestLookupStableAcrossTables checks that the choice depends on the table's content only,
// not on the order of the spec or on the process: the same as another table built from the
// shards in reverse order, and a few pinned values (changing them moves real users).
func TestLookupStableAcrossTables(t *testing.T) {
	shards := equalShards(4)
	reversed := make([]ShardSpec, len(shards))
	for i, s := range shards {
		reversed[len(shards)-1-i] = s
	}
	a, b := mustTable(t, TableSpec{Shards: shards}), mustTable(t, TableSpec{Shards: reversed})
	for i := range 500 {
		user := fmt.Sprintf("user%d@example.com", i)
		da, db := mustLookup(t, a, user), mustLookup(t, b, user)
		if da.Shard != db.Shard || da.Backends[0].Address != db.Backends[0].Address {
			t.Fatalf("%s: %s %s vs %s %s", user, da.Shard, da.Backends[0].Address, db.Shard, db.Backends[0].Address)
		}
	}
	for _, tc := range []struct{ user, shard, backend string }{
		// Computed independently of this package (a few lines of Python).
		{"user0@example.com", "s1", "s1-0:143"},
		{"user1@example.com", "s2", "s2-1:143"},
		{"alice@example.org", "s0", "s0-1:143"},
		{"bob", "s2", "s2-0:143"},
	} {
		d := mustLookup(t, a, tc.user)
		if d.Shard != tc.shard || d.Backends[0].Address != tc.backend {
			t.Errorf("Lookup(%q) = %s %s, want %s %s (the hash changed: users would move)",
				tc.user, d.Shard, d.Backends[0].Address, tc.shard, tc.backend)
		}
	}
}

func TestUnavailableError(t *testing.T) {
	for _, tc := range []struct {
		err  *UnavailableError
		want string
	}{
		{&UnavailableError{User: "u", Reason: "no shards"}, `routing: no shard for user "u": no shards`},
		{&UnavailableError{User: "u", Shard: "a", Reason: "no backend is up"}, `routing: shard "a" of user "u" is unavailable: no backend is up`},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
	var ue *UnavailableError
	if !errors.As(fmt.Errorf("wrapped: %w", &UnavailableError{}), &ue) {
		t.Error("errors.As through a wrap failed")
	}
}

func BenchmarkLookup(b *testing.B) {
	spec := lookupSpec()
	spec.Shards = append(spec.Shards, equalShards(10)...)
	tab := mustTable(b, spec)
	for _, bc := range []struct{ name, user string }{
		{"user", "Boss@Example.org"},
		{"domain", "alice@example.org"},
		{"wildcard", "alice@b.mail.example.com"},
		{"hash", "alice@example.io"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tab.Lookup(bc.user); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
