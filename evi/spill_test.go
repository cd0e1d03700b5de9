package evi

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/testenv"
)

// silentListener accepts connections and never reads or answers: a hung
// receiver (a stopped process whose kernel still completes the handshake,
// a proxy that lost its upstream).
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// spillRouter is a router with a spool on dir whose events must be on disk
// within spillAfter; the route's own timeout is an hour, so that only the
// spill can put them there while a delivery hangs.
func spillRouter(t *testing.T, to string, spillAfter time.Duration) (*Router, *RouteSpool, *metrics.Registry) {
	t.Helper()
	reg := metrics.New()
	sp, err := NewSpool(SpoolConfig{Dir: t.TempDir(), SpillAfter: config.Duration(spillAfter), Retry: config.Duration(50 * time.Millisecond)}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRouter([]RouteConfig{{Name: "r", To: to, Timeout: config.Duration(time.Hour)}}, Deps{Metrics: reg}, NewMetrics(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.spool = sp
	r.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		r.Close(ctx) // a hung backend does not drain: that is the point
		sp.Close()
	})
	q, err := sp.Route("r")
	if err != nil {
		t.Fatal(err)
	}
	return r, q, reg
}

// answered counts the outcomes the inputs were given.
type answered struct {
	mu   sync.Mutex
	ok   int
	errs []error
}

func (a *answered) event(seq int) *Event {
	ev := &Event{Name: "E_SPILL", Params: []byte(fmt.Sprintf(`{"seq":%d}`, seq)), Received: time.Now(), Source: "test"}
	ev.OnDone(func(err error) {
		a.mu.Lock()
		defer a.mu.Unlock()
		if err != nil {
			a.errs = append(a.errs, err)
		} else {
			a.ok++
		}
	})
	return ev
}

func (a *answered) count() (int, []error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ok, append([]error(nil), a.errs...)
}

// A backend that accepts the connection and never answers holds the
// route's worker in its first delivery for the route's whole timeout (an
// hour here). The events queued behind it, and the one in flight, must be
// on disk and answered within spill_after all the same.
func TestSpillHungBackend(t *testing.T) {
	for _, tc := range []struct {
		name string
		to   func(addr string) string
	}{
		{"tcp reliable", func(a string) string { return "tcp:" + a + "?reliable" }},
		{"http", func(a string) string { return "http://" + a + "/events" }},
		{"xmlrpc", func(a string) string { return "xmlrpc:" + a + ":ev" }},
		// The AMQP handshake never comes: the dial itself hangs.
		{"rabbitmq", func(a string) string {
			h, p, _ := net.SplitHostPort(a)
			return "rabbitmq:guest:guest@" + h + ":" + p + "/q"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, q, _ := spillRouter(t, tc.to(silentListener(t)), 50*time.Millisecond)
			var a answered
			const n = 20
			for i := 0; i < n; i++ {
				r.Accept(a.event(i))
			}
			checkFor(t, 10*time.Second, fmt.Sprintf("all %d events on disk while the backend hangs", n), func() bool { return q.Len() == n })
			checkFor(t, 10*time.Second, "every event answered", func() bool { ok, errs := a.count(); return ok+len(errs) == n })
			if ok, errs := a.count(); ok != n {
				t.Errorf("%d answered ok, errors: %v", ok, errs)
			}
			// The spool holds them in arrival order.
			var got []string
			for i := 0; i < n; i++ {
				got = append(got, fmt.Sprintf(`{"seq":%d}`, i))
			}
			q.mu.Lock()
			var seen []string
			for _, sp := range q.pending[q.head:] {
				ev, err := q.readLocked(sp)
				if err != nil {
					t.Fatal(err)
				}
				seen = append(seen, string(ev.Params))
			}
			q.mu.Unlock()
			if strings.Join(seen, ",") != strings.Join(got, ",") {
				t.Errorf("spool holds %v, want %v", seen, got)
			}
		})
	}
}

// An event written ahead while its delivery hangs, and delivered after all,
// is not replayed; the events spilled behind it are, in order, once each.
func TestSpillLaterSuccess(t *testing.T) {
	release := make(chan struct{})
	p := newStreamPeer(t, func(id json.RawMessage) string {
		<-release
		return `{"jsonrpc":"2.0","result":"ok","id":` + string(id) + `}`
	})
	r, q, reg := spillRouter(t, "tcp:"+p.addr()+"?reliable", 50*time.Millisecond)
	var a answered
	for i := 0; i < 10; i++ {
		r.Accept(a.event(i))
	}
	checkFor(t, 10*time.Second, "the 10 events on disk", func() bool { return q.Len() == 10 })
	checkFor(t, 10*time.Second, "10 answers", func() bool { ok, _ := a.count(); return ok == 10 })
	close(release)
	checkFor(t, 10*time.Second, "the spool replayed", func() bool { return q.Len() == 0 && len(p.received()) >= 10 })
	for i := 10; i < 15; i++ {
		r.Accept(a.event(i))
	}
	checkFor(t, 10*time.Second, "15 events received", func() bool { return len(p.received()) >= 15 })
	var seqs []string
	for _, m := range p.received() {
		var v struct{ Params json.RawMessage }
		json.Unmarshal([]byte(m), &v)
		seqs = append(seqs, string(v.Params))
	}
	var want []string
	for i := 0; i < 15; i++ {
		want = append(want, fmt.Sprintf(`{"seq":%d}`, i))
	}
	if strings.Join(seqs, ",") != strings.Join(want, ",") {
		t.Errorf("received %v\nwant     %v", seqs, want)
	}
	if ok, errs := a.count(); ok != 15 || len(errs) > 0 {
		t.Errorf("answers: %d ok, errors %v", ok, errs)
	}
	var b strings.Builder
	reg.WriteTo(&b)
	if strings.Contains(b.String(), `sipside_events_undelivered_total{route="r"`) && !strings.Contains(b.String(), `sipside_events_undelivered_total{route="r",reason="failed"} 0`) {
		t.Errorf("undelivered counted:\n%s", b.String())
	}
}

// A spooled event is not an undelivered one: with every backend of the
// route down and a spool, sipside_events_undelivered_total stays 0 and
// sipside_spool_spooled_total counts; without a spool, the events are
// undelivered.
func TestSpooledIsNotUndelivered(t *testing.T) {
	refused := fmt.Sprintf("tcp:127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	for _, tc := range []struct {
		name                    string
		spool                   bool
		wantUndelivered, wantSp float64
	}{
		{"with a spool", true, 0, 5},
		{"without a spool", false, 5, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := metrics.New()
			m := NewMetrics(reg)
			r, err := NewRouter([]RouteConfig{{Name: "dead", To: refused}}, Deps{Metrics: reg}, m, nil)
			if err != nil {
				t.Fatal(err)
			}
			var sp *Spool
			if tc.spool {
				if sp, err = NewSpool(SpoolConfig{Dir: t.TempDir()}, reg, nil); err != nil {
					t.Fatal(err)
				}
				r.spool = sp
			}
			r.Start()
			var a answered
			for i := 0; i < 5; i++ {
				r.Accept(a.event(i))
			}
			checkFor(t, 10*time.Second, "every event settled", func() bool { ok, errs := a.count(); return ok+len(errs) == 5 })
			r.Close(context.Background())
			if sp != nil {
				sp.Close()
			}
			if got := float64(m.Undelivered.With("dead", "failed").Value()); got != tc.wantUndelivered {
				t.Errorf("sipside_events_undelivered_total{reason=failed} = %v, want %v", got, tc.wantUndelivered)
			}
			if tc.spool {
				if got := float64(sp.m.spooled.With("dead").Value()); got != tc.wantSp {
					t.Errorf("sipside_spool_spooled_total = %v, want %v", got, tc.wantSp)
				}
			}
		})
	}
}

// A route's queue costs memory as it fills, not what its limit could hold:
// a channel of capacity N allocated N slots at start.
func TestQueueAllocatedAsUsed(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r, err := NewRouter([]RouteConfig{{Name: "big", To: "stdout:", Queue: MaxQueue}}, Deps{}, NewMetrics(metrics.New()), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	defer r.Close(context.Background())
	runtime.ReadMemStats(&after)
	// A preallocated queue of MaxQueue pointers is 8 MB.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("a route with queue = %d allocated %d bytes before its first event", MaxQueue, grew)
	}
}

func TestEventRing(t *testing.T) {
	var q eventRing
	next, want := 0, 0
	ev := func(i int) *Event { return &Event{Name: fmt.Sprint(i)} }
	// Interleave pushes and pops across several growths and wraps.
	for round := 0; round < 50; round++ {
		for i := 0; i < round*7; i++ {
			q.push(ev(next))
			next++
		}
		for i := 0; i < round*5 && q.len() > 0; i++ {
			if got := q.pop().Name; got != fmt.Sprint(want) {
				t.Fatalf("pop = %s, want %d", got, want)
			}
			want++
		}
	}
	all := q.takeAll()
	for _, e := range all {
		if e.Name != fmt.Sprint(want) {
			t.Fatalf("takeAll gave %s, want %d", e.Name, want)
		}
		want++
	}
	if want != next || q.len() != 0 {
		t.Errorf("%d of %d events came out; %d left", want, next, q.len())
	}
}

// The spool directories of routes that are no longer configured: empty ones
// are deleted (at start and after a reload), ones that still hold events
// are kept.
func TestSpoolPrunesRemovedRoutes(t *testing.T) {
	dir := t.TempDir()
	exists := func(name string) bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }
	// Left by an earlier config: one empty, one with an event.
	old, _ := newTestSpool(t, dir, SpoolConfig{})
	old.Route("gone")
	q, _ := old.Route("stranded")
	q.Append(seqEvent(1))
	old.Close()

	refused := fmt.Sprintf("tcp:127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	cfg := Config{Spool: SpoolConfig{Dir: dir}, Routes: []RouteConfig{
		{Name: "keep", To: "stdout:"},
		{Name: "dropped", To: "stdout:"},
		{Name: "dead", To: refused},
	}}
	reg := metrics.New()
	p, err := NewPipeline(cfg, Deps{Metrics: reg}, NewMetrics(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		p.Run(ctx, time.Second)
	}()
	if exists("gone") || !exists("stranded") || !exists("keep") || !exists("dropped") {
		t.Fatalf("at start: gone %v (want deleted), stranded %v, keep %v, dropped %v (want kept)", exists("gone"), exists("stranded"), exists("keep"), exists("dropped"))
	}
	p.Accept(seqEvent(2))
	checkFor(t, 10*time.Second, "the event of the dead route in its spool", func() bool { return p.spool.m.spooled.With("dead").Value() == 1 })

	cfg.Routes = cfg.Routes[:1]
	if err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 15*time.Second, "the empty spool of the removed route deleted", func() bool { return !exists("dropped") })
	if !exists("dead") || !exists("stranded") || !exists("keep") {
		t.Errorf("after reload: dead %v, stranded %v (hold events), keep %v (configured): want all kept", exists("dead"), exists("stranded"), exists("keep"))
	}
}
