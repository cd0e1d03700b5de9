package testenv_test

import (
	"context"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

// roundTrip declares a durable queue, publishes one persistent message with confirms and
// consumes it back.
func roundTrip(ctx context.Context, t *testing.T, url, queue, body string) {
	t.Helper()
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	conf, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, true, false,
		amqp.Publishing{Body: []byte(body), DeliveryMode: amqp.Persistent})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := conf.WaitContext(ctx); !ok || err != nil {
		t.Fatalf("publish not confirmed: ack=%v err=%v", ok, err)
	}
	msgs, err := ch.ConsumeWithContext(ctx, queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		if string(m.Body) != body {
			t.Errorf("consumed %q, want %q", m.Body, body)
		}
		if err := m.Ack(false); err != nil {
			t.Error(err)
		}
	case <-ctx.Done():
		t.Fatalf("no message on %s: %v", queue, ctx.Err())
	}
}

func TestRabbitMQ(t *testing.T) {
	r := testenv.SharedRabbitMQ(t)
	if !strings.HasPrefix(r.URL, "amqp://guest:guest@127.0.0.1:") {
		t.Errorf("URL = %q", r.URL)
	}
	if again := testenv.SharedRabbitMQ(t); again != r {
		t.Error("SharedRabbitMQ started a second node")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	roundTrip(ctx, t, r.URL, "testenv.q", "hello")

	out, err := r.Ctl(ctx, "list_queues", "name", "messages")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "testenv.q") {
		t.Errorf("list_queues does not show testenv.q:\n%s", out)
	}

	// Chaos: a graceful stop, a start on the same port with the durable queue still there,
	// then a crash and a start again.
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := amqp.DialConfig(r.URL, amqp.Config{Dial: amqp.DefaultDial(time.Second)}); err == nil {
		t.Fatal("AMQP still answers after Stop")
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	roundTrip(ctx, t, r.URL, "testenv.q", "after restart")
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if r.Running() {
		t.Fatal("still running after Kill")
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	roundTrip(ctx, t, r.URL, "testenv.q2", "after kill")
}
