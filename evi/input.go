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
func OpenInput(l Listen, m *Metrics, log *slog.Logger) (Input, error) {
	base := inputBase{
		name:     l.String(),
		received: m.Received.With(l.String()),
		invalid:  m.Invalid.With(l.String()),
		bad:      newRateLog(log.With("input", l.String()), time.Second),
	}
	switch l.Proto {
	case "udp", "unix":
		return openDatagramInput(l, base)
	default:
		return nil, fmt.Errorf("input %s: the %s input is not built yet in this version (udp and unix are)", l, l.Proto)
	}
}
