package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sipside/sipside/evi"
	"github.com/sipside/sipside/internal/metrics"
)

const eventsHelp = `Usage: sipside events [--listen SOCKET]... [--event PATTERN]... [--to 'SOCKET STRING']...

Runs the event pipeline from flags, without a config file: receive events on
each --listen socket and deliver those matching --event (default: all) to
each --to socket string, written as OpenSIPS writes subscriber sockets
(virtual:FAILOVER|PARALLEL|ROUND-ROBIN ... included). Prints one line per
delivery failure on stderr and, on Ctrl-C or SIGTERM, a summary of
received/delivered/failed per input and backend.

Exit status: 0 stopped by a signal, 1 an input could not start (e.g. its
address is in use), 2 bad usage.

Flags:
`

const eventsExample = `
'sipside events status [--http HOST:PORT | -c FILE]' prints the running
daemon's subscriptions and inputs (from its /api/status).

Example:
  sipside events --listen udp:127.0.0.1:8090 --to stdout:
  sipside events --listen udp:127.0.0.1:8090 --subscribe opensips:udp:127.0.0.1:8080 \
      --event E_UL_CONTACT_INSERT --event E_UL_CONTACT_DELETE --to stdout:
  sipside events --listen udp:127.0.0.1:8090 --event 'E_UL_*' \
      --to 'virtual:FAILOVER udp:127.0.0.1:9001 udp:127.0.0.1:9002'
`

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func cmdEvents(ctx context.Context, e *env, args []string) int {
	if len(args) > 0 && args[0] == "status" {
		return cmdEventsStatus(ctx, e, args[1:])
	}
	fs := newFlagSet("events")
	var listens, tos, evs, subs listFlag
	fs.Var(&listens, "listen", "input `SOCKET` (udp:HOST:PORT, unix:/PATH, tcp:HOST:PORT, evapi:HOST:PORT, stdin:); repeatable; default udp:127.0.0.1:8090")
	fs.Var(&tos, "to", "destination `SOCKET STRING`; repeatable; default stdout:")
	fs.Var(&evs, "event", "event name or glob `PATTERN` to route; repeatable; default all")
	fs.Var(&subs, "subscribe", "OpenSIPS MI `TARGET` to event_subscribe the --event names at, for the first --listen socket; repeatable")
	expire := fs.Int("expire", 3600, "with --subscribe: subscription lifetime in `SECONDS`; refreshed at 2/3")
	logLevel := fs.String("log-level", "warn", "log `LEVEL`: debug, info, warn, error")
	help := func(w io.Writer) {
		fmt.Fprint(w, eventsHelp)
		printFlags(w, fs)
		fmt.Fprint(w, eventsExample)
	}
	if _, code, ok := parseArgs(e, fs, help, args, 0, 0); !ok {
		return code
	}
	if len(listens) == 0 {
		listens = listFlag{"udp:127.0.0.1:8090"}
	}
	if len(subs) > 0 && len(evs) == 0 {
		return usageError(e, fs.Name(), help, "--subscribe needs the event names: --event E_UL_CONTACT_INSERT …")
	}
	if len(tos) == 0 {
		tos = listFlag{"stdout:"}
	}
	lv, err := parseLevel(*logLevel)
	if err != nil {
		return usageError(e, fs.Name(), help, "--log-level %v", err)
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: lv}))
	for _, t := range tos {
		if len(evi.DMQChannels(t)) > 0 {
			return usageError(e, fs.Name(), help, "--to %s: dmq: sockets write through the DMQ node of 'sipside run' ([dmq]); use them in a [[route]] there", t)
		}
	}
	cfg := eventsConfig(listens, tos, evs)
	reg := metrics.New()
	m := evi.NewMetrics(reg)
	var subscribers []*evi.Subscriber
	for _, target := range subs {
		sub, err := evi.NewSubscriber(evi.SubscribeConfig{Target: target, Events: evs, Socket: listens[0], Expire: *expire}, reg, log)
		if err != nil {
			return usageError(e, fs.Name(), help, "--subscribe %s: %v", target, err)
		}
		subscribers = append(subscribers, sub)
	}
	// A bad socket string is a bad flag (2); an input that cannot open, e.g.
	// on an address in use, is a failure of the command (1).
	if err := cfg.Validate(); err != nil {
		return usageError(e, fs.Name(), help, "%v", err)
	}
	pipe, err := evi.NewPipeline(cfg, evi.Deps{Stdin: e.stdin, Stdout: evi.LockWriter(e.stdout), Log: log, Metrics: reg}, m, undeliveredTo(e))
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside events: %v\n", err)
		return exitFailure
	}
	if err := runWithSubscribers(ctx, pipe, subscribers); err != nil {
		fmt.Fprintf(e.stderr, "sipside events: %v\n", err)
		return exitFailure
	}
	fmt.Fprint(e.stderr, "\nsummary:\n")
	printSummary(e, reg)
	return exitOK
}

// eventsConfig is the pipeline of sipside events' flags: every input into
// one route per --to.
func eventsConfig(listens, tos, evs []string) evi.Config {
	var cfg evi.Config
	for _, l := range listens {
		cfg.Inputs = append(cfg.Inputs, evi.InputConfig{Listen: l})
	}
	for i, t := range tos {
		cfg.Routes = append(cfg.Routes, evi.RouteConfig{Name: fmt.Sprintf("to%d", i+1), Events: evs, To: t})
	}
	return cfg
}

// undeliveredTo prints every event that no backend took on e's stderr.
func undeliveredTo(e *env) evi.FailureFunc {
	var mu sync.Mutex
	return func(route string, ev *evi.Event, err error) error {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(e.stderr, "%s undelivered: route=%s event=%s: %v\n", time.Now().Format(time.RFC3339), route, ev.Name, err)
		return err
	}
}

// runWithSubscribers runs pipe until ctx ends, with the subscribers living as
// long as the pipeline, also when it cannot start.
func runWithSubscribers(ctx context.Context, pipe *evi.Pipeline, subscribers []*evi.Subscriber) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, sub := range subscribers {
		wg.Add(1)
		go func() { defer wg.Done(); sub.Run(ctx) }()
	}
	err := pipe.Run(ctx, 4*time.Second)
	cancel()
	wg.Wait()
	return err
}

// printSummary prints the pipeline's counters, one per line, from the
// registry's own exposition so that it can never disagree with /metrics.
func printSummary(e *env, reg *metrics.Registry) {
	var b strings.Builder
	reg.WriteTo(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		for _, p := range []string{"sipside_events_received_total", "sipside_events_invalid_total", "sipside_events_delivered_total", "sipside_events_failed_total", "sipside_events_undelivered_total", "sipside_events_unmatched_total"} {
			if strings.HasPrefix(line, p) {
				fmt.Fprintf(e.stderr, "  %s\n", strings.TrimPrefix(line, "sipside_events_"))
			}
		}
	}
}

func cmdEventsStatus(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet("events status")
	addr := fs.String("http", "", "the daemon's observability `HOST:PORT` (default: [http] listen of -c, else "+defaultHTTPListen+")")
	cfgPath := fs.String("c", "", "config `FILE` to read [http] listen from")
	asJSON := fs.Bool("json", false, "print /api/status as JSON instead of text")
	ready := fs.Bool("ready", false, "ask /readyz instead: exit 0 when everything configured works, 1 with the list of what does not (for health checks)")
	help := func(w io.Writer) {
		fmt.Fprint(w, "Usage: sipside events status [--http HOST:PORT | -c FILE] [--json | --ready]\n\nPrints what the running daemon's status page shows, as text: inputs with their counts,\nsubscriptions with their expiry, routes and backends with delivered, failed and spooled\ncounts and FAILOVER's state, AMQP consumers, DMQ nodes. --json prints its /api/status;\n--ready what is not ready (its /readyz), for health checks.\n\n"+
			"Exit status: 0 success (with --ready: all is ready), 1 the daemon answered with an error, is\nnot ready (--ready) or the -c config is invalid, 2 bad usage or no daemon answering there.\n\nFlags:\n")
		printFlags(w, fs)
		fmt.Fprint(w, "\nExample:\n  sipside events status --http 127.0.0.1:9690\n")
	}
	if _, code, ok := parseArgs(e, fs, help, args, 0, 0); !ok {
		return code
	}
	if *addr == "" {
		*addr = defaultHTTPListen
		if *cfgPath != "" {
			cfg, err := loadConfigFile(*cfgPath)
			if err != nil {
				fmt.Fprintf(e.stderr, "sipside events status: %v\n", err)
				return exitFailure
			}
			*addr = cfg.HTTP.Listen
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	path := "/api/status"
	if *ready {
		path = "/readyz"
	}
	req, _ := http.NewRequestWithContext(cctx, "GET", "http://"+*addr+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside events status: %v (is sipside run listening on %s? see [http] listen)\n", err, *addr)
		return exitUsage
	}
	defer resp.Body.Close()
	if *ready && resp.StatusCode == http.StatusServiceUnavailable {
		io.Copy(e.stdout, resp.Body)
		return exitFailure
	}
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(e.stderr, "sipside events status: %s answered %s\n", *addr, resp.Status)
		return exitFailure
	}
	if *ready || *asJSON {
		io.Copy(e.stdout, resp.Body)
		return exitOK
	}
	var st status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&st); err != nil {
		fmt.Fprintf(e.stderr, "sipside events status: %s answered something that is not sipside's status: %v\n", *addr, err)
		return exitFailure
	}
	writeStatusText(e.stdout, st, time.Now())
	return exitOK
}
