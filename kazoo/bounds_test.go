package kazoo

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/testenv"
)

// voidKey has a queue and no consumer: queries to it wait for their timeout.
func voidKey(t *testing.T, u, key string) {
	t.Helper()
	ch := testenv.AMQPChannel(t, u)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, key, testExchange, false, nil); err != nil {
		t.Fatal(err)
	}
}

func voidQuery(id int, key string, timeoutMS int64) string {
	return `{"jsonrpc":"2.0","id":` + strconv.Itoa(id) + `,"method":"amqp.query","params":{"exchange":"` + testExchange +
		`","routing_key":"` + key + `","payload":{"n":` + strconv.Itoa(id) + `},"timeout_ms":` + strconv.FormatInt(timeoutMS, 10) + `}}`
}

// Callers that flood the bridge with queries and walk away cannot pile up
// waiters: timeout_ms has a ceiling, queries in flight have a cap, and a
// query ends with its caller's connection.
func TestQueryBounds(t *testing.T) {
	u := brokerURL(t)
	voidKey(t, u, "bounds.void")
	b, reg := startBridge(t, u, func(c *Config) {
		c.AMQP.MaxQueries = 300
		c.AMQP.MaxQueryTimeout = config.Duration(20 * time.Second)
	}, Options{})
	addrs := b.Addrs()
	inflight := func() int64 { return b.q.waiting.Load() }

	t.Run("timeout_ms above max_query_timeout", func(t *testing.T) {
		resp := rawCall(t, addrs[ListenTCP], voidQuery(1, "bounds.void", 999999999999))
		if field(t, resp, "error", "code") != strconv.Itoa(CodeInvalidParams) || !strings.Contains(resp, "max_query_timeout") {
			t.Fatalf("%s", resp)
		}
	})

	goroutines := runtime.NumGoroutine()
	var heapIdle runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&heapIdle)

	t.Run("netstring callers hang up", func(t *testing.T) {
		// 5 connections × 100 pipelined queries: 300 are admitted, the rest
		// refused at once; then every connection closes.
		var conns []*nsConn
		for c := 0; c < 5; c++ {
			n := dialNetstring(t, addrs[ListenNetstring])
			conns = append(conns, n)
			for i := 0; i < 100; i++ {
				n.send(t, voidQuery(c*100+i, "bounds.void", 15000))
			}
		}
		waitFor(t, 10*time.Second, "300 queries admitted, 200 refused", func() bool {
			return inflight() == 300 && counterValue(t, reg, "sipside_amqp_queries_refused_total") == 200
		})
		n := dialNetstring(t, addrs[ListenNetstring])
		n.send(t, voidQuery(1000, "bounds.void", 15000))
		if resp := n.recv(t); field(t, resp, "error", "code") != strconv.Itoa(CodeBusy) || !strings.Contains(resp, "max_queries") {
			t.Fatalf("query beyond max_queries: %s", resp)
		}
		conns = append(conns, n)
		// While the cap is reached, nothing else waits for a slot: a query
		// is refused, a publish goes through.
		resp := rawCall(t, addrs[ListenTCP], `{"jsonrpc":"2.0","id":9,"method":"amqp.publish","params":{"exchange":"`+testExchange+`","routing_key":"bounds.void","payload":{}}}`)
		if !strings.Contains(resp, "confirmed") {
			t.Errorf("publish at the query cap: %s", resp)
		}
		for _, n := range conns {
			n.c.Close()
		}
		waitFor(t, 5*time.Second, "every abandoned query gone", func() bool { return inflight() == 0 })
		if got := counterValue(t, reg, "sipside_amqp_queries_abandoned_total"); got != 300 {
			t.Errorf("sipside_amqp_queries_abandoned_total = %v, want 300", got)
		}
	})

	t.Run("raw tcp caller hangs up", func(t *testing.T) {
		c, err := net.Dial("tcp", addrs[ListenTCP])
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(voidQuery(1, "bounds.void", 15000)))
		waitFor(t, 5*time.Second, "query admitted", func() bool { return inflight() == 1 })
		c.Close()
		waitFor(t, 5*time.Second, "query gone with its connection", func() bool { return inflight() == 0 })
	})

	t.Run("raw tcp pipelined requests still answered", func(t *testing.T) {
		// The watch reads ahead: a second request sent while the first
		// runs must not be lost.
		c, err := net.Dial("tcp", addrs[ListenTCP])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte(voidQuery(1, "bounds.void", 300)))
		time.Sleep(50 * time.Millisecond) // the second request arrives while the first waits
		c.Write([]byte(`{"jsonrpc":"2.0","id":2,"method":"sipside.ping"}`))
		// Both replies may come in one read: split them here.
		var buf []byte
		tmp := make([]byte, 4096)
		var values []string
		for len(values) < 2 {
			k, _ := scanJSON(buf)
			if k > 0 {
				values = append(values, string(bytes.TrimSpace(buf[:k])))
				buf = buf[k:]
				continue
			}
			n, err := c.Read(tmp)
			if err != nil {
				t.Fatalf("read: %v after %q", err, values)
			}
			buf = append(buf, tmp[:n]...)
		}
		first, second := values[0], values[1]
		if field(t, first, "error", "code") != strconv.Itoa(CodeTimeout) || field(t, second, "result") != `"pong"` {
			t.Fatalf("got %s then %s", first, second)
		}
	})

	t.Run("http caller hangs up", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addrs[ListenHTTP]+"/", strings.NewReader(voidQuery(1, "bounds.void", 15000)))
		c, err := net.Dial("tcp", addrs[ListenHTTP])
		if err != nil {
			t.Fatal(err)
		}
		req.Write(c)
		waitFor(t, 5*time.Second, "query admitted", func() bool { return inflight() == 1 })
		c.Close()
		waitFor(t, 5*time.Second, "query gone with its connection", func() bool { return inflight() == 0 })
	})

	// What the flood cost is given back.
	waitFor(t, 10*time.Second, "goroutines back near idle", func() bool { return runtime.NumGoroutine() <= goroutines+20 })
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if after.HeapInuse > 2*heapIdle.HeapInuse+4<<20 {
		t.Errorf("heap in use %d after the flood, %d before", after.HeapInuse, heapIdle.HeapInuse)
	}
}

// A deeply nested request gets a short error on every listener, not the
// parser's text repeated per level.
func TestDeeplyNestedRequest(t *testing.T) {
	b, _ := startBridge(t, brokerURL(t), nil, Options{})
	addrs := b.Addrs()
	deep := `{"jsonrpc":"2.0","id":1,"method":"sipside.ping","params":{"a":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}}`
	n := dialNetstring(t, addrs[ListenNetstring])
	n.send(t, deep)
	resp, err := http.Post("http://"+addrs[ListenHTTP]+"/", "application/json", strings.NewReader(deep))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for kind, got := range map[string]string{ListenNetstring: n.recv(t), ListenHTTP: string(body), ListenTCP: rawCall(t, addrs[ListenTCP], deep)} {
		if len(got) > 300 || !strings.Contains(got, "nested deeper than 64") || field(t, got, "error", "code") != strconv.Itoa(CodeParse) {
			t.Errorf("%s: %d bytes: %.300s", kind, len(got), got)
		}
	}
}

func counterValue(t *testing.T, reg interface {
	WriteTo(io.Writer) (int64, error)
}, series string) float64 {
	t.Helper()
	var buf bytes.Buffer
	reg.WriteTo(&buf)
	for _, line := range strings.Split(buf.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// A flood of broken frames and refused connections is counted one by one
// and logged at most once a second per reason and source.
func TestRefusalsLoggedAtBoundedRate(t *testing.T) {
	var logs testenv.Buffer
	b, reg := startBridge(t, brokerURL(t), func(c *Config) { c.JSONRPC.MaxConns = 4 },
		Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	addrs := b.Addrs()
	const flood = 300
	start := time.Now()
	for i := 0; i < flood; i++ {
		c, err := net.Dial("tcp", addrs[ListenNetstring])
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("5:abc")) // a colon where the comma belongs: malformed
		c.Write([]byte("de;"))
		io.ReadAll(c)
		c.Close()
		// A raw request cut short by the sender's close.
		rc, err := net.Dial("tcp", addrs[ListenTCP])
		if err != nil {
			t.Fatal(err)
		}
		rc.Write([]byte(`{"jsonrpc":"2.0","id":1,"method":`))
		rc.(*net.TCPConn).CloseWrite()
		io.ReadAll(rc)
		rc.Close()
	}
	elapsed := time.Since(start)
	waitFor(t, 5*time.Second, "every broken frame counted", func() bool {
		return counterValue(t, reg, `sipside_jsonrpc_frame_errors_total{listener="netstring",reason="malformed"}`) == flood
	})
	// Per second of flood, one line per reason and source at most (+1 for
	// the second that was started).
	limit := int(elapsed/time.Second) + 1
	for _, line := range []string{`reason=malformed`, `reason=truncated`} {
		if n := strings.Count(logs.String(), line); n == 0 || n > limit {
			t.Errorf("%d log lines with %s for %d refusals in %v; want 1..%d", n, line, flood, elapsed, limit)
		}
	}
	if !strings.Contains(logs.String(), "suppressed=") && elapsed > time.Second {
		t.Errorf("no suppressed count in the log:\n%.2000s", logs.String())
	}
	// Refused connections: more than max_conns at once.
	var held []net.Conn
	for i := 0; i < 4+flood/10; i++ {
		c, err := net.Dial("tcp", addrs[ListenNetstring])
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	waitFor(t, 5*time.Second, "refused connections counted", func() bool {
		return counterValue(t, reg, `sipside_jsonrpc_rejected_connections_total{listener="netstring",reason="too_many_connections"}`) == flood/10
	})
	for _, c := range held {
		c.Close()
	}
	if n := strings.Count(logs.String(), "reason=too_many_connections"); n == 0 || n > 2 {
		t.Errorf("%d log lines for %d refused connections", n, flood/10)
	}
}
