package routing

import (
	"fmt"
	"hash/fnv"
	"math"
	"testing"
)

func TestFNVMatchesStdlib(t *testing.T) {
	for _, s := range []string{"", "a", "user@example.com", "\x00\xff", "Grüße"} {
		h := fnv.New64a()
		h.Write([]byte(s))
		if got, want := fnvString(fnvOffset64, s), h.Sum64(); got != want {
			t.Errorf("fnvString(%q) = %#x, hash/fnv says %#x", s, got, want)
		}
	}
}

// TestHashGolden pins the hash. If it fails, the change moves users between shards and
// backends in every deployment: don't.
func TestHashGolden(t *testing.T) {
	for _, tc := range []struct {
		user string
		tag  byte
		name string
		want uint64
	}{
		// Computed independently of this package (a few lines of Python).
		{"alice@example.org", tagShard, "a", 0xceaeedba4b13d39d},
		{"", tagBackend, "", 0x9515c8ef2d9a03e2},
	} {
		if got := pairHash(userHash(tc.user), tc.tag, tc.name); got != tc.want {
			t.Errorf("pairHash(%q, %q, %q) = %#x, want %#x", tc.user, tc.tag, tc.name, got, tc.want)
		}
	}
}

func TestUnitFloat(t *testing.T) {
	for _, h := range []uint64{0, 1, 1 << 12, math.MaxUint64 >> 1, math.MaxUint64 - 1, math.MaxUint64} {
		u := unitFloat(h)
		if !(u > 0 && u < 1) {
			t.Errorf("unitFloat(%#x) = %v, want in (0, 1)", h, u)
		}
		if s := weightedScore(h, 1); !(s > 0) || math.IsInf(s, 0) {
			t.Errorf("weightedScore(%#x, 1) = %v, want finite > 0", h, s)
		}
	}
	if !(weightedScore(math.MaxUint64, 1) > weightedScore(0, 1)) {
		t.Error("weightedScore is not increasing in the hash")
	}
}

func TestReverseDomain(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a.mail.example.com", "com.example.mail.a"},
		{"example", "example"},
		{"", ""},
		{".", "."},
		{"a..b", "b..a"},
		{".com", "com."},
	} {
		if got := reverseDomain(tc.in); got != tc.want {
			t.Errorf("reverseDomain(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got, want := wildcardKey("mail.example.com"), "com.example.mail."; got != want {
		t.Errorf("wildcardKey = %q, want %q", got, want)
	}
}

const distUsers = 10000

// hashedShards looks up "user%d@example.com" for i < distUsers and returns each user's shard.
func hashedShards(t *testing.T, shards []ShardSpec) []string {
	t.Helper()
	tab := mustTable(t, TableSpec{Shards: shards})
	out := make([]string, distUsers)
	for i := range out {
		d := mustLookup(t, tab, fmt.Sprintf("user%d@example.com", i))
		if d.Reason != ReasonHash {
			t.Fatalf("reason %q", d.Reason)
		}
		out[i] = d.Shard
	}
	return out
}

func count(shards []string) map[string]int {
	c := map[string]int{}
	for _, s := range shards {
		c[s]++
	}
	return c
}

func TestHashDistribution(t *testing.T) {
	c := count(hashedShards(t, equalShards(3)))
	t.Logf("3 equal shards: %v", c)
	if len(c) != 3 {
		t.Fatalf("users went to %d shards, want 3", len(c))
	}
	for shard, n := range c {
		if want := distUsers / 3.0; math.Abs(float64(n)-want) > want/10 {
			t.Errorf("shard %s got %d users, want %.0f ± 10 %%", shard, n, want)
		}
	}
}

func TestHashAddShardMovesFew(t *testing.T) {
	before := hashedShards(t, equalShards(3))
	after := hashedShards(t, equalShards(4))
	moved := 0
	for i := range before {
		if before[i] != after[i] {
			moved++
			// Rendezvous hashing only moves users to the new shard.
			if after[i] != "s3" {
				t.Errorf("user%d moved from %s to %s, not to the new shard", i, before[i], after[i])
			}
		}
	}
	t.Logf("adding a 4th shard moved %d of %d users (ideal: 25 %%)", moved, distUsers)
	if moved > distUsers*30/100 {
		t.Errorf("adding a 4th shard moved %d of %d users, want ≤ 30 %%", moved, distUsers)
	}
	if moved < distUsers*20/100 {
		t.Errorf("adding a 4th shard moved %d of %d users: the new shard gets too few", moved, distUsers)
	}
}

func TestHashWeights(t *testing.T) {
	shards := equalShards(3)
	shards[0].Weight = 2
	shards[1].Weight = 1 // the same as 0
	c := count(hashedShards(t, shards))
	t.Logf("weights 2, 1, 0 (= 1): %v", c)
	for _, tc := range []struct {
		shard string
		share float64
	}{{"s0", 0.5}, {"s1", 0.25}, {"s2", 0.25}} {
		want := tc.share * distUsers
		if n := float64(c[tc.shard]); math.Abs(n-want) > want/10 {
			t.Errorf("shard %s got %v users, want %.0f ± 10 %%", tc.shard, n, want)
		}
	}
	if r := float64(c["s0"]) / float64(c["s1"]); r < 1.8 || r > 2.2 {
		t.Errorf("weight-2 shard got %.2f times the users of a weight-1 shard, want about 2", r)
	}
}
