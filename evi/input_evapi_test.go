package evi

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/testenv"
)

// sendSIPMessage sends one SIP MESSAGE over UDP and waits for its reply.
func sendSIPMessage(t *testing.T, to, from, body string) {
	t.Helper()
	c, err := net.Dial("udp", to)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.LocalAddr().String()
	msg := fmt.Sprintf("MESSAGE sip:sipside@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK%d\r\nMax-Forwards: 70\r\nFrom: <sip:%s@127.0.0.1>;tag=%d\r\nTo: <sip:sipside@%s>\r\nCall-ID: %d@127.0.0.1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
		to, local, time.Now().UnixNano(), from, time.Now().UnixNano(), to, time.Now().UnixNano(), len(body), body)
	c.Write([]byte(msg))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "200 relayed") {
		t.Fatalf("MESSAGE reply: %q %v", buf[:n], err)
	}
}

// A real Kamailio relays events through evapi; sipside connects as an evapi
// client, and comes back after Kamailio restarts.
func TestEvapiInputKamailio(t *testing.T) {
	tmpl, err := os.ReadFile("testdata/kamailio-evapi.cfg")
	if err != nil {
		t.Fatal(err)
	}
	port := testenv.FreePort(t, "tcp", "127.0.0.1")
	k := testenv.NewKamailio(t, testenv.KamailioConfig{Name: "evapi", Template: string(tmpl), Vars: map[string]any{"EvapiPort": port}})

	m := NewMetrics(metrics.New())
	l := Listen{Proto: "evapi", Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	in, err := OpenInput(l, InputConfig{}, Deps{}, m)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sink := &collect{}
	done := make(chan error)
	go func() { done <- in.Run(ctx, sink) }()
	defer func() { cancel(); <-done }()

	// evapi has no "client connected" reply: relay until one arrives.
	checkFor(t, 15*time.Second, "first relayed event", func() bool {
		sendSIPMessage(t, k.SIPAddr(), "alice", "hello")
		return sink.len() > 0
	})
	ev := sink.evs[0]
	if ev.Name != "E_KAM_MESSAGE" || string(ev.Params) != `{"event":"E_KAM_MESSAGE","data":{"from":"alice","body":"hello"}}` || ev.Source != l.String() {
		t.Errorf("event = %s %s from %s", ev.Name, ev.Params, ev.Source)
	}
	sendSIPMessage(t, k.SIPAddr(), "bob", "plain")
	checkFor(t, 5*time.Second, "plain payload as E_EVAPI", func() bool { return sink.find("E_EVAPI", `"not json from bob"`) })

	// Kamailio restarts: sipside reconnects by itself.
	if err := k.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 20*time.Second, "an event after Kamailio's restart", func() bool {
		sendSIPMessage(t, k.SIPAddr(), "carol", "again")
		return sink.find("E_KAM_MESSAGE", `{"event":"E_KAM_MESSAGE","data":{"from":"carol","body":"again"}}`)
	})
}
