package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

// OpenSIPS (emulator, or real with OPENSIPS_BIN) -> sipside run ->
// virtual:FAILOVER rabbitmq, flatstore. The broker stops mid-stream: the
// next event goes to the file at once (the failed publish is known), and
// after failover_timeout events go back to RabbitMQ.
func TestRunFailoverRabbitMQToFile(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a private RabbitMQ node")
	}
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	rmq := testenv.NewRabbitMQ(t, testenv.RabbitOptions{Name: "failover"})
	conn, err := amqp.Dial(rmq.URL)
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := conn.Channel()
	if _, err := ch.QueueDeclare("ul", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	dir := t.TempDir()
	file := filepath.Join(dir, "ul.log")
	input := fmt.Sprintf("udp:127.0.0.1:%d", testenv.FreePort(t, "udp", "127.0.0.1"))
	cfg := filepath.Join(dir, "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = "off"
[[input]]
listen = %q
[[subscribe]]
target = %q
events = ["E_MY_EVENT"]
socket = %q
[[route]]
name = "ul"
events = ["E_MY_*"]
to = "virtual:FAILOVER rabbitmq:guest:guest@127.0.0.1:%d/ul flatstore:%s"
timeout = "2s"
failover_timeout = "3s"
`, input, o.Target("udp"), input, rmq.Port, file)), 0o644)
	d := startDaemon(t, "-c", cfg)
	d.waitLog(t, "subscribed")

	inQueue := func() int {
		c, err := amqp.Dial(rmq.URL)
		if err != nil {
			return -1
		}
		defer c.Close()
		ch, _ := c.Channel()
		q, err := ch.QueueDeclarePassive("ul", true, false, false, false, nil)
		if err != nil {
			return -1
		}
		return q.Messages
	}
	fileLines := func() int {
		b, _ := os.ReadFile(file)
		return strings.Count(string(b), "\n")
	}
	raise := func(seq int) {
		t.Helper()
		if err := o.Raise("E_MY_EVENT", fmt.Sprintf(`{"seq":%d}`, seq)); err != nil {
			t.Fatal(err)
		}
	}
	raise(1)
	checkFor(t, 15*time.Second, "event 1 in RabbitMQ", func() bool { return inQueue() == 1 })
	if err := rmq.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	raise(2)
	checkFor(t, 10*time.Second, "event 2 in the file, at once", func() bool { return fileLines() == 1 })
	if b, _ := os.ReadFile(file); string(b) != "E_MY_EVENT,2\n" {
		t.Errorf("file = %q", b)
	}
	if err := rmq.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Inside the window the file keeps getting events; after it, RabbitMQ
	// is tried again and preferred.
	seq := 3
	checkFor(t, 30*time.Second, "events back in RabbitMQ after failover_timeout", func() bool {
		raise(seq)
		seq++
		time.Sleep(200 * time.Millisecond)
		return inQueue() >= 2
	})
	if fileLines()+inQueue() < seq-1 {
		t.Errorf("events lost: %d in the file, %d in RabbitMQ, %d raised", fileLines(), inQueue(), seq-1)
	}
}

// Kamailio's script relays events over evapi; sipside (evapi: input) ships
// them to a backend.
func TestRunEvapiFromKamailio(t *testing.T) {
	tmpl, err := os.ReadFile("../../evi/testdata/kamailio-evapi.cfg")
	if err != nil {
		t.Fatal(err)
	}
	port := testenv.FreePort(t, "tcp", "127.0.0.1")
	k := testenv.NewKamailio(t, testenv.KamailioConfig{Name: "evapi-e2e", Template: string(tmpl), Vars: map[string]any{"EvapiPort": port}})
	dir := t.TempDir()
	file := filepath.Join(dir, "kam.log")
	cfg := filepath.Join(dir, "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = "off"
[[input]]
listen = "evapi:127.0.0.1:%d"
[[route]]
events = ["E_KAM_*"]
to = "flatstore:%s"
`, port, file)), 0o644)
	d := startDaemon(t, "-c", cfg)
	d.waitLog(t, "connected to Kamailio evapi")
	// The TCP connect completes before evapi's worker has taken the client, and an event
	// relayed in between reaches nobody (evapi keeps no queue): on a loaded machine the
	// first MESSAGE can be lost that way, so send again until one arrives.
	var sent time.Time
	checkFor(t, 10*time.Second, "the relayed event in the file", func() bool {
		if time.Since(sent) > time.Second {
			sendSIPMessageTo(t, k.SIPAddr(), "alice", "hello")
			sent = time.Now()
		}
		b, _ := os.ReadFile(file)
		return strings.Contains(string(b), "E_KAM_MESSAGE,E_KAM_MESSAGE,")
	})
}
