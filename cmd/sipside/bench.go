package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/sipside/sipside/evi"
)

const benchHelp = `Usage: sipside bench [--events N] [--to 'SOCKET STRING']...

Measures sipside's event path on this machine, in process and on loopback:
the udp input -> parse -> route -> backend, beside a baseline that only
reads the same UDP socket, with the same OpenSIPS E_UL_CONTACT_INSERT
payload and at most 128 events in flight. Each --to adds a backend to
measure (e.g. a RabbitMQ socket string); stdout: (discarded) is always
measured. Prints events/s, allocations per event and the share lost.
The Go benchmarks ('make bench') measure the rest, each beside its baseline.

Flags:
`

func cmdBench(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet("bench")
	n := fs.Int("events", 100000, "`N` events per path")
	var tos listFlag
	fs.Var(&tos, "to", "a backend `SOCKET STRING` to measure as well; repeatable")
	help := func(w io.Writer) {
		fmt.Fprint(w, benchHelp)
		printFlags(w, fs)
		fmt.Fprint(w, "\nExample:\n  sipside bench --events 200000 --to rabbitmq:guest:guest@127.0.0.1:5672/sipside_bench\n")
	}
	if _, code, ok := parseArgs(e, fs, help, args, 0, 0); !ok {
		return code
	}
	if *n < 1 {
		return usageError(e, fs.Name(), help, "--events %d: want at least 1", *n)
	}
	type run struct {
		name string
		fn   func() (evi.BenchResult, error)
	}
	runs := []run{
		{"baseline", func() (evi.BenchResult, error) { return evi.BenchUDPRead(ctx, *n) }},
		{"stdout:", func() (evi.BenchResult, error) { return evi.BenchUDPPipeline(ctx, *n, "stdout:", io.Discard) }},
	}
	for _, to := range tos {
		runs = append(runs, run{evi.Redact(to), func() (evi.BenchResult, error) { return evi.BenchUDPPipeline(ctx, *n, to, io.Discard) }})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "path\tevents\tevents/s\tallocs/event\tlost")
	code := exitOK
	for _, r := range runs {
		res, err := r.fn()
		if err != nil {
			fmt.Fprintf(e.stderr, "sipside bench: %s: %v\n", r.name, err)
			code = exitFailure
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.1f\t%.2f %%\n", res.Path, res.Events, res.Rate(), res.AllocsPerEvent(), res.Lost())
	}
	tw.Flush()
	return code
}
