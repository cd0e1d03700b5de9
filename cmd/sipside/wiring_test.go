package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

// sipside run with [dmq]: it joins a real Kamailio DMQ node, a value set on
// the Kamailio node becomes an E_DMQ_HTABLE event routed to stdout, the
// status page lists the nodes, and SIGTERM leaves the bus.
func TestRunDMQ(t *testing.T) {
	k := kamailioDMQNode(t, "run-dmq", "127.0.0.2")
	self := fmt.Sprintf("sip:127.0.0.1:%d", testenv.FreePort(t, "udp", "127.0.0.1"))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	cfg := filepath.Join(t.TempDir(), "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = %q
[[input]]
listen = "udp:127.0.0.1:%d"
[[route]]
events = ["E_DMQ_HTABLE"]
to = "stdout:"
[dmq]
listen = %q
seeds = ["sip:127.0.0.2:%d"]
ping_interval = "5s"
peers = ["htable"]
`, httpAddr, testenv.FreePort(t, "udp", "127.0.0.1"), self, k.SIPPort)), 0o644)
	d := startDaemon(t, "-c", cfg)
	ctx := context.Background()
	status := func() string {
		raw, err := k.RPC(ctx, "dmq.list_nodes")
		if err != nil {
			return ""
		}
		var nodes []struct{ Host, Port, Status string }
		json.Unmarshal(raw, &nodes)
		for _, n := range nodes {
			if "sip:"+n.Host+":"+n.Port == self {
				return n.Status
			}
		}
		return "absent"
	}
	checkFor(t, 20*time.Second, "Kamailio listing sipside as active", func() bool { return status() == "active" })
	if _, err := k.RPC(ctx, "htable.sets", "repl", "from_kamailio", "hello"); err != nil {
		t.Fatal(err)
	}
	for {
		l := d.nextLine(t)
		if strings.Contains(l, `"event":"E_DMQ_HTABLE"`) && strings.Contains(l, "from_kamailio") {
			break
		}
	}
	page, err := httpGet("http://" + httpAddr + "/")
	if err != nil || !strings.Contains(page, "DMQ nodes") || !strings.Contains(page, "127.0.0.2") {
		t.Errorf("status page lacks the DMQ nodes: %v", err)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
	checkFor(t, 20*time.Second, "Kamailio marking sipside gone", func() bool { s := status(); return s == "disabled" || s == "absent" })
}

// sipside run with [amqp] and [jsonrpc]: a script-like client publishes
// over HTTP JSON-RPC, a consumer with deliver = "events" takes the message
// from RabbitMQ into the pipeline, and a route prints it.
func TestRunAMQPBridge(t *testing.T) {
	rmq := testenv.SharedRabbitMQ(t)
	rpcAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	cfg := filepath.Join(t.TempDir(), "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = "off"
[[input]]
listen = "udp:127.0.0.1:%d"
[[route]]
events = ["E_AMQP_*"]
to = "stdout:"
[amqp]
brokers = [%q]
[jsonrpc]
listen = ["http://%s"]
[[amqp.consume]]
exchange = "sipside_run_test"
routing_key = "route.req.#"
ack = "delivered"
deliver = "events"
event = "E_AMQP_ROUTE_REQ"
`, testenv.FreePort(t, "udp", "127.0.0.1"), rmq.URL, rpcAddr)), 0o644)
	d := startDaemon(t, "-c", cfg)
	// The consumer's queue is bound once the bridge is connected: publish
	// until a message comes through (a publish before the binding is
	// returned as unroutable, which the client sees as an error).
	var body string
	checkFor(t, 30*time.Second, "a published message back as an event", func() bool {
		req := `{"jsonrpc":"2.0","id":1,"method":"amqp.publish","params":{"exchange":"sipside_run_test","routing_key":"route.req.x","payload":{"call":"c1"}}}`
		resp, err := http.Post("http://"+rpcAddr+"/", "application/json", strings.NewReader(req))
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		return strings.Contains(body, `"result"`)
	})
	for {
		l := d.nextLine(t)
		if strings.Contains(l, `"event":"E_AMQP_ROUTE_REQ"`) && strings.Contains(l, `c1`) {
			break
		}
	}
	conn, err := amqp.Dial(rmq.URL)
	if err == nil {
		ch, _ := conn.Channel()
		ch.ExchangeDelete("sipside_run_test", false, false)
		conn.Close()
	}
}
