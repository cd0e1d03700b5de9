package evi

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/testenv"
)

// collect is a Sink that keeps what it is given.
type collect struct {
	mu  sync.Mutex
	evs []*Event
}

func (c *collect) Accept(ev *Event) {
	c.mu.Lock()
	c.evs = append(c.evs, ev)
	c.mu.Unlock()
}

func (c *collect) find(name, params string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ev := range c.evs {
		if ev.Name == name && string(ev.Params) == params {
			return true
		}
	}
	return false
}

func (c *collect) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.evs)
}

// checkFor is testenv.WaitFor.
var checkFor = testenv.WaitFor

func TestDatagramInputBadInput(t *testing.T) {
	for _, proto := range []string{"udp", "unix"} {
		t.Run(proto, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if proto == "unix" {
				addr = filepath.Join(t.TempDir(), "ev.sock")
			}
			m := NewMetrics(metrics.New())
			var logBuf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&syncWriter{w: &logBuf}, nil))
			in, err := OpenInput(Listen{Proto: proto, Addr: addr}, InputConfig{}, Deps{Log: log}, m)
			if err != nil {
				t.Fatal(err)
			}
			di := in.(*datagramInput)
			ctx, cancel := context.WithCancel(context.Background())
			sink := &collect{}
			done := make(chan error)
			go func() { done <- in.Run(ctx, sink) }()

			network := map[string]string{"udp": "udp", "unix": "unixgram"}[proto]
			c, err := net.Dial(network, di.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			noise := make([]byte, 1500)
			rand.Read(noise)
			garbage := bytes.Repeat([]byte("x"), 65000)
			bad := [][]byte{
				[]byte("not json at all"),
				[]byte(`{"jsonrpc":"2.0","params":{"a":1}}`),
				[]byte(`{"jsonrpc":"2.0","method":"E_TRUNC","params":{"a":`),
				garbage,
				noise,
			}
			for _, b := range bad {
				if _, err := c.Write(b); err != nil {
					t.Fatalf("send %d bytes: %v", len(b), err)
				}
			}
			good := []byte(`{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"192.0.2.1"}}`)
			c.Write(good)
			checkFor(t, 5*time.Second, "the good event after the bad ones", func() bool { return sink.len() == 1 })
			inv := m.Invalid.With(di.name).Value()
			if inv != uint64(len(bad)) {
				t.Errorf("invalid = %d, want %d", inv, len(bad))
			}
			if got := m.Received.With(di.name).Value(); got != 1 {
				t.Errorf("received = %d, want 1", got)
			}
			ev := sink.evs[0]
			if ev.Name != "E_PIKE_BLOCKED" || string(ev.Params) != `{"ip":"192.0.2.1"}` || !bytes.Equal(ev.Raw, good) || ev.Source != proto+":"+addr {
				t.Errorf("event = %+v", ev)
			}
			// Rate-limited: five rejects within a second make one log line.
			if n := strings.Count(logBuf.String(), "rejected malformed event"); n != 1 {
				t.Errorf("%d reject log lines, want 1:\n%s", n, logBuf.String())
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			in.Close()
		})
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// The raw buffer is reused between reads: an event must own its bytes.
func TestDatagramInputEventsOwnTheirBytes(t *testing.T) {
	m := NewMetrics(metrics.New())
	in, err := OpenInput(Listen{Proto: "udp", Addr: "127.0.0.1:0"}, InputConfig{}, Deps{}, m)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sink := &collect{}
	go in.Run(ctx, sink)
	c, _ := net.Dial("udp", in.(*datagramInput).Addr().String())
	defer c.Close()
	c.Write([]byte(`{"method":"E_ONE","params":["first-long-value"]}`))
	checkFor(t, 5*time.Second, "first event", func() bool { return sink.len() == 1 })
	c.Write([]byte(`{"method":"E_TWO","params":["x"]}`))
	checkFor(t, 5*time.Second, "second event", func() bool { return sink.len() == 2 })
	if got := string(sink.evs[0].Params); got != `["first-long-value"]` {
		t.Errorf("first event's params changed to %s", got)
	}
}
