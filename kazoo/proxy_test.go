package kazoo

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/mi"
	"github.com/sipside/sipside/testenv"
)

// Consumed messages reach OpenSIPS's script as event_route[E_…] through MI raise_event:
// the emulator (or a real OpenSIPS with OPENSIPS_BIN) passes the raised event on to a
// subscribed UDP socket, which is what the test reads.
func TestConsumeToOpenSIPSRaiseEvent(t *testing.T) {
	u := brokerURL(t)
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{Events: []string{"E_AMQP_ROUTE_REQ"}})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := mi.New(o.Target("udp"), mi.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Call(ctx, "event_subscribe", mi.Named{{Name: "event", Value: "E_AMQP_ROUTE_REQ"}, {Name: "socket", Value: "udp:" + pc.LocalAddr().String()}}); err != nil {
		t.Fatal(err)
	}
	b, _ := startBridge(t, u, func(c *Config) {
		// amq.topic: the predefined exchange most deployments bind to, durable,
		// which sipside must use as it is.
		c.AMQP.Consume = []ConsumeConfig{{Exchange: "amq.topic", RoutingKey: "route.req.#", Ack: AckDelivered, Deliver: o.Target("udp"), Event: "E_AMQP_ROUTE_REQ"}}
	}, Options{})
	waitFor(t, 10*time.Second, "consumer", func() bool { return b.consumers[0].queue.Load().(string) != "" })
	if _, err := b.Publish(ctx, PublishRequest{Exchange: "amq.topic", RoutingKey: "route.req.lookup", Body: []byte(`{"user":"alice"}`)}); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 65536)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatalf("no event from OpenSIPS: %v", err)
	}
	got := string(buf[:n])
	if field(t, got, "method") != `"E_AMQP_ROUTE_REQ"` || field(t, got, "params", "body") != `"{\"user\":\"alice\"}"` || field(t, got, "params", "routing_key") != `"route.req.lookup"` {
		t.Fatalf("event %s", got)
	}
}

// OpenSIPS's jsonrpc module calls the bridge from the routing script: the
// emulator does what the module does (captures/jsonrpc-module.txt), a real
// OpenSIPS (OPENSIPS_BIN) runs jsonrpc_request and jsonrpc_notification in its
// request route. What the script sees is $rc and the ret variable, which the
// module fills with cJSON's formatted print of the result or error.
func TestOpenSIPSJSONRPCModule(t *testing.T) {
	u := brokerURL(t)
	startResponder(t, u, "svc.os", &responder{})
	b, _ := startBridge(t, u, nil, Options{})
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{JSONRPCDest: b.Addrs()[ListenTCP]})
	q, ch := bindQueue(t, u, "os.pub")

	cases := []struct {
		name, method, params string
		rc                   int
		ret                  string
	}{
		{"query", "amqp.query", `{"exchange":"sipside_kazoo_test","routing_key":"svc.os","payload":{"q":"alice"}}`,
			1, "{\n\t\"echo\":\t\"alice\"\n}"},
		{"publish", "amqp.publish", `{"exchange":"sipside_kazoo_test","routing_key":"os.pub","payload":{"n":1}}`,
			1, "{\n\t\"status\":\t\"confirmed\"\n}"},
		{"unknown method", "amqp.nope", `{}`,
			-3, "{\n\t\"code\":\t-32601,\n\t\"message\":\t\"unknown method \\\"amqp.nope\\\"; methods: amqp.publish, amqp.query, amqp.ack, amqp.nack, sipside.ping, sipside.status\"\n}"},
		{"missing param", "amqp.publish", `{"exchange":"sipside_kazoo_test"}`,
			-3, "{\n\t\"code\":\t-32602,\n\t\"message\":\t\"missing param \\\"routing_key\\\"\"\n}"},
		{"positional params", "amqp.publish", `["sipside_kazoo_test","os.pub"]`,
			-3, "{\n\t\"code\":\t-32602,\n\t\"message\":\t\"params must be an object with named members, e.g. {\\\"exchange\\\":\\\"x\\\",\\\"routing_key\\\":\\\"k\\\",\\\"payload\\\":{}}\"\n}"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc, ret, err := o.JSONRPCRequest(c.method, c.params)
			if err != nil {
				t.Fatal(err)
			}
			if rc != c.rc || ret != c.ret {
				t.Errorf("rc %d ret %q\nwant rc %d ret %q", rc, ret, c.rc, c.ret)
			}
		})
	}
	if d := rabbitGet(t, ch, q); string(d.Body) != `{"n":1}` {
		t.Fatalf("published body %q", d.Body)
	}

	t.Run("notification", func(t *testing.T) {
		rc, err := o.JSONRPCNotification("amqp.publish", `{"exchange":"sipside_kazoo_test","routing_key":"os.pub","payload":{"n":2}}`)
		if err != nil || rc != 1 {
			t.Fatalf("rc %d, %v", rc, err)
		}
		if d := rabbitGet(t, ch, q); string(d.Body) != `{"n":2}` {
			t.Fatalf("published body %q", d.Body)
		}
	})
}

// kamailioTemplate is testenv's default node plus the script side of the bridge:
// jsonrpcc and janssonrpcc (netstrings), http_client (POST), and evapi to receive.
// A SIP MESSAGE to sip:TEST@ runs TEST with the body as the JSON-RPC params (http: the
// whole request); the result comes back in the reply's X-Result header.
func kamailioTemplate() string {
	t := testenv.DefaultKamailioTemplate
	t = strings.Replace(t, `modparam("htable", "htable", "t=>size=8;autoexpire=0")`, `modparam("htable", "htable", "t=>size=8;autoexpire=0")
loadmodule "textops.so"
loadmodule "jansson.so"
loadmodule "jsonrpcc.so"
loadmodule "janssonrpcc.so"
loadmodule "http_client.so"
loadmodule "evapi.so"
modparam("jsonrpcc", "servers", "127.0.0.1:{{.Vars.netstring}},1")
modparam("janssonrpcc", "server", "conn=sipside;addr=127.0.0.1;port={{.Vars.netstring}};priority=10;weight=10")
modparam("janssonrpcc", "result_pv", "$var(jsrpc_result)")
modparam("http_client", "connection_timeout", 2)
modparam("evapi", "bind_addr", "127.0.0.1:{{.Vars.evapi}}")
modparam("evapi", "netstring_format", 1)
modparam("evapi", "workers", 1)`, 1)
	i := strings.Index(t, "request_route {")
	j := strings.Index(t, "event_route[xhttp:request]")
	return t[:i] + `request_route {
	if ($rm == "OPTIONS") {
		sl_send_reply("200", "OK");
		exit;
	}
	if (!is_method("MESSAGE")) { sl_send_reply("405", "Only MESSAGE"); exit; }
	t_newtran();
	switch ($rU) {
	case "jsonrpcc":
		jsonrpc_request("amqp.query", "$rb", "JRPCC_OK", "JRPCC_ERR", "$var(jr)");
		exit;
	case "jsonrpcc_publish":
		jsonrpc_request("amqp.publish", "$rb", "JRPCC_OK", "JRPCC_ERR", "$var(jr)");
		exit;
	case "jansson":
		janssonrpc_request("sipside", "amqp.query", "$rb", "route=JANS_RESP;timeout=1000;retry=0");
		exit;
	case "http":
		$var(code) = http_client_query("http://127.0.0.1:{{.Vars.http}}/rpc", "$rb", "Content-Type: application/json", "$var(res)");
		append_to_reply("X-Result: $var(code) $var(res)\r\n");
		t_reply("200", "http done");
		exit;
	}
	t_reply("404", "no such test");
}

route[JRPCC_OK] {
	append_to_reply("X-Result: $var(jr)\r\n");
	t_reply("200", "jsonrpcc ok");
}
route[JRPCC_ERR] {
	append_to_reply("X-Result: $var(jr)\r\n");
	t_reply("500", "jsonrpcc error");
}
route[JANS_RESP] {
	append_to_reply("X-Result: $var(jsrpc_result)\r\n");
	t_reply("200", "jansson done");
}

event_route[evapi:message-received] {
	$sht(t=>evapi) = $evapi(msg);
}

` + t[j:]
}

// sipMessage sends a SIP MESSAGE over UDP and returns the final reply's status line and
// X-Result header.
func sipMessage(t testing.TB, addr, user, body string) (status, result string) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var r [8]byte
	rand.Read(r[:])
	tag := hex.EncodeToString(r[:])
	host, port, _ := net.SplitHostPort(c.LocalAddr().String())
	req := fmt.Sprintf("MESSAGE sip:%s@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s:%s;branch=z9hG4bK%s;rport\r\nMax-Forwards: 70\r\nFrom: <sip:tester@%s>;tag=%s\r\nTo: <sip:%s@%s>\r\nCall-ID: %s@sipside.test\r\nCSeq: 1 MESSAGE\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		user, addr, host, port, tag, host, tag, user, addr, tag, len(body), body)
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no SIP reply to %s: %v", user, err)
		}
		tp := textproto.NewReader(bufio.NewReader(strings.NewReader(string(buf[:n]))))
		line, _ := tp.ReadLine()
		hdr, _ := tp.ReadMIMEHeader()
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if code, _ := strconv.Atoi(f[1]); code >= 200 {
			return line, hdr.Get("X-Result")
		}
	}
}

// A real Kamailio calls sipside from its routing script with jsonrpcc, janssonrpcc and
// http_client, and receives consumed messages through evapi into its script.
func TestKamailioScriptCallsAndEvapi(t *testing.T) {
	u := brokerURL(t)
	startResponder(t, u, "kam.lookup", &responder{})
	evapiPort := testenv.FreePort(t, "tcp", "127.0.0.1")
	ports := map[string]int{}
	for _, k := range []string{"netstring", "http"} {
		ports[k] = testenv.FreePort(t, "tcp", "127.0.0.1")
	}
	b, _ := startBridge(t, u, func(c *Config) {
		c.JSONRPC.Listen = []string{"netstring:127.0.0.1:" + strconv.Itoa(ports["netstring"]), "http://127.0.0.1:" + strconv.Itoa(ports["http"])}
		c.AMQP.Consume = []ConsumeConfig{{Exchange: "amq.topic", RoutingKey: "kam.ev.#", Ack: AckDelivered, Deliver: "evapi:127.0.0.1:" + strconv.Itoa(evapiPort), Event: "amqp"}}
	}, Options{})
	k := testenv.NewKamailio(t, testenv.KamailioConfig{Name: "kazoo", Template: kamailioTemplate(),
		Vars: map[string]any{"netstring": ports["netstring"], "http": ports["http"], "evapi": evapiPort}})

	const params = `{"exchange":"sipside_kazoo_test","routing_key":"kam.lookup","payload":{"q":"alice"}}`
	// jsonrpcc connects after startup and retries every few seconds: wait for it.
	var status, result string
	waitFor(t, 15*time.Second, "jsonrpcc connected and answered", func() bool {
		status, result = sipMessage(t, k.SIPAddr(), "jsonrpcc", params)
		return strings.Contains(status, " 200 ")
	})
	if !strings.Contains(result, `"echo"`) || !strings.Contains(result, `"alice"`) {
		t.Fatalf("jsonrpcc: %s X-Result: %s", status, result)
	}
	t.Run("janssonrpcc", func(t *testing.T) {
		status, result := sipMessage(t, k.SIPAddr(), "jansson", params)
		if !strings.Contains(result, `{"result":{"echo":"alice"}}`) {
			t.Fatalf("%s X-Result: %s", status, result)
		}
	})
	t.Run("http_client", func(t *testing.T) {
		status, result := sipMessage(t, k.SIPAddr(), "http", `{"jsonrpc":"2.0","method":"amqp.query","params":`+params+`,"id":7}`)
		code, body, _ := strings.Cut(result, " ")
		if code != "200" || field(t, body, "result", "echo") != `"alice"` {
			t.Fatalf("%s X-Result: %s", status, result)
		}
	})
	t.Run("jsonrpcc publish error", func(t *testing.T) {
		status, result := sipMessage(t, k.SIPAddr(), "jsonrpcc_publish", `{"exchange":"sipside_kazoo_test","routing_key":"nobody.here","payload":{}}`)
		if !strings.Contains(status, " 500 ") || !strings.Contains(result, strconv.Itoa(CodeUnroutable)) {
			t.Fatalf("%s X-Result: %s", status, result)
		}
	})
	t.Run("evapi delivery", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		waitFor(t, 10*time.Second, "consumer", func() bool { return b.consumers[0].queue.Load().(string) != "" })
		conn, _ := amqp.Dial(u)
		defer conn.Close()
		ch, _ := conn.Channel()
		ch.Publish("amq.topic", "kam.ev.x", false, false, amqp.Publishing{Body: []byte(`{"user":"bob"}`)})
		var got string
		waitFor(t, 10*time.Second, "the message in Kamailio's htable", func() bool {
			res, err := k.RPC(ctx, "htable.get", "t", "evapi")
			if err != nil {
				return false
			}
			got = string(res)
			return strings.Contains(got, "bob")
		})
		for _, want := range []string{`\"event\":\"amqp\"`, `\"routing_key\":\"kam.ev.x\"`, `\"body\":{\"user\":\"bob\"}`} {
			if !strings.Contains(got, want) {
				t.Errorf("evapi message %s lacks %s", got, want)
			}
		}
	})
}

// bindQueue declares a private queue bound to key on the test exchange.
func bindQueue(t testing.TB, u, key string) (string, *amqp.Channel) {
	t.Helper()
	ch := testenv.AMQPChannel(t, u)
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, key, testExchange, false, nil); err != nil {
		t.Fatal(err)
	}
	return q.Name, ch
}

// rabbitGet takes the next message of q, waiting for it a little: a
// notification returns before the bridge has published.
func rabbitGet(t *testing.T, ch *amqp.Channel, q string) amqp.Delivery {
	t.Helper()
	var d amqp.Delivery
	waitFor(t, 5*time.Second, "a message in "+q, func() bool {
		var ok bool
		var err error
		d, ok, err = ch.Get(q, true)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
	return d
}
