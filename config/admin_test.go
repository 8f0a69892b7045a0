package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const adminBase = `listeners: [{name: imap, address: "127.0.0.1:1143"}]
routing: {shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]}
`

func TestAdminSection(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, doc string
		want      *Admin
	}{
		{"absent: off", adminBase, nil},
		{"empty section: defaults", adminBase + "admin:\n", &Admin{Address: DefaultAdminAddress}},
		{"empty mapping: defaults", adminBase + "admin: {}\n", &Admin{Address: DefaultAdminAddress}},
		{"address", adminBase + "admin: {address: \"[::1]:9999\"}\n", &Admin{Address: "[::1]:9999"}},
		{"token file, relative", adminBase + "admin: {token_file: token}\n", &Admin{Address: DefaultAdminAddress, Token: "0123456789abcdef0123"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse(filepath.Join(dir, "imapgate.yaml"), []byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if cfg.AdminEnabled() != (tc.want != nil) {
				t.Errorf("AdminEnabled() = %v", cfg.AdminEnabled())
			}
			got, err := cfg.AdminAPI()
			if err != nil {
				t.Fatal(err)
			}
			if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
				t.Errorf("AdminAPI() = %+v, want %+v", got, tc.want)
			}
		})
	}

	byHand := &Config{Admin: AdminConfig{Address: "127.0.0.1:0"}}
	if !byHand.AdminEnabled() {
		t.Error("a Config built by hand with an admin address: admin API off")
	}
	if (&Config{}).AdminEnabled() {
		t.Error("a zero Config: admin API on")
	}
}

func TestAdminErrors(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"bad address", adminBase + "admin:\n  address: localhost   # <-\n", `admin.address: invalid address "localhost"`},
		{"same as a listener", adminBase + "admin:\n  address: 127.0.0.1:1143   # <-\n", "admin.address: address 127.0.0.1:1143 already used by listeners[0]"},
		{"unknown field", adminBase + "admin:\n  tokenfile: x   # <-\n", `admin.tokenfile: unknown field (did you mean "token_file"?)`},
		{"not a mapping", adminBase + "admin: yes   # <-\n", "admin: want a mapping"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("imapgate.yaml", []byte(tc.doc))
			var e *Error
			if !errors.As(err, &e) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if line := markedLine(t, tc.doc); e.Line != line {
				t.Errorf("line %d, want %d", e.Line, line)
			}
		})
	}
}

func TestAdminTokenFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, content, want string }{
		{"empty", " \n", "is empty"},
		{"two lines", "0123456789abcdef\nsecond\n", "one word of printable ASCII"},
		{"short", "abc\n", "the token has 3 characters; use at least 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg, err := Parse(filepath.Join(dir, "imapgate.yaml"), []byte(adminBase+"admin: {token_file: "+filepath.Base(path)+"}\n"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = cfg.AdminAPI()
			if err == nil || !strings.Contains(err.Error(), "admin.token_file: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
			if err != nil && strings.Contains(err.Error(), "0123456789abcdef") {
				t.Errorf("the error shows the token: %v", err)
			}
		})
	}
	cfg, err := Parse(filepath.Join(dir, "imapgate.yaml"), []byte(adminBase+"admin: {token_file: missing}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.AdminAPI(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing token file: %v", err)
	}
}
