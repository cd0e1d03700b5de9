package kazoo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/testenv"
)

// The same query over the three listeners, framed as each proxy frames it.
func TestQueryOverEveryListener(t *testing.T) {
	u := brokerURL(t)
	startResponder(t, u, "svc.echo", &responder{})
	b, _ := startBridge(t, u, nil, Options{})
	addrs := b.Addrs()
	const params = `{"exchange":"sipside_kazoo_test","routing_key":"svc.echo","payload":{"q":"alice"}}`

	t.Run("opensips jsonrpc raw tcp", func(t *testing.T) {
		resp := rawCall(t, addrs[ListenTCP], `{"id":347939454,"jsonrpc":"2.0","method":"amqp.query","params":`+params+`}`)
		if got := field(t, resp, "result", "echo"); got != `"alice"` || field(t, resp, "id") != "347939454" {
			t.Fatalf("response %s", resp)
		}
	})
	t.Run("jsonrpcc netstring", func(t *testing.T) {
		c := dialNetstring(t, addrs[ListenNetstring])
		c.send(t, `{ "id": 2, "jsonrpc": "2.0", "method": "amqp.query", "params": `+params+` }`)
		resp := c.recv(t)
		if field(t, resp, "result", "echo") != `"alice"` || field(t, resp, "id") != "2" {
			t.Fatalf("response %s", resp)
		}
	})
	t.Run("http_client POST", func(t *testing.T) {
		res, err := http.Post("http://"+addrs[ListenHTTP]+"/rpc", "application/json",
			strings.NewReader(`{"jsonrpc":"2.0","method":"amqp.query","params":`+params+`,"id":7}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || bytes.Contains(body, []byte("\n")) || field(t, string(body), "result", "echo") != `"alice"` {
			t.Fatalf("%d %s", res.StatusCode, body)
		}
	})
}

// Pipelined requests on one netstring connection are answered by id as they finish: a
// query that waits for its timeout does not hold up the ones behind it.
func TestNetstringPipelineNoHeadOfLineBlocking(t *testing.T) {
	u := brokerURL(t)
	startResponder(t, u, "svc.fast", &responder{})
	// svc.slow has a queue but nobody answers, so the query waits out its timeout.
	conn, _ := amqp.Dial(u)
	defer conn.Close()
	ch, _ := conn.Channel()
	q, _ := ch.QueueDeclare("", false, true, true, false, nil)
	ch.QueueBind(q.Name, "svc.slow", testExchange, false, nil)

	b, _ := startBridge(t, u, nil, Options{})
	c := dialNetstring(t, b.Addrs()[ListenNetstring])
	c.send(t, `{"id":1,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"svc.slow","payload":{"q":"s"},"timeout_ms":1500}}`)
	const n = 50
	for i := 2; i <= n+1; i++ {
		c.send(t, fmt.Sprintf(`{"id":%d,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"svc.fast","payload":{"q":"f%d"}}}`, i, i))
	}
	seen := map[string]bool{}
	for range n {
		resp := c.recv(t)
		id := field(t, resp, "id")
		if id == "1" {
			t.Fatalf("the slow query was answered before the fast ones: %s", resp)
		}
		if field(t, resp, "result", "echo") != `"f`+id+`"` {
			t.Fatalf("reply for id %s carries someone else's answer: %s", id, resp)
		}
		seen[id] = true
	}
	resp := c.recv(t)
	if field(t, resp, "id") != "1" || field(t, resp, "error", "code") != strconv.Itoa(CodeTimeout) {
		t.Fatalf("slow query: %s", resp)
	}
	if len(seen) != n {
		t.Fatalf("%d distinct replies, want %d", len(seen), n)
	}
}

func TestPublishConfirmed(t *testing.T) {
	u := brokerURL(t)
	b, _ := startBridge(t, u, nil, Options{})
	conn, _ := amqp.Dial(u)
	defer conn.Close()
	ch, _ := conn.Channel()
	q, _ := ch.QueueDeclare("", false, true, true, false, nil)
	ch.QueueBind(q.Name, "pub.#", testExchange, false, nil)
	resp := rawCall(t, b.Addrs()[ListenTCP], `{"id":1,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":"sipside_kazoo_test","routing_key":"pub.a","payload":{"Event-Category":"sipcmd","Data":{"user":"alice"}},"headers":{"X-Custom":"abc","X-N":3},"persistent":true}}`)
	if field(t, resp, "result", "status") != `"confirmed"` {
		t.Fatalf("publish: %s", resp)
	}
	d, ok, err := ch.Get(q.Name, true)
	if err != nil || !ok {
		t.Fatalf("message not in the queue: %v", err)
	}
	if string(d.Body) != `{"Event-Category":"sipcmd","Data":{"user":"alice"}}` || d.ContentType != "application/json" ||
		d.Headers["X-Custom"] != "abc" || d.DeliveryMode != amqp.Persistent {
		t.Fatalf("got %s %q %v %d", d.Body, d.ContentType, d.Headers, d.DeliveryMode)
	}
	// A string payload is the body itself.
	resp = rawCall(t, b.Addrs()[ListenTCP], `{"id":2,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":"sipside_kazoo_test","routing_key":"pub.b","payload":"plain text","content_type":"text/plain"}}`)
	if field(t, resp, "result", "status") != `"confirmed"` {
		t.Fatalf("publish: %s", resp)
	}
	d, ok, _ = ch.Get(q.Name, true)
	if !ok || string(d.Body) != "plain text" || d.ContentType != "text/plain" {
		t.Fatalf("got %q %q", d.Body, d.ContentType)
	}
}

// Kazoo compatibility: the request carries Msg-ID/Server-ID/Node/App-Name/App-Version
// and a Kazoo-style responder answers on the targeted exchange.
func TestKazooQuery(t *testing.T) {
	u := brokerURL(t)
	startResponder(t, u, "kz.lookup", &responder{kazoo: true})
	b, _ := startBridge(t, u, func(c *Config) { c.AMQP.Kazoo = true; c.AMQP.Node = "sipside@test" }, Options{Version: "1.2.3"})
	c := dialNetstring(t, b.Addrs()[ListenNetstring])
	c.send(t, `{"id":2,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"kz.lookup","payload":{"Event-Category":"sipcmd","Event-Name":"lookup","q":"bob"}}}`)
	resp := c.recv(t)
	if field(t, resp, "result", "Result", "echo") != `"bob"` || field(t, resp, "result", "Event-Name") != `"query_resp"` {
		t.Fatalf("kazoo reply: %s", resp)
	}

	// What the responder saw: the fields Kamailio's kazoo module adds.
	conn, _ := amqp.Dial(u)
	defer conn.Close()
	ch, _ := conn.Channel()
	q, _ := ch.QueueDeclare("", false, true, true, false, nil)
	ch.QueueBind(q.Name, "kz.pub", testExchange, false, nil)
	resp = rawCall(t, b.Addrs()[ListenTCP], `{"id":3,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":"sipside_kazoo_test","routing_key":"kz.pub","payload":{"Event-Category":"sipcmd"}}}`)
	msgID := strings.Trim(field(t, resp, "result", "msg_id"), `"`)
	if len(msgID) != 36 {
		t.Fatalf("publish: %s", resp)
	}
	d, ok, _ := ch.Get(q.Name, true)
	if !ok {
		t.Fatal("kazoo publish not queued")
	}
	body := string(d.Body)
	for _, want := range []string{`"Msg-ID":"` + msgID + `"`, `"Server-ID":"sipside@test-`, `"Node":"sipside@test"`, `"App-Name":"sipside"`, `"App-Version":"1.2.3"`, `"Event-Category":"sipcmd"`} {
		if !strings.Contains(body, want) {
			t.Errorf("kazoo body %s lacks %s", body, want)
		}
	}
}

// Bad input on every framing gets a clear error or a counted drop, and never hangs.
func TestBadInput(t *testing.T) {
	u := brokerURL(t)
	startResponder(t, u, "svc.twice", &responder{twice: true})
	// svc.void has a queue and no consumer: queries to it time out.
	conn, _ := amqp.Dial(u)
	defer conn.Close()
	vch, _ := conn.Channel()
	vq, _ := vch.QueueDeclare("", false, true, true, false, nil)
	vch.QueueBind(vq.Name, "svc.void", testExchange, false, nil)
	b, reg := startBridge(t, u, func(c *Config) { c.JSONRPC.MaxFrame = 1024 }, Options{})
	addrs := b.Addrs()
	for _, tc := range []struct {
		name, req string
		code      int
	}{
		{"malformed json", `{"id":1,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":}}`, CodeParse},
		{"not an object", `[{"id":1,"method":"sipside.ping"}]`, CodeInvalidRequest},
		{"unknown method", `{"id":1,"jsonrpc":"2.0","method":"amqp.frobnicate","params":{}}`, CodeMethodNotFound},
		{"missing method", `{"id":1,"jsonrpc":"2.0","params":{}}`, CodeInvalidRequest},
		{"positional params", `{"id":1,"jsonrpc":"2.0","method":"amqp.publish","params":["x","k",{}]}`, CodeInvalidParams},
		{"missing routing_key", `{"id":1,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":"x","payload":{}}}`, CodeInvalidParams},
		{"missing payload", `{"id":1,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"x","routing_key":"k"}}`, CodeInvalidParams},
		{"bad timeout", `{"id":1,"jsonrpc":"2.0","method":"amqp.query","params":{"routing_key":"k","payload":{},"timeout_ms":-5}}`, CodeInvalidParams},
		{"no such exchange", `{"id":1,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":"sipside-nope","routing_key":"k","payload":{}}}`, CodeNoExchange},
		{"unroutable", `{"id":1,"jsonrpc":"2.0","method":"amqp.publish","params":{"exchange":"sipside_kazoo_test","routing_key":"nobody.listens","payload":{}}}`, CodeUnroutable},
		{"query unroutable", `{"id":1,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"nobody.listens","payload":{},"timeout_ms":10000}}`, CodeUnroutable},
		{"reply never comes", `{"id":1,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"svc.void","payload":{},"timeout_ms":200}}`, CodeTimeout},
		{"unknown ack id", `{"id":1,"jsonrpc":"2.0","method":"amqp.ack","params":{"id":"9-9-9"}}`, CodeUnknownID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := rawCall(t, addrs[ListenTCP], tc.req)
			code := field(t, resp, "error", "code")
			if tc.code != 0 && code != strconv.Itoa(tc.code) {
				t.Fatalf("code %s, want %d: %s", code, tc.code, resp)
			}
			if tc.code == 0 && code == "" {
				t.Fatalf("want an error: %s", resp)
			}
			if msg := field(t, resp, "error", "message"); len(msg) < 10 {
				t.Fatalf("error message says too little: %s", resp)
			}
		})
	}
	t.Run("broken netstring", func(t *testing.T) {
		c := dialNetstring(t, addrs[ListenNetstring])
		c.c.Write([]byte(`12x{"id":1},`))
		if resp := c.recv(t); field(t, resp, "error", "code") != strconv.Itoa(CodeParse) {
			t.Fatalf("%s", resp)
		}
	})
	t.Run("oversized netstring", func(t *testing.T) {
		c := dialNetstring(t, addrs[ListenNetstring])
		c.c.Write([]byte(`999999:{`))
		if resp := c.recv(t); field(t, resp, "error", "code") != strconv.Itoa(CodeBusy) {
			t.Fatalf("%s", resp)
		}
	})
	t.Run("oversized raw", func(t *testing.T) {
		resp := rawCall(t, addrs[ListenTCP], `{"id":1,"params":"`+strings.Repeat("a", 2000)+`"}`)
		if field(t, resp, "error", "code") != strconv.Itoa(CodeBusy) {
			t.Fatalf("%s", resp)
		}
	})
	t.Run("oversized http", func(t *testing.T) {
		res, err := http.Post("http://"+addrs[ListenHTTP]+"/", "application/json", strings.NewReader(strings.Repeat(" ", 2000)))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d", res.StatusCode)
		}
	})
	t.Run("notification gets no reply", func(t *testing.T) {
		c, _ := net.Dial("tcp", addrs[ListenTCP])
		defer c.Close()
		c.Write([]byte(`{"id":null,"jsonrpc":"2.0","method":"sipside.ping","params":{}}{"id":5,"jsonrpc":"2.0","method":"sipside.ping"}`))
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if resp := readJSONValue(t, c); field(t, resp, "id") != "5" {
			t.Fatalf("first reply %s, want the one for id 5 only", resp)
		}
	})
	t.Run("reply with unknown correlation id", func(t *testing.T) {
		drops := reg.Counter("sipside_amqp_query_replies_dropped_total", "", "reason").With("unknown_id")
		before := drops.Value()
		resp := rawCall(t, addrs[ListenTCP], `{"id":1,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"svc.twice","payload":{"q":"x"}}}`)
		if field(t, resp, "result", "echo") != `"x"` {
			t.Fatalf("%s", resp)
		}
		waitFor(t, 5*time.Second, "the second reply counted as dropped", func() bool { return drops.Value() > before })
	})
}

func TestAllowListAndConnectionLimit(t *testing.T) {
	u := brokerURL(t)
	t.Run("not allowed", func(t *testing.T) {
		b, _ := startBridge(t, u, func(c *Config) { c.JSONRPC.Allow = []string{"192.0.2.0/24"} }, Options{})
		resp := rawCall(t, b.Addrs()[ListenTCP], `{"id":1,"jsonrpc":"2.0","method":"sipside.ping"}`)
		if field(t, resp, "error", "code") != strconv.Itoa(CodeForbidden) {
			t.Fatalf("%s", resp)
		}
	})
	t.Run("too many connections", func(t *testing.T) {
		b, _ := startBridge(t, u, func(c *Config) { c.JSONRPC.MaxConns = 1 }, Options{})
		first := dialNetstring(t, b.Addrs()[ListenNetstring])
		first.send(t, `{"id":1,"jsonrpc":"2.0","method":"sipside.ping"}`)
		if resp := first.recv(t); field(t, resp, "result") != `"pong"` {
			t.Fatalf("%s", resp)
		}
		second := dialNetstring(t, b.Addrs()[ListenNetstring])
		if resp := second.recv(t); field(t, resp, "error", "code") != strconv.Itoa(CodeBusy) {
			t.Fatalf("%s", resp)
		}
	})
}

// recorder is a Deliverer that keeps what it got and fails while told to.
type recorder struct {
	mu   sync.Mutex
	msgs []Message
	fail int // fail this many deliveries first
}

func (r *recorder) Deliver(_ context.Context, m *Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return fmt.Errorf("proxy said no")
	}
	r.msgs = append(r.msgs, *m)
	return nil
}

func (r *recorder) got() []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Message(nil), r.msgs...)
}

func TestConsumerAckModes(t *testing.T) {
	u := brokerURL(t)
	recs := map[string]*recorder{"delivered": {fail: 1}, "script": {}, "immediate": {}}
	b, _ := startBridge(t, u, func(c *Config) {
		for _, mode := range []string{"delivered", "script", "immediate"} {
			c.AMQP.Consume = append(c.AMQP.Consume, ConsumeConfig{
				Exchange: testExchange, RoutingKey: "ev." + mode + ".#", Ack: mode, Queue: "sipside-test-" + mode,
				Deliver: "evapi:127.0.0.1:" + mode, Event: "E_" + mode, AckTimeout: config.Duration(3 * time.Second),
			})
		}
	}, Options{NewDeliverer: func(target string, _ Options) (Deliverer, error) {
		return recs[strings.TrimPrefix(target, "evapi:127.0.0.1:")], nil
	}})
	conn, _ := amqp.Dial(u)
	defer conn.Close()
	ch, _ := conn.Channel()
	for _, mode := range []string{"delivered", "script", "immediate"} {
		if err := ch.Publish(testExchange, "ev."+mode+".x", false, false, amqp.Publishing{Body: []byte(`{"m":"` + mode + `"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	// script: the message waits for amqp.ack; unacked it comes back after ack_timeout.
	waitFor(t, 5*time.Second, "script delivery", func() bool { return len(recs["script"].got()) >= 1 })
	first := recs["script"].got()[0]
	if first.AckID == "" || first.Event != "E_script" || first.RoutingKey != "ev.script.x" {
		t.Fatalf("script message %+v", first)
	}
	var second Message
	waitFor(t, 10*time.Second, "requeue after ack_timeout", func() bool {
		got := recs["script"].got()
		second = got[len(got)-1]
		return len(got) >= 2
	})
	// delivered: the first hand-over fails, the message is requeued and delivered again.
	waitFor(t, 10*time.Second, "redelivery after a failed hand-over", func() bool { return len(recs["delivered"].got()) == 1 })
	waitFor(t, 5*time.Second, "immediate delivery", func() bool { return len(recs["immediate"].got()) == 1 })
	resp := rawCall(t, b.Addrs()[ListenTCP], `{"id":1,"jsonrpc":"2.0","method":"amqp.ack","params":{"id":"`+second.AckID+`"}}`)
	if field(t, resp, "result") != `"acked"` {
		t.Fatalf("ack: %s", resp)
	}
	resp = rawCall(t, b.Addrs()[ListenTCP], `{"id":2,"jsonrpc":"2.0","method":"amqp.ack","params":{"id":"`+second.AckID+`"}}`)
	if field(t, resp, "error", "code") != strconv.Itoa(CodeUnknownID) {
		t.Fatalf("second ack: %s", resp)
	}
	// amqp.nack without requeue drops the message for good.
	before := len(recs["script"].got())
	ch.Publish(testExchange, "ev.script.y", false, false, amqp.Publishing{Body: []byte(`{"m":"nack me"}`)})
	var third Message
	waitFor(t, 5*time.Second, "third script delivery", func() bool {
		got := recs["script"].got()
		third = got[len(got)-1]
		return len(got) > before
	})
	resp = rawCall(t, b.Addrs()[ListenTCP], `{"id":4,"jsonrpc":"2.0","method":"amqp.nack","params":{"id":"`+third.AckID+`","requeue":false}}`)
	if field(t, resp, "result") != `"nacked"` {
		t.Fatalf("nack: %s", resp)
	}
	// Nothing left unacked on the broker.
	waitFor(t, 5*time.Second, "queues drained", func() bool {
		for _, mode := range []string{"delivered", "script"} {
			qi, err := ch.QueueDeclarePassive("sipside-test-"+mode, false, false, false, false, nil)
			if err != nil || qi.Messages != 0 {
				return false
			}
		}
		return true
	})
	resp = rawCall(t, b.Addrs()[ListenTCP], `{"id":3,"jsonrpc":"2.0","method":"sipside.status"}`)
	if field(t, resp, "result", "connected") != "true" || !strings.Contains(resp, `"queue":"sipside-test-script"`) {
		t.Fatalf("status: %s", resp)
	}
	for _, mode := range []string{"delivered", "script", "immediate"} {
		ch.QueueDelete("sipside-test-"+mode, false, false, false)
	}
}

// The first broker dies mid-traffic: queries in flight on it fail at once with a clear
// error (not a timeout), and the following ones run through the second broker.
func TestQueryFailover(t *testing.T) {
	u := brokerURL(t)
	startResponder(t, u, "fo.q", &responder{})
	uri, _ := amqp.ParseURI(u)
	target := net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
	a, bp := testenv.NewCutProxy(t, target), testenv.NewCutProxy(t, target)
	b, _ := startBridge(t, viaProxy(t, u, a), func(c *Config) {
		c.AMQP.Brokers = append(c.AMQP.Brokers, viaProxy(t, u, bp))
		c.AMQP.Heartbeat = config.Duration(time.Second)
	}, Options{})
	var mu sync.Mutex
	var ok, lost int
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := b.Query(context.Background(), QueryRequest{PublishRequest: PublishRequest{Exchange: testExchange, RoutingKey: "fo.q", Body: []byte(`{"q":"x"}`)}, Timeout: 5 * time.Second})
				mu.Lock()
				switch code := 0; {
				case err == nil:
					ok++
				default:
					code = toRPCError(err).Code
					if code != CodeUnconfirmed && code != CodeNotConnected {
						t.Errorf("query: code %d: %v", code, err)
					}
					lost++
				}
				mu.Unlock()
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return ok }
	waitFor(t, 10*time.Second, "queries through the first broker", func() bool { return count() > 200 })
	a.Cut()
	atCut := count()
	waitFor(t, 15*time.Second, "queries through the second broker", func() bool { return count() > atCut+200 })
	close(stop)
	wg.Wait()
	if s := b.mgr.Current(); s == nil || !strings.Contains(s.Broker, bp.Addr()) {
		t.Fatalf("not on the second broker: %+v", s)
	}
	t.Logf("ok %d, failed in flight %d", ok, lost)
}

// deliver = "events" hands consumed messages to sipside's own event routes.
func TestConsumeToEvents(t *testing.T) {
	u := brokerURL(t)
	cfgEdit := func(c *Config) {
		c.JSONRPC.Listen = nil
		c.AMQP.Consume = []ConsumeConfig{{Exchange: testExchange, RoutingKey: "evi.#", Deliver: DeliverEvents, Event: "E_AMQP_IN"}}
	}
	var c Config
	c.AMQP.Brokers = []string{u}
	cfgEdit(&c)
	if _, err := New(c, Options{Logger: quiet}); err == nil || !strings.Contains(err.Error(), "event pipeline") {
		t.Fatalf("New without Events: %v", err)
	}
	got := make(chan string, 4)
	b, _ := startBridge(t, u, cfgEdit, Options{Events: func(_ context.Context, name string, params []byte) error {
		got <- name + " " + string(params)
		return nil
	}})
	waitFor(t, 10*time.Second, "consumer", func() bool { return b.consumers[0].queue.Load().(string) != "" })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Publish(ctx, PublishRequest{Exchange: testExchange, RoutingKey: "evi.x", Body: []byte(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-got:
		if ev != `E_AMQP_IN {"body":"{\"a\":1}","exchange":"sipside_kazoo_test","routing_key":"evi.x"}` {
			t.Fatalf("event %s", ev)
		}
	case <-ctx.Done():
		t.Fatal("no event")
	}
}

// OpenSIPS's jsonrpc module reads 8 KB of a reply: a bigger one becomes an error that
// says so on the raw listener, and goes through whole on the others.
func TestRawReplyLimit(t *testing.T) {
	u := brokerURL(t)
	startResponder(t, u, "svc.big", &responder{pad: 10000})
	b, _ := startBridge(t, u, nil, Options{})
	const req = `{"id":9,"jsonrpc":"2.0","method":"amqp.query","params":{"exchange":"sipside_kazoo_test","routing_key":"svc.big","payload":{"q":"b"}}}`
	resp := rawCall(t, b.Addrs()[ListenTCP], req)
	if field(t, resp, "error", "code") != strconv.Itoa(CodeBusy) || field(t, resp, "id") != "9" || !strings.Contains(resp, "8192") {
		t.Fatalf("raw: %.300s", resp)
	}
	c := dialNetstring(t, b.Addrs()[ListenNetstring])
	c.send(t, req)
	if resp := c.recv(t); field(t, resp, "result", "echo") != `"b"` || len(resp) < 10000 {
		t.Fatalf("netstring: %.300s", resp)
	}
}

// After the broker connection fails over, consumers are declared, bound and consuming
// again without help, and so is the Kazoo reply queue.
func TestConsumersAfterFailover(t *testing.T) {
	u := brokerURL(t)
	startResponder(t, u, "kzfo.q", &responder{kazoo: true})
	uri, _ := amqp.ParseURI(u)
	target := net.JoinHostPort(uri.Host, strconv.Itoa(uri.Port))
	a, bp := testenv.NewCutProxy(t, target), testenv.NewCutProxy(t, target)
	rec := &recorder{}
	b, _ := startBridge(t, viaProxy(t, u, a), func(c *Config) {
		c.AMQP.Brokers = append(c.AMQP.Brokers, viaProxy(t, u, bp))
		c.AMQP.Kazoo = true
		c.JSONRPC.Listen = nil
		c.AMQP.Consume = []ConsumeConfig{{Exchange: testExchange, RoutingKey: "fo.ev.#", Deliver: "evapi:127.0.0.1:rec", Event: "E"}}
	}, Options{NewDeliverer: func(string, Options) (Deliverer, error) { return rec, nil }})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	publishAndSee := func(body string) {
		t.Helper()
		n := len(rec.got())
		if _, err := b.Publish(ctx, PublishRequest{Exchange: testExchange, RoutingKey: "fo.ev.x", Body: []byte(`{"Event-Category":"` + body + `"}`)}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "delivery of "+body, func() bool { return len(rec.got()) > n })
	}
	publishAndSee("before")
	firstQueue := b.consumers[0].queue.Load().(string)
	a.Cut()
	waitFor(t, 15*time.Second, "failover", func() bool {
		s := b.mgr.Current()
		return s != nil && strings.Contains(s.Broker, bp.Addr()) && b.consumers[0].queue.Load().(string) != firstQueue
	})
	publishAndSee("after")
	reply, err := b.Query(ctx, QueryRequest{PublishRequest: PublishRequest{Exchange: testExchange, RoutingKey: "kzfo.q", Body: []byte(`{"q":"k"}`)}})
	if err != nil || !strings.Contains(string(reply), `"echo":"k"`) {
		t.Fatalf("kazoo query after failover: %s %v", reply, err)
	}
}
