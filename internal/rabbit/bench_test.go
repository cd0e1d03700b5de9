package rabbit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var benchBody = []byte(`{"Event-Category":"sipcmd","Event-Name":"lookup","Data":{"user":"alice","ip":"192.0.2.10"},"Msg-ID":"1e13f96f-5df3-4413-9595-424f751ae76c"}`)

// benchQueue drops old messages so a long run does not grow the broker's memory.
func benchQueue(b *testing.B, u string) string {
	q, _ := declareQueue(b, u, amqp.Table{"x-max-length": int32(1000)})
	return q
}

// BenchmarkPublishConfirmed measures Publisher.Publish (confirm, mandatory, return
// matching) against raw amqp091-go doing the same confirmed publishes on one channel.
func BenchmarkPublishConfirmed(b *testing.B) {
	u := brokerURL(b)
	for _, par := range []int{1, 16} {
		b.Run("sipside/callers="+itoa(par), func(b *testing.B) {
			m := startManager(b, Config{URLs: []string{u}, Name: "bench"})
			p, err := m.NewPublisher(context.Background(), PublisherOptions{})
			if err != nil {
				b.Fatal(err)
			}
			q := benchQueue(b, u)
			ctx := context.Background()
			if _, err := m.Session(ctx); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(benchBody)))
			b.SetParallelism(par)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := p.Publish(ctx, "", q, amqp.Publishing{ContentType: "application/json", Body: benchBody}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run("raw/callers="+itoa(par), func(b *testing.B) {
			conn, err := amqp.Dial(u)
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
			q := benchQueue(b, u)
			b.SetBytes(int64(len(benchBody)))
			b.SetParallelism(par)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					dc, err := ch.PublishWithDeferredConfirm("", q, true, false, amqp.Publishing{ContentType: "application/json", Body: benchBody})
					if err != nil {
						b.Error(err)
						return
					}
					if !dc.Wait() {
						b.Error("nack")
						return
					}
				}
			})
		})
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

// BenchmarkPublishAB alternates rounds of Publisher.Publish and raw amqp091-go
// confirmed publishes (16 goroutines, 50 messages each per round) so that both see
// the same machine load; it reports each side's messages/s and their ratio. Run with
// e.g. -benchtime 20x.
func BenchmarkPublishAB(b *testing.B) {
	u := brokerURL(b)
	m := startManager(b, Config{URLs: []string{u}, Name: "bench-ab"})
	ctx := context.Background()
	p, err := m.NewPublisher(ctx, PublisherOptions{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := m.Session(ctx); err != nil {
		b.Fatal(err)
	}
	conn, err := amqp.Dial(u)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	ch.Confirm(false)
	q := benchQueue(b, u)
	const workers, per = 16, 50
	round := func(publish func() error) time.Duration {
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					if err := publish(); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	msg := amqp.Publishing{ContentType: "application/json", Body: benchBody}
	var ours, raw time.Duration
	b.ResetTimer()
	for range b.N {
		ours += round(func() error { return p.Publish(ctx, "", q, msg) })
		raw += round(func() error {
			dc, err := ch.PublishWithDeferredConfirm("", q, true, false, msg)
			if err != nil {
				return err
			}
			if !dc.Wait() {
				return errors.New("nack")
			}
			return nil
		})
	}
	n := float64(b.N * workers * per)
	b.ReportMetric(n/ours.Seconds(), "sipside-msg/s")
	b.ReportMetric(n/raw.Seconds(), "raw-msg/s")
	b.ReportMetric(raw.Seconds()/ours.Seconds(), "ratio")
}
