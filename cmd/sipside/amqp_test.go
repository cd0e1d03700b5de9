package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

func TestAMQPUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, exitOK, "Examples:"},
		{"verb help", []string{"query", "--help"}, exitOK, "-routing-key KEY"},
		{"no verb", nil, exitUsage, "publish|query|consume"},
		{"unknown verb", []string{"send"}, exitUsage, `unknown action "send"`},
		{"no key", []string{"publish", "--payload", "{}"}, exitUsage, "--routing-key is required"},
		{"no payload", []string{"query", "--routing-key", "k"}, exitUsage, "--payload is required"},
		{"consume without exchange", []string{"consume"}, exitUsage, "--exchange is required"},
		{"stray arg", []string{"publish", "--routing-key", "k", "x"}, exitUsage, `unexpected argument "x"`},
		{"bad broker", []string{"publish", "--broker", "http://x/", "--routing-key", "k", "--payload", "{}"}, exitUsage, "AMQP scheme must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, out := testEnv()
			if code := cmdAMQP(context.Background(), e, tc.args); code != tc.code || !strings.Contains(out.String(), tc.want) {
				t.Fatalf("exit %d (want %d), output:\n%s\nwant it to contain %q", code, tc.code, out, tc.want)
			}
		})
	}
}

// A refused connection is reported at once with exit 2, well before the
// default --timeout of 5s that publish used to wait out.
func TestAMQPBrokerDown(t *testing.T) {
	port := testenv.FreePort(t, "tcp", "127.0.0.1")
	broker := "amqp://guest:guest@127.0.0.1:" + strconv.Itoa(port) + "/"
	for _, args := range [][]string{
		{"publish", "--broker", broker, "--routing-key", "k", "--payload", "{}"},
		{"query", "--broker", broker, "--routing-key", "k", "--payload", "{}"},
		{"consume", "--broker", broker, "--exchange", "amq.topic", "--timeout", "30s"},
	} {
		t.Run(args[0], func(t *testing.T) {
			e, out := testEnv()
			start := time.Now()
			code := cmdAMQP(context.Background(), e, args)
			if code != exitUsage || !strings.Contains(out.String(), "connection refused") || !strings.Contains(out.String(), "is RabbitMQ running") {
				t.Fatalf("exit %d, output:\n%s", code, out)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("took %v to report a refused connection; want it at once, not after --timeout", took)
			}
		})
	}
}

func TestAMQPPublishQueryConsume(t *testing.T) {
	r := testenv.SharedRabbitMQ(t)
	conn, err := amqp.Dial(r.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	// Declared by "the platform" with flags sipside would not choose: every
	// verb uses it as it is.
	if err := ch.ExchangeDeclare("sipside_cli_test", "topic", true, false, false, false, amqp.Table{"x-platform": "owned"}); err != nil {
		t.Fatal(err)
	}
	defer ch.ExchangeDelete("sipside_cli_test", false, false)
	q, _ := ch.QueueDeclare("", false, true, true, false, nil)
	ch.QueueBind(q.Name, "cli.pub", "sipside_cli_test", false, nil)

	t.Run("publish", func(t *testing.T) {
		e, out := testEnv()
		e.stdin = strings.NewReader("{\"user\":\"alice\"}\n")
		code := cmdAMQP(context.Background(), e, []string{"publish", "--broker", r.URL, "--exchange", "sipside_cli_test", "--routing-key", "cli.pub", "--payload", "-"})
		if code != exitOK || !strings.Contains(out.String(), "confirmed") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
		d, ok, err := ch.Get(q.Name, true)
		if err != nil || !ok || string(d.Body) != `{"user":"alice"}` {
			t.Fatalf("queued %q %v %v", d.Body, ok, err)
		}
	})
	t.Run("publish unroutable", func(t *testing.T) {
		e, out := testEnv()
		code := cmdAMQP(context.Background(), e, []string{"publish", "--broker", r.URL, "--exchange", "sipside_cli_test", "--routing-key", "nobody", "--payload", "{}"})
		if code != exitFailure || !strings.Contains(out.String(), "unroutable") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	t.Run("query", func(t *testing.T) {
		rq, _ := ch.QueueDeclare("", false, true, true, false, nil)
		ch.QueueBind(rq.Name, "cli.query", "sipside_cli_test", false, nil)
		ds, _ := ch.Consume(rq.Name, "", true, true, false, false, nil)
		go func() {
			for d := range ds {
				ch.Publish("", d.ReplyTo, false, false, amqp.Publishing{CorrelationId: d.CorrelationId, Body: []byte(`{"route":"sip:gw1.example.test"}`)})
			}
		}()
		e, out := testEnv()
		code := cmdAMQP(context.Background(), e, []string{"query", "--broker", r.URL, "--exchange", "sipside_cli_test", "--routing-key", "cli.query", "--payload", `{"user":"alice"}`, "--timeout", "3s"})
		if code != exitOK || strings.TrimSpace(out.String()) != `{"route":"sip:gw1.example.test"}` {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
	for _, exchange := range []string{"sipside_cli_test", "amq.topic"} {
		t.Run("consume "+exchange, func(t *testing.T) { testCLIConsume(t, r.URL, conn, exchange) })
	}
	t.Run("consume a missing exchange", func(t *testing.T) {
		e, out := testEnv()
		code := cmdAMQP(context.Background(), e, []string{"consume", "--broker", r.URL, "--exchange", "sipside_cli_nobody", "--count", "1", "--timeout", "10s"})
		if code != exitFailure || !strings.Contains(out.String(), "NOT_FOUND") {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	})
}

func testCLIConsume(t *testing.T, url string, conn *amqp.Connection, exchange string) {
	e, out := testEnv()
	done := make(chan int, 1)
	go func() {
		done <- cmdAMQP(context.Background(), e, []string{"consume", "--broker", url, "--exchange", exchange, "--routing-key", "cli.ev.#", "--count", "2", "--timeout", "20s"})
	}()
	// Publish with mandatory until the consumer's queue is bound: in confirm mode a
	// return arrives before the confirm of its message.
	pch, _ := conn.Channel()
	pch.Confirm(false)
	returns := pch.NotifyReturn(make(chan amqp.Return, 16))
	deadline := time.Now().Add(15 * time.Second)
	for sent := 0; sent < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("consumer never bound; output:\n%s", out)
		}
		body := []byte(`{"n":0}`)
		if sent == 1 {
			body = []byte("not json")
		}
		dc, err := pch.PublishWithDeferredConfirm(exchange, "cli.ev.x", true, false, amqp.Publishing{Body: body})
		if err != nil {
			t.Fatal(err)
		}
		dc.Wait()
		select {
		case <-returns:
			time.Sleep(20 * time.Millisecond)
		default:
			sent++
		}
	}
	select {
	case code := <-done:
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		if code != exitOK || len(lines) != 2 || !strings.Contains(lines[0], `"body":{"n":0}`) || !strings.Contains(lines[1], `"body":"not json"`) || !strings.Contains(lines[0], `"routing_key":"cli.ev.x"`) {
			t.Fatalf("exit %d:\n%s", code, out)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("consume did not stop after --count 2:\n%s", out)
	}
}
