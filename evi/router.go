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

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
)

// RouteConfig is one [[route]]: which events go to which subscriber.
type RouteConfig struct {
	Name            string          `toml:"name"`             // label in metrics and logs; default routeN
	Events          []string        `toml:"events"`           // exact names or globs (E_UL_*); default ["*"]
	To              string          `toml:"to"`               // an OpenSIPS socket string, virtual: included
	Queue           int             `toml:"queue"`            // events waiting for delivery; default 10000
	Timeout         config.Duration `toml:"timeout"`          // per delivery attempt; default 5s
	FailoverTimeout config.Duration `toml:"failover_timeout"` // FAILOVER's skip window; default 30s
	// Window is how many events may wait for their outcome at once on a
	// backend that can pipeline (rabbitmq: publisher confirms); 1 delivers
	// one at a time. Default 128.
	Window int `toml:"window"`
}

const (
	defaultQueue   = 10000
	defaultTimeout = 5 * time.Second
)

// Limits that keep a config from costing more memory than a sidecar may
// take: a queued event holds its notification (about 0.5 KB for a
// registration), a route a worker, a completer and its backend's
// connections, and a window its slots up front.
const (
	MaxQueue  = 1_000_000 // events per route: about 0.5 GB of registrations when full
	MaxRoutes = 1000
	MaxWindow = 10_000
)

// WithDefaults fills in every unset key but name, which is routeN after the
// route's place in the file (NewRouter and CheckRoutes give it).
func (rc RouteConfig) WithDefaults() RouteConfig {
	if len(rc.Events) == 0 {
		rc.Events = []string{"*"}
	}
	if rc.Queue == 0 {
		rc.Queue = defaultQueue
	}
	if rc.Timeout == 0 {
		rc.Timeout = config.Duration(defaultTimeout)
	}
	if rc.FailoverTimeout == 0 {
		rc.FailoverTimeout = config.Duration(DefaultFailoverTimeout)
	}
	if rc.Window == 0 {
		rc.Window = 128
	}
	return rc
}

// named is rc with defaults and its name, for the i-th route.
func (rc RouteConfig) named(i int) RouteConfig {
	rc = rc.WithDefaults()
	if rc.Name == "" {
		rc.Name = "route" + strconv.Itoa(i+1)
	}
	return rc
}

// Check reports what is wrong with one [[route]] (keys relative to p),
// its socket string included, without opening anything.
func (rc RouteConfig) Check(p *config.Problems) {
	rc = rc.WithDefaults()
	if rc.To == "" {
		p.Add("to", `empty: name a socket, e.g. to = "stdout:" or "virtual:FAILOVER udp:127.0.0.1:9000 flatstore:/var/log/sipside/events.log"`)
	} else if b, err := NewBackend(rc.To, Deps{}); err != nil {
		p.AddErr("to", err)
	} else {
		b.Close()
	}
	for _, pat := range rc.Events {
		if _, err := path.Match(pat, ""); err != nil {
			p.Add("events", "bad pattern %q: %v", pat, err)
		}
	}
	if rc.Queue < 0 || rc.Queue > MaxQueue {
		p.Add("queue", "%d: want 1 to %d events (a full queue holds every event in memory; with a [spool], events older than spill_after go to disk anyway)", rc.Queue, MaxQueue)
	}
	if rc.Window < 0 || rc.Window > MaxWindow {
		p.Add("window", "%d: want 1 to %d events in flight", rc.Window, MaxWindow)
	}
	if rc.Timeout < 0 {
		p.Add("timeout", "%v: must not be negative", rc.Timeout)
	}
	if rc.FailoverTimeout < 0 {
		p.Add("failover_timeout", "%v: must not be negative", rc.FailoverTimeout)
	}
}

// CheckRoutes reports what is wrong with every [[route]] (keys route[i].…).
func CheckRoutes(routes []RouteConfig, p *config.Problems) {
	if len(routes) > MaxRoutes {
		p.Index("route", MaxRoutes).Add("", "%d routes: at most %d (each runs its own workers and connections); merge routes with event globs or virtual: sockets", len(routes), MaxRoutes)
		return
	}
	names := map[string]int{}
	for i, rc := range routes {
		rp := p.Index("route", i)
		rc.Check(rp)
		name := rc.named(i).Name
		if j, dup := names[name]; dup {
			rp.Add("name", "%q is also route[%d]'s name: give each route its own (metrics and the spool are per name)", name, j)
		}
		names[name] = i
	}
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
	stopWatch chan struct{} // closed to stop the spill watchdog
	watchDone chan struct{}
	closeOnce sync.Once

	// mu guards closed against Accept racing with Close: a send on a closed
	// queue would panic.
	mu     sync.RWMutex
	closed bool
}

type route struct {
	cfg     RouteConfig
	b       Backend
	depth   *metrics.Gauge
	full    *metrics.Counter
	failed  *metrics.Counter
	latency *metrics.Histogram
	ok, bad *metrics.Counter // per backend, when it is not virtual (Virtual counts its members)
	spool   *RouteSpool      // nil without a spool
	window  int

	// spoolMu orders every write to the route's spool: whoever holds it
	// decides what goes to disk next (the worker, the completer or the
	// spill watchdog), so that the spool keeps the order events arrived in.
	// Taken before mu, never after it.
	spoolMu sync.Mutex

	// mu guards the route's unconfirmed events: the queue and the flight.
	mu     sync.Mutex
	queue  eventRing
	flight []flying // ring of window entries: handed to the backend, in send order
	fhead  int
	fn     int
	// behind: the spool holds events, so new ones must go behind them; the
	// worker sends nothing from the queue until it has replayed the spool.
	behind bool
	closed bool
	// waitSettle: the worker waits for an outcome (window full, or the
	// flight to drain before a replay); the completer rings settled.
	waitSettle bool
	wake       chan struct{} // cap 1: the worker's doorbell for new events and Close
	settled    chan struct{} // cap 1
	room       chan struct{} // non-nil while Accept waits for room; closed when there is

	spoolLog *rateLog
}

// flying is one event the backend has, waiting for its outcome.
type flying struct {
	ev *Event
	// spilling: the watchdog is writing it ahead to the spool right now;
	// spilled: it is on disk (ref) and the input has its answer, so its
	// outcome only tells the spool whether to replay it.
	spilling, spilled bool
	ref               SpoolRef
}

// NewRouter builds every route's backend. It dials nothing.
func NewRouter(cfgs []RouteConfig, d Deps, m *Metrics, onFailure FailureFunc) (*Router, error) {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	r := &Router{m: m, log: d.Log, onFailure: onFailure}
	var problems config.Problems
	CheckRoutes(cfgs, &problems)
	if err := problems.Err(); err != nil {
		return nil, err
	}
	for i, rc := range cfgs {
		rc = rc.named(i)
		b, err := NewBackend(rc.To, d)
		if err != nil {
			r.closeBackends()
			return nil, fmt.Errorf("route %q: %w", rc.Name, err)
		}
		rt := &route{
			cfg:     rc,
			b:       b,
			window:  1,
			wake:    make(chan struct{}, 1),
			settled: make(chan struct{}, 1),
			depth:   m.QueueDepth.With(rc.Name),
			full:    m.Undelivered.With(rc.Name, "queue_full"),
			failed:  m.Undelivered.With(rc.Name, "failed"),
			latency: m.Latency.With(rc.Name),

			spoolLog: newRateLog(d.Log, 10*time.Second),
		}
		m.QueueLimit.With(rc.Name).Set(float64(rc.Queue))
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

// Start opens each route's spool and starts one delivery worker per route,
// and the spill watchdog when there is a spool.
func (r *Router) Start() {
	for _, rt := range r.routes {
		if _, ok := rt.b.(Pipeliner); ok && rt.cfg.Window > 1 {
			rt.window = rt.cfg.Window
		}
		rt.flight = make([]flying, rt.window)
		if r.spool == nil {
			continue
		}
		q, err := r.spool.Route(rt.cfg.Name)
		if err != nil {
			r.log.Error("spool unavailable for this route: undeliverable events will be lost", "route", rt.cfg.Name, "error", err)
			continue
		}
		rt.spool = q
		rt.behind = q.Len() > 0
	}
	for _, rt := range r.routes {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.work(rt)
		}()
	}
	if r.spool != nil {
		r.stopWatch = make(chan struct{})
		r.watchDone = make(chan struct{})
		go r.watch()
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
		if !rt.push(ev) {
			r.overflow(rt, ev)
		}
	}
	if !matched {
		r.m.Unmatched.Inc()
	}
	return true
}

// push queues ev unless the queue is full; it wakes the worker when the
// queue was empty (otherwise the worker is busy and will look again).
func (rt *route) push(ev *Event) bool {
	rt.mu.Lock()
	if rt.queue.len() >= rt.cfg.Queue {
		rt.mu.Unlock()
		return false
	}
	rt.queue.push(ev)
	first := rt.queue.len() == 1
	rt.mu.Unlock()
	rt.depth.Add(1)
	if first {
		ring(rt.wake)
	}
	return true
}

// ring rings a doorbell of capacity one without blocking.
func ring(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// roomLocked is told that events left the queue: an Accept waiting for
// room may retry.
func (rt *route) roomLocked() {
	if rt.room != nil {
		close(rt.room)
		rt.room = nil
	}
}

// overflow handles an event whose route queue is full. With a spool the
// watchdog moves the queue to disk at disk speed, so a full queue is brief:
// wait for room up to the route's timeout.
func (r *Router) overflow(rt *route, ev *Event) {
	if rt.spool != nil {
		t := time.NewTimer(time.Duration(rt.cfg.Timeout))
		defer t.Stop()
		for {
			rt.mu.Lock()
			if rt.room == nil {
				rt.room = make(chan struct{})
			}
			room := rt.room
			rt.mu.Unlock()
			select {
			case <-room:
				if rt.push(ev) {
					return
				}
				continue
			case <-t.C:
			}
			break
		}
	}
	rt.full.Inc()
	ev.done(r.lose(rt, ev, fmt.Errorf("queue of %d events is full: the backend is slower than the events (raise the route's queue, or configure a [spool])", rt.cfg.Queue)))
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
	// send hands one event to the backend and returns the wait for its
	// outcome: a Pipeliner keeps a window in flight, any other backend
	// delivers at once and the wait only reports.
	send := func(ctx context.Context, ev *Event) func() error {
		if err := rt.b.Deliver(ctx, ev); err != nil {
			return func() error { return err }
		}
		return delivered
	}
	if p, ok := rt.b.(Pipeliner); ok && rt.window > 1 {
		send = p.Send
	}
	r.run(rt, send)
}

func noCancel() {}

// delivered is the outcome of every successful synchronous delivery, shared
// so that the hot path allocates no closure for it.
func delivered() error { return nil }

// inflight is one event handed to the backend and the wait for its outcome.
type inflight struct {
	ev     *Event
	wait   func() error
	cancel context.CancelFunc
}

// run is the route's worker. It sends in queue order, keeping up to window
// events in flight; one completer settles the outcomes in the same order.
// While the spool holds events the worker replays them before it sends
// anything new. It never writes the spool without spoolMu, and neither do
// the completer and the spill watchdog, which is what keeps the order when
// the watchdog moves events to disk from under a blocked delivery.
//
// With a window above one, events sent after one that fails may already be
// delivered when the failed one is replayed: a failure can reorder within
// one window.
func (r *Router) run(rt *route, send func(context.Context, *Event) func() error) {
	// A backend that never waits (stdout:) needs no deadline: a timer per
	// event would be most of its cost.
	_, immediate := rt.b.(interface{ immediate() })
	fl := make(chan inflight, rt.window)
	completed := make(chan struct{})
	go func() {
		defer close(completed)
		for it := range fl {
			err := it.wait()
			it.cancel()
			r.count(rt, it.ev, err)
			r.settle(rt, err)
		}
	}()
	defer func() {
		close(fl)
		<-completed
	}()
	threshold := r.spillThreshold()
	unflushed := false
	for {
		rt.mu.Lock()
		switch {
		case rt.behind:
			rt.mu.Unlock()
			// What is in flight settles first: its outcome decides whether
			// its spooled copy is replayed.
			r.awaitSettled(rt, 1)
			if closed := r.replay(rt); closed {
				return
			}
			continue
		case rt.queue.len() == 0:
			closed := rt.closed
			rt.mu.Unlock()
			if closed {
				return
			}
			if unflushed {
				// The watchdog took the queue from under a send.
				r.flush(rt)
				unflushed = false
			}
			<-rt.wake
			continue
		case rt.fn >= rt.window:
			rt.mu.Unlock()
			r.awaitSettled(rt, rt.window)
			continue
		case rt.spool != nil && time.Since(rt.queue.peek().Received) > threshold:
			// The queue lags behind the backend: keep the events on disk
			// and answer the proxy now instead of after its timeout.
			rt.mu.Unlock()
			r.spill(rt)
			continue
		}
		ev := rt.queue.pop()
		rt.roomLocked()
		rt.flight[(rt.fhead+rt.fn)%len(rt.flight)] = flying{ev: ev}
		rt.fn++
		more := rt.queue.len() > 0
		rt.mu.Unlock()
		rt.depth.Add(-1)
		ctx, cancel := context.Background(), context.CancelFunc(noCancel)
		if !immediate {
			ctx, cancel = context.WithTimeout(ctx, time.Duration(rt.cfg.Timeout))
		}
		fl <- inflight{ev: ev, wait: send(ctx, ev), cancel: cancel}
		unflushed = more
		if !more {
			r.flush(rt)
		}
	}
}

// awaitSettled waits until fewer than n events are in flight.
func (r *Router) awaitSettled(rt *route, n int) {
	rt.mu.Lock()
	for rt.fn >= n {
		rt.waitSettle = true
		rt.mu.Unlock()
		<-rt.settled
		rt.mu.Lock()
	}
	rt.waitSettle = false
	rt.mu.Unlock()
}

// settle takes the outcome of the oldest event in flight.
func (r *Router) settle(rt *route, err error) {
	rt.mu.Lock()
	if f := &rt.flight[rt.fhead]; f.spilling || err != nil && !f.spilled {
		// The watchdog is writing it, or it must go to the spool now:
		// either way the spool's order is at stake, so take its lock.
		rt.mu.Unlock()
		rt.spoolMu.Lock()
		defer rt.spoolMu.Unlock()
		rt.mu.Lock()
	}
	f := rt.flight[rt.fhead]
	rt.flight[rt.fhead] = flying{}
	rt.fhead = (rt.fhead + 1) % len(rt.flight)
	rt.fn--
	// A rejected event fails the same way however often it is tried: kept,
	// it would only hold up the spool behind it.
	keep := err != nil && !f.spilled && rt.spool != nil && !IsRejected(err)
	if keep {
		rt.behind = true
		ring(rt.wake)
	}
	if rt.waitSettle {
		ring(rt.settled)
	}
	rt.mu.Unlock()
	switch {
	case f.spilled && err == nil:
		rt.spool.MarkDone(f.ref)
	case f.spilled:
		// Already on disk and answered: the replay delivers it in its turn.
	case err == nil:
		f.ev.done(nil)
	case IsRejected(err):
		// Logged by the backend, with the event and what it lacks.
		rt.failed.Inc()
		f.ev.done(err)
	case keep:
		rt.spoolLog.Warn("backend failed; events go to the spool and are replayed in order when it recovers", "route", rt.cfg.Name, "event", f.ev.Name, "error", err)
		f.ev.done(r.keepOrLose(rt, f.ev, err))
	default:
		err = r.lose(rt, f.ev, err)
		if err != nil {
			rt.failed.Inc()
		}
		f.ev.done(err)
	}
}

// spillThreshold is the age at which the worker or the watchdog writes an
// unconfirmed event to the spool: spill_after less one watchdog period, so
// that the watchdog, looking once a period, has every event on disk within
// spill_after of its arrival.
func (r *Router) spillThreshold() time.Duration {
	if r.spool == nil {
		return 0
	}
	sa := time.Duration(r.spool.cfg.SpillAfter)
	return sa - watchPeriod(sa)
}

func watchPeriod(spillAfter time.Duration) time.Duration {
	return max(spillAfter/4, time.Millisecond)
}

// watch is the spill watchdog. A worker blocked in a delivery (a backend
// dialling, blocked or hung, or a full window waiting for confirms) takes
// nothing off its queue and its events in flight are only in memory; the
// watchdog looks at every route once a period and, when a route's oldest
// unconfirmed event is older than the threshold, writes the route's
// unconfirmed events to its spool: those in flight ahead (a later success
// marks them done), those queued for good.
func (r *Router) watch() {
	defer close(r.watchDone)
	sa := time.Duration(r.spool.cfg.SpillAfter)
	threshold := r.spillThreshold()
	t := time.NewTicker(watchPeriod(sa))
	defer t.Stop()
	for {
		select {
		case <-r.stopWatch:
			return
		case <-t.C:
		}
		for _, rt := range r.routes {
			if rt.spool != nil && rt.overdue(threshold) {
				r.spill(rt)
			}
		}
	}
}

// overdue tells whether the route's oldest event that is neither confirmed
// nor on disk arrived more than age ago.
func (rt *route) overdue(age time.Duration) bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for i := 0; i < rt.fn; i++ {
		if f := &rt.flight[(rt.fhead+i)%len(rt.flight)]; !f.spilled && !f.spilling {
			return time.Since(f.ev.Received) > age
		}
	}
	return rt.queue.len() > 0 && time.Since(rt.queue.peek().Received) > age
}

// spill writes every unconfirmed event of the route that is not on disk
// yet to its spool, in order: first those in flight, ahead (their outcome
// is still to come), then the whole queue. The inputs get their answers
// now. From here on the worker replays the spool before it sends anything
// new.
func (r *Router) spill(rt *route) {
	rt.spoolMu.Lock()
	defer rt.spoolMu.Unlock()
	rt.mu.Lock()
	var ahead []int // flight offsets from fhead
	for i := 0; i < rt.fn; i++ {
		if f := &rt.flight[(rt.fhead+i)%len(rt.flight)]; !f.spilled {
			f.spilling = true
			ahead = append(ahead, i)
		}
	}
	queued := rt.queue.takeAll()
	rt.roomLocked()
	if len(ahead) > 0 || len(queued) > 0 {
		rt.behind = true
		ring(rt.wake) // a worker asleep on an empty queue must replay
	}
	// Entries in flight stay where they are while spoolMu is held: settle
	// takes spoolMu before it removes one that is spilling.
	evs := make([]*Event, len(ahead))
	for k, i := range ahead {
		evs[k] = rt.flight[(rt.fhead+i)%len(rt.flight)].ev
	}
	rt.mu.Unlock()
	rt.depth.Add(-float64(len(queued)))

	refs := make([]SpoolRef, len(evs))
	errs := make([]error, len(evs))
	for k, ev := range evs {
		refs[k], errs[k] = rt.spool.AppendAhead(ev)
	}
	rt.mu.Lock()
	for k, i := range ahead {
		f := &rt.flight[(rt.fhead+i)%len(rt.flight)]
		f.spilling = false
		if errs[k] == nil {
			f.spilled, f.ref = true, refs[k]
		}
	}
	rt.mu.Unlock()
	for k, ev := range evs {
		if errs[k] == nil {
			ev.done(nil)
		} else {
			// Not on disk: its outcome decides, as if never spilled.
			r.log.Error("could not write an event in flight to the spool; it is kept in memory until its outcome", "route", rt.cfg.Name, "event", ev.Name, "error", errs[k])
		}
	}
	for _, ev := range queued {
		ev.done(r.keepOrLose(rt, ev, nil))
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
// events keep their order. It reports true when the router is closing;
// what is left stays on disk for the next start.
func (r *Router) replay(rt *route) (closed bool) {
	retry := time.Duration(r.spool.cfg.Retry)
	wait := time.NewTimer(0)
	defer wait.Stop()
	<-wait.C
	for {
		// Everything queued goes behind what is spooled.
		if r.spillQueue(rt) {
			r.flush(rt)
			return true
		}
		ev, ok := rt.spool.Peek()
		if !ok {
			if r.caughtUp(rt) {
				r.flush(rt)
				r.log.Info("spool replayed; delivering directly again", "route", rt.cfg.Name)
				return false
			}
			continue
		}
		if err := r.deliver(rt, ev); err == nil {
			rt.spool.Pop()
			continue
		} else if IsRejected(err) {
			// It can never be delivered: count it and let the rest through.
			rt.failed.Inc()
			rt.spoolLog.Warn("spooled event rejected by the backend; dropped from the spool", "route", rt.cfg.Name, "event", ev.Name, "error", err)
			rt.spool.Pop()
			continue
		}
		// The head still fails: wait, taking new events into the spool.
		wait.Reset(retry)
		for waiting := true; waiting; {
			select {
			case <-rt.wake:
				if r.spillQueue(rt) {
					return true
				}
			case <-wait.C:
				waiting = false
			}
		}
	}
}

// spillQueue moves the queue to the spool; it reports whether the router
// is closing.
func (r *Router) spillQueue(rt *route) (closed bool) {
	rt.mu.Lock()
	n, closed := rt.queue.len(), rt.closed
	rt.mu.Unlock()
	if n > 0 {
		r.spill(rt)
	}
	return closed
}

// caughtUp ends a replay when the spool is empty: new events may go
// straight to the backend again.
func (r *Router) caughtUp(rt *route) bool {
	rt.spoolMu.Lock()
	defer rt.spoolMu.Unlock()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.spool.Len() > 0 {
		return false
	}
	rt.behind = false
	return true
}

// keepOrLose appends ev to the route's spool (the caller holds spoolMu);
// nil means it is kept. cause is the delivery error, if there was one.
func (r *Router) keepOrLose(rt *route, ev *Event, cause error) error {
	if err := rt.spool.Append(ev); err != nil {
		r.log.Error("event lost: the spool did not take it", "route", rt.cfg.Name, "event", ev.Name, "error", err, "delivery_error", cause)
		rt.failed.Inc()
		if cause != nil {
			return fmt.Errorf("%w; spool: %w", cause, err)
		}
		return err
	}
	return nil
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
			rt.mu.Lock()
			rt.closed = true
			rt.mu.Unlock()
			ring(rt.wake)
		}
		done := make(chan struct{})
		go func() { r.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			err = fmt.Errorf("routes did not drain: %w", ctx.Err())
			// A route still busy (a hung backend) leaves what it holds on
			// disk for the next start, not only in memory.
			for _, rt := range r.routes {
				if rt.spool != nil {
					r.spill(rt)
				}
			}
		}
		if r.stopWatch != nil {
			// Stopped only now: while a route drains, a hung backend must
			// not keep its events in memory only.
			close(r.stopWatch)
			<-r.watchDone
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
	// SpooledTotal and Replayed count events written to and replayed from
	// the route's spool since start.
	SpooledTotal uint64 `json:"spooled_total"`
	Replayed     uint64 `json:"replayed_total"`
	// Policy is the virtual: policy ("" for a plain backend); Backends are
	// its members in order, or the one backend.
	Policy   string          `json:"policy,omitempty"`
	Backends []BackendStatus `json:"backends"`
}

// BackendStatus is one backend (or virtual member) of a route.
type BackendStatus struct {
	MemberStatus
	Delivered uint64 `json:"delivered"`
	Failed    uint64 `json:"failed"`
}

// Status describes every route.
func (r *Router) Status() []RouteStatus {
	out := make([]RouteStatus, 0, len(r.routes))
	for _, rt := range r.routes {
		rt.mu.Lock()
		queued := rt.queue.len()
		rt.mu.Unlock()
		st := RouteStatus{Name: rt.cfg.Name, Events: rt.cfg.Events, To: Redact(rt.cfg.To), Queued: queued,
			Failed: rt.failed.Value(), QueueFull: rt.full.Value()}
		if r.spool != nil {
			if q, err := r.spool.Route(rt.cfg.Name); err == nil {
				st.Spooled = q.Len()
				st.SpoolActive = st.Spooled > 0
				st.SpooledTotal, st.Replayed = q.spooledC.Value(), q.replayedC.Value()
			}
		}
		members := []MemberStatus{{Name: Redact(rt.cfg.To)}}
		if v, ok := rt.b.(*Virtual); ok {
			st.Policy, members = string(v.Policy()), v.Members()
		}
		for _, m := range members {
			st.Backends = append(st.Backends, BackendStatus{MemberStatus: m,
				Delivered: r.m.Delivered.With(rt.cfg.Name, m.Name).Value(), Failed: r.m.Failed.With(rt.cfg.Name, m.Name).Value()})
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
