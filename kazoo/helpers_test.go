package kazoo

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/valyala/fastjson"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/internal/netstring"
	"github.com/sipside/sipside/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var quiet = slog.New(slog.DiscardHandler)

// testExchange is a topic exchange the tests publish and query through.
const testExchange = "sipside_kazoo_test"

// brokerURL returns the shared RabbitMQ, with the test exchange declared.
func brokerURL(t testing.TB) string {
	t.Helper()
	u := testenv.SharedRabbitMQ(t).URL
	conn, err := amqp.Dial(u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(testExchange, "topic", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	return u
}

// startBridge runs a bridge with all three listeners on free loopback ports until the
// test ends, and waits for its broker connection.
func startBridge(t testing.TB, u string, edit func(*Config), opts Options) (*Bridge, *metrics.Registry) {
	t.Helper()
	cfg := Config{}
	cfg.AMQP.Brokers = []string{u}
	cfg.JSONRPC.Listen = []string{"tcp:127.0.0.1:0", "netstring:127.0.0.1:0", "http://127.0.0.1:0"}
	if edit != nil {
		edit(&cfg)
	}
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New()
	}
	b, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	if err := b.Ready(rctx); err != nil {
		t.Fatal(err)
	}
	// Listeners start in Run; wait for them.
	waitFor(t, 5*time.Second, "listeners", func() bool { return len(b.Addrs()) == len(cfg.JSONRPC.Listen) })
	return b, opts.Metrics
}

// responder answers requests on testExchange/key: direct-reply-to style (ReplyTo +
// CorrelationId), or Kazoo style (reply on targeted/Server-ID with the Msg-ID) when
// kazoo is set. It answers at once, which is what broke Kamailio's kazoo module.
// The reply body echoes the request's "q" member. With twice, every reply is sent
// twice (the second matches no waiter any more).
type responder struct {
	kazoo, twice bool
	delay        time.Duration // before each reply
	pad          int           // bytes of padding in each reply
}

func startResponder(t testing.TB, u, key string, r *responder) {
	t.Helper()
	q, ch := bindQueue(t, u, key)
	ds, err := ch.Consume(q, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		var p fastjson.Parser
		for d := range ds {
			v, err := p.ParseBytes(d.Body)
			if err != nil {
				continue
			}
			qv := string(v.GetStringBytes("q"))
			var body []byte
			exchange, rk := "", d.ReplyTo
			if r.kazoo {
				exchange, rk = TargetedExchange, string(v.GetStringBytes("Server-ID"))
				body = []byte(`{"Event-Category":"sipcmd","Event-Name":"query_resp","Msg-ID":` + strconv.Quote(string(v.GetStringBytes("Msg-ID"))) + `,"Result":{"echo":` + strconv.Quote(qv) + `}}`)
			} else {
				pad := ""
				if r.pad > 0 {
					pad = `,"pad":"` + strings.Repeat("p", r.pad) + `"`
				}
				body = []byte(`{"echo":` + strconv.Quote(qv) + pad + `}`)
			}
			n := 1
			if r.twice {
				n = 2
			}
			reply := func() {
				for range n {
					ch.Publish(exchange, rk, false, false, amqp.Publishing{CorrelationId: d.CorrelationId, ContentType: "application/json", Body: body})
				}
			}
			if r.delay > 0 {
				// Concurrent, so that the delay is latency, not a throughput cap.
				go func() { time.Sleep(r.delay); reply() }()
				continue
			}
			reply()
		}
	}()
}

// rawCall speaks like OpenSIPS's jsonrpc_request: new connection, raw JSON, no
// half-close, read until one complete JSON value.
func rawCall(t testing.TB, addr string, req string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	return readJSONValue(t, c)
}

func readJSONValue(t testing.TB, c net.Conn) string {
	t.Helper()
	var buf []byte
	tmp := make([]byte, 4096)
	for {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if k, _ := scanJSON(buf); k > 0 {
			return string(bytes.TrimSpace(buf[:k]))
		}
		if err != nil {
			if err == io.EOF && len(buf) == 0 {
				return ""
			}
			t.Fatalf("read: %v after %q", err, buf)
		}
	}
}

// nsConn is a jsonrpcc/janssonrpcc-style persistent netstring connection. It is
// used from one goroutine at a time.
type nsConn struct {
	c    net.Conn
	r    *netstring.Reader
	wbuf []byte // frame of the last send, reused so the client costs the benchmarks little
}

func dialNetstring(t testing.TB, addr string) *nsConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &nsConn{c: c, r: netstring.NewReader(c, 1<<20)}
}

func (n *nsConn) send(t testing.TB, payload string) {
	t.Helper()
	n.wbuf = strconv.AppendInt(n.wbuf[:0], int64(len(payload)), 10)
	n.wbuf = append(n.wbuf, ':')
	n.wbuf = append(n.wbuf, payload...)
	n.wbuf = append(n.wbuf, ',')
	if _, err := n.c.Write(n.wbuf); err != nil {
		t.Fatal(err)
	}
}

func (n *nsConn) recv(t testing.TB) string {
	t.Helper()
	n.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := n.r.Next()
	if err != nil {
		t.Fatalf("netstring read: %v", err)
	}
	return string(p)
}

// waitFor is testenv.WaitFor.
var waitFor = testenv.WaitFor

// field parses a JSON response and returns one member as JSON text.
func field(t testing.TB, resp string, path ...string) string {
	t.Helper()
	v, err := fastjson.Parse(resp)
	if err != nil {
		t.Fatalf("response %q: %v", resp, err)
	}
	m := v.Get(path...)
	if m == nil {
		return ""
	}
	return m.String()
}

// viaProxy returns broker URL u pointed at the proxy.
func viaProxy(t testing.TB, u string, p *testenv.CutProxy) string {
	t.Helper()
	uri, err := amqp.ParseURI(u)
	if err != nil {
		t.Fatal(err)
	}
	h, port, _ := net.SplitHostPort(p.Addr())
	uri.Host = h
	uri.Port, _ = strconv.Atoi(port)
	return uri.String()
}
