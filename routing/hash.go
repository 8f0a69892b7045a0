package routing

import "math"

// The hash decides where every user without an explicit entry lives, so it must give the same
// answer in every process, on every architecture and in every future version: changing it
// moves users between shards, whose mail is not there. That rules out hash/maphash (its seeds
// are random per process) and anything whose output is not specified. It is written by hand
// rather than with hash/fnv because hash/fnv works on []byte through an interface, which
// costs an allocation per hash on the login path; TestHashGolden pins the values, and
// TestFNVMatchesStdlib checks the FNV part against hash/fnv.
//
// The hash is FNV-1a 64 (a fixed, public algorithm) followed by the 64-bit finaliser of
// MurmurHash3 (fmix64): FNV-1a alone mixes its last bytes poorly into the high bits, and
// rendezvous hashing needs every bit to depend on every input byte, since it turns the whole
// hash into a float.
//
// Inputs are length-unambiguous: the user name, then a NUL (which never occurs in stored
// names), a tag byte ('s' for shard scores, 'b' for backend scores) and the shard name or
// backend address.

const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211

	tagShard   = 's'
	tagBackend = 'b'
)

// fnvString continues an FNV-1a 64 hash h with the bytes of s.
func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

// fnvByte continues an FNV-1a 64 hash h with c.
func fnvByte(h uint64, c byte) uint64 {
	h ^= uint64(c)
	return h * fnvPrime64
}

// fmix64 is MurmurHash3's 64-bit finaliser: a bijection with full avalanche.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// userHash is the part of the hash that depends only on the (lower-cased) user: compute it
// once per lookup and pass it to pairHash for every shard or backend.
func userHash(user string) uint64 {
	return fnvByte(fnvString(fnvOffset64, user), 0)
}

// pairHash is the hash of (user, tag, name), with uh = userHash(user).
func pairHash(uh uint64, tag byte, name string) uint64 {
	return fmix64(fnvString(fnvByte(uh, tag), name))
}

// unitFloat maps h to a float in the open interval (0, 1): the top 52 bits plus one half,
// over 2⁵², exact in a float64, so never 0 and never 1.
func unitFloat(h uint64) float64 {
	return (float64(h>>12) + 0.5) / (1 << 52)
}

// weightedScore is the weighted rendezvous hashing score -weight / ln(u), u = unitFloat(h):
// the item with the highest score wins, and an item of weight w wins a share w / Σw of the
// keys: -ln(u)/weight is exponentially distributed with rate weight, and the minimum of such
// variables is the one of rate w with probability w / Σw (the "logarithmic method" of
// Schindelhauer and Schomaker, "Weighted Distributed Hash Tables", SPAA 2005). weight must
// be > 0.
func weightedScore(h uint64, weight float64) float64 {
	return -weight / math.Log(unitFloat(h))
}
