package evi

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipside/sipside/internal/config"
)

// InputConfig is one [[input]].
type InputConfig struct {
	Listen string `toml:"listen"` // udp:HOST:PORT, unix:/path, tcp:HOST:PORT, evapi:HOST:PORT, stdin:
	// ReplyTimeout bounds how long a tcp: (event_stream reliable_mode)
	// sender waits for sipside's answer; keep it under the module's
	// timeout (1 s by default), which counts from the event's creation.
	ReplyTimeout config.Duration `toml:"reply_timeout"`
	// MaxFrame is the largest event a stream input takes, in bytes.
	MaxFrame int `toml:"max_frame"`
	// MaxConns caps a stream input's open connections; more are closed at
	// once. OpenSIPS opens one per process that raises events.
	MaxConns int `toml:"max_conns"`
	// IdleTimeout closes a stream connection that sent nothing for this
	// long, so that dead peers do not hold descriptors forever.
	IdleTimeout config.Duration `toml:"idle_timeout"`
}

const (
	defaultReplyTimeout = 900 * time.Millisecond
	defaultMaxFrame     = 1 << 20
	defaultMaxConns     = 256
	// defaultIdleTimeout is long: OpenSIPS keeps a connection between events,
	// and a closed one costs the next event in notification mode.
	defaultIdleTimeout = time.Hour
)

// WithDefaults fills in every unset key.
func (ic InputConfig) WithDefaults() InputConfig {
	if ic.ReplyTimeout == 0 {
		ic.ReplyTimeout = config.Duration(defaultReplyTimeout)
	}
	if ic.MaxFrame == 0 {
		ic.MaxFrame = defaultMaxFrame
	}
	if ic.MaxConns == 0 {
		ic.MaxConns = defaultMaxConns
	}
	if ic.IdleTimeout == 0 {
		ic.IdleTimeout = config.Duration(defaultIdleTimeout)
	}
	return ic
}

// Config is the event pipeline's part of sipside's configuration.
type Config struct {
	Inputs []InputConfig
	Routes []RouteConfig
	Spool  SpoolConfig
}

// Check reports every problem of the inputs, the spool and the routes at
// once, each under its key ("input[0].listen", "spool.fsync", "route[1].to"),
// without opening anything.
func (c Config) Check(p *config.Problems) {
	seen := map[string]bool{}
	for i, in := range c.Inputs {
		ip := p.Index("input", i)
		in.Check(ip)
		if l, err := ParseListen(in.Listen); err == nil {
			if seen[l.String()] {
				ip.Add("listen", "%q is listed twice", in.Listen)
			}
			seen[l.String()] = true
		}
	}
	c.Spool.Check(p.At("spool"))
	CheckRoutes(c.Routes, p)
}

// Validate is Check as one error, nil when all is well.
func (c Config) Validate() error {
	var p config.Problems
	c.Check(&p)
	return p.Err()
}

// Check reports what is wrong with one [[input]] (its keys relative to p).
func (ic InputConfig) Check(p *config.Problems) {
	if _, err := ParseListen(ic.Listen); err != nil {
		p.AddErr("listen", err)
	}
	if ic.ReplyTimeout < 0 {
		p.Add("reply_timeout", "%v: must not be negative (default %v)", ic.ReplyTimeout, defaultReplyTimeout)
	}
	if ic.MaxFrame < 0 {
		p.Add("max_frame", "%d: must not be negative (default %d bytes)", ic.MaxFrame, defaultMaxFrame)
	}
	if ic.MaxConns < 0 {
		p.Add("max_conns", "%d: use a positive number of connections (default %d)", ic.MaxConns, defaultMaxConns)
	}
	if ic.IdleTimeout < 0 || (ic.IdleTimeout > 0 && ic.IdleTimeout.Std() < time.Second) {
		p.Add("idle_timeout", "%v: use at least 1s (default %v)", ic.IdleTimeout, defaultIdleTimeout)
	}
}

// Pipeline runs inputs into a router. Reload swaps the routes and opens or
// closes only the inputs whose listen string changed, so that a SIGHUP does
// not drop the events arriving on unchanged sockets.
type Pipeline struct {
	deps Deps
	m    *Metrics
	log  *slog.Logger
	// OnFailure receives every event that a route could not deliver.
	onFailure FailureFunc

	router   atomic.Pointer[Router]
	spool    *Spool // nil when [spool] dir is unset
	spoolCfg SpoolConfig

	mu     sync.Mutex
	inputs map[string]*runningInput
	ctx    context.Context // set by Run; inputs opened by Reload start under it
	wg     sync.WaitGroup
	// running counts inputs still reading; when the last one ends (stdin at
	// end of file) idle is closed and Run returns.
	running  int
	idle     chan struct{}
	idleOnce sync.Once
}

type runningInput struct {
	in     Input
	cancel context.CancelFunc
}

// NewPipeline opens the inputs and builds the routes of cfg.
func NewPipeline(cfg Config, d Deps, m *Metrics, onFailure FailureFunc) (*Pipeline, error) {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	p := &Pipeline{deps: d, m: m, log: d.Log, onFailure: onFailure, inputs: map[string]*runningInput{}, idle: make(chan struct{})}
	if err := cfg.Spool.Validate(); err != nil {
		return nil, err
	}
	sp, err := NewSpool(cfg.Spool, d.Metrics, d.Log)
	if err != nil {
		return nil, err
	}
	p.spool, p.spoolCfg = sp, cfg.Spool
	if sp == nil && len(cfg.Routes) > 0 {
		p.log.Info("no [spool] dir: an event that no backend of its route takes is counted, logged and lost")
	}
	if err := p.apply(cfg); err != nil {
		p.closeInputs()
		if sp != nil {
			sp.Close()
		}
		return nil, err
	}
	return p, nil
}

// apply opens new inputs and builds the new router; it changes nothing
// running until both succeeded.
func (p *Pipeline) apply(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	r, err := NewRouter(cfg.Routes, p.deps, p.m, p.onFailure)
	if err != nil {
		return err
	}
	r.spool = p.spool
	if cfg.Spool != p.spoolCfg {
		p.log.Warn("[spool] changed: it takes effect at the next restart, not on reload")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[string]bool{}
	opened := map[string]Input{}
	for _, ic := range cfg.Inputs {
		l, _ := ParseListen(ic.Listen)
		key := l.String()
		want[key] = true
		if _, ok := p.inputs[key]; ok {
			continue
		}
		in, err := OpenInput(l, ic.WithDefaults(), p.deps, p.m)
		if err != nil {
			for _, o := range opened {
				o.Close()
			}
			r.closeBackends()
			return err
		}
		opened[key] = in
	}
	r.Start()
	old := p.router.Swap(r)
	for key, ri := range p.inputs {
		if !want[key] {
			ri.cancel()
			ri.in.Close()
			delete(p.inputs, key)
			p.log.Info("input closed", "input", key)
		}
	}
	for key, in := range opened {
		ri := &runningInput{in: in}
		p.inputs[key] = ri
		if p.ctx != nil {
			p.startInput(key, ri)
		}
	}
	if old == nil {
		p.pruneSpool(r)
		return nil
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := old.Close(ctx); err != nil {
			p.log.Warn("old routes did not close cleanly after reload", "error", err)
		}
		// Only now: the old routes may have written to the spools of
		// routes the reload removed until they closed.
		p.mu.Lock()
		defer p.mu.Unlock()
		p.pruneSpool(p.router.Load())
	}()
	return nil
}

// pruneSpool deletes the empty spool directories of routes r does not have
// and reports those that still hold events. The caller holds p.mu, so that
// no reload opens a route's spool while it runs.
func (p *Pipeline) pruneSpool(r *Router) {
	if p.spool == nil {
		return
	}
	names := make([]string, len(r.routes))
	for i, rt := range r.routes {
		names[i] = rt.cfg.Name
	}
	p.spool.Prune(names)
}

// Routes describes the current routes.
func (p *Pipeline) Routes() []RouteStatus { return p.router.Load().Status() }

// Reopen reopens the backends' files (logrotate).
func (p *Pipeline) Reopen() error { return p.router.Load().Reopen() }

// Reload applies a new configuration; on error the running one stays.
func (p *Pipeline) Reload(cfg Config) error { return p.apply(cfg) }

// Accept hands ev to the current routes; inputs call it, and so can other
// parts of sipside that make events (DMQ, AMQP consumers).
func (p *Pipeline) Accept(ev *Event) {
	for {
		r := p.router.Load()
		if r.TryAccept(ev) {
			return
		}
		if p.router.Load() == r {
			// Closed for good: the pipeline is shutting down.
			p.m.Undelivered.With("", "shutdown").Inc()
			p.log.Warn("event arrived after shutdown began", "event", ev.Name)
			ev.refuse(errors.New("sipside is shutting down"))
			return
		}
		// A reload closed the router we loaded; retry on the new one.
	}
}

func (p *Pipeline) startInput(key string, ri *runningInput) {
	ctx, cancel := context.WithCancel(p.ctx)
	ri.cancel = cancel
	p.wg.Add(1)
	p.running++
	go func() {
		defer p.wg.Done()
		p.log.Info("input listening", "input", key)
		if err := ri.in.Run(ctx, p); err != nil {
			p.log.Error("input stopped", "input", key, "error", err)
		}
		p.mu.Lock()
		p.running--
		if p.running == 0 {
			p.idleOnce.Do(func() { close(p.idle) })
		}
		p.mu.Unlock()
	}()
}

// Run reads every input until ctx ends, then drains the routes (up to
// drain) and closes everything.
func (p *Pipeline) Run(ctx context.Context, drain time.Duration) error {
	p.mu.Lock()
	p.ctx = ctx
	for key, ri := range p.inputs {
		p.startInput(key, ri)
	}
	p.mu.Unlock()
	select {
	case <-ctx.Done():
	case <-p.idle:
		p.log.Info("every input has ended")
	}
	p.closeInputs()
	p.wg.Wait()
	dctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	err := p.router.Load().Close(dctx)
	if p.spool != nil {
		err = errors.Join(err, p.spool.Close())
	}
	return err
}

func (p *Pipeline) closeInputs() {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for key, ri := range p.inputs {
		if ri.cancel != nil {
			ri.cancel()
		}
		errs = append(errs, ri.in.Close())
		delete(p.inputs, key)
	}
	if err := errors.Join(errs...); err != nil {
		p.log.Warn("closing inputs", "error", err)
	}
}

// Inputs lists the open inputs' socket strings.
// NotReady lists the inputs that cannot take events now, one line each
// ("input tcp:127.0.0.1:8091: cannot accept connections: … too many open
// files"), for /readyz.
func (p *Pipeline) NotReady() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for name, ri := range p.inputs {
		if r, ok := ri.in.(interface{ NotReady() string }); ok {
			if why := r.NotReady(); why != "" {
				out = append(out, "input "+name+": "+why)
			}
		}
	}
	sort.Strings(out)
	return out
}

// InputStatus is one input as the status shows it.
type InputStatus struct {
	Listen   string `json:"listen"`
	Received uint64 `json:"received"`
	Invalid  uint64 `json:"invalid"`
}

// InputStatuses reports every open input with its counts, sorted.
func (p *Pipeline) InputStatuses() []InputStatus {
	names := p.Inputs()
	sort.Strings(names)
	out := make([]InputStatus, 0, len(names))
	for _, n := range names {
		out = append(out, InputStatus{Listen: n, Received: p.m.Received.With(n).Value(), Invalid: p.m.Invalid.With(n).Value()})
	}
	return out
}

func (p *Pipeline) Inputs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var s []string
	for k := range p.inputs {
		s = append(s, k)
	}
	return s
}
