package evi

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/testenv"
)

func subscribedTo(o *testenv.OpenSIPSServer, event, socket string) bool {
	for _, s := range o.Subscriptions() {
		if s.Event == event && s.Socket == socket && (s.TTL > 0 || s.Expire < 0) {
			return true
		}
	}
	return false
}

// The whole life of a subscription against OpenSIPS (the emulator built
// from the recordings, or a real one with OPENSIPS_BIN): subscribe, events
// flow, refresh before expiry, a proxy restart, unsubscribe on shutdown.
func TestSubscriberLifecycle(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	m := NewMetrics(metrics.New())
	in, err := OpenInput(Listen{Proto: "udp", Addr: "127.0.0.1:0"}, InputConfig{}, Deps{}, m)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	socket := "udp:" + in.(*datagramInput).Addr().String()
	sink := &collect{}
	ictx, icancel := context.WithCancel(context.Background())
	defer icancel()
	go in.Run(ictx, sink)

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := NewSubscriber(SubscribeConfig{Target: o.Target("udp"), Events: []string{"E_MY_EVENT"}, Socket: socket,
		Expire: 3, CheckInterval: config.Duration(200 * time.Millisecond)}, metrics.New(), log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()

	checkFor(t, 5*time.Second, "subscription on the proxy", func() bool { return subscribedTo(o, "E_MY_EVENT", socket) })
	if err := o.Raise("E_MY_EVENT", `{"k":"v"}`); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, "the raised event", func() bool { return sink.find("E_MY_EVENT", `{"k":"v"}`) })

	// Refreshed at 2/3 of expire: still there after the first expiry time.
	time.Sleep(3500 * time.Millisecond)
	if !subscribedTo(o, "E_MY_EVENT", socket) {
		t.Fatal("subscription expired: not refreshed")
	}
	if st := s.States()[0]; st.State != "active" || st.Renewed < 2 {
		t.Errorf("state = %+v, want active and renewed", st)
	}

	// A restart forgets every subscription; sipside notices and subscribes
	// again within 2 s of the proxy answering.
	o.Restart()
	restarted := time.Now()
	checkFor(t, 5*time.Second, "subscription after a restart", func() bool { return subscribedTo(o, "E_MY_EVENT", socket) })
	if el := time.Since(restarted); el > 2*time.Second {
		t.Errorf("took %v to subscribe again after the restart", el)
	}
	if err := o.Raise("E_MY_EVENT", `{"after":"restart"}`); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, "an event after the restart", func() bool { return sink.find("E_MY_EVENT", `{"after":"restart"}`) })

	cancel()
	<-done
	if subscribedTo(o, "E_MY_EVENT", socket) {
		t.Error("still subscribed after shutdown")
	}
}

func TestSubscriberRefused(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	s, err := NewSubscriber(SubscribeConfig{Target: o.Target("udp"), Events: []string{"E_NO_SUCH_EVENT"}, Socket: "udp:127.0.0.1:9",
		CheckInterval: config.Duration(100 * time.Millisecond)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	checkFor(t, 5*time.Second, "the proxy's refusal in the state", func() bool {
		st := s.States()[0]
		return st.State == "down" && strings.Contains(st.LastError, "400 Bad parameter value")
	})
	cancel()
	<-done
}

func TestSubscribeConfigValidate(t *testing.T) {
	ok := SubscribeConfig{Target: "opensips:udp:127.0.0.1:8080", Events: []string{"E_UL_CONTACT_INSERT"}, Socket: "udp:127.0.0.1:8090"}
	tests := []struct {
		mod func(*SubscribeConfig)
		err string
	}{
		{func(c *SubscribeConfig) {}, ""},
		{func(c *SubscribeConfig) { c.Target = "kamailio:udp:127.0.0.1:8080" }, "evapi"},
		{func(c *SubscribeConfig) { c.Target = "nonsense" }, "target"},
		{func(c *SubscribeConfig) { c.Events = nil }, "at least one"},
		{func(c *SubscribeConfig) { c.Events = []string{"E_UL_*"} }, "not patterns"},
		{func(c *SubscribeConfig) { c.Socket = "virtual:FAILOVER udp:127.0.0.1:1" }, "crash"},
		{func(c *SubscribeConfig) { c.Socket = "evapi:127.0.0.1:1" }, "udp:, unix: or tcp: sockets only"},
		{func(c *SubscribeConfig) { c.Socket = "udp:nowhere" }, "socket"},
		{func(c *SubscribeConfig) { c.Expire = -1 }, "expire"},
	}
	for i, tt := range tests {
		c := ok
		tt.mod(&c)
		err := c.Validate()
		if (tt.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%d: err = %v, want %q", i, err, tt.err)
		}
	}
}

// Every configured subscription has its up series before the proxy ever
// answered, so that an alert on sipside_subscription_up == 0 can fire for a
// proxy that is down from the start.
func TestSubscriberSeriesFromStart(t *testing.T) {
	reg := metrics.New()
	if _, err := NewSubscriber(SubscribeConfig{Target: "opensips:udp:127.0.0.1:9", Events: []string{"E_A", "E_B"}, Socket: "udp:127.0.0.1:9"}, reg, nil); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	reg.WriteTo(&buf)
	for _, e := range []string{"E_A", "E_B"} {
		want := `sipside_subscription_up{target="opensips:udp:127.0.0.1:9",event="` + e + `",socket="udp:127.0.0.1:9"} 0`
		if !strings.Contains(buf.String(), want) {
			t.Errorf("no %s in:\n%s", want, buf.String())
		}
	}
}
