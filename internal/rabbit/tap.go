package rabbit

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TapMessage is one message a tap received: what an operator's tool prints.
type TapMessage struct {
	Exchange      string
	RoutingKey    string
	ContentType   string
	CorrelationID string
	ReplyTo       string
	Body          []byte
}

// Tap watches an exchange the way an operator's tool does: a private,
// server-named queue bound with each key, auto-acked, gone when the tap ends.
// The exchange is only checked, never declared, so that a typo in a command
// line does not leave a new exchange on the broker. After a reconnect the
// queue is declared and bound again. state reports up and, when the broker
// refuses the exchange or a binding, the error.
func (m *Manager) Tap(ctx context.Context, exchange string, keys []string, out chan<- TapMessage, state func(up bool, err error)) {
	m.Go(ctx, Task{Name: m.cfg.Name, State: state, Run: func(ctx context.Context, s *Session, ch *amqp.Channel, up func()) error {
		return tapRun(ctx, s, ch, exchange, keys, out, up)
	}})
}

func tapRun(ctx context.Context, s *Session, ch *amqp.Channel, exchange string, keys []string, out chan<- TapMessage, up func()) error {
	if err := DeclareExchange(ctx, s.Conn, DeclarePassive, Exchange{Name: exchange}); err != nil {
		return err
	}
	q, err := DeclareQueue(ctx, s.Conn, ch, DeclareAuto, Queue{})
	if err != nil {
		return fmt.Errorf("declare a temporary queue: %w", err)
	}
	if exchange != "" {
		for _, k := range keys {
			if err := ch.QueueBind(q, k, exchange, false, nil); err != nil {
				return fmt.Errorf("bind to %q with %q: %w", exchange, k, err)
			}
		}
	}
	ds, err := ch.Consume(q, "", true, true, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}
	up()
	return ServeDeliveries(ctx, ch, ds, func(d amqp.Delivery) {
		msg := TapMessage{
			Exchange: d.Exchange, RoutingKey: d.RoutingKey, ContentType: d.ContentType,
			CorrelationID: d.CorrelationId, ReplyTo: d.ReplyTo, Body: d.Body,
		}
		select {
		case out <- msg:
		case <-ctx.Done():
		}
	})
}
