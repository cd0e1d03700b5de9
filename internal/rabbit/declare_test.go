package rabbit

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

func TestDeclareModes(t *testing.T) {
	u := brokerURL(t)
	conn := connected(t, startManager(t, Config{URLs: []string{u}})).Conn
	admin := testenv.AMQPChannel(t, u)
	if err := admin.ExchangeDeclare("decl_durable", "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.QueueDeclare("decl_quorum", true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, x := range []string{"decl_durable", "decl_new_auto", "decl_new_create"} {
			admin.ExchangeDelete(x, false, false)
		}
		for _, q := range []string{"decl_quorum", "decl_new_stream"} {
			admin.QueueDelete(q, false, false, false)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	exchanges := []struct {
		mode DeclareMode
		x    Exchange
		code int // 0: no error
	}{
		{DeclareAuto, Exchange{Name: "decl_durable", Type: "direct"}, 0}, // used as it is
		{DeclarePassive, Exchange{Name: "decl_durable"}, 0},
		{DeclareCreate, Exchange{Name: "decl_durable", Type: "topic"}, amqp.PreconditionFailed},
		{DeclareCreate, Exchange{Name: "decl_durable", Type: "topic", Durable: true}, 0},
		{DeclareAuto, Exchange{Name: "decl_new_auto"}, 0}, // created
		{DeclarePassive, Exchange{Name: "decl_missing"}, amqp.NotFound},
		{DeclareCreate, Exchange{Name: "decl_new_create", Type: "fanout"}, 0},
		{DeclareCreate, Exchange{Name: "amq.topic"}, 0}, // only checked: a declare would be refused
		{DeclareAuto, Exchange{Name: "amq.nothing"}, amqp.NotFound},
		{DeclareAuto, Exchange{}, 0}, // the default exchange
	}
	for _, tc := range exchanges {
		err := DeclareExchange(ctx, conn, tc.mode, tc.x)
		checkDeclare(t, "exchange "+tc.x.Name+" "+string(tc.mode), err, tc.code)
	}
	if err := DeclareExchange(ctx, conn, DeclarePassive, Exchange{Name: "decl_new_auto"}); err != nil {
		t.Errorf("auto did not create decl_new_auto: %v", err)
	}

	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	queues := []struct {
		mode DeclareMode
		q    Queue
		code int
	}{
		{DeclareAuto, Queue{Name: "decl_quorum"}, 0}, // exists as quorum; used as it is
		{DeclareCreate, Queue{Name: "decl_quorum", Durable: true}, amqp.PreconditionFailed},
		{DeclareCreate, Queue{Name: "decl_quorum", Type: QueueQuorum, Durable: true}, 0},
		{DeclarePassive, Queue{Name: "decl_no_queue"}, amqp.NotFound},
		{DeclareAuto, Queue{Name: "decl_new_stream", Type: QueueStream, Durable: true}, 0},
		{DeclareAuto, Queue{}, 0}, // server-named, on ch
	}
	for _, tc := range queues {
		name, err := DeclareQueue(ctx, conn, ch, tc.mode, tc.q)
		checkDeclare(t, "queue "+tc.q.Name+" "+string(tc.mode), err, tc.code)
		if err == nil && name == "" {
			t.Errorf("queue %q: no name returned", tc.q.Name)
		}
	}
	if _, err := admin.QueueDeclare("decl_new_stream", true, false, false, false, amqp.Table{"x-queue-type": "stream"}); err != nil {
		t.Errorf("decl_new_stream is not a stream queue: %v", err)
	}
	if ch.IsClosed() || conn.IsClosed() {
		t.Error("a refused declare closed the caller's channel or the connection")
	}
}

func checkDeclare(t *testing.T, what string, err error, code int) {
	t.Helper()
	if code == 0 {
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
		return
	}
	var de *DeclareError
	if !errors.As(err, &de) || de.Code != code || de.Hint == "" {
		t.Errorf("%s: %v, want a DeclareError with code %d and a hint", what, err, code)
	}
}

func TestCheckQueue(t *testing.T) {
	for _, tc := range []struct {
		q    Queue
		want string
	}{
		{Queue{Name: "a", Type: QueueQuorum, Durable: true}, ""},
		{Queue{Name: "a"}, ""},
		{Queue{}, ""},
		{Queue{Type: QueueQuorum, Durable: true}, "needs a name"},
		{Queue{Name: "a", Type: QueueQuorum}, "durable = true"},
		{Queue{Name: "a", Type: QueueQuorum, Durable: true, Exclusive: true}, "exclusive"},
		{Queue{Name: "a", Type: QueueStream, Durable: true, AutoDelete: true}, "auto-delete"},
		{Queue{Name: "a", Type: "lazy"}, "classic, quorum or stream"},
	} {
		err := CheckQueue(tc.q)
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckQueue(%+v) = %v, want %q", tc.q, err, tc.want)
		}
	}
}

// A task the broker refuses is retried on its own channel; the connection
// and a healthy task beside it stay up, and it comes up once it can.
func TestTaskIsolation(t *testing.T) {
	u := brokerURL(t)
	m := startManager(t, Config{URLs: []string{u}})
	conn := connected(t, m).Conn
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var mu sync.Mutex
	var states []string
	var attempts int
	bad := Task{Name: "bad", MinRetry: 50 * time.Millisecond, MaxRetry: 100 * time.Millisecond,
		Run: func(ctx context.Context, s *Session, ch *amqp.Channel, up func()) error {
			mu.Lock()
			attempts++
			mu.Unlock()
			if err := DeclareExchange(ctx, s.Conn, DeclarePassive, Exchange{Name: "task_appears"}); err != nil {
				return err
			}
			up()
			<-ctx.Done()
			return nil
		},
		State: func(up bool, err error) {
			mu.Lock()
			defer mu.Unlock()
			states = append(states, map[bool]string{true: "up", false: "down"}[up])
		}}
	good := make(chan struct{})
	m.Go(ctx, bad)
	m.Go(ctx, Task{Name: "good", Run: func(ctx context.Context, s *Session, ch *amqp.Channel, up func()) error {
		close(good)
		up()
		<-ctx.Done()
		return nil
	}})
	<-good
	waitFor(t, 10*time.Second, "three refused attempts", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return attempts >= 3
	})
	if m.Current() == nil || m.Current().Conn != conn {
		t.Fatal("the connection was dropped for a failing task")
	}
	admin := testenv.AMQPChannel(t, u)
	if err := admin.ExchangeDeclare("task_appears", "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "bad task up once its exchange exists", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(states) > 0 && states[len(states)-1] == "up"
	})
}

func connected(t *testing.T, m *Manager) *Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := m.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
