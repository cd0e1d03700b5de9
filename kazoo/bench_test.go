package kazoo

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// BenchmarkQuery is amqp.query round trips from script-like clients: each caller holds
// one persistent netstring connection (as janssonrpcc does) and waits for its reply
// before sending the next query; an instant Go responder answers on direct reply-to.
// Reported: p50 and p99 latency and queries/s.
func BenchmarkQuery(b *testing.B) {
	u := brokerURL(b)
	startResponder(b, u, "bench.q", &responder{})
	br, _ := startBridge(b, u, nil, Options{})
	addr := br.Addrs()[ListenNetstring]
	for _, callers := range []int{1, 16, 128} {
		b.Run("netstring/callers="+strconv.Itoa(callers), func(b *testing.B) {
			conns := make([]*nsConn, callers)
			for i := range conns {
				conns[i] = dialNetstring(b, addr)
			}
			lat := make([][]time.Duration, callers)
			var wg sync.WaitGroup
			per := b.N/callers + 1
			b.ResetTimer()
			start := time.Now()
			for i := range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := conns[i]
					for j := range per {
						t0 := time.Now()
						c.send(b, fmt.Sprintf(`{"id":%d,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"bench.q","payload":{"q":"x"},"timeout_ms":10000}}`, j))
						resp := c.recv(b)
						if !strings.Contains(resp, `"echo":"x"`) {
							b.Errorf("reply %s", resp)
							return
						}
						lat[i] = append(lat[i], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			reportLatency(b, lat, elapsed)
		})
	}
}

// BenchmarkQueryRaw is the same query from OpenSIPS-like clients: a new TCP connection
// per call (the jsonrpc module's way).
func BenchmarkQueryRaw(b *testing.B) {
	u := brokerURL(b)
	startResponder(b, u, "bench.q", &responder{})
	br, _ := startBridge(b, u, nil, Options{})
	addr := br.Addrs()[ListenTCP]
	for _, callers := range []int{1, 16} {
		b.Run("rawtcp/callers="+strconv.Itoa(callers), func(b *testing.B) {
			lat := make([][]time.Duration, callers)
			var wg sync.WaitGroup
			per := b.N/callers + 1
			b.ResetTimer()
			start := time.Now()
			for i := range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range per {
						t0 := time.Now()
						c, err := net.Dial("tcp", addr)
						if err != nil {
							b.Error(err)
							return
						}
						c.Write([]byte(`{"id":347939454,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"bench.q","payload":{"q":"x"},"timeout_ms":10000}}`))
						readJSONValue(b, c)
						c.Close()
						lat[i] = append(lat[i], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			reportLatency(b, lat, elapsed)
		})
	}
}

func reportLatency(b *testing.B, lat [][]time.Duration, elapsed time.Duration) {
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return
	}
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "q/s")
}

// BenchmarkPublish is amqp.publish through the netstring listener (16 callers, each on
// its own connection, each waiting for its confirm) against raw amqp091-go publishing
// the same payload with confirms on one channel from 16 goroutines.
func BenchmarkPublish(b *testing.B) {
	u := brokerURL(b)
	conn, err := amqp.Dial(u)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	q, _ := ch.QueueDeclare("", false, true, true, false, amqp.Table{"x-max-length": int32(1000)})
	ch.QueueBind(q.Name, "bench.pub", testExchange, false, nil)
	const payload = `{"Event-Category":"sipcmd","Event-Name":"lookup","Data":{"user":"alice","ip":"192.0.2.10"}}`
	const callers = 16

	b.Run("sipside-jsonrpc", func(b *testing.B) {
		br, _ := startBridge(b, u, nil, Options{})
		conns := make([]*nsConn, callers)
		for i := range conns {
			conns[i] = dialNetstring(b, br.Addrs()[ListenNetstring])
		}
		per := b.N/callers + 1
		var wg sync.WaitGroup
		b.ResetTimer()
		start := time.Now()
		for i := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range per {
					conns[i].send(b, `{"id":`+strconv.Itoa(j)+`,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":"sipside_kazoo_test","routing_key":"bench.pub","payload":`+payload+`}}`)
					if resp := conns[i].recv(b); !strings.Contains(resp, `"confirmed"`) {
						b.Errorf("reply %s", resp)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(callers*per)/time.Since(start).Seconds(), "msg/s")
	})
	b.Run("sipside-go-api", func(b *testing.B) {
		br, _ := startBridge(b, u, func(c *Config) { c.JSONRPC.Listen = nil }, Options{})
		per := b.N/callers + 1
		var wg sync.WaitGroup
		b.ResetTimer()
		start := time.Now()
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					if _, err := br.Publish(context.Background(), PublishRequest{Exchange: testExchange, RoutingKey: "bench.pub", Body: []byte(payload)}); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(callers*per)/time.Since(start).Seconds(), "msg/s")
	})
	b.Run("raw-amqp091", func(b *testing.B) {
		rc, err := amqp.Dial(u)
		if err != nil {
			b.Fatal(err)
		}
		defer rc.Close()
		rch, _ := rc.Channel()
		rch.Confirm(false)
		per := b.N/callers + 1
		var wg sync.WaitGroup
		b.ResetTimer()
		start := time.Now()
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range per {
					dc, err := rch.PublishWithDeferredConfirm(testExchange, "bench.pub", true, false, amqp.Publishing{ContentType: "application/json", Body: []byte(payload)})
					if err != nil || !dc.Wait() {
						b.Error("publish failed", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.ReportMetric(float64(callers*per)/time.Since(start).Seconds(), "msg/s")
	})
}

// BenchmarkQueryBaseline is the floor for BenchmarkQuery: the same request and
// responder, but a bare amqp091-go client (one channel, direct reply-to, no confirms,
// no JSON-RPC hop). What sipside adds is the difference.
func BenchmarkQueryBaseline(b *testing.B) {
	u := brokerURL(b)
	startResponder(b, u, "bench.q", &responder{})
	conn, err := amqp.Dial(u)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	replies, err := ch.Consume(rabbitDirectReplyTo, "", true, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.Mutex
	waiters := map[string]chan struct{}{}
	go func() {
		for d := range replies {
			mu.Lock()
			w := waiters[d.CorrelationId]
			delete(waiters, d.CorrelationId)
			mu.Unlock()
			if w != nil {
				close(w)
			}
		}
	}()
	for _, callers := range []int{1, 16, 128} {
		b.Run("amqp091/callers="+strconv.Itoa(callers), func(b *testing.B) {
			lat := make([][]time.Duration, callers)
			var wg sync.WaitGroup
			per := b.N/callers + 1
			b.ResetTimer()
			start := time.Now()
			for i := range callers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range per {
						t0 := time.Now()
						id := newUUID()
						w := make(chan struct{})
						mu.Lock()
						waiters[id] = w
						mu.Unlock()
						if err := ch.Publish(testExchange, "bench.q", false, false, amqp.Publishing{ReplyTo: rabbitDirectReplyTo, CorrelationId: id, Body: []byte(`{"q":"x"}`)}); err != nil {
							b.Error(err)
							return
						}
						select {
						case <-w:
						case <-time.After(10 * time.Second):
							b.Error("no reply")
							return
						}
						lat[i] = append(lat[i], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			reportLatency(b, lat, elapsed)
		})
	}
}

// BenchmarkPublishAB alternates rounds (16 callers × 50 messages) of amqp.publish over
// netstring JSON-RPC, Bridge.Publish, and raw amqp091-go confirmed publishes, so that
// all three see the same load; it reports each one's messages/s and the ratios to raw.
// Run with e.g. -benchtime 20x.
func BenchmarkPublishAB(b *testing.B) {
	u := brokerURL(b)
	conn, err := amqp.Dial(u)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	q, _ := ch.QueueDeclare("", false, true, true, false, amqp.Table{"x-max-length": int32(1000)})
	ch.QueueBind(q.Name, "bench.pub", testExchange, false, nil)
	rch, _ := conn.Channel()
	rch.Confirm(false)
	br, _ := startBridge(b, u, nil, Options{})
	const payload = `{"Event-Category":"sipcmd","Event-Name":"lookup","Data":{"user":"alice","ip":"192.0.2.10"}}`
	const callers, per = 16, 50
	conns := make([]*nsConn, callers)
	for i := range conns {
		conns[i] = dialNetstring(b, br.Addrs()[ListenNetstring])
	}
	round := func(publish func(i, j int) error) time.Duration {
		var wg sync.WaitGroup
		start := time.Now()
		for i := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range per {
					if err := publish(i, j); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	var rpc, api, raw time.Duration
	b.ResetTimer()
	for range b.N {
		rpc += round(func(i, j int) error {
			conns[i].send(b, `{"id":`+strconv.Itoa(j)+`,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":"sipside_kazoo_test","routing_key":"bench.pub","payload":`+payload+`}}`)
			if resp := conns[i].recv(b); !strings.Contains(resp, `"confirmed"`) {
				return fmt.Errorf("reply %s", resp)
			}
			return nil
		})
		api += round(func(int, int) error {
			_, err := br.Publish(context.Background(), PublishRequest{Exchange: testExchange, RoutingKey: "bench.pub", Body: []byte(payload)})
			return err
		})
		raw += round(func(int, int) error {
			dc, err := rch.PublishWithDeferredConfirm(testExchange, "bench.pub", true, false, amqp.Publishing{ContentType: "application/json", Body: []byte(payload)})
			if err != nil {
				return err
			}
			if !dc.Wait() {
				return fmt.Errorf("nack")
			}
			return nil
		})
	}
	n := float64(b.N * callers * per)
	b.ReportMetric(n/rpc.Seconds(), "jsonrpc-msg/s")
	b.ReportMetric(n/api.Seconds(), "goapi-msg/s")
	b.ReportMetric(n/raw.Seconds(), "raw-msg/s")
	b.ReportMetric(raw.Seconds()/rpc.Seconds(), "jsonrpc/raw")
	b.ReportMetric(raw.Seconds()/api.Seconds(), "goapi/raw")
}
