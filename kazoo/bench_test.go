package kazoo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
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
			closedLoop(b, callers, func(i, j int) error {
				c := conns[i]
				c.send(b, fmt.Sprintf(`{"id":%d,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"bench.q","payload":{"q":"x"},"timeout_ms":10000}}`, j))
				if resp := c.recv(b); !strings.Contains(resp, `"echo":"x"`) {
					return fmt.Errorf("reply %s", resp)
				}
				return nil
			})
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
			closedLoop(b, callers, func(int, int) error {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return err
				}
				c.Write([]byte(`{"id":347939454,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"bench.q","payload":{"q":"x"},"timeout_ms":10000}}`))
				readJSONValue(b, c)
				c.Close()
				return nil
			})
		})
	}
}

// errNotCounted is a closedLoop call that failed in a way the benchmark
// tolerates: it goes on, without the call's latency.
var errNotCounted = errors.New("not counted")

// closedLoop runs callers goroutines that each make b.N/callers+1 calls in a
// row, as script workers do, and reports p50, p99 and calls/s. call(i, j) is
// caller i's j-th call; an error other than errNotCounted stops that caller.
func closedLoop(b *testing.B, callers int, call func(i, j int) error) {
	lat := make([][]time.Duration, callers)
	b.ResetTimer()
	elapsed := drive(b, callers, b.N/callers+1, call, func(i int, d time.Duration) { lat[i] = append(lat[i], d) })
	b.StopTimer()
	reportLatency(b, lat, elapsed)
}

// drive makes per calls from each of callers goroutines, hands each counted
// call's latency to record (caller i only ever records into its own slot), and
// returns the wall time of the whole run.
func drive(b *testing.B, callers, per int, call func(i, j int) error, record func(i int, d time.Duration)) time.Duration {
	var wg sync.WaitGroup
	start := time.Now()
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range per {
				t0 := time.Now()
				switch err := call(i, j); {
				case err == nil:
					if record != nil {
						record(i, time.Since(t0))
					}
				case !errors.Is(err, errNotCounted):
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
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
	const callers = 16
	rpc, api, raw := publishPaths(b, callers)
	b.Run("sipside-jsonrpc", func(b *testing.B) { closedLoop(b, callers, rpc) })
	b.Run("sipside-go-api", func(b *testing.B) { closedLoop(b, callers, api) })
	b.Run("raw-amqp091", func(b *testing.B) { closedLoop(b, callers, raw) })
}

// publishPaths are the three ways the publish benchmarks send the same payload to
// the same bound queue: amqp.publish over one netstring connection per caller,
// Bridge.Publish, and raw amqp091-go with confirms on one channel. Each call is
// caller i's j-th publish and returns when it is confirmed.
func publishPaths(b *testing.B, callers int) (rpc, api, raw func(i, j int) error) {
	u := brokerURL(b)
	ch := testenv.AMQPChannel(b, u)
	q, _ := ch.QueueDeclare("", false, true, true, false, amqp.Table{"x-max-length": int32(1000)})
	ch.QueueBind(q.Name, "bench.pub", testExchange, false, nil)
	rch := testenv.AMQPChannel(b, u)
	rch.Confirm(false)
	br, _ := startBridge(b, u, nil, Options{})
	const payload = `{"Event-Category":"sipcmd","Event-Name":"lookup","Data":{"user":"alice","ip":"192.0.2.10"}}`
	conns := make([]*nsConn, callers)
	for i := range conns {
		conns[i] = dialNetstring(b, br.Addrs()[ListenNetstring])
	}
	rpc = func(i, j int) error {
		conns[i].send(b, `{"id":`+strconv.Itoa(j)+`,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":"sipside_kazoo_test","routing_key":"bench.pub","payload":`+payload+`}}`)
		if resp := conns[i].recv(b); !strings.Contains(resp, `"confirmed"`) {
			return fmt.Errorf("reply %s", resp)
		}
		return nil
	}
	api = func(int, int) error {
		_, err := br.Publish(context.Background(), PublishRequest{Exchange: testExchange, RoutingKey: "bench.pub", Body: []byte(payload)})
		return err
	}
	raw = func(int, int) error {
		dc, err := rch.PublishWithDeferredConfirm(testExchange, "bench.pub", true, false, amqp.Publishing{ContentType: "application/json", Body: []byte(payload)})
		if err != nil {
			return err
		}
		if !dc.Wait() {
			return errors.New("publish nacked")
		}
		return nil
	}
	return rpc, api, raw
}

// BenchmarkQueryBaseline is the floor for BenchmarkQuery: the same request and
// responder, but a bare amqp091-go client (one channel, direct reply-to, no confirms,
// no JSON-RPC hop). What sipside adds is the difference.
func BenchmarkQueryBaseline(b *testing.B) {
	u := brokerURL(b)
	startResponder(b, u, "bench.q", &responder{})
	call := queryBaseline(b, u)
	for _, callers := range []int{1, 16, 128} {
		b.Run("amqp091/callers="+strconv.Itoa(callers), func(b *testing.B) {
			closedLoop(b, callers, call)
		})
	}
}

// BenchmarkPublishAB alternates rounds (16 callers × 50 messages) of amqp.publish over
// netstring JSON-RPC, Bridge.Publish, and raw amqp091-go confirmed publishes, so that
// all three see the same load; it reports each one's messages/s and the ratios to raw.
// Run with e.g. -benchtime 20x.
func BenchmarkPublishAB(b *testing.B) {
	const callers, per = 16, 50
	rpcPub, apiPub, rawPub := publishPaths(b, callers)
	var rpc, api, raw time.Duration
	b.ResetTimer()
	for range b.N {
		rpc += drive(b, callers, per, rpcPub, nil)
		api += drive(b, callers, per, apiPub, nil)
		raw += drive(b, callers, per, rawPub, nil)
	}
	n := float64(b.N * callers * per)
	b.ReportMetric(n/rpc.Seconds(), "jsonrpc-msg/s")
	b.ReportMetric(n/api.Seconds(), "goapi-msg/s")
	b.ReportMetric(n/raw.Seconds(), "raw-msg/s")
	b.ReportMetric(raw.Seconds()/rpc.Seconds(), "jsonrpc/raw")
	b.ReportMetric(raw.Seconds()/api.Seconds(), "goapi/raw")
}
