package config

import (
	"strings"
	"testing"

	"github.com/imapgate/imapgate/proxy"
	"gopkg.in/yaml.v3"
)

func TestObserve(t *testing.T) {
	doc := `listeners:
  - {name: auto, address: "127.0.0.1:1143"}
  - {name: on, address: "127.0.0.1:1144", observe: true}
  - {name: off, address: "127.0.0.1:1145", observe: false}
routing: {shards: [{name: a, backends: [{address: "127.0.0.1:10143"}]}]}
`
	cfg, err := Parse("imapgate.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	ls, err := cfg.Listeners()
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []proxy.ObserveMode{proxy.ObserveAuto, proxy.ObserveOn, proxy.ObserveOff} {
		if got := ls[i].Options.Observe; got != want {
			t.Errorf("%s: Observe = %v, want %v", ls[i].Options.Name, got, want)
		}
	}
	for i, want := range []string{"null", "true", "false"} {
		out, err := yaml.Marshal(cfg.ListenerConfigs[i].Observe)
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("marshal %v: %q, %v; want %s", cfg.ListenerConfigs[i].Observe, out, err, want)
		}
	}

	bad := strings.Replace(doc, "observe: false}", "observe: sometimes}   # <-", 1)
	_, err = Parse("imapgate.yaml", []byte(bad))
	want := `imapgate.yaml:4: listeners[2].observe: want true or false (leave it out for automatic: on when a side uses TLS), got "sometimes"`
	if err == nil || err.Error() != want {
		t.Errorf("error %v\nwant  %s", err, want)
	}
	if line := markedLine(t, bad); line != 4 {
		t.Fatalf("marker on line %d", line)
	}
}
