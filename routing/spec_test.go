package routing

import (
	"math"
	"strings"
	"testing"
)

func TestNewTableValidation(t *testing.T) {
	one := func(name string) []ShardSpec { return []ShardSpec{{Name: name, Backends: backends(name, 1)}} }
	for _, tc := range []struct {
		name string
		spec TableSpec
		want []string // each must be in the error message
	}{
		{"no shards", TableSpec{}, []string{"no shards"}},
		{"empty shard name", TableSpec{Shards: one("")}, []string{"shard #1: empty name"}},
		{"duplicate shard", TableSpec{Shards: append(one("a"), one("a")...)}, []string{`shard "a": defined twice`}},
		{"no backends", TableSpec{Shards: []ShardSpec{{Name: "a"}}}, []string{`shard "a": no backends`}},
		{"negative weight", TableSpec{Shards: []ShardSpec{{Name: "a", Weight: -1, Backends: backends("a", 1)}}},
			[]string{`shard "a": weight -1`}},
		{"NaN weight", TableSpec{Shards: []ShardSpec{{Name: "a", Weight: math.NaN(), Backends: backends("a", 1)}}},
			[]string{`shard "a": weight NaN`}},
		{"infinite weight", TableSpec{Shards: []ShardSpec{{Name: "a", Weight: math.Inf(1), Backends: backends("a", 1)}}},
			[]string{`shard "a": weight +Inf`}},
		{"nil backend", TableSpec{Shards: []ShardSpec{{Name: "a", Backends: []*Backend{nil}}}},
			[]string{`shard "a": backend #1 is nil`}},
		{"empty address", TableSpec{Shards: []ShardSpec{{Name: "a", Backends: []*Backend{{}}}}},
			[]string{`shard "a": backend #1: empty address`}},
		{"no port", TableSpec{Shards: []ShardSpec{{Name: "a", Backends: []*Backend{{Address: "imap.example.org"}}}}},
			[]string{`shard "a": backend "imap.example.org": want host:port`}},
		{"duplicate backend", TableSpec{Shards: []ShardSpec{{Name: "a", Backends: []*Backend{
			{Address: "imap.example.org:143"}, {Address: "IMAP.example.org:143"}}}}},
			[]string{`shard "a": backend "IMAP.example.org:143": listed twice`}},
		{"backend of another shard", TableSpec{Shards: []ShardSpec{{Name: "a", Backends: []*Backend{
			{Shard: "b", Address: "x:143"}}}}},
			[]string{`shard "a": backend "x:143" says it belongs to shard "b"`}},
		// A Backend made in code, not parsed from the configuration, may hold any number.
		{"unknown PROXY protocol version", TableSpec{Shards: []ShardSpec{{Name: "a", Backends: []*Backend{
			{Address: "x:143", ProxyProtocol: 3}}}}},
			[]string{`shard "a": backend "x:143": invalid PROXY protocol version 3 (want off, v1 or v2)`}},
		{"control character", TableSpec{Shards: one("a\x00")}, []string{`shard "a\x00": name contains the control character`}},

		{"user to unknown shard", TableSpec{Shards: one("a"), Users: map[string]string{"u@example.org": "b"}},
			[]string{`user "u@example.org": unknown shard "b"`}},
		{"user to empty shard", TableSpec{Shards: one("a"), Users: map[string]string{"u@example.org": ""}},
			[]string{`user "u@example.org": empty shard name`}},
		{"empty user", TableSpec{Shards: one("a"), Users: map[string]string{"": "a"}},
			[]string{`user "": empty address`}},
		{"user with NUL", TableSpec{Shards: one("a"), Users: map[string]string{"u\x00": "a"}},
			[]string{`user "u\x00": contains the control character`}},
		{"users differing in case", TableSpec{Shards: append(one("a"), one("b")...),
			Users: map[string]string{"U@example.org": "a", "u@example.org": "b"}},
			[]string{`user "u@example.org": same as "U@example.org" (case-insensitive) but a different shard`}},

		{"domain to unknown shard", TableSpec{Shards: one("a"), Domains: map[string]string{"example.org": "b"}},
			[]string{`domain "example.org": unknown shard "b"`}},
		{"wildcard to unknown shard", TableSpec{Shards: one("a"), Domains: map[string]string{"*.example.org": "b"}},
			[]string{`domain "*.example.org": unknown shard "b"`}},
		{"empty domain", TableSpec{Shards: one("a"), Domains: map[string]string{"": "a"}},
			[]string{`domain "": empty domain`}},
		{"star without dot", TableSpec{Shards: one("a"), Domains: map[string]string{"*foo": "a"}},
			[]string{`domain "*foo": a wildcard is "*." followed by a domain`}},
		{"star alone", TableSpec{Shards: one("a"), Domains: map[string]string{"*": "a"}},
			[]string{`domain "*": a wildcard is`}},
		{"star dot alone", TableSpec{Shards: one("a"), Domains: map[string]string{"*.": "a"}},
			[]string{`domain "*.": empty domain`}},
		{"star inside", TableSpec{Shards: one("a"), Domains: map[string]string{"a.*.b": "a"}},
			[]string{`domain "a.*.b": "*" is only allowed as the whole first label`}},
		{"two stars", TableSpec{Shards: one("a"), Domains: map[string]string{"*.*.b": "a"}},
			[]string{`domain "*.*.b": "*" is only allowed`}},
		{"star at end", TableSpec{Shards: one("a"), Domains: map[string]string{"example.*": "a"}},
			[]string{`domain "example.*": "*" is only allowed`}},
		{"empty label", TableSpec{Shards: one("a"), Domains: map[string]string{"a..b": "a"}},
			[]string{`domain "a..b": empty label`}},
		{"trailing dot", TableSpec{Shards: one("a"), Domains: map[string]string{"*.example.org.": "a"}},
			[]string{`domain "*.example.org.": empty label`}},
		{"at sign", TableSpec{Shards: one("a"), Domains: map[string]string{"u@example.org": "a"}},
			[]string{`domain "u@example.org": a domain has no "@"`}},
		{"space", TableSpec{Shards: one("a"), Domains: map[string]string{"exa mple.org": "a"}},
			[]string{`domain "exa mple.org": contains a space`}},
		{"domains differing in case", TableSpec{Shards: append(one("a"), one("b")...),
			Domains: map[string]string{"*.Example.org": "a", "*.example.org": "b"}},
			[]string{`domain "*.example.org": same as "*.Example.org"`}},

		{"every problem at once", TableSpec{
			Shards:  []ShardSpec{{Name: "a"}, {Name: "b", Weight: -2, Backends: backends("b", 1)}},
			Users:   map[string]string{"u1": "x", "u2": "y"},
			Domains: map[string]string{"*foo": "a"},
		}, []string{`shard "a": no backends`, `shard "b": weight -2`, `user "u1": unknown shard "x"`,
			`user "u2": unknown shard "y"`, `domain "*foo"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, err := NewTable(tc.spec)
			if err == nil {
				t.Fatalf("NewTable succeeded (%v), want an error", tab)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "routing: invalid table: ") {
				t.Errorf("error %q lacks the package prefix", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestNewTableAccepts(t *testing.T) {
	_, err := NewTable(TableSpec{
		Shards: []ShardSpec{
			{Name: "a", Weight: 0.5, Backends: []*Backend{{Shard: "a", Address: "[::1]:143"}, {Address: "imap:993"}}},
			{Name: "B", Backends: backends("B", 1)},
		},
		Users: map[string]string{
			"U@example.org": "a", "u@example.org": "a", // same shard: fine
			"plain-name": "B", "Grüße@例え.jp": "a", "with space": "a",
		},
		Domains: map[string]string{
			"example.org": "a", "*.example.org": "B", "*.com": "a", "xn--r8jz45g.jp": "B",
			"EXAMPLE.NET": "a", "example.net": "a",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
}
