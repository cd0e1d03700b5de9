package testenv_test

import (
	"context"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

func dial(t *testing.T, url string) (*amqp.Connection, *amqp.Channel) {
	t.Helper()
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return conn, ch
}

// publish declares a durable queue and publishes one persistent message, waiting for the confirm.
func publish(ctx context.Context, t *testing.T, url, queue, body string) {
	t.Helper()
	conn, ch := dial(t, url)
	defer conn.Close()
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
		t.Fatalf("publish to %s not confirmed: ack=%v err=%v", queue, ok, err)
	}
}

// consume takes one message from queue and checks its body.
func consume(ctx context.Context, t *testing.T, url, queue, want string) {
	t.Helper()
	conn, ch := dial(t, url)
	defer conn.Close()
	msgs, err := ch.ConsumeWithContext(ctx, queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		if string(m.Body) != want {
			t.Errorf("consumed %q from %s, want %q", m.Body, queue, want)
		}
		if err := m.Ack(false); err != nil {
			t.Error(err)
		}
	case <-ctx.Done():
		t.Fatalf("no message on %s: %v", queue, ctx.Err())
	}
}

func TestRabbitMQShared(t *testing.T) {
	t.Parallel()
	start := time.Now()
	r := testenv.SharedRabbitMQ(t)
	t.Logf("shared node %s ready in %s", r.NodeName, time.Since(start).Round(time.Millisecond))
	if !strings.HasPrefix(r.URL, "amqp://guest:guest@127.0.0.1:") {
		t.Errorf("URL = %q", r.URL)
	}
	if again := testenv.SharedRabbitMQ(t); again != r {
		t.Error("SharedRabbitMQ started a second node")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	publish(ctx, t, r.URL, "testenv.shared", "hello")

	start = time.Now()
	// On a loaded machine the CLI's own check that the rabbit app runs can
	// time out and say it does not, though AMQP answered: ask again.
	var out []byte
	if err := testenv.Poll(30*time.Second, time.Second, func() error {
		var err error
		out, err = r.Ctl(ctx, "list_queues", "name", "messages")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("rabbitmqctl list_queues took %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(string(out), "testenv.shared\t1") {
		t.Errorf("list_queues does not show testenv.shared with 1 message:\n%s", out)
	}
	consume(ctx, t, r.URL, "testenv.shared", "hello")
}

// A private node beside the shared one, broken on purpose: what failover tests do.
func TestRabbitMQStopStartKill(t *testing.T) {
	t.Parallel()
	start := time.Now()
	r := testenv.NewRabbitMQ(t, testenv.RabbitOptions{Name: "chaos"})
	t.Logf("private node %s ready in %s", r.NodeName, time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()

	// A persistent message in a durable queue survives a graceful stop and a crash.
	publish(ctx, t, r.URL, "testenv.chaos", "before stop")
	start = time.Now()
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %s", time.Since(start).Round(time.Millisecond))
	if c, err := amqp.DialConfig(r.URL, amqp.Config{Dial: amqp.DefaultDial(time.Second)}); err == nil {
		c.Close()
		t.Fatal("AMQP still answers after Stop")
	}
	start = time.Now()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("started again in %s", time.Since(start).Round(time.Millisecond))
	consume(ctx, t, r.URL, "testenv.chaos", "before stop")

	publish(ctx, t, r.URL, "testenv.chaos", "before kill")
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if r.Running() {
		t.Fatal("still running after Kill")
	}
	start = time.Now()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("started after Kill in %s", time.Since(start).Round(time.Millisecond))
	consume(ctx, t, r.URL, "testenv.chaos", "before kill")

	// Independent of the shared node: nothing declared here shows there.
	out, err := testenv.SharedRabbitMQ(t).Ctl(ctx, "list_queues", "name")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "testenv.chaos") {
		t.Errorf("queue of the private node shows on the shared one:\n%s", out)
	}
}
