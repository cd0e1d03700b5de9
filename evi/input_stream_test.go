package evi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
)

// streamFixture is a tcp: input feeding a router whose one route goes to a
// test backend the test can fail.
type streamFixture struct {
	in     *streamInput
	m      *Metrics
	router *Router
	cancel context.CancelFunc
}

func newStreamFixture(t *testing.T, backend string, ic InputConfig) *streamFixture {
	t.Helper()
	m := NewMetrics(metrics.New())
	in, err := OpenInput(Listen{Proto: "tcp", Addr: "127.0.0.1:0"}, ic, Deps{}, m)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRouter([]RouteConfig{{Name: "r", To: backend}}, Deps{}, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Run(ctx, r); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		in.Close()
		r.Close(context.Background())
	})
	return &streamFixture{in: in.(*streamInput), m: m, router: r, cancel: cancel}
}

func (f *streamFixture) dial(t *testing.T) net.Conn {
	c, err := net.Dial("tcp", f.in.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readReplies reads n JSON values from c (replies come back to back).
func readReplies(t *testing.T, c net.Conn, n int) []string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var out []string
	var buf []byte
	rd := make([]byte, 4096)
	for len(out) < n {
		k, err := c.Read(rd)
		buf = append(buf, rd[:k]...)
		for {
			i := skipWS(buf, 0)
			if i == len(buf) {
				buf = buf[:0]
				break
			}
			end, perr := skipValue(buf, i, 0)
			if perr != nil {
				break
			}
			out = append(out, string(buf[i:end]))
			buf = buf[end:]
		}
		if err != nil {
			t.Fatalf("after %d replies: %v", len(out), err)
		}
	}
	return out
}

// Events written back to back, split anywhere, as event_stream sends them.
func TestStreamInputNotificationMode(t *testing.T) {
	f := newStreamFixture(t, "test:stream-notif", InputConfig{})
	c := f.dial(t)
	stream := `{"jsonrpc":"2.0","method":"E_MY_EVENT","params":["a","b c","3"]}{"jsonrpc":"2.0","method":"E_MY_EVENT","params":{"":"a","":"b"}}{"jsonrpc":"2.0","method":"E_MY_EVENT"}`
	for i := 0; i < len(stream); i += 7 {
		c.Write([]byte(stream[i:min(i+7, len(stream))]))
		time.Sleep(time.Millisecond) // force separate reads
	}
	checkFor(t, 5*time.Second, "3 events", func() bool { return f.m.Received.With(f.in.name).Value() == 3 })
	checkFor(t, 5*time.Second, "3 deliveries", func() bool { return tb("stream-notif").count() == 3 })
	if got := tb("stream-notif").received(); got != `["a","b c","3"],{"":"a","":"b"},` {
		t.Errorf("params = %q", got)
	}
}

// reliable_mode: the reply says the truth, with the event's own id.
func TestStreamInputReliableMode(t *testing.T) {
	f := newStreamFixture(t, "test:stream-rel", InputConfig{ReplyTimeout: config.Duration(300 * time.Millisecond)})
	c := f.dial(t)
	c.Write([]byte(`{"id":1935636160,"jsonrpc":"2.0","method":"E_LAB_TICK","params":{"note":"tick","seq":1}}{"id":77,"jsonrpc":"2.0","method":"E_LAB_TICK","params":{"seq":2}}`))
	got := readReplies(t, c, 2)
	want := []string{`{"jsonrpc":"2.0","result":"OK","id":1935636160}`, `{"jsonrpc":"2.0","result":"OK","id":77}`}
	if strings.Join(got, "") != strings.Join(want, "") {
		t.Errorf("replies = %q, want %q", got, want)
	}
	tb("stream-rel").fail.Store(true)
	c.Write([]byte(`{"id":78,"jsonrpc":"2.0","method":"E_LAB_TICK","params":{"seq":3}}`))
	got = readReplies(t, c, 1)
	if !strings.HasPrefix(got[0], `{"jsonrpc":"2.0","error":{"code":500,"message":`) || !strings.HasSuffix(got[0], `"id":78}`) || !strings.Contains(got[0], "stream-rel is down") {
		t.Errorf("failure reply = %s", got[0])
	}
	tb("stream-rel").fail.Store(false)
}

// A backend slower than the proxy's timeout gets an error reply in time.
func TestStreamInputReliableTimeout(t *testing.T) {
	f := newStreamFixture(t, "test:stream-slow", InputConfig{ReplyTimeout: config.Duration(100 * time.Millisecond)})
	// Block the route: the test backend's mutex is held until we let go.
	b := tb("stream-slow")
	b.mu.Lock()
	defer b.mu.Unlock()
	c := f.dial(t)
	c.Write([]byte(`{"id":5,"jsonrpc":"2.0","method":"E_X"}`))
	got := readReplies(t, c, 1)
	if !strings.Contains(got[0], "not delivered within 100ms") || !strings.HasSuffix(got[0], `"id":5}`) {
		t.Errorf("reply = %s", got[0])
	}
}

func TestStreamInputBadInput(t *testing.T) {
	tests := []struct {
		name   string
		send   string
		closed bool
	}{
		{"garbage closes", `{"jsonrpc":"2.0","method":"E_OK"}hello`, true},
		{"scalar params closes", `{"method":"E","params":1}`, true},
		{"dropped mid-frame", `{"jsonrpc":"2.0","method":"E_HALF","par`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newStreamFixture(t, "test:stream-bad", InputConfig{})
			c := f.dial(t)
			c.Write([]byte(tt.send))
			if tt.closed {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Read(make([]byte, 10)); !errors.Is(err, io.EOF) {
					t.Errorf("connection not closed: %v", err)
				}
			} else {
				time.Sleep(50 * time.Millisecond)
				c.Close()
			}
			checkFor(t, 5*time.Second, "invalid counted", func() bool { return f.m.Invalid.With(f.in.name).Value() == 1 })
			// The input keeps serving new connections.
			c2 := f.dial(t)
			c2.Write([]byte(`{"id":9,"jsonrpc":"2.0","method":"E_AFTER"}`))
			if got := readReplies(t, c2, 1); got[0] != `{"jsonrpc":"2.0","result":"OK","id":9}` {
				t.Errorf("after bad input: %s", got[0])
			}
		})
	}
}

func TestStreamInputOversized(t *testing.T) {
	f := newStreamFixture(t, "test:stream-big", InputConfig{MaxFrame: 1000})
	c := f.dial(t)
	c.Write([]byte(`{"method":"E","params":["` + strings.Repeat("x", 5000)))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 10)); !errors.Is(err, io.EOF) {
		t.Errorf("connection not closed: %v", err)
	}
	if f.m.Invalid.With(f.in.name).Value() != 1 {
		t.Error("oversized event not counted")
	}
}

func TestStdinInput(t *testing.T) {
	m := NewMetrics(metrics.New())
	lines := strings.Join([]string{
		`{"jsonrpc":"2.0","method":"E_ONE","params":{"a":1}}`,
		``,
		`{"event":"E_TWO","params":["x"],"received":"2026-11-27T03:04:05Z","source":"udp:127.0.0.1:8090"}`,
		`not json`,
		`{"event":"E_THREE"} trailing`,
		`{"method":"E_FOUR"}`,
	}, "\n")
	in, err := OpenInput(Listen{Proto: "stdin"}, InputConfig{}, Deps{Stdin: strings.NewReader(lines)}, m)
	if err != nil {
		t.Fatal(err)
	}
	sink := &collect{}
	if err := in.Run(context.Background(), sink); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range sink.evs {
		got = append(got, ev.Name+string(ev.Params))
	}
	if strings.Join(got, " ") != `E_ONE{"a":1} E_TWO["x"] E_FOUR` {
		t.Errorf("events = %q", got)
	}
	if m.Invalid.With("stdin:").Value() != 2 {
		t.Errorf("invalid = %d, want 2", m.Invalid.With("stdin:").Value())
	}
}

// FuzzStreamInput feeds arbitrary bytes, in arbitrary chunks, to the
// event_stream connection handler: it must never panic or hang, and every
// event it accepts must be a notification that parses on its own.
func FuzzStreamInput(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","method":"E_MY_EVENT","params":["a"]}{"id":7,"jsonrpc":"2.0","method":"E"}`), uint8(5))
	f.Add([]byte(`{"method":"E","params":{"":"a","":"b"}} {"method"`), uint8(1))
	f.Add([]byte("garbage{"), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		m := NewMetrics(metrics.New())
		in := &streamInput{inputBase: inputBase{name: "tcp:fuzz", received: m.Received.With("f"), invalid: m.Invalid.With("f"),
			bad: newRateLog(slog.New(slog.DiscardHandler), time.Hour)}, replyTimeout: time.Millisecond, maxFrame: 4096,
			log: slog.New(slog.DiscardHandler)}
		server, client := net.Pipe()
		sink := &collect{}
		done := make(chan struct{})
		go func() { in.serve(server, sink); server.Close(); close(done) }()
		go func() {
			step := int(chunk%16) + 1
			for i := 0; i < len(data); i += step {
				if _, err := client.Write(data[i:min(i+step, len(data))]); err != nil {
					break
				}
			}
			client.Close()
		}()
		go io.Copy(io.Discard, client) // replies of reliable-mode events
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("serve did not return")
		}
		for _, ev := range sink.evs {
			if ev.Name == "" {
				t.Fatal("accepted an event without a name")
			}
			if ev.Params != nil && !json.Valid(ev.Params) {
				t.Fatalf("params %q are not JSON", ev.Params)
			}
		}
	})
}

// A line longer than max_frame is skipped and counted; the lines after it
// are still read.
func TestStdinInputLongLine(t *testing.T) {
	m := NewMetrics(metrics.New())
	long := `{"method":"E_LONG","params":["` + strings.Repeat("x", 200000) + `"]}`
	lines := `{"method":"E_BEFORE"}` + "\n" + long + "\n" + `{"method":"E_AFTER"}` + "\r\n" + `{"method":"E_LAST"}`
	in, err := OpenInput(Listen{Proto: "stdin"}, InputConfig{MaxFrame: 100000}, Deps{Stdin: strings.NewReader(lines)}, m)
	if err != nil {
		t.Fatal(err)
	}
	sink := &collect{}
	if err := in.Run(context.Background(), sink); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range sink.evs {
		got = append(got, ev.Name)
	}
	if strings.Join(got, " ") != "E_BEFORE E_AFTER E_LAST" || m.Invalid.With("stdin:").Value() != 1 {
		t.Errorf("events %q, invalid %d", got, m.Invalid.With("stdin:").Value())
	}
}
