package dmq_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/internal/metrics"
)

// How the daemon runs a node: build it from the [dmq] section, run it until
// the context ends (SIGTERM), hand every change to the event router.
func ExampleNew() {
	cfg := dmq.Config{Listen: "sip:127.0.0.1:5090", Seeds: []string{"sip:127.0.0.2:5060"}}.WithDefaults()
	node, err := dmq.New(cfg, dmq.Options{
		Logger:  slog.Default(),
		Metrics: metrics.New(),
		OnChange: func(name string, params []byte) {
			// e.g. router.Dispatch(&evi.Event{Name: name, Params: params,
			//      Received: time.Now(), Source: "dmq:" + cfg.Listen})
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	// Run joins, serves, and when ctx ends announces this node disabled and
	// leaves; in the daemon: g.Go(func() error { return node.Run(ctx) }).
	run := func(ctx context.Context) error { return node.Run(ctx) }
	_ = run
	fmt.Println(node.Self(), node.HTable() != nil)
	// Output: sip:127.0.0.1:5090 true
}
