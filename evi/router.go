package evi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"strconv"
	"sync"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

// RouteConfig is one [[route]]: which events go to which subscriber.
type RouteConfig struct {
	Name            string   `toml:"name"`             // label in metrics and logs; default routeN
	Events          []string `toml:"events"`           // exact names or globs (E_UL_*); default ["*"]
	To              string   `toml:"to"`               // an OpenSIPS socket string, virtual: included
	Queue           int      `toml:"queue"`            // events waiting for delivery; default 10000
	Timeout         Duration `toml:"timeout"`          // per delivery attempt; default 5s
	FailoverTimeout Duration `toml:"failover_timeout"` // FAILOVER's skip window; default 30s
	// Window is how many events may wait for their outcome at once on a
	// backend that can pipeline (rabbitmq: publisher confirms); 1 delivers
	// one at a time. Default 128.
	Window int `toml:"window"`
}

const (
	defaultQueue   = 10000
	defaultTimeout = 5 * time.Second
)

func (rc *RouteConfig) setDefaults(i int) {
	if rc.Name == "" {
		rc.Name = "route" + strconv.Itoa(i+1)
	}
	if len(rc.Events) == 0 {
		rc.Events = []string{"*"}
	}
	if rc.Queue == 0 {
		rc.Queue = defaultQueue
	}
	if rc.Timeout == 0 {
		rc.Timeout = Duration(defaultTimeout)
	}
	if rc.FailoverTimeout == 0 {
		rc.FailoverTimeout = Duration(DefaultFailoverTimeout)
	}
	if rc.Window == 0 {
		rc.Window = 128
	}
}

func (rc *RouteConfig) validate() error {
	if rc.To == "" {
		return errors.New(`"to" is empty: name a socket, e.g. to = "stdout:" or "virtual:FAILOVER udp:127.0.0.1:9000 flatstore:/var/log/sipside/events.log"`)
	}
	for _, p := range rc.Events {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("events: bad pattern %q: %w", p, err)
		}
	}
	if rc.Queue < 0 {
		return fmt.Errorf("queue = %d: want a positive number of events", rc.Queue)
	}
	if rc.Window < 0 {
		return fmt.Errorf("window = %d: want 1 or more events", rc.Window)
	}
	if rc.Timeout < 0 || rc.FailoverTimeout < 0 {
		return errors.New("timeout and failover_timeout must not be negative")
	}
	return nil
}

// FailureFunc is told about every event that a route could not deliver at
// all. It is the one place where undeliverable events go (the spool's seam):
// it returns nil when it kept the event safely for later, else the event is
// lost and the error says why.
type FailureFunc func(route string, ev *Event, err error) error

// Router matches events to routes; each route delivers in order from its
// own queue, so that one dead backend slows only its own route.
type Router struct {
	routes    []*route
	m         *Metrics
	log       *slog.Logger
	onFailure FailureFunc
	spool     *Spool // nil: no spool
	wg        sync.WaitGroup
	closeOnce sync.Once

	// mu guards closed against Accept racing with Close: a send on a closed
	// queue would panic.
	mu     sync.RWMutex
	closed bool
}

type route struct {
	cfg     RouteConfig
	b       Backend
	queue   chan *Event
	depth   *metrics.Gauge
	full    *metrics.Counter
	failed  *metrics.Counter
	latency *metrics.Histogram
	ok, bad *metrics.Counter // per backend, when it is not virtual (Virtual counts its members)
	spool   *RouteSpool      // nil without a spool

	spillAfter time.Duration

	spoolLog *rateLog
}

// NewRouter builds every route's backend. It dials nothing.
func NewRouter(cfgs []RouteConfig, d Deps, m *Metrics, onFailure FailureFunc) (*Router, error) {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	r := &Router{m: m, log: d.Log, onFailure: onFailure}
	for i, rc := range cfgs {
		rc.setDefaults(i)
		if err := rc.validate(); err != nil {
			r.closeBackends()
			return nil, fmt.Errorf("route %q: %w", rc.Name, err)
		}
		b, err := NewBackend(rc.To, d)
		if err != nil {
			r.closeBackends()
			return nil, fmt.Errorf("route %q: %w", rc.Name, err)
		}
		rt := &route{
			cfg:     rc,
			b:       b,
			queue:   make(chan *Event, rc.Queue),
			depth:   m.QueueDepth.With(rc.Name),
			full:    m.Undelivered.With(rc.Name, "queue_full"),
			failed:  m.Undelivered.With(rc.Name, "failed"),
			latency: m.Latency.With(rc.Name),

			spoolLog: newRateLog(d.Log, 10*time.Second),
		}
		if v, ok := b.(*Virtual); ok {
			v.SetFailoverTimeout(time.Duration(rc.FailoverTimeout))
			name := rc.Name
			v.Report = func(member string, err error) {
				if err != nil {
					m.Failed.With(name, member).Inc()
				} else {
					m.Delivered.With(name, member).Inc()
				}
			}
		}
		r.routes = append(r.routes, rt)
	}
	return r, nil
}

// Start starts one delivery worker per route.
func (r *Router) Start() {
	for _, rt := range r.routes {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.work(rt)
		}()
	}
}

// Accept queues ev on every matching route without blocking.
func (r *Router) Accept(ev *Event) { r.TryAccept(ev) }

// TryAccept is Accept that reports false, taking nothing, once the router
// is closed, so that a caller holding an old router can retry on the new.
func (r *Router) TryAccept(ev *Event) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return false
	}
	if ev.ack != nil {
		n := 0
		for _, rt := range r.routes {
			if rt.matches(ev.Name) {
				n++
			}
		}
		ev.expect(n)
	}
	matched := false
	for _, rt := range r.routes {
		if !rt.matches(ev.Name) {
			continue
		}
		matched = true
		select {
		case rt.queue <- ev:
			rt.depth.Add(1)
		default:
			r.overflow(rt, ev)
		}
	}
	if !matched {
		r.m.Unmatched.Inc()
	}
	return true
}

// overflow handles an event whose route queue is full. With a spool the
// worker moves the queue to disk at disk speed, so a full queue is brief:
// wait for room up to the route's timeout. Only the worker writes the
// spool, which is what keeps one input's events in order.
func (r *Router) overflow(rt *route, ev *Event) {
	if r.spool != nil {
		t := time.NewTimer(time.Duration(rt.cfg.Timeout))
		defer t.Stop()
		select {
		case rt.queue <- ev:
			rt.depth.Add(1)
			return
		case <-t.C:
		}
	}
	rt.full.Inc()
	ev.done(r.lose(rt, ev, fmt.Errorf("queue of %d events is full: the backend is slower than the events", cap(rt.queue))))
}

func (rt *route) matches(name string) bool {
	for _, p := range rt.cfg.Events {
		if p == name || p == "*" {
			return true
		}
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

func (r *Router) work(rt *route) {
	name := Redact(rt.cfg.To)
	if _, isVirtual := rt.b.(*Virtual); !isVirtual {
		rt.ok = r.m.Delivered.With(rt.cfg.Name, name)
		rt.bad = r.m.Failed.With(rt.cfg.Name, name)
	}
	if r.spool != nil {
		q, err := r.spool.Route(rt.cfg.Name)
		if err != nil {
			r.log.Error("spool unavailable for this route: undeliverable events will be lost", "route", rt.cfg.Name, "error", err)
		} else {
			rt.spool = q
			rt.spillAfter = time.Duration(r.spool.cfg.SpillAfter)
		}
	}
	// send hands one event to the backend and returns the wait for its
	// outcome: a Pipeliner keeps a window in flight, any other backend
	// delivers at once and the wait only reports.
	send := func(ctx context.Context, ev *Event) func() error {
		if err := rt.b.Deliver(ctx, ev); err != nil {
			return func() error { return err }
		}
		return delivered
	}
	window := 1
	if p, ok := rt.b.(Pipeliner); ok && rt.cfg.Window > 1 {
		send, window = p.Send, rt.cfg.Window
	}
	r.run(rt, send, window)
}

func noCancel() {}

// delivered is the outcome of every successful synchronous delivery, shared
// so that the hot path allocates no closure for it.
func delivered() error { return nil }

// outcome settles one delivery attempt: an error goes to the spool (or is
// lost), and the input learns the result.
func (r *Router) outcome(rt *route, ev *Event, err error) {
	if err != nil {
		rt.failed.Inc()
		err = r.fail(rt, ev, err)
	}
	ev.done(err)
}

// inflight is one event handed to the backend, waiting for its outcome;
// spill marks an event to be spooled in its turn, barrier a point the
// worker waits for.
type inflight struct {
	ev      *Event
	wait    func() error
	cancel  context.CancelFunc
	spill   bool
	barrier chan struct{}
}

// run is the route's worker. It sends in queue order, keeping up to window
// events in flight; one completer settles the outcomes in the same order,
// so it alone writes the spool while the worker is not replaying. With a
// window above one, events sent after one that fails may already be
// delivered when the failed one is replayed: a failure can reorder within
// one window.
func (r *Router) run(rt *route, send func(context.Context, *Event) func() error, window int) {
	// A backend that never waits (stdout:) needs no deadline: a timer per
	// event would be most of its cost.
	_, immediate := rt.b.(interface{ immediate() })
	fl := make(chan inflight, window-1)
	completed := make(chan struct{})
	go func() {
		defer close(completed)
		for it := range fl {
			switch {
			case it.barrier != nil:
				close(it.barrier)
			case it.spill:
				it.ev.done(r.toSpool(rt, it.ev, nil))
			default:
				err := it.wait()
				it.cancel()
				r.count(rt, it.ev, err)
				r.outcome(rt, it.ev, err)
			}
		}
	}()
	defer func() {
		close(fl)
		<-completed
	}()
	for {
		if rt.spool != nil && rt.spool.Len() > 0 {
			b := make(chan struct{})
			fl <- inflight{barrier: b}
			<-b
			if closed := r.replay(rt); closed {
				return
			}
			continue
		}
		ev, ok := <-rt.queue
		if !ok {
			return
		}
		rt.depth.Add(-1)
		if rt.spool != nil && time.Since(ev.Received) > rt.spillAfter {
			// The queue lags behind the backend: keep the events on disk
			// and answer the proxy now instead of after its timeout.
			fl <- inflight{ev: ev, spill: true}
			continue
		}
		ctx, cancel := context.Background(), context.CancelFunc(noCancel)
		if !immediate {
			ctx, cancel = context.WithTimeout(ctx, time.Duration(rt.cfg.Timeout))
		}
		fl <- inflight{ev: ev, wait: send(ctx, ev), cancel: cancel}
		if len(rt.queue) == 0 {
			r.flush(rt)
		}
	}
}

// deliver makes one attempt with the route's timeout and counts it.
func (r *Router) deliver(rt *route, ev *Event) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rt.cfg.Timeout))
	err := rt.b.Deliver(ctx, ev)
	cancel()
	r.count(rt, ev, err)
	return err
}

// count records one attempt's latency and outcome.
func (r *Router) count(rt *route, ev *Event, err error) {
	rt.latency.Since(ev.Received)
	if rt.ok != nil {
		if err != nil {
			rt.bad.Inc()
		} else {
			rt.ok.Inc()
		}
	}
}

func (r *Router) flush(rt *route) {
	if f, ok := rt.b.(flusher); ok {
		if err := f.Flush(); err != nil {
			r.log.Warn("flush failed", "route", rt.cfg.Name, "error", err)
		}
	}
}

// replay delivers the spool in order until it is empty. While it is not,
// new events join its tail instead of overtaking it, so that one input's
// events keep their order. It reports true when the queue was closed (the
// router is shutting down); what is left stays on disk for the next start.
func (r *Router) replay(rt *route) (closed bool) {
	retry := time.Duration(r.spool.cfg.Retry)
	wait := time.NewTimer(0)
	defer wait.Stop()
	<-wait.C
	for {
		// Everything queued goes behind what is spooled.
		for {
			select {
			case ev, ok := <-rt.queue:
				if !ok {
					r.flush(rt)
					return true
				}
				rt.depth.Add(-1)
				ev.done(r.toSpool(rt, ev, nil))
				continue
			default:
			}
			break
		}
		ev, ok := rt.spool.Peek()
		if !ok {
			r.flush(rt)
			r.log.Info("spool replayed; delivering directly again", "route", rt.cfg.Name)
			return false
		}
		if err := r.deliver(rt, ev); err == nil {
			rt.spool.Pop()
			continue
		}
		// The head still fails: wait, taking new events into the spool.
		wait.Reset(retry)
		for waiting := true; waiting; {
			select {
			case ev, ok := <-rt.queue:
				if !ok {
					return true
				}
				rt.depth.Add(-1)
				ev.done(r.toSpool(rt, ev, nil))
			case <-wait.C:
				waiting = false
			}
		}
	}
}

// toSpool appends ev to the route's spool; nil means it is kept.
func (r *Router) toSpool(rt *route, ev *Event, cause error) error {
	if err := rt.spool.Append(ev); err != nil {
		r.log.Error("event lost: the spool did not take it", "route", rt.cfg.Name, "event", ev.Name, "error", err, "delivery_error", cause)
		if cause != nil {
			return fmt.Errorf("%w; spool: %w", cause, err)
		}
		return err
	}
	return nil
}

// fail hands an undeliverable event to the failure seam; it returns the
// error the event ends with (nil when the seam kept it).
func (r *Router) fail(rt *route, ev *Event, err error) error {
	if rt.spool != nil {
		if serr := r.toSpool(rt, ev, err); serr != nil {
			return serr
		}
		rt.spoolLog.Warn("backend failed; events go to the spool and are replayed in order when it recovers", "route", rt.cfg.Name, "event", ev.Name, "error", err)
		return nil
	}
	return r.lose(rt, ev, err)
}

// lose reports an event that is gone.
func (r *Router) lose(rt *route, ev *Event, err error) error {
	if r.onFailure != nil {
		return r.onFailure(rt.cfg.Name, ev, err)
	}
	rt.spoolLog.Warn("event not delivered", "route", rt.cfg.Name, "event", ev.Name, "error", err)
	return err
}

// Close stops accepting, lets each route drain its queue until ctx ends,
// and closes the backends. Accept must not be called after Close.
func (r *Router) Close(ctx context.Context) error {
	var err error
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		for _, rt := range r.routes {
			close(rt.queue)
		}
		done := make(chan struct{})
		go func() { r.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = fmt.Errorf("routes did not drain: %w", ctx.Err())
		}
		if cerr := r.closeBackends(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	})
	return err
}

// RouteStatus is one route as the status page shows it.
type RouteStatus struct {
	Name        string   `json:"name"`
	Events      []string `json:"events"`
	To          string   `json:"to"` // redacted
	Queued      int      `json:"queued"`
	Spooled     int      `json:"spooled"`
	Failed      uint64   `json:"undelivered"`
	QueueFull   uint64   `json:"queue_full"`
	SpoolActive bool     `json:"replaying"`
}

// Status describes every route.
func (r *Router) Status() []RouteStatus {
	out := make([]RouteStatus, 0, len(r.routes))
	for _, rt := range r.routes {
		st := RouteStatus{Name: rt.cfg.Name, Events: rt.cfg.Events, To: Redact(rt.cfg.To), Queued: len(rt.queue),
			Failed: rt.failed.Value(), QueueFull: rt.full.Value()}
		if r.spool != nil {
			if q, err := r.spool.Route(rt.cfg.Name); err == nil {
				st.Spooled = q.Len()
				st.SpoolActive = st.Spooled > 0
			}
		}
		out = append(out, st)
	}
	return out
}

// Reopen reopens the files of every backend that keeps some open
// (flatstore), for logrotate: SIGHUP calls it.
func (r *Router) Reopen() error {
	var errs []error
	for _, rt := range r.routes {
		if err := ReopenBackend(rt.b); err != nil {
			errs = append(errs, fmt.Errorf("route %q: %w", rt.cfg.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Router) closeBackends() error {
	var errs []error
	for _, rt := range r.routes {
		errs = append(errs, rt.b.Close())
	}
	return errors.Join(errs...)
}
