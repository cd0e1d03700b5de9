package evi

import (
	"context"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

// The rabbitmq: backend never declares: it publishes to exchanges as another
// application declared them (durable, with an alternate-exchange, predefined),
// where a declare with other flags would be refused.
func TestRabbitMQExistingExchanges(t *testing.T) {
	r := testenv.SharedRabbitMQ(t)
	q, ch := rabbitQueue(t, r.URL, false)
	if err := ch.ExchangeDeclare("evi_platform_alt", "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare("evi_platform", "topic", true, false, false, false, amqp.Table{"alternate-exchange": "evi_platform_alt"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ch.ExchangeDelete("evi_platform", false, false)
		ch.ExchangeDelete("evi_platform_alt", false, false)
	})
	for _, x := range []string{"evi_platform", "amq.topic"} {
		if err := ch.QueueBind(q, "ev.platform.#", x, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, x := range []string{"evi_platform", "amq.topic"} {
		t.Run(x, func(t *testing.T) {
			b, err := NewBackend(rabbitSocket(r.Host, r.Port, "exchange="+x, "ev.platform.tick"), Deps{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if err := b.Deliver(ctx, tickEvent); err != nil {
				t.Fatal(err)
			}
			if d := rabbitGet(t, ch, q); d.Exchange != x {
				t.Errorf("message came through %q, want %q", d.Exchange, x)
			}
		})
	}
}
