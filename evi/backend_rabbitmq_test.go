package evi

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/internal/rabbit"
	"github.com/sipside/sipside/testenv"
)

func TestRabbitMQSocket(t *testing.T) {
	for _, tc := range []struct {
		rest string
		want rabbitmqSocket
		err  string
	}{
		{rest: "127.0.0.1/sipside", want: rabbitmqSocket{user: "guest", pass: "guest", host: "127.0.0.1", port: 5672, key: "sipside"}},
		{rest: "alice:s3cret@mq.example.com:5673/exchange=ev;persistent?ul.contacts",
			want: rabbitmqSocket{user: "alice", pass: "s3cret", host: "mq.example.com", port: 5673, exchange: "ev", persistent: true, key: "ul.contacts"}},
		// The and the module documentation's form: /exchange?routing_key.
		{rest: "guest:guest@127.0.0.1:5672/sip?registrations",
			want: rabbitmqSocket{user: "guest", pass: "guest", host: "127.0.0.1", port: 5672, exchange: "sip", key: "registrations"}},
		{rest: "bob@h/k", want: rabbitmqSocket{user: "bob", host: "h", port: 5672, key: "k"}},
		{rest: "h/tls_domain=dom?k", want: rabbitmqSocket{user: "guest", pass: "guest", host: "h", port: 5671, tlsDomain: "dom", key: "k"}},
		{rest: "h/heartbeat=3?k", want: rabbitmqSocket{user: "guest", pass: "guest", host: "h", port: 5672, heartbeat: 3, key: "k"}},
		// %XX escapes, and a key that holds '?', '/' and '@' after the first '?'.
		{rest: "a%40b:p%3Aw@h/exchange=e%20x?k?/@x", want: rabbitmqSocket{user: "a@b", pass: "p:w", host: "h", port: 5672, exchange: "e x", key: "k?/@x"}},
		{rest: "h/exchange=x?", want: rabbitmqSocket{user: "guest", pass: "guest", host: "h", port: 5672, exchange: "x"}},
		{rest: "127.0.0.1", err: "no '/'"},
		{rest: "127.0.0.1:5672/", err: "nothing after '/'"},
		{rest: "/key", err: "no host"},
		{rest: "h:0/k", err: "port"},
		{rest: "h:notaport/k", err: "port"},
		{rest: "h/exchange=?k", err: "unknown parameter"},
		{rest: "h/colour=red?k", err: "unknown parameter"},
		{rest: "h/heartbeat=0?k", err: "heartbeat"},
		{rest: "h/k%zz", err: "escape"},
		{rest: ":pw@h/k", err: "empty user"},
	} {
		got, err := parseRabbitMQSocket(tc.rest)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parse(%q) = %v, want an error saying %q", tc.rest, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parse(%q): %v", tc.rest, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parse(%q) =\n%+v, want\n%+v", tc.rest, got, tc.want)
		}
		// What the backend prints parses back to the same socket, password aside.
		again, err := parseRabbitMQSocket(strings.TrimPrefix(got.String(), "rabbitmq:"))
		if err != nil {
			t.Errorf("parse(%q).String() = %q does not parse: %v", tc.rest, got.String(), err)
			continue
		}
		again.pass, again.persistent = got.pass, got.persistent
		if again != got {
			t.Errorf("parse(%q).String() = %q parses as %+v", tc.rest, got.String(), again)
		}
		if got.pass != "" && strings.Contains(got.String(), ":"+escapeRMQ(got.pass)+"@") {
			t.Errorf("String() %q shows the password", got.String())
		}
	}
}

// rabbitQueue declares a queue on u and returns it with a channel to read it.
func rabbitQueue(t testing.TB, u string, durable bool) (string, *amqp.Channel) {
	t.Helper()
	ch := testenv.AMQPChannel(t, u)
	name := "evi-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := ch.QueueDeclare(name, durable, !durable, false, false, nil); err != nil {
		t.Fatal(err)
	}
	return name, ch
}

// rabbitGet waits for the next message of q.
func rabbitGet(t testing.TB, ch *amqp.Channel, q string) amqp.Delivery {
	t.Helper()
	var d amqp.Delivery
	checkFor(t.(*testing.T), 10*time.Second, "a message in "+q, func() bool {
		var ok bool
		var err error
		d, ok, err = ch.Get(q, true)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
	return d
}

// rabbitSocket makes the rabbitmq: socket for broker r and a routing key.
func rabbitSocket(host string, port int, params, key string) string {
	s := "rabbitmq:guest:guest@" + host + ":" + strconv.Itoa(port) + "/"
	if params != "" {
		s += params + "?"
	}
	return s + key
}

func TestRabbitMQPublishes(t *testing.T) {
	r := testenv.SharedRabbitMQ(t)
	q, ch := rabbitQueue(t, r.URL, false)
	if err := ch.QueueBind(q, "bound-key", "amq.direct", false, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct{ name, params, key string }{
		{"default exchange, queue name as key", "", q},
		{"exchange= parameter", "exchange=amq.direct", "bound-key"},
		{"documented /exchange?key form", "amq.direct", "bound-key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewBackend(rabbitSocket(r.Host, r.Port, tc.params, tc.key), Deps{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if err := b.Deliver(ctx, tickEvent); err != nil {
				t.Fatal(err)
			}
			d := rabbitGet(t, ch, q)
			if want := `{"jsonrpc":"2.0","method":"E_LAB_TICK","params":{"note":"tick","seq":37}}`; string(d.Body) != want {
				t.Errorf("body %s, want %s", d.Body, want)
			}
			if d.DeliveryMode != amqp.Persistent || d.ContentType != "" || len(d.Headers) != 0 {
				t.Errorf("delivery mode %d, content type %q, headers %v: want persistent and nothing else, as the module", d.DeliveryMode, d.ContentType, d.Headers)
			}
		})
	}
	for _, tc := range []struct {
		name, params, key string
		want              error
	}{
		{"no queue for the key", "", "no-such-queue-" + q, rabbit.ErrReturned},
		{"no such exchange", "exchange=no-such-exchange", "k", rabbit.ErrNoExchange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := NewBackend(rabbitSocket(r.Host, r.Port, tc.params, tc.key), Deps{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if err := b.Deliver(ctx, tickEvent); !errors.Is(err, tc.want) {
				t.Fatalf("Deliver = %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		b, err := NewBackend("rabbitmq:guest:wrong@"+r.Host+":"+strconv.Itoa(r.Port)+"/"+q, Deps{})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err = b.Deliver(ctx, tickEvent)
		if !errors.Is(err, rabbit.ErrNotConnected) || strings.Contains(err.Error(), "wrong") {
			t.Fatalf("Deliver = %v, want not connected, without the password", err)
		}
	})
}

// A broker restart: deliveries fail at once while it is down, and succeed
// again once it is back, on a connection the backend rebuilt by itself.
func TestRabbitMQBrokerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and restarts a private RabbitMQ node")
	}
	r := testenv.NewRabbitMQ(t, testenv.RabbitOptions{Name: "evi-restart"})
	q, _ := rabbitQueue(t, r.URL, true)
	b, err := NewBackend(rabbitSocket(r.Host, r.Port, "", q), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	deliver := func(seq int, timeout time.Duration) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		err := b.Deliver(ctx, &Event{Name: "E_SEQ", Params: []byte(`[` + strconv.Itoa(seq) + `]`)})
		return time.Since(start), err
	}
	if _, err := deliver(1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := r.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		took, err := deliver(100+i, 5*time.Second)
		if err == nil {
			t.Fatal("Deliver succeeded with the broker stopped")
		}
		if took > 2*time.Second {
			t.Fatalf("Deliver took %v to fail with the broker down: it must not wait for its 5s deadline", took)
		}
	}
	if err := r.Start(stopCtx); err != nil {
		t.Fatal(err)
	}
	seq := 2
	checkFor(t, 30*time.Second, "a delivery after the restart", func() bool {
		_, err := deliver(seq, 2*time.Second)
		if err != nil {
			seq++
			return false
		}
		return true
	})
	// Both confirmed messages are in the durable queue; none of the failed ones.
	conn, err := amqp.Dial(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	first := rabbitGet(t, ch, q)
	second := rabbitGet(t, ch, q)
	if !strings.Contains(string(first.Body), "[1]") || !strings.Contains(string(second.Body), "["+strconv.Itoa(seq)+"]") {
		t.Fatalf("queue holds %s and %s, want seq 1 and %d", first.Body, second.Body, seq)
	}
	if _, ok, _ := ch.Get(q, true); ok {
		t.Fatal("a failed delivery reached the queue")
	}
}

func TestRedactRabbitMQ(t *testing.T) {
	for rest, want := range map[string]string{
		"u:secret@h/k":          "u:xxxxx@h/k",
		"u:secret@h:5672/k@x":   "u:xxxxx@h:5672/k@x",
		"u:secret@h/k:v@x":      "u:xxxxx@h/k:v@x",
		"u@h/k:s@x":             "u@h/k:s@x",
		"h:5672/exchange=e?k@x": "h:5672/exchange=e?k@x",
		"u:p:q@h/k":             "u:xxxxx@h/k",
	} {
		if got := redactRabbitMQ(rest); got != want {
			t.Errorf("redactRabbitMQ(%q) = %q, want %q", rest, got, want)
		}
	}
}

// With the broker cut off mid-stream, virtual:FAILOVER moves to the next
// member on the very event that could not be confirmed, without waiting for
// the deadline, and comes back once the broker is reachable and the member's
// failover window has passed.
func TestRabbitMQFailoverMovesOnAtOnce(t *testing.T) {
	c := confRabbitMQ(t) // the broker behind a proxy that can be cut
	backup := newStreamPeer(t, nil)
	v, err := NewBackend("virtual:FAILOVER "+c.socket+" tcp:"+backup.addr(), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.(*Virtual).SetFailoverTimeout(500 * time.Millisecond)
	deliver := func(seq int) time.Duration {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := v.Deliver(ctx, confEvent{name: "E_CONFORMANCE", note: "tick", seq: seq}.event()); err != nil {
			t.Fatalf("event %d: %v", seq, err)
		}
		return time.Since(start)
	}
	deliver(0)
	if got := c.in.next(t, 10*time.Second); got != c.want(confEvent{name: "E_CONFORMANCE", note: "tick", seq: 0}) {
		t.Fatalf("queue got %s", got)
	}
	c.down(t, nil)
	if took := deliver(1); took > 2*time.Second {
		t.Fatalf("failing over took %v: the dead broker was waited for", took)
	}
	checkFor(t, 5*time.Second, "event 1 at the backup", func() bool { return len(backup.received()) == 1 })
	c.up(t, nil)
	seq := 2
	checkFor(t, 30*time.Second, "events back on RabbitMQ", func() bool {
		deliver(seq)
		seq++
		select {
		case <-time.After(50 * time.Millisecond):
			return false
		case got := <-c.in.ch:
			return strings.Contains(got, `"seq":`+strconv.Itoa(seq-1))
		}
	})
}

// A broker port that refuses connections fails the very first delivery at
// once, not after the route's timeout: the refusal is known after one dial.
func TestRabbitMQRefusedFailsAtOnce(t *testing.T) {
	port := testenv.FreePort(t, "tcp", "127.0.0.1")
	b, err := NewBackend(rabbitSocket("127.0.0.1", port, "", "q"), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// A deadline far beyond one dial: a delivery that waited for it would
	// end with the context's error instead of the refusal.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		err := b.Deliver(ctx, tickEvent)
		if !errors.Is(err, rabbit.ErrNotConnected) || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "refused") {
			t.Fatalf("delivery %d = %v, want not connected because the connection was refused", i+1, err)
		}
	}
}
