package evi

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/sipside/sipside/internal/evapi"
)

// evapiInput connects to Kamailio's evapi server as a client and turns every
// netstring Kamailio sends (evapi_relay / evapi_async_relay in the routing
// script) into an event. It reconnects with backoff while Kamailio is down
// or restarting.
//
// Naming: a JSON object payload with a string "event" member is the event of
// that name (the evapi convention of the captures: {"event":"test","data":…});
// any other payload is E_EVAPI. Params is the whole payload when it is a JSON
// object or array, else the payload as a JSON string.
type evapiInput struct {
	inputBase
	addr     string
	maxFrame int
	log      *slog.Logger

	closed chan struct{}
}

func newEvapiInput(l Listen, ic InputConfig, base inputBase, log *slog.Logger) *evapiInput {
	return &evapiInput{inputBase: base, addr: l.Addr, maxFrame: ic.MaxFrame, log: log.With("input", l.String()), closed: make(chan struct{})}
}

func (in *evapiInput) Run(ctx context.Context, sink Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-in.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	r := evapi.Reader{Addr: in.addr, MaxFrame: in.maxFrame,
		Frame:     func(p []byte) { sink.Accept(in.event(p)) },
		Connected: func() { in.log.Info("connected to Kamailio evapi", "addr", in.addr) },
		DialFailed: func(err error, retry time.Duration) {
			in.bad.Warn("cannot connect to Kamailio evapi; retrying", "addr", in.addr, "error", err, "retry_in", retry)
		},
		Lost: func(err error) {
			in.log.Warn("Kamailio evapi connection lost; reconnecting", "addr", in.addr, "error", err)
		},
		BadFrame: func(err error) { in.reject(err, 0) },
	}
	r.Run(ctx)
	return nil
}

// event builds the event for one evapi payload (copied: p is reused).
func (in *evapiInput) event(p []byte) *Event {
	raw := append([]byte(nil), p...)
	ev := &Event{Name: "E_EVAPI", Received: time.Now(), Source: in.name}
	i := skipWS(raw, 0)
	if i < len(raw) && (raw[i] == '{' || raw[i] == '[') {
		if end, err := skipValue(raw, i, 0); err == nil && skipWS(raw, end) == len(raw) {
			ev.Params = raw[i:end]
			if raw[i] == '{' {
				if note, _, err := parseObject(raw[i:end], true); err == nil {
					if name, err := note.Name(); err == nil {
						ev.Name = name
					}
				}
			}
			in.received.Inc()
			return ev
		}
	}
	ev.Params = appendJSONString(nil, string(raw))
	in.received.Inc()
	return ev
}

func (in *evapiInput) Close() error {
	select {
	case <-in.closed:
	default:
		close(in.closed)
	}
	return nil
}

// String names the input.
func (in *evapiInput) String() string { return fmt.Sprintf("evapi:%s", in.addr) }
