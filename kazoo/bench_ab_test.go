package kazoo

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// BenchmarkQueryAB alternates rounds of amqp.query over netstring (one
// persistent connection per caller, as janssonrpcc) and of the bare
// amqp091-go baseline (one channel, direct reply-to, no confirms), against
// the same instant responder, so that both see the same machine. It reports
// ratio (sipside ÷ baseline queries/s) and each side's rate and p99. Run with
// e.g. -benchtime 20x.
func BenchmarkQueryAB(b *testing.B) {
	u := brokerURL(b)
	startResponder(b, u, "bench.q", &responder{})
	br, _ := startBridge(b, u, nil, Options{})
	base := queryBaseline(b, u)
	for _, callers := range []int{1, 16, 128} {
		b.Run("callers="+strconv.Itoa(callers), func(b *testing.B) {
			conns := make([]*nsConn, callers)
			for i := range conns {
				conns[i] = dialNetstring(b, br.Addrs()[ListenNetstring])
			}
			side := func(i, j int) error {
				c := conns[i]
				c.send(b, `{"id":`+strconv.Itoa(j)+`,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"bench.q","payload":{"q":"x"},"timeout_ms":10000}}`)
				if resp := c.recv(b); !strings.Contains(resp, `"echo":"x"`) {
					return fmt.Errorf("reply %s", resp)
				}
				return nil
			}
			abRounds(b, callers, 200/callers+10, side, base)
		})
	}
}

// abRounds alternates rounds of per calls by each of callers goroutines on
// the sipside path and on the baseline path, and reports the ratio of their
// rates and each one's rate and p99.
func abRounds(b *testing.B, callers, per int, sipside, baseline func(i, j int) error) {
	var st, bt time.Duration
	var sl, bl []time.Duration
	var mu sync.Mutex
	rec := func(l *[]time.Duration) func(int, time.Duration) {
		return func(_ int, d time.Duration) { mu.Lock(); *l = append(*l, d); mu.Unlock() }
	}
	b.ResetTimer()
	for range b.N {
		st += drive(b, callers, per, sipside, rec(&sl))
		bt += drive(b, callers, per, baseline, rec(&bl))
	}
	b.StopTimer()
	n := float64(b.N * callers * per)
	b.ReportMetric(bt.Seconds()/st.Seconds(), "ratio")
	b.ReportMetric(n/st.Seconds(), "sipside-q/s")
	b.ReportMetric(n/bt.Seconds(), "baseline-q/s")
	b.ReportMetric(float64(p99(sl).Microseconds()), "sipside-p99-µs")
	b.ReportMetric(float64(p99(bl).Microseconds()), "baseline-p99-µs")
}

func p99(l []time.Duration) time.Duration {
	if len(l) == 0 {
		return 0
	}
	slices.Sort(l)
	return l[len(l)*99/100]
}

// queryBaseline is a bare amqp091-go requester: one channel consuming
// direct reply-to, no confirms, waiters keyed by correlation id.
func queryBaseline(b *testing.B, u string) func(i, j int) error {
	conn, err := amqp.Dial(u)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
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
	return func(int, int) error {
		id := newUUID()
		w := make(chan struct{})
		mu.Lock()
		waiters[id] = w
		mu.Unlock()
		if err := ch.Publish(testExchange, "bench.q", false, false, amqp.Publishing{ReplyTo: rabbitDirectReplyTo, CorrelationId: id, Body: []byte(`{"q":"x"}`)}); err != nil {
			return err
		}
		select {
		case <-w:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("no reply")
		}
	}
}
