package rabbit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/testenv"
)

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		urls []string
		want string
	}{
		{"none", nil, "no broker URLs"},
		{"scheme", []string{"http://127.0.0.1:5672/"}, "broker 1"},
		{"second", []string{"amqp://127.0.0.1/", "amqp://h:notaport/"}, "broker 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Config{URLs: tc.urls})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	got := Redact("amqps://user:secret@host:5671/vh")
	if strings.Contains(got, "secret") || !strings.Contains(got, "user@host:5671/vh") {
		t.Fatalf("Redact = %q", got)
	}
}

func TestPublishOutcomes(t *testing.T) {
	u := brokerURL(t)
	m := startManager(t, Config{URLs: []string{u}, Name: "t-outcomes"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := m.NewPublisher(ctx, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q, ch := declareQueue(t, u, nil)
	full, _ := declareQueue(t, u, amqp.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"})

	// Fill the bounded queue so that the next publish to it is nacked.
	if err := p.Publish(ctx, "", full, amqp.Publishing{Body: []byte("first")}); err != nil {
		t.Fatalf("first publish to bounded queue: %v", err)
	}
	for _, tc := range []struct {
		name, exchange, key string
		want                error
	}{
		{"routed", "", q, nil},
		{"unroutable", "amq.direct", "no-such-binding", ErrReturned},
		{"nacked", "", full, ErrNacked},
		{"no exchange", "sipside-test-missing-exchange", "k", ErrNoExchange},
		{"routed after errors", "", q, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.Publish(ctx, tc.exchange, tc.key, amqp.Publishing{Body: []byte(tc.name)})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Publish = %v, want %v", err, tc.want)
			}
		})
	}
	waitFor(t, 5*time.Second, "two messages in the queue", func() bool {
		qi, err := ch.QueueDeclarePassive(q, false, true, false, false, nil)
		return err == nil && qi.Messages == 2
	})
}

// Routable and unroutable publishes interleaved from many goroutines: each gets its own
// outcome, never its neighbour's.
func TestPublishConcurrentMixed(t *testing.T) {
	u := brokerURL(t)
	reg := metrics.New()
	m := startManager(t, Config{URLs: []string{u}, Name: "t-mixed", Metrics: reg})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := m.NewPublisher(ctx, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q, ch := declareQueue(t, u, nil)
	const n = 400
	var wg sync.WaitGroup
	var routed atomic.Int64
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := []byte(fmt.Sprintf("m%d", i))
			if i%3 == 0 {
				err := p.Publish(ctx, "amq.direct", "nowhere", amqp.Publishing{Body: body})
				if !errors.Is(err, ErrReturned) {
					errs <- fmt.Errorf("unroutable %d: %v", i, err)
				}
				return
			}
			if err := p.Publish(ctx, "", q, amqp.Publishing{Body: body}); err != nil {
				errs <- fmt.Errorf("routable %d: %v", i, err)
				return
			}
			routed.Add(1)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, 5*time.Second, "all routed messages queued", func() bool {
		qi, err := ch.QueueDeclarePassive(q, false, true, false, false, nil)
		return err == nil && int64(qi.Messages) == routed.Load()
	})
}

func TestPublishHonoursDeadlineWhenNoBroker(t *testing.T) {
	ln := testenv.NewCutProxy(t, "127.0.0.1:1") // nothing listens behind it
	m := startManager(t, Config{URLs: []string{"amqp://guest:guest@" + ln.Addr() + "/"}, Name: "t-nobroker"})
	p, err := m.NewPublisher(context.Background(), PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = p.Publish(ctx, "", "q", amqp.Publishing{Body: []byte("x")})
	if !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Publish = %v, want ErrNotConnected", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Publish took %v with a 300ms deadline", d)
	}
}

// A FailFast publisher never waits for a broker that is gone: publishes racing
// the cut, including those that find the dying channel and are not sent, end
// with ErrNotConnected (or unconfirmed) well before their deadline. Without
// FailFast they would wait the whole deadline for a reconnect (virtual
// FAILOVER then had no time left for its next member).
func TestFailFastPublisherWhenTheBrokerGoes(t *testing.T) {
	u := brokerURL(t)
	a := testenv.NewCutProxy(t, hostPort(t, u))
	m := startManager(t, Config{URLs: []string{withHost(t, u, a.Addr())}, Name: "t-failfast"})
	p, err := m.NewPublisher(context.Background(), PublisherOptions{FailFast: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, _ := declareQueue(t, u, nil)
	if _, err := m.Session(ctx); err != nil { // FailFast does not wait for the first one either
		t.Fatal(err)
	}
	if err := p.Publish(ctx, "", q, amqp.Publishing{Body: []byte("x")}); err != nil {
		t.Fatalf("publish before the cut: %v", err)
	}
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	took := make(chan time.Duration, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == n/2 {
				a.Cut()
			}
			pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer pcancel()
			start := time.Now()
			errs <- p.Publish(pctx, "", q, amqp.Publishing{Body: []byte("x")})
			took <- time.Since(start)
		}()
	}
	wg.Wait()
	close(errs)
	close(took)
	for d := range took {
		if d > 2*time.Second {
			t.Errorf("a publish took %v: it waited for a broker that is gone", d)
		}
	}
	for err := range errs {
		if err != nil && !errors.Is(err, ErrNotConnected) && !errors.Is(err, ErrUnconfirmed) {
			t.Errorf("publish: %v, want nil, ErrNotConnected or ErrUnconfirmed", err)
		}
	}
	start := time.Now()
	if err := p.Publish(ctx, "", q, amqp.Publishing{Body: []byte("x")}); !errors.Is(err, ErrNotConnected) {
		t.Errorf("publish after the cut = %v, want ErrNotConnected", err)
	} else if d := time.Since(start); d > time.Second {
		t.Errorf("publish after the cut took %v", d)
	}
}

// Cut the first broker's path mid-traffic: the manager fails over to the second URL,
// re-runs hooks, and every publish that was confirmed is in the queue.
func TestFailoverMidTraffic(t *testing.T) {
	u := brokerURL(t)
	target := hostPort(t, u)
	a, b := testenv.NewCutProxy(t, target), testenv.NewCutProxy(t, target)
	var hooks atomic.Int64
	m := startManager(t, Config{
		URLs: []string{withHost(t, u, a.Addr()), withHost(t, u, b.Addr())},
		Name: "t-failover", Heartbeat: time.Second,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.OnConnect(ctx, func(context.Context, *amqp.Connection) error { hooks.Add(1); return nil }); err != nil {
		t.Fatal(err)
	}
	p, err := m.NewPublisher(ctx, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := m.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.Broker, a.Addr()) {
		t.Fatalf("connected to %s, want the first URL %s", s.Broker, a.Addr())
	}
	q, ch := declareQueue(t, u, nil)

	var confirmed, failed atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				err := p.Publish(pctx, "", q, amqp.Publishing{Body: []byte(fmt.Sprintf("w%d-%d", w, i))})
				pcancel()
				if err == nil {
					confirmed.Add(1)
				} else if errors.Is(err, ErrUnconfirmed) || errors.Is(err, ErrNotConnected) {
					failed.Add(1)
				} else {
					t.Errorf("publish: unexpected %v", err)
					return
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "traffic before the cut", func() bool { return confirmed.Load() > 200 })
	a.Cut()
	before := confirmed.Load()
	waitFor(t, 15*time.Second, "traffic after failover", func() bool { return confirmed.Load() > before+200 })
	close(stop)
	wg.Wait()
	s, err = m.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s.Broker, b.Addr()) {
		t.Fatalf("after the cut connected to %s, want the second URL %s", s.Broker, b.Addr())
	}
	if hooks.Load() < 2 {
		t.Fatalf("hook ran %d times, want once per connection", hooks.Load())
	}
	qi, err := ch.QueueDeclarePassive(q, false, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Unconfirmed messages may or may not have arrived; confirmed ones must all be there.
	if int64(qi.Messages) < confirmed.Load() || int64(qi.Messages) > confirmed.Load()+failed.Load() {
		t.Fatalf("queue has %d messages; confirmed %d, unconfirmed %d", qi.Messages, confirmed.Load(), failed.Load())
	}
	t.Logf("confirmed %d, unconfirmed %d, queued %d", confirmed.Load(), failed.Load(), qi.Messages)
}

func TestDirectReplyTo(t *testing.T) {
	u := brokerURL(t)
	m := startManager(t, Config{URLs: []string{u}, Name: "t-reply"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	replies := make(chan amqp.Delivery, 16)
	p, err := m.NewPublisher(ctx, PublisherOptions{OnReply: func(d amqp.Delivery) { replies <- d }})
	if err != nil {
		t.Fatal(err)
	}
	q, ch := declareQueue(t, u, nil)
	reqs, err := ch.Consume(q, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for d := range reqs {
			ch.Publish("", d.ReplyTo, false, false, amqp.Publishing{CorrelationId: d.CorrelationId, Body: append([]byte("re:"), d.Body...)})
		}
	}()
	if err := p.Publish(ctx, "", q, amqp.Publishing{ReplyTo: DirectReplyTo, CorrelationId: "c1", Body: []byte("ping")}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-replies:
		if d.CorrelationId != "c1" || string(d.Body) != "re:ping" {
			t.Fatalf("reply %q %q", d.CorrelationId, d.Body)
		}
	case <-ctx.Done():
		t.Fatal("no reply")
	}
}

// Two real nodes: stop the first mid-traffic; publishes carry on through the second and
// every confirmed message is found afterwards on one node or the other.
func TestFailoverTwoNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a private RabbitMQ node")
	}
	b := testenv.SharedRabbitMQ(t)
	a := testenv.NewRabbitMQ(t, testenv.RabbitOptions{Name: "failover-a"})
	const queue = "sipside-failover-test"
	m := startManager(t, Config{URLs: []string{a.URL, b.URL}, Name: "t-2nodes", Heartbeat: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// The queue is topology: the hook declares it on whichever node we reach.
	if _, err := m.OnConnect(ctx, func(_ context.Context, conn *amqp.Connection) error {
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		defer ch.Close()
		_, err = ch.QueueDeclare(queue, true, false, false, false, nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	p, err := m.NewPublisher(ctx, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var confirmed, unconfirmed atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
				err := p.Publish(pctx, "", queue, amqp.Publishing{DeliveryMode: amqp.Persistent, Body: []byte("x")})
				pcancel()
				switch {
				case err == nil:
					confirmed.Add(1)
				case errors.Is(err, ErrUnconfirmed), errors.Is(err, ErrNotConnected):
					unconfirmed.Add(1)
				default:
					t.Errorf("publish: %v", err)
					return
				}
			}
		}()
	}
	waitFor(t, 20*time.Second, "traffic on node A", func() bool { return confirmed.Load() > 300 })
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	atStop := confirmed.Load()
	waitFor(t, 30*time.Second, "traffic on node B", func() bool { return confirmed.Load() > atStop+300 })
	close(stop)
	wg.Wait()
	if s := m.Current(); s == nil || !strings.Contains(s.Broker, itoa(b.Port)) {
		t.Fatalf("not on node B after the stop: %+v", s)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	count := func(u string) int64 {
		conn, err := amqp.Dial(u)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		qi, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		ch.QueuePurge(queue, false)
		return int64(qi.Messages)
	}
	onA, onB := count(a.URL), count(b.URL)
	t.Logf("confirmed %d, unconfirmed %d; on A %d, on B %d", confirmed.Load(), unconfirmed.Load(), onA, onB)
	if onA+onB < confirmed.Load() {
		t.Fatalf("lost confirmed messages: confirmed %d, found %d", confirmed.Load(), onA+onB)
	}
}

// A broker under a resource alarm blocks publishers: Publish honours its deadline and
// says why, and publishing resumes when the alarm clears.
func TestBlockedBroker(t *testing.T) {
	r := testenv.SharedRabbitMQ(t)
	reg := metrics.New()
	m := startManager(t, Config{URLs: []string{r.URL}, Name: "t-blocked", Metrics: reg})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := m.NewPublisher(ctx, PublisherOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q, _ := declareQueue(t, r.URL, nil)
	if err := p.Publish(ctx, "", q, amqp.Publishing{Body: []byte("before")}); err != nil {
		t.Fatal(err)
	}
	if out, err := r.Ctl(ctx, "set_vm_memory_high_watermark", "0.00001"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	restore := func() { r.Ctl(context.Background(), "set_vm_memory_high_watermark", "0.9") }
	t.Cleanup(restore)
	blocked := reg.Gauge("sipside_amqp_blocked", "", "name").With("t-blocked")
	// The broker blocks a connection when it next publishes.
	waitFor(t, 20*time.Second, "connection.blocked", func() bool {
		pctx, pcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer pcancel()
		p.Publish(pctx, "", q, amqp.Publishing{Body: []byte("during")})
		return blocked.Value() == 1
	})
	pctx, pcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	start := time.Now()
	err = p.Publish(pctx, "", q, amqp.Publishing{Body: []byte("blocked")})
	pcancel()
	if err == nil || !strings.Contains(err.Error(), "resource alarm") || time.Since(start) > 2*time.Second {
		t.Fatalf("Publish while blocked = %v after %v", err, time.Since(start))
	}
	restore()
	waitFor(t, 20*time.Second, "unblocked", func() bool { return blocked.Value() == 0 })
	if err := p.Publish(ctx, "", q, amqp.Publishing{Body: []byte("after")}); err != nil {
		t.Fatalf("Publish after the alarm: %v", err)
	}
}
