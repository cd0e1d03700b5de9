package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"reflect"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/evi"
	"github.com/sipside/sipside/internal/metrics"
)

const runHelp = `Usage: sipside run [-c FILE | FILE] [--log-level LEVEL] [--log-format FORMAT]

Runs the daemon: receives the proxy's events on the configured inputs and
delivers them through the configured routes, with /metrics and /healthz on
the observability port. The config file comes as -c FILE or as the one
argument, as for 'sipside check'.

Without a FILE it runs the embedded default: listen for OpenSIPS
event_datagram notifications on udp:127.0.0.1:8090 and print each event as
one JSON line on stdout, observability on 127.0.0.1:9690.

Signals: SIGTERM/SIGINT stop (queued events get up to shutdown_timeout to
go out); SIGHUP reloads the config file (a bad file is refused, the running
config stays).

Exit status: 0 stopped by a signal, 1 an invalid config or a failure while
running (e.g. an address already in use), 2 bad usage.

Flags:
`

const runExample = `
Example:
  sipside run                       # embedded default
  sipside run /etc/sipside/sipside.toml --log-format json
  # then, from OpenSIPS: opensips-cli -x mi event_subscribe E_PIKE_BLOCKED udp:127.0.0.1:8090
`

type runFlags struct {
	config    string
	logLevel  string
	logFormat string
}

func cmdRun(ctx context.Context, e *env, args []string) int {
	fs := newFlagSet("run")
	var f runFlags
	fs.StringVar(&f.config, "c", "", "config `FILE` (default: the embedded default)")
	fs.StringVar(&f.logLevel, "log-level", "", "override [log] level: `LEVEL` is debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "", "override [log] format: `FORMAT` is text or json")
	help := func(w io.Writer) {
		fmt.Fprint(w, runHelp)
		printFlags(w, fs)
		fmt.Fprint(w, runExample)
	}
	pos, code, ok := parseArgs(e, fs, help, args, 0, 1)
	if !ok {
		return code
	}
	var err error
	if f.config, err = configArg(f.config, pos); err != nil {
		return usageError(e, fs.Name(), help, "%v", err)
	}
	cfg, err := loadConfigFile(f.config)
	if err == nil {
		err = cfg.checkHost()
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside run: %v\n", err)
		return exitFailure
	}
	level := new(slog.LevelVar)
	log, err := newLogger(e.stderr, cfg, f, level)
	if err != nil {
		fmt.Fprintf(e.stderr, "sipside run: %v\n", err)
		return exitUsage
	}
	reg := metrics.New()
	registerBuildInfo(reg)
	d := &daemon{env: e, flags: f, log: log, level: level, reg: reg, started: time.Now()}
	if err := d.run(ctx, cfg); err != nil {
		log.Error("sipside stopped", "error", err)
		return exitFailure
	}
	return exitOK
}

func newLogger(w io.Writer, cfg *Config, f runFlags, level *slog.LevelVar) (*slog.Logger, error) {
	lv, format := cfg.Log.Level, cfg.Log.Format
	if f.logLevel != "" {
		lv = f.logLevel
	}
	if f.logFormat != "" {
		format = f.logFormat
	}
	l, err := parseLevel(lv)
	if err != nil {
		return nil, fmt.Errorf("--log-level %w", err)
	}
	level.Set(l)
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// daemon is `sipside run`: it wires the packages together and owns signals.
type daemon struct {
	env   *env
	flags runFlags
	log   *slog.Logger
	level *slog.LevelVar
	reg   *metrics.Registry
	subs  *subscriptions
	pipe  *evi.Pipeline

	started time.Time

	// partsMu guards what the parts register while the HTTP server already
	// serves: their status sections and readiness checks.
	partsMu  sync.Mutex
	sections []func() statusSection // DMQ, AMQP: parts that report themselves
	ready    []func() []string      // each returns what is not ready, one line each
}

// addPart registers a part's status section and readiness check (either may
// be nil).
func (d *daemon) addPart(sec func() statusSection, ready func() []string) {
	d.partsMu.Lock()
	defer d.partsMu.Unlock()
	if sec != nil {
		d.sections = append(d.sections, sec)
	}
	if ready != nil {
		d.ready = append(d.ready, ready)
	}
}

// notReady lists what is not ready, in registration order; empty when all is.
func (d *daemon) notReady() []string {
	d.partsMu.Lock()
	checks := d.ready
	d.partsMu.Unlock()
	var out []string
	for _, c := range checks {
		out = append(out, c()...)
	}
	return out
}

func (d *daemon) run(ctx context.Context, cfg *Config) error {
	m := evi.NewMetrics(d.reg)
	deps := evi.Deps{Stdin: d.env.stdin, Stdout: evi.LockWriter(d.env.stdout), Log: d.log, Metrics: d.reg}
	var pipe *evi.Pipeline
	var node *dmq.Node
	if cfg.dmqEnabled() {
		var err error
		// pipe is set below, before the node runs and can raise anything.
		if node, err = d.newDMQ(cfg, func(ev *evi.Event) { pipe.Accept(ev) }); err != nil {
			return err
		}
		deps.DMQ = node
	}
	pipe, err := evi.NewPipeline(cfg.events(), deps, m, nil)
	if err != nil {
		return err
	}
	d.pipe = pipe
	d.subs = newSubscriptions(d.reg, d.log)
	d.addPart(nil, pipe.NotReady)
	d.addPart(nil, func() []string {
		var out []string
		for _, st := range d.subs.states() {
			if st.State != "active" {
				msg := fmt.Sprintf("subscription %s at %s: %s", st.Event, st.Target, st.State)
				if st.LastError != "" {
					msg += " (" + st.LastError + ")"
				}
				out = append(out, msg)
			}
		}
		return out
	})
	var ln net.Listener
	if cfg.HTTP.Listen != "off" {
		ln, err = net.Listen("tcp", cfg.HTTP.Listen)
		if err != nil {
			pipe.Reload(evi.Config{}) //nolint:errcheck // only to close what was opened
			return fmt.Errorf("observability server on %s: %w (is another sipside running? set [http] listen)", cfg.HTTP.Listen, err)
		}
	}
	d.log.Info("sipside started", "config", cfg.source, "inputs", len(cfg.Input), "routes", len(cfg.Route), "http", cfg.HTTP.Listen, "version", version())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return pipe.Run(gctx, time.Duration(cfg.Shutdown)) })
	if ln != nil {
		srv := &http.Server{Handler: d.handler(), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("observability server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	d.subs.apply(gctx, cfg.Subscribe)
	if node != nil {
		g.Go(func() error { return node.Run(gctx) })
	}
	if kc := cfg.kazoo(); kc.Enabled() {
		br, err := d.startAMQP(cfg, pipe)
		if err != nil {
			return err
		}
		g.Go(func() error { return br.Run(gctx) })
	}
	g.Go(func() error { <-gctx.Done(); d.subs.wait(); return nil })
	g.Go(func() error { d.reloadOnHUP(gctx, pipe, cfg); return nil })
	err = g.Wait()
	d.log.Info("sipside stopped")
	return err
}

// reloadOnHUP re-reads the config file on SIGHUP. A bad file is refused and
// the running config stays; the observability address needs a restart.
func (d *daemon) reloadOnHUP(ctx context.Context, pipe *evi.Pipeline, cur *Config) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		// Files first: logrotate sends SIGHUP whether or not the config changed.
		if err := pipe.Reopen(); err != nil {
			d.log.Error("reopening files on SIGHUP", "error", err)
		}
		next, err := loadConfigFile(d.flags.config)
		if err != nil {
			d.log.Error("config reload refused; the running config stays", "error", err)
			continue
		}
		if err := pipe.Reload(next.events()); err != nil {
			d.log.Error("config reload refused; the running config stays", "error", err)
			continue
		}
		d.subs.apply(ctx, next.Subscribe)
		if l, err := parseLevel(next.Log.Level); err == nil && d.flags.logLevel == "" {
			d.level.Set(l)
		}
		if !reflect.DeepEqual(next.DMQ, cur.DMQ) || !reflect.DeepEqual(next.kazoo(), cur.kazoo()) {
			d.log.Warn("[dmq], [amqp] and [jsonrpc] changes take effect at the next restart, not on SIGHUP")
		}
		if next.HTTP.Listen != cur.HTTP.Listen {
			d.log.Warn("[http] listen changed: restart sipside to move the observability server", "running", cur.HTTP.Listen, "configured", next.HTTP.Listen)
		}
		cur = next
		d.log.Info("config reloaded", "config", next.source, "inputs", len(next.Input), "routes", len(next.Route))
	}
}

func (d *daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if _, err := d.reg.WriteTo(w); err != nil {
			d.log.Debug("writing /metrics", "error", err)
		}
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(d.status())
	})
	mux.HandleFunc("GET /{$}", d.statusPage)
	// Liveness: the process serves. Readiness: everything configured works.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		bad := d.notReady()
		if len(bad) == 0 {
			io.WriteString(w, "ready\n")
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "not ready:\n")
		for _, b := range bad {
			io.WriteString(w, "- "+b+"\n")
		}
	})
	return mux
}
