package evi

import (
	"context"
	"io"
	"strconv"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

// benchRabbitQueue is a queue that drops its oldest messages, so that a long
// run does not grow the broker's memory; publishes to it are still confirmed.
func benchRabbitQueue(b *testing.B, u string) string {
	b.Helper()
	q, err := testenv.AMQPChannel(b, u).QueueDeclare("", false, true, true, false, amqp.Table{"x-max-length": int32(1000)})
	if err != nil {
		b.Fatal(err)
	}
	return q.Name
}

// BenchmarkRabbitMQBackend is udp ingest -> router -> rabbitmq backend, each
// event persistent and confirmed by the broker before it counts.
func BenchmarkRabbitMQBackend(b *testing.B) {
	r := testenv.SharedRabbitMQ(b)
	q := benchRabbitQueue(b, r.URL)
	socket := rabbitSocket(r.Host, r.Port, "", q)
	// The raw baseline below keeps benchWindow publishes in flight, as
	// many as the udp sender keeps events.
	b.ReportAllocs()
	res, err := BenchUDPPipeline(context.Background(), b.N, socket, io.Discard)
	report(b, res, err)
	if res.Done != res.Events {
		b.Errorf("%d of %d events delivered", res.Done, res.Events)
	}
}

// BenchmarkRabbitMQRaw publishes the same payloads straight with amqp091-go
// on one confirm-mode channel, persistent and mandatory as the backend does:
// window=128 keeps as many publishes in flight as the sender above;
// window=1 waits for each confirm before the next publish, which is what a
// route that delivers one event at a time amounts to.
func BenchmarkRabbitMQRaw(b *testing.B) {
	r := testenv.SharedRabbitMQ(b)
	for _, window := range []int{benchWindow, 1} {
		b.Run("window="+strconv.Itoa(window), func(b *testing.B) {
			q := benchRabbitQueue(b, r.URL)
			conn, err := amqp.Dial(r.URL)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				b.Fatal(err)
			}
			if err := ch.Confirm(false); err != nil {
				b.Fatal(err)
			}
			msg := amqp.Publishing{DeliveryMode: amqp.Persistent, Body: benchPayload}
			inflight := make([]*amqp.DeferredConfirmation, 0, window)
			wait := func(dc *amqp.DeferredConfirmation) {
				if !dc.Wait() {
					b.Fatal("broker nacked a publish")
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if len(inflight) == window {
					wait(inflight[0])
					inflight = inflight[1:]
				}
				dc, err := ch.PublishWithDeferredConfirm("", q, true, false, msg)
				if err != nil {
					b.Fatal(err)
				}
				inflight = append(inflight, dc)
			}
			for _, dc := range inflight {
				wait(dc)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}

// BenchmarkRabbitMQBackendDeliver calls the backend's Deliver directly, from
// one caller (what the router does today) and from benchWindow callers (what
// a route that keeps a window of deliveries in flight would do), to show
// what the backend itself costs and what pipelining would buy.
func BenchmarkRabbitMQBackendDeliver(b *testing.B) {
	r := testenv.SharedRabbitMQ(b)
	ev := &Event{Name: "E_UL_CONTACT_INSERT", Raw: benchPayload}
	for _, callers := range []int{1, benchWindow} {
		b.Run("callers="+strconv.Itoa(callers), func(b *testing.B) {
			q := benchRabbitQueue(b, r.URL)
			be, err := NewBackend(rabbitSocket(r.Host, r.Port, "", q), Deps{})
			if err != nil {
				b.Fatal(err)
			}
			defer be.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			if err := be.Deliver(ctx, ev); err != nil {
				b.Fatal(err)
			}
			b.SetParallelism((callers + 1) / 2) // GOMAXPROCS is 2 on CI machines
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := be.Deliver(ctx, ev); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
		})
	}
}
