package rabbit

import (
	"context"
	"testing"

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
