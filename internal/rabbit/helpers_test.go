package rabbit

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// brokerURL is the shared RabbitMQ node of this test binary.
func brokerURL(t testing.TB) string {
	t.Helper()
	return testenv.SharedRabbitMQ(t).URL
}

// hostPort returns the host:port of an amqp URL.
func hostPort(t testing.TB, u string) string {
	t.Helper()
	uri, err := amqp.ParseURI(u)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
}

// withHost returns u pointed at addr (host:port), keeping credentials and vhost.
func withHost(t testing.TB, u, addr string) string {
	t.Helper()
	uri, err := amqp.ParseURI(u)
	if err != nil {
		t.Fatal(err)
	}
	h, p, _ := net.SplitHostPort(addr)
	uri.Host = h
	uri.Port, _ = strconv.Atoi(p)
	return uri.String()
}

// startManager runs a manager until the test ends and waits for it to connect.
func startManager(t testing.TB, cfg Config) *Manager {
	t.Helper()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 20 * time.Millisecond
		cfg.MaxBackoff = 200 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// declareQueue makes a fresh exclusive-to-the-test queue and returns its name.
func declareQueue(t testing.TB, u string, args amqp.Table) (string, *amqp.Channel) {
	t.Helper()
	ch := testenv.AMQPChannel(t, u)
	q, err := ch.QueueDeclare("", false, true, false, false, args)
	if err != nil {
		t.Fatal(err)
	}
	return q.Name, ch
}

// waitFor is testenv.WaitFor.
var waitFor = testenv.WaitFor
