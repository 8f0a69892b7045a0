package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error it returns names the file on
// each of its lines, and that what it accepts is valid. The seeds (every test document and
// every example file) run with the normal tests.
func FuzzParse(f *testing.F) {
	f.Add([]byte(validDoc))
	f.Add([]byte(minimal))
	for _, tc := range errorCases {
		f.Add([]byte(tc.doc))
	}
	examples, _ := filepath.Glob(filepath.Join("..", "deploy", "examples", "*.yaml"))
	for _, p := range examples {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "fuzz.yaml") {
					t.Fatalf("error line %q does not name the file", line)
				}
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse accepted a configuration Validate rejects: %v", err)
		}
		if len(cfg.ListenerConfigs) == 0 || len(cfg.Routing.Shards) == 0 {
			t.Fatal("Parse accepted a configuration without listeners or shards")
		}
	})
}
