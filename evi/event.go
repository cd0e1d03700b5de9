// Package evi receives the proxy's events and re-dispatches them through
// virtual subscribers to real backends, as OpenSIPS's event_virtual does
// inside the proxy, but with each delivery's outcome known.
package evi

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipside/sipside/internal/jsonstr"
)

// Event is one event as the proxy raised it.
//
// Params is kept as the raw JSON text the proxy sent, never as a Go map:
// OpenSIPS 3.6.8 can send array params as an object with duplicate empty keys
// ({"":"a","":"b"}), and only the raw token stream preserves them in order.
type Event struct {
	Name     string    // the event name, e.g. E_UL_CONTACT_INSERT
	Params   []byte    // raw JSON of "params" (object or array); nil when absent
	Raw      []byte    // the whole notification as received; nil for events made in sipside
	Received time.Time // when sipside read it
	Source   string    // the input it came from, e.g. udp:127.0.0.1:8090

	ack *ackState // set by inputs whose sender waits for the outcome
}

// ackState calls fn once, when every route that took the event has its
// final outcome; the first error wins.
type ackState struct {
	n   atomic.Int32
	mu  sync.Mutex
	err error
	fn  func(error)
}

// OnDone asks for fn to be called once with the event's final outcome:
// nil when every matching route delivered it (or safely kept it for
// later), else the first error. Inputs whose sender waits for an answer
// (event_stream in reliable_mode) use it.
func (ev *Event) OnDone(fn func(error)) { ev.ack = &ackState{fn: fn} }

// expect announces n outcomes to come; with n == 0 the event is done.
func (ev *Event) expect(n int) {
	if ev.ack == nil {
		return
	}
	if n == 0 {
		ev.ack.fn(nil)
		return
	}
	ev.ack.n.Add(int32(n))
}

// refuse settles an event that no route took at all.
func (ev *Event) refuse(err error) {
	if ev.ack != nil {
		ev.ack.fn(err)
	}
}

// done records one route's final outcome.
func (ev *Event) done(err error) {
	a := ev.ack
	if a == nil {
		return
	}
	if err != nil {
		a.mu.Lock()
		if a.err == nil {
			a.err = err
		}
		a.mu.Unlock()
	}
	if a.n.Add(-1) == 0 {
		a.mu.Lock()
		err := a.err
		a.mu.Unlock()
		a.fn(err)
	}
}

// Pipeliner is a backend that can keep many deliveries in flight and still
// tell each one's outcome: Send hands ev over in call order and returns a
// function that waits, within ctx, for its outcome. The router uses it to
// keep a window of events in flight per route.
type Pipeliner interface {
	Send(ctx context.Context, ev *Event) (wait func() error)
}

// Backend delivers events to one destination and tells whether it worked.
// Deliver must honour ctx's deadline: a dead destination may slow its own
// delivery, never the whole pipeline.
type Backend interface {
	Deliver(ctx context.Context, ev *Event) error
	Close() error
}

// AppendJSONLine appends ev as one line of sipside's JSON-lines format:
// {"event":NAME,"params":PARAMS,"received":RFC3339Nano,"source":SOURCE}\n.
// params is copied byte for byte and left out when the proxy sent none.
func AppendJSONLine(dst []byte, ev *Event) []byte {
	dst = append(dst, `{"event":`...)
	dst = appendJSONString(dst, ev.Name)
	if ev.Params != nil {
		dst = append(dst, `,"params":`...)
		dst = append(dst, ev.Params...)
	}
	dst = append(dst, `,"received":"`...)
	dst = ev.Received.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","source":`...)
	dst = appendJSONString(dst, ev.Source)
	return append(dst, "}\n"...)
}

// appendJSONString quotes s for JSON without reflection; invalid UTF-8 is
// replaced by U+FFFD so that the line stays valid JSON.
func appendJSONString(dst []byte, s string) []byte { return jsonstr.Append(dst, s) }

// Notification returns the JSON-RPC notification OpenSIPS's event_datagram
// would send for ev: the original bytes when the event came from the proxy,
// else one built from Name and Params.
func (ev *Event) Notification() []byte {
	if ev.Raw != nil {
		return ev.Raw
	}
	b := make([]byte, 0, 48+len(ev.Name)+len(ev.Params))
	b = append(b, `{"jsonrpc":"2.0","method":`...)
	b = appendJSONString(b, ev.Name)
	if ev.Params != nil {
		b = append(b, `,"params":`...)
		b = append(b, ev.Params...)
	}
	return append(b, '}')
}
