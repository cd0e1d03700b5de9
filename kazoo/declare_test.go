package kazoo

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/testenv"
)

// Consumers bind to exchanges and queues as they exist. Each case runs a bridge
// with one consumer; whether that consumer comes up or not, a query and a publish
// through the JSON-RPC server work, and sipside_amqp_consumer_up says which
// consumer is down and why.
func TestConsumerDeclares(t *testing.T) {
	rmq := testenv.SharedRabbitMQ(t)
	u := brokerURL(t)
	startResponder(t, u, "declare.q", &responder{})
	admin := testenv.AMQPChannel(t, u)

	// What another application (the platform) declared with its own flags.
	if err := admin.ExchangeDeclare("platform_alt", "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := admin.ExchangeDeclare("platform_x", "topic", true, false, false, false, amqp.Table{"alternate-exchange": "platform_alt"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.QueueDeclare("platform_quorum", true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.ExchangeDelete("platform_x", false, false)
		admin.ExchangeDelete("platform_alt", false, false)
		admin.QueueDelete("platform_quorum", false, false, false)
		admin.QueueDelete("sipside_made_quorum", false, false, false)
	})

	// A user that may write and read but configure nothing.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{"add_user", "noconf", "noconf"},
		{"set_permissions", "-p", "/", "noconf", "^$", ".*", ".*"},
	} {
		if out, err := rmq.Ctl(ctx, args...); err != nil && !bytes.Contains(out, []byte("already exists")) {
			t.Fatalf("rabbitmqctl %v: %v\n%s", args, err, out)
		}
	}
	noconf, _ := url.Parse(u)
	noconf.User = url.UserPassword("noconf", "noconf")

	tests := []struct {
		name    string
		broker  string
		cc      ConsumeConfig
		publish [2]string // exchange, routing key of a message the consumer must get
		headers amqp.Table
		down    string // the reason a down consumer gives; "" = it comes up
	}{
		{name: "amq.topic", cc: ConsumeConfig{Exchange: "amq.topic", RoutingKey: "decl.topic.#"}, publish: [2]string{"amq.topic", "decl.topic.x"}},
		{name: "amq.direct", cc: ConsumeConfig{Exchange: "amq.direct", ExchangeType: "direct", RoutingKey: "decl.direct"}, publish: [2]string{"amq.direct", "decl.direct"}},
		{name: "amq.fanout", cc: ConsumeConfig{Exchange: "amq.fanout", ExchangeType: "fanout"}, publish: [2]string{"amq.fanout", ""}},
		{name: "amq.headers", cc: ConsumeConfig{Exchange: "amq.headers", ExchangeType: "headers"}, publish: [2]string{"amq.headers", ""}, headers: amqp.Table{"h": "v"}},
		{name: "amq.topic create", cc: ConsumeConfig{Exchange: "amq.topic", RoutingKey: "decl.create.#", Declare: "create"}, publish: [2]string{"amq.topic", "decl.create.x"}},
		{name: "platform exchange durable with alternate-exchange", cc: ConsumeConfig{Exchange: "platform_x", RoutingKey: "p.#"}, publish: [2]string{"platform_x", "p.1"}},
		{name: "existing quorum queue", cc: ConsumeConfig{Exchange: "platform_x", RoutingKey: "pq.#", Queue: "platform_quorum"}, publish: [2]string{"platform_x", "pq.1"}},
		{name: "quorum queue sipside creates", cc: ConsumeConfig{Exchange: "amq.topic", RoutingKey: "decl.quorum", Queue: "sipside_made_quorum", QueueType: "quorum", Durable: true}, publish: [2]string{"amq.topic", "decl.quorum"}},
		{name: "create with other flags", cc: ConsumeConfig{Exchange: "platform_x", RoutingKey: "p.#", Declare: "create"}, down: "PRECONDITION_FAILED"},
		{name: "passive on a missing exchange", cc: ConsumeConfig{Exchange: "nobody_declared_this", RoutingKey: "k", Declare: "passive"}, down: "NOT_FOUND"},
		{name: "user without configure permission", broker: noconf.String(), cc: ConsumeConfig{Exchange: "amq.topic", RoutingKey: "decl.noconf"}, down: "ACCESS_REFUSED"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			broker := u
			if tc.broker != "" {
				broker = tc.broker
			}
			rec := &recorder{}
			tc.cc.Deliver, tc.cc.Event = "evapi:127.0.0.1:1", "E_DECL"
			b, reg := startBridge(t, broker, func(c *Config) { c.AMQP.Consume = []ConsumeConfig{tc.cc} },
				Options{NewDeliverer: func(string, Options) (Deliverer, error) { return rec, nil }})
			name := tc.cc.DisplayName()
			if tc.down == "" {
				waitFor(t, 10*time.Second, "consumer up", func() bool { return b.Consumers()[0].Up })
				if got := gaugeLine(t, reg, name); got != "1" {
					t.Errorf("sipside_amqp_consumer_up{consumer=%q} = %s, want 1", name, got)
				}
				if err := admin.Publish(tc.publish[0], tc.publish[1], false, false, amqp.Publishing{Headers: tc.headers, Body: []byte(`{"case":"` + tc.name + `"}`)}); err != nil {
					t.Fatal(err)
				}
				waitFor(t, 10*time.Second, "the message delivered", func() bool { return len(rec.got()) > 0 })
				if got := string(rec.got()[0].Body); !strings.Contains(got, tc.name) {
					t.Errorf("got %s", got)
				}
			} else {
				var st ConsumerState
				waitFor(t, 10*time.Second, "consumer down with a reason", func() bool {
					st = b.Consumers()[0]
					return !st.Up && st.Err != nil
				})
				if !strings.Contains(st.Err.Error(), tc.down) {
					t.Errorf("consumer down with %v, want %s", st.Err, tc.down)
				}
				if got := gaugeLine(t, reg, name); got != "0" {
					t.Errorf("sipside_amqp_consumer_up{consumer=%q} = %s, want 0", name, got)
				}
			}
			// Whatever the consumer does, the bridge publishes and queries.
			addr := b.Addrs()[ListenTCP]
			resp := rawCall(t, addr, `{"jsonrpc":"2.0","id":1,"method":"amqp.query","params":{"exchange":"`+testExchange+`","routing_key":"declare.q","payload":{"q":"still here"}}}`)
			if field(t, resp, "result", "echo") != `"still here"` {
				t.Errorf("query while the consumer is %s: %s", map[bool]string{true: "up", false: "down"}[tc.down == ""], resp)
			}
			resp = rawCall(t, addr, `{"jsonrpc":"2.0","id":2,"method":"amqp.publish","params":{"exchange":"`+testExchange+`","routing_key":"declare.q","payload":{"q":"x"}}}`)
			if !strings.Contains(resp, `"confirmed"`) {
				t.Errorf("publish: %s", resp)
			}
			if !b.Connected() {
				t.Error("the connection dropped")
			}
		})
	}

	// The queue sipside created is a quorum queue: declaring it classic is refused.
	ch := testenv.AMQPChannel(t, u)
	if _, err := ch.QueueDeclare("sipside_made_quorum", true, false, false, false, amqp.Table{"x-queue-type": "classic"}); err == nil || !strings.Contains(err.Error(), "x-queue-type") {
		t.Errorf("sipside_made_quorum redeclared as classic: %v, want an inequivalent x-queue-type", err)
	}
}

// A consumer that is down recovers by itself when what it lacked appears, and
// a queue deleted under a running consumer costs only that consumer's channel.
func TestConsumerRecovers(t *testing.T) {
	u := brokerURL(t)
	admin := testenv.AMQPChannel(t, u)
	rec := &recorder{}
	b, _ := startBridge(t, u, func(c *Config) {
		c.AMQP.Consume = []ConsumeConfig{
			{Name: "late", Exchange: "appears_later", RoutingKey: "k", Declare: "passive", Deliver: "evapi:127.0.0.1:1", Event: "E"},
			{Name: "steady", Exchange: testExchange, RoutingKey: "steady.#", Queue: "sipside_steady", Deliver: "evapi:127.0.0.1:1", Event: "E"},
		}
	}, Options{NewDeliverer: func(string, Options) (Deliverer, error) { return rec, nil }})
	waitFor(t, 10*time.Second, "late down, steady up", func() bool {
		cs := b.Consumers()
		return !cs[0].Up && cs[0].Err != nil && cs[1].Up
	})
	t.Cleanup(func() {
		admin.ExchangeDelete("appears_later", false, false)
		admin.QueueDelete("sipside_steady", false, false, false)
	})
	if err := admin.ExchangeDeclare("appears_later", "topic", false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	// 1 s, 2 s, 4 s … between attempts.
	waitFor(t, 15*time.Second, "late up once its exchange exists", func() bool { return b.Consumers()[0].Up })

	if _, err := admin.QueueDelete("sipside_steady", false, false, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "steady back on a new channel", func() bool {
		cs := b.Consumers()
		if !cs[1].Up {
			return false
		}
		_, err := testenv.AMQPChannel(t, u).QueueDeclarePassive("sipside_steady", false, false, false, false, nil)
		return err == nil
	})
	admin.Publish(testExchange, "steady.1", false, false, amqp.Publishing{Body: []byte(`{"after":"delete"}`)})
	waitFor(t, 10*time.Second, "a message through the reopened consumer", func() bool { return len(rec.got()) > 0 })
	if !b.Connected() {
		t.Error("the connection dropped")
	}
}

// gaugeLine reads sipside_amqp_consumer_up for one consumer from the registry's
// text output, as Prometheus would scrape it.
func gaugeLine(t *testing.T, reg *metrics.Registry, consumer string) string {
	t.Helper()
	var buf bytes.Buffer
	if _, err := reg.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("sipside_amqp_consumer_up{consumer=%q} ", consumer)
	for _, line := range strings.Split(buf.String(), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			return v
		}
	}
	return "(no series)"
}
