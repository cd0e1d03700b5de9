package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/evi"
	"github.com/sipside/sipside/kazoo"
)

// newDMQ builds the DMQ node of [dmq]: every cluster change becomes an
// event (E_DMQ_*) handed to accept, so routes can ship it anywhere, and
// dmq: routes write through the node. It is built before the pipeline
// (whose backends need it) and runs after it (whose Accept it needs).
func (d *daemon) newDMQ(cfg *Config, accept func(*evi.Event)) (*dmq.Node, error) {
	source := "dmq:" + cfg.DMQ.Listen
	for _, w := range cfg.DMQ.Warnings() {
		d.log.Warn("config: " + w)
	}
	node, err := dmq.New(cfg.DMQ, dmq.Options{Logger: d.log, Metrics: d.reg,
		OnChange: func(name string, params []byte) {
			accept(&evi.Event{Name: name, Params: params, Received: time.Now(), Source: source})
		}})
	if err != nil {
		return nil, fmt.Errorf("[dmq]: %w", err)
	}
	d.addPart(func() statusSection {
		sec := statusSection{Title: "DMQ nodes", Note: "this node: " + node.Self().String(),
			Head: []string{"node", "status", "seed", "last seen", "changed"}}
		for _, n := range node.Nodes() {
			name := n.Addr.String()
			if n.Local {
				name += " (sipside)"
			}
			sec.Rows = append(sec.Rows, []string{name, n.Status.String(), strconv.FormatBool(n.Seed), since(n.LastSeen), since(n.Changed)})
		}
		if h := node.HTable(); h != nil {
			sec.Note += fmt.Sprintf(" · htable cells mirrored: %d", h.Len())
		}
		return sec
	}, func() []string {
		select {
		case <-node.Joined():
			return nil
		default:
			return []string{"dmq: node " + node.Self().String() + " has not joined the bus yet (no DMQ node answered)"}
		}
	})
	return node, nil
}

// startAMQP builds the AMQP bridge of [amqp] and [jsonrpc]. Consumers with
// deliver = "events" hand messages to the pipeline and learn whether a
// route took them.
func (d *daemon) startAMQP(cfg *Config, pipe *evi.Pipeline) (*kazoo.Bridge, error) {
	br, err := kazoo.New(cfg.kazoo(), kazoo.Options{Logger: d.log, Metrics: d.reg, Version: version(),
		Events: func(ctx context.Context, name string, params []byte) error {
			ev := &evi.Event{Name: name, Params: params, Received: time.Now(), Source: "amqp"}
			done := make(chan error, 1)
			ev.OnDone(func(err error) { done <- err })
			pipe.Accept(ev)
			select {
			case err := <-done:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}})
	if err != nil {
		return nil, fmt.Errorf("[amqp]: %w", err)
	}
	brokers := cfg.kazoo().AMQP.Brokers
	d.addPart(func() statusSection {
		sec := statusSection{Title: "AMQP bridge", Head: []string{"kind", "name", "state", "detail"}}
		state := "connected"
		if !br.Connected() {
			state = "not connected"
			if err := br.LastError(); err != nil {
				state += "; last attempt: " + err.Error()
			}
		}
		sec.Note = fmt.Sprintf("%d broker(s) configured; %s", len(brokers), state)
		for kind, addr := range br.Addrs() {
			sec.Rows = append(sec.Rows, []string{"listener", kind, "listening", addr})
		}
		for _, c := range br.Consumers() {
			row := []string{"consumer", c.Name, "up", "queue " + c.Queue}
			if !c.Up {
				row[2], row[3] = "down", "connecting"
				if c.Err != nil {
					row[3] = c.Err.Error()
				}
			}
			sec.Rows = append(sec.Rows, row)
		}
		return sec
	}, func() []string {
		var out []string
		if !br.Connected() {
			msg := "amqp: no broker connected"
			if err := br.LastError(); err != nil {
				msg += " (" + err.Error() + ")"
			}
			out = append(out, msg)
		}
		for _, c := range br.Consumers() {
			if !c.Up {
				msg := "amqp: consumer " + c.Name + " is down"
				if c.Err != nil {
					msg += ": " + c.Err.Error()
				}
				out = append(out, msg)
			}
		}
		return out
	})
	return br, nil
}

func since(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}
