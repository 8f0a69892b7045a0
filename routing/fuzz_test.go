package routing

import (
	"errors"
	"testing"
)

// FuzzLookup feeds arbitrary user names to Lookup: it must never panic, must be
// deterministic, and must return backends of the shard it names, or an *UnavailableError.
// The seeds run in every go test.
func FuzzLookup(f *testing.F) {
	for _, seed := range []string{
		"", "@", "@@", "a@", "@b", "boss@example.org", "BOSS@EXAMPLE.ORG", "u@a.mail.example.com",
		"u@xmail.example.com", "u@example.net", "u@*.example.net", "u@.", "u@..", "u@.example.com",
		"u@example.com.", "\x00", "a\x00b@example.org", "u@example.org\x00", "\xff\xfe@\xff",
		"İ@EXAMPLE.ORG", "ǅ@ǅ.com", "u@com", "u@a.b.c.d.e.f.g.h.i.j.example.com",
	} {
		f.Add(seed)
	}
	spec := lookupSpec()
	tab, err := NewTable(spec)
	if err != nil {
		f.Fatal(err)
	}
	// A second table where one shard has no backend up.
	down, err := NewTable(spec)
	if err != nil {
		f.Fatal(err)
	}
	for _, addr := range []string{"narrow-0:143", "narrow-1:143"} {
		if err := down.SetBackendUp("narrow", addr, false); err != nil {
			f.Fatal(err)
		}
	}
	reasons := map[string]bool{ReasonUser: true, ReasonDomain: true, ReasonWildcard: true, ReasonHash: true}

	f.Fuzz(func(t *testing.T, user string) {
		for _, tab := range []*Table{tab, down} {
			d, err := tab.Lookup(user)
			if err != nil {
				var ue *UnavailableError
				if !errors.As(err, &ue) || ue.Shard != "narrow" || tab != down {
					t.Fatalf("Lookup(%q): %v", user, err)
				}
				continue
			}
			if !reasons[d.Reason] || len(d.Backends) == 0 {
				t.Fatalf("Lookup(%q) = %+v", user, d)
			}
			for _, b := range d.Backends {
				if b.Shard != d.Shard {
					t.Fatalf("Lookup(%q): backend %+v not in shard %q", user, b, d.Shard)
				}
			}
			again, err := tab.Lookup(user)
			if err != nil || again.Shard != d.Shard || again.Backends[0] != d.Backends[0] {
				t.Fatalf("Lookup(%q) not deterministic: %+v, then %+v, %v", user, d, again, err)
			}
			// A user with control characters can never be pinned (NewTable rejects them),
			// whatever go-memdb does with NUL bytes in keys.
			if d.Reason == ReasonUser {
				for i := 0; i < len(user); i++ {
					if user[i] < ' ' {
						t.Fatalf("Lookup(%q) matched a pinned user", user)
					}
				}
			}
		}
	})
}
