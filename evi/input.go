package evi

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Sink takes events from inputs. Accept must not block for long: inputs
// read sockets whose kernel buffers overflow while they wait.
type Sink interface {
	Accept(ev *Event)
}

// Input reads events from one socket until its context ends or it is closed.
type Input interface {
	Run(ctx context.Context, sink Sink) error
	Close() error
}

// OpenInput binds the socket l names, so that a bad address fails at start,
// not later inside Run.
func OpenInput(l Listen, ic InputConfig, d Deps, m *Metrics) (Input, error) {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base := inputBase{
		name:     l.String(),
		received: m.Received.With(l.String()),
		invalid:  m.Invalid.With(l.String()),
		bad:      newRateLog(log.With("input", l.String()), time.Second),
	}
	switch l.Proto {
	case "udp", "unix":
		return openDatagramInput(l, base)
	case "tcp":
		return openStreamInput(l, ic.WithDefaults(), base, log, m)
	case "stdin":
		if d.Stdin == nil {
			return nil, fmt.Errorf("input %s: this command has no stdin to read", l)
		}
		return &stdinInput{inputBase: base, r: d.Stdin, max: ic.WithDefaults().MaxFrame}, nil
	case "evapi":
		return newEvapiInput(l, ic.WithDefaults(), base, log), nil
	default:
		return nil, fmt.Errorf("input %s: unknown protocol %q", l, l.Proto)
	}
}
