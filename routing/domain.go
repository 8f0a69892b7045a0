package routing

import (
	"fmt"
	"strings"
)

// Wildcard domains are matched with go-memdb's LongestPrefix on an index of reversed
// suffixes. "*.mail.example.com" is indexed as "com.example.mail." (labels reversed, then a
// final dot, and no NUL terminator, which go-memdb's string indexers would append and which
// would make every key a whole-key match only). A user's domain is reversed the same way but
// without the final dot: "a.mail.example.com" becomes "com.example.mail.a", which starts with
// "com.example.mail."; "xmail.example.com" becomes "com.example.xmail", which does not.
// Leaving out the final dot on the lookup side is what keeps "*.example.net" from matching
// "example.net" itself ("net.example" does not start with "net.example."), the convention of
// DNS and TLS wildcards; longer matches still win over shorter ones, so with "*.net" and
// "*.example.net" configured, "example.net" goes to "*.net".

// reverseDomain returns d with its labels in reverse order, joined by dots, without a final
// dot: "a.mail.example.com" → "com.example.mail.a".
func reverseDomain(d string) string {
	var b strings.Builder
	b.Grow(len(d))
	for end := len(d); ; {
		i := strings.LastIndexByte(d[:end], '.')
		b.WriteString(d[i+1 : end])
		if i < 0 {
			break
		}
		b.WriteByte('.')
		end = i
	}
	return b.String()
}

// wildcardKey is the key under which a wildcard with the given suffix is indexed:
// "mail.example.com" → "com.example.mail.".
func wildcardKey(suffix string) string {
	return reverseDomain(suffix) + "."
}

// reversedSuffixIndex is a go-memdb indexer over *domainRow that indexes wildcard rows by
// wildcardKey(Suffix), without NUL terminator, and leaves exact domains out. FromArgs and
// PrefixFromArgs take one already reversed string and use it as is; use it with
// LongestPrefix, as the comment at the top of this file explains.
type reversedSuffixIndex struct{}

// FromObject implements memdb.SingleIndexer.
func (reversedSuffixIndex) FromObject(obj any) (bool, []byte, error) {
	row, ok := obj.(*domainRow)
	if !ok {
		return false, nil, fmt.Errorf("reversedSuffixIndex: %T is not a *domainRow", obj)
	}
	if !row.Wildcard {
		return false, nil, nil
	}
	return true, []byte(wildcardKey(row.Suffix)), nil
}

// FromArgs implements memdb.Indexer.
func (reversedSuffixIndex) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("reversedSuffixIndex: want 1 argument, got %d", len(args))
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, fmt.Errorf("reversedSuffixIndex: argument is %T, want string", args[0])
	}
	return []byte(s), nil
}

// PrefixFromArgs implements memdb.PrefixIndexer.
func (i reversedSuffixIndex) PrefixFromArgs(args ...any) ([]byte, error) {
	return i.FromArgs(args...)
}

// parseDomainPattern checks a lower-cased domain pattern from TableSpec.Domains and returns
// its suffix and whether it is a wildcard. A wildcard is "*." followed by a domain; "*" is
// allowed nowhere else.
func parseDomainPattern(p string) (suffix string, wildcard bool, err error) {
	suffix = p
	if strings.HasPrefix(p, "*.") {
		suffix, wildcard = p[2:], true
	} else if strings.HasPrefix(p, "*") {
		return "", false, fmt.Errorf(`a wildcard is "*." followed by a domain`)
	}
	if suffix == "" {
		return "", false, fmt.Errorf("empty domain")
	}
	if strings.Contains(suffix, "*") {
		return "", false, fmt.Errorf(`"*" is only allowed as the whole first label ("*.example.org")`)
	}
	if strings.Contains(suffix, "@") {
		return "", false, fmt.Errorf(`a domain has no "@"`)
	}
	if strings.HasPrefix(suffix, ".") || strings.HasSuffix(suffix, ".") || strings.Contains(suffix, "..") {
		return "", false, fmt.Errorf("empty label")
	}
	if strings.Contains(suffix, " ") {
		return "", false, fmt.Errorf("contains a space")
	}
	if err := checkNoControl(suffix); err != nil {
		return "", false, err
	}
	return suffix, wildcard, nil
}

// checkNoControl rejects ASCII control characters. Beyond catching typos, it keeps NUL out of
// go-memdb string keys, where it is the terminator: with "a\x00b" in the table, a lookup of
// "a" would find it.
func checkNoControl(s string) error {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == 0x7f {
			return fmt.Errorf("contains the control character %q", c)
		}
	}
	return nil
}
