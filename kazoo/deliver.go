package kazoo

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sipside/sipside/internal/evapi"
	"github.com/sipside/sipside/mi"
)

// DefaultDeliverer builds the deliverer for a consume.deliver string:
// opensips:… (an mi target: MI raise_event) or evapi:HOST:PORT (Kamailio evapi).
func DefaultDeliverer(target string, opts Options) (Deliverer, error) {
	if err := checkDeliver(target); err != nil {
		return nil, err
	}
	if target == DeliverEvents {
		if opts.Events == nil {
			return nil, errors.New(`deliver = "events" needs sipside's event pipeline (kazoo.Options.Events), which only sipside run has`)
		}
		return eventsDeliverer(opts.Events), nil
	}
	if addr, ok := strings.CutPrefix(target, "evapi:"); ok {
		return NewEvapiDeliverer(addr), nil
	}
	c, err := mi.New(target, mi.Options{Metrics: opts.Metrics, Logger: opts.Logger})
	if err != nil {
		return nil, err
	}
	return &RaiseEventDeliverer{Client: c}, nil
}

// eventsDeliverer re-dispatches consumed messages through sipside's event routes.
type eventsDeliverer func(ctx context.Context, name string, params []byte) error

func (f eventsDeliverer) Deliver(ctx context.Context, m *Message) error {
	return f(ctx, m.Event, messageParams(m))
}

// messageParams is the params object of a consumed message as an event.
func messageParams(m *Message) []byte {
	p := append([]byte(nil), `{"body":`...)
	p = appendString(p, string(m.Body))
	p = append(p, `,"exchange":`...)
	p = appendString(p, m.Exchange)
	p = append(p, `,"routing_key":`...)
	p = appendString(p, m.RoutingKey)
	if m.AckID != "" {
		p = append(p, `,"id":`...)
		p = appendString(p, m.AckID)
	}
	return append(p, '}')
}

// MICaller is the part of mi.Client the OpenSIPS deliverer uses.
type MICaller interface {
	Call(ctx context.Context, method string, params any) (mi.Result, error)
}

// RaiseEventDeliverer raises the consumer's event in OpenSIPS with MI raise_event, so
// that event_route[E_…] runs. Like rabbitmq_consumer, the body arrives as the string
// param "body"; sipside adds exchange, routing_key and, in script ack mode, id.
type RaiseEventDeliverer struct {
	Client MICaller
}

// Deliver calls raise_event. OpenSIPS takes the params as a string holding a JSON
// object (a plain object is refused).
func (r *RaiseEventDeliverer) Deliver(ctx context.Context, m *Message) error {
	p := messageParams(m)
	_, err := r.Client.Call(ctx, "raise_event", mi.Named{{Name: "event", Value: m.Event}, {Name: "params", Value: string(p)}})
	if err != nil {
		return fmt.Errorf("raise_event %s: %w (is the event declared in the script, e.g. by an event_route[%s]?)", m.Event, err, m.Event)
	}
	return nil
}

// EvapiDeliverer writes each message as one netstring frame to Kamailio's evapi port,
// where event_route[evapi:message-received] sees it in $evapi(msg):
// {"event":E,"exchange":X,"routing_key":K,"id":ACKID,"body":BODY}, BODY as JSON when
// it is JSON, else as a string. evapi sends no acknowledgement: a message counts as
// delivered once written.
type EvapiDeliverer struct {
	w evapi.Writer
}

// NewEvapiDeliverer delivers to evapi's bind_addr HOST:PORT.
func NewEvapiDeliverer(addr string) *EvapiDeliverer {
	return &EvapiDeliverer{w: evapi.Writer{Addr: addr}}
}

// Deliver writes one frame, reconnecting once if the connection was lost.
func (e *EvapiDeliverer) Deliver(ctx context.Context, m *Message) error {
	p := append([]byte(nil), `{"event":`...)
	p = appendString(p, m.Event)
	p = append(p, `,"exchange":`...)
	p = appendString(p, m.Exchange)
	p = append(p, `,"routing_key":`...)
	p = appendString(p, m.RoutingKey)
	if m.AckID != "" {
		p = append(p, `,"id":`...)
		p = appendString(p, m.AckID)
	}
	p = append(p, `,"body":`...)
	p = append(p, jsonOrString(m.Body)...)
	p = append(p, '}')
	return e.w.Write(ctx, p, deliverTimeout)
}

// Close closes the evapi connection.
func (e *EvapiDeliverer) Close() error { return e.w.Close() }
