package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/imapgate/imapgate/routing"
)

// TestExamples parses every configuration in deploy/examples. It checks what Parse checks;
// the certificate and CA files the examples name need not exist here, so the builders that
// read them are not run.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "deploy", "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	more, _ := filepath.Glob(filepath.Join("..", "deploy", "examples", "*.yml"))
	files = append(files, more...)
	if len(files) == 0 {
		t.Fatal("no example configurations found in deploy/examples")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := Parse(f, data)
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.ListenerConfigs) == 0 || len(cfg.Routing.Shards) == 0 {
				t.Errorf("%s: no listeners or no shards", f)
			}
			if _, err := cfg.Logger(); err != nil {
				t.Error(err)
			}
			// The routing table must accept it too; CA files are left out as they may
			// not exist on this machine (system roots are used instead).
			for i := range cfg.Routing.Shards {
				for j := range cfg.Routing.Shards[i].Backends {
					cfg.Routing.Shards[i].Backends[j].CAFile = ""
				}
			}
			spec, err := cfg.RoutingSpec()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := routing.NewTable(spec); err != nil {
				t.Error(err)
			}
		})
	}
}
