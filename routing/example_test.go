package routing_test

import (
	"context"
	"fmt"
	"log"

	"github.com/imapgate/imapgate/routing"
)

func Example() {
	table, err := routing.NewTable(routing.TableSpec{
		Shards: []routing.ShardSpec{
			{Name: "a", Backends: []*routing.Backend{{Address: "10.0.0.1:143"}, {Address: "10.0.0.2:143"}}},
			{Name: "b", Weight: 2, Backends: []*routing.Backend{{Address: "10.0.1.1:143"}}},
		},
		Users:   map[string]string{"ceo@example.org": "a"},
		Domains: map[string]string{"example.org": "b", "*.example.net": "a"},
	})
	if err != nil {
		log.Fatal(err)
	}
	router := &routing.Static{Table: table}
	for _, user := range []string{"CEO@example.org", "alice@Example.ORG", "bob@lists.example.net"} {
		d, err := router.Route(context.Background(), routing.Request{User: user})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(user, "→ shard", d.Shard, "by", d.Reason, "with", len(d.Backends), "backends")
	}
	// Output:
	// CEO@example.org → shard a by user with 2 backends
	// alice@Example.ORG → shard b by domain with 1 backends
	// bob@lists.example.net → shard a by wildcard with 2 backends
}
