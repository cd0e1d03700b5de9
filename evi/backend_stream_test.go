package evi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestStreamSocket(t *testing.T) {
	checkSocketStrings(t, []socketCase{
		{"tcp:127.0.0.1:9101", "tcp:127.0.0.1:9101", ""},
		{"tcp:localhost:9101/my.method", "tcp:localhost:9101/my.method", ""},
		{"tcp:127.0.0.1:9101/a/b:c", "tcp:127.0.0.1:9101/a/b:c", ""}, // the method is verbatim
		{"tcp:127.0.0.1:9101?reliable", "tcp:127.0.0.1:9101?reliable", ""},
		{"tcp:127.0.0.1:9101/m?reliable", "tcp:127.0.0.1:9101/m?reliable", ""},
		{"tcp:127.0.0.1", "", "want tcp:HOST:PORT"},
		{"tcp::9101", "", "want tcp:HOST:PORT"},
		{"tcp:127.0.0.1:0", "", "port"},
		{"tcp:127.0.0.1:x/m", "", "port"},
		{"tcp:127.0.0.1:9101/", "", "empty method"},
		{"tcp:::1:9101", "", "want tcp:HOST:PORT"},
	})
}

// socketCase is a socket string, what the backend built from it shows (its
// String, with any password hidden), or the error it must give instead.
type socketCase struct{ socket, want, err string }

func checkSocketStrings(t *testing.T, cases []socketCase) {
	t.Helper()
	for _, tc := range cases {
		b, err := NewBackend(tc.socket, Deps{})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NewBackend(%q) = %v, want error %q", tc.socket, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("NewBackend(%q): %v", tc.socket, err)
			continue
		}
		if got := b.(fmt.Stringer).String(); got != tc.want {
			t.Errorf("NewBackend(%q) = %q, want %q", tc.socket, got, tc.want)
		}
		b.Close()
	}
}

// streamPeer is a real TCP receiver: it records every JSON value it reads and
// answers as told.
type streamPeer struct {
	ln     net.Listener
	answer func(id json.RawMessage) string // "" = no answer
	mu     sync.Mutex
	got    []string
	conns  []net.Conn
}

func newStreamPeer(t *testing.T, answer func(json.RawMessage) string) *streamPeer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &streamPeer{ln: ln, answer: answer}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *streamPeer) addr() string { return p.ln.Addr().String() }

func (p *streamPeer) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		p.mu.Unlock()
		go func() {
			dec := json.NewDecoder(c)
			for {
				var v json.RawMessage
				if err := dec.Decode(&v); err != nil {
					c.Close()
					return
				}
				p.mu.Lock()
				p.got = append(p.got, string(v))
				p.mu.Unlock()
				if p.answer != nil {
					var req struct{ ID json.RawMessage }
					json.Unmarshal(v, &req)
					if a := p.answer(req.ID); a != "" {
						c.Write([]byte(a))
					}
				}
			}
		}()
	}
}

func (p *streamPeer) received() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.got...)
}

// dropConns closes the connections but keeps listening.
func (p *streamPeer) dropConns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *streamPeer) close() {
	p.ln.Close()
	p.dropConns()
}

var tickEvent = &Event{Name: "E_LAB_TICK", Params: []byte(`{"note":"tick","seq":37}`)}

// The bytes of captures/stream-01-notification-mode.txt, and the method
// override.
func TestStreamNotificationBytes(t *testing.T) {
	p := newStreamPeer(t, nil)
	for _, tc := range []struct{ suffix, want string }{
		{"", `{"jsonrpc":"2.0","method":"E_LAB_TICK","params":{"note":"tick","seq":37}}`},
		{"/lab.tick", `{"jsonrpc":"2.0","method":"lab.tick","params":{"note":"tick","seq":37}}`},
	} {
		b, err := NewBackend("tcp:"+p.addr()+tc.suffix, Deps{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		for range 2 {
			if err := b.Deliver(ctx, tickEvent); err != nil {
				t.Fatal(err)
			}
		}
		cancel()
		checkFor(t, 5*time.Second, "two events", func() bool { return len(p.received()) >= 2 })
		for _, got := range p.received() {
			if got != tc.want {
				t.Errorf("sent %s, want %s", got, tc.want)
			}
		}
		b.Close()
		p.mu.Lock()
		p.got = nil
		p.mu.Unlock()
	}
}

// An event that arrived as an event_stream request keeps no id of the proxy's.
func TestStreamDropsTheProxysID(t *testing.T) {
	ev := &Event{Name: "E_LAB_TICK", Params: []byte(`{"seq":2}`),
		Raw: []byte(`{"id":450167129,"jsonrpc":"2.0","method":"E_LAB_TICK","params":{"seq":2}}`)}
	got := string(eventNotification(ev))
	if want := `{"jsonrpc":"2.0","method":"E_LAB_TICK","params":{"seq":2}}`; got != want {
		t.Fatalf("notification = %s, want %s", got, want)
	}
}

// The receiver's answers in reliable mode, as captures/stream-02 lists them.
func TestStreamReliableOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(id json.RawMessage) string
		err    string // "" = success
	}{
		{"result", func(id json.RawMessage) string { return `{"jsonrpc": "2.0", "result": "ok", "id": ` + string(id) + `}` }, ""},
		{"result, upper-case members", func(id json.RawMessage) string { return `{"JSONRPC":"2.0","RESULT":1,"ID":` + string(id) + `}` }, ""},
		{"error", func(id json.RawMessage) string {
			return `{"jsonrpc": "2.0", "error": {"code": -32000, "message": "nope"}, "id": ` + string(id) + `}`
		}, "nope"},
		{"error null still fails", func(id json.RawMessage) string { return `{"error":null,"id":` + string(id) + `}` }, "error null"},
		{"garbage", func(json.RawMessage) string { return "not json at all" }, "not JSON"},
		{"no id", func(json.RawMessage) string { return `{"result":"ok"}` }, "numeric id"},
		{"no answer", func(json.RawMessage) string { return "" }, "deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newStreamPeer(t, tc.answer)
			b, err := NewBackend("tcp:"+p.addr()+"?reliable", Deps{})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			for range 2 { // the second event shows the backend recovered
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				start := time.Now()
				err := b.Deliver(ctx, tickEvent)
				cancel()
				if time.Since(start) > 2*time.Second {
					t.Fatalf("Deliver took %v with a 300ms deadline", time.Since(start))
				}
				if tc.err == "" && err != nil {
					t.Fatalf("Deliver = %v, want success", err)
				}
				if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
					t.Fatalf("Deliver = %v, want an error saying %q", err, tc.err)
				}
			}
			for _, got := range p.received() {
				if !strings.HasPrefix(got, `{"id":`) || !strings.HasSuffix(got, `,"jsonrpc":"2.0","method":"E_LAB_TICK","params":{"note":"tick","seq":37}}`) {
					t.Errorf("sent %s, want the request form with the id first", got)
				}
			}
		})
	}
}

// After the receiver drops the connection, the next event opens a new one;
// while nobody listens, Deliver fails.
func TestStreamReconnect(t *testing.T) {
	p := newStreamPeer(t, nil)
	addr := p.addr()
	b, err := NewBackend("tcp:"+addr, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	deliver := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return b.Deliver(ctx, tickEvent)
	}
	if err := deliver(); err != nil {
		t.Fatal(err)
	}
	p.dropConns()
	checkFor(t, 5*time.Second, "a delivery on a new connection", func() bool {
		return deliver() == nil && len(p.received()) >= 2
	})
	p.close()
	var last error
	checkFor(t, 5*time.Second, "a failed delivery with no listener", func() bool {
		last = deliver()
		return last != nil
	})
	if !strings.Contains(last.Error(), "connect") && !errors.Is(last, net.ErrClosed) {
		t.Logf("error with no listener: %v", last)
	}
}
