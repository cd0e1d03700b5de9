package evi

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

// testBackend is a member whose failures the test controls; it checks the
// policies' logic, while the real backends are tested against real sockets.
type testBackend struct {
	name string
	fail atomic.Bool
	mu   sync.Mutex
	got  []string
}

var testBackends sync.Map // name -> *testBackend

func init() {
	backendSchemes["test"] = func(rest string, _ Deps) (Backend, error) {
		b := &testBackend{name: rest}
		testBackends.Store(rest, b)
		return b, nil
	}
}

func tb(name string) *testBackend {
	v, _ := testBackends.Load(name)
	return v.(*testBackend)
}

func (b *testBackend) Deliver(_ context.Context, ev *Event) error {
	if b.fail.Load() {
		return errors.New(b.name + " is down")
	}
	b.mu.Lock()
	b.got = append(b.got, string(ev.Params))
	b.mu.Unlock()
	return nil
}

func (b *testBackend) received() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.got, ",")
}

func (b *testBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.got)
}

func (b *testBackend) Close() error { return nil }

func ev(seq string) *Event { return &Event{Name: "E_TEST", Params: []byte(seq), Received: time.Now()} }

func newTestVirtual(t *testing.T, spec string) *Virtual {
	t.Helper()
	b, err := NewBackend(spec, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return b.(*Virtual)
}

func TestParallel(t *testing.T) {
	v := newTestVirtual(t, "virtual:PARALLEL test:p1 test:p2 test:p3")
	ctx := context.Background()
	if err := v.Deliver(ctx, ev("1")); err != nil {
		t.Fatal(err)
	}
	tb("p2").fail.Store(true)
	err := v.Deliver(ctx, ev("2"))
	var me *MemberError
	if !errors.As(err, &me) || len(me.Errs) != 1 || !strings.Contains(err.Error(), "p2 is down") {
		t.Fatalf("err = %v, want only p2's failure", err)
	}
	// Unlike event_virtual, one failure does not stop the others.
	for name, want := range map[string]string{"p1": "1,2", "p2": "1", "p3": "1,2"} {
		if got := tb(name).received(); got != want {
			t.Errorf("%s got %q, want %q", name, got, want)
		}
	}
}

func TestFailover(t *testing.T) {
	v := newTestVirtual(t, "virtual:FAILOVER test:f1 test:f2 test:f3")
	now := time.Unix(1000, 0)
	v.now = func() time.Time { return now }
	v.SetFailoverTimeout(5 * time.Second)
	ctx := context.Background()
	f1, f2, f3 := tb("f1"), tb("f2"), tb("f3")

	v.Deliver(ctx, ev("1"))
	f1.fail.Store(true)
	if err := v.Deliver(ctx, ev("2")); err != nil {
		t.Fatal(err)
	}
	f1.fail.Store(false) // back, but inside its window: skipped
	now = now.Add(4 * time.Second)
	v.Deliver(ctx, ev("3"))
	now = now.Add(2 * time.Second) // window over: preferred again
	v.Deliver(ctx, ev("4"))
	if got, want := f1.received()+"|"+f2.received(), "1,4|2,3"; got != want {
		t.Errorf("f1|f2 = %q, want %q", got, want)
	}

	// Every member down, then f3 comes back while f1 and f2 sit in their
	// windows: the module would drop the event; we try the skipped ones.
	f1.fail.Store(true)
	f2.fail.Store(true)
	f3.fail.Store(true)
	if err := v.Deliver(ctx, ev("5")); err == nil {
		t.Fatal("delivered with every member down")
	}
	f3.fail.Store(false)
	if err := v.Deliver(ctx, ev("6")); err != nil {
		t.Fatalf("all in window: %v", err)
	}
	if got := f3.received(); got != "6" {
		t.Errorf("f3 got %q, want 6", got)
	}
}

func TestRoundRobin(t *testing.T) {
	v := newTestVirtual(t, "virtual:ROUND-ROBIN test:r1 test:r2")
	ctx := context.Background()
	for _, s := range []string{"1", "2", "3", "4"} {
		v.Deliver(ctx, ev(s))
	}
	tb("r2").fail.Store(true)
	for _, s := range []string{"5", "6"} {
		if err := v.Deliver(ctx, ev(s)); err != nil {
			t.Fatalf("event %s lost with one member up: %v", s, err)
		}
	}
	if got, want := tb("r1").received()+"|"+tb("r2").received(), "1,3,5,6|2,4"; got != want {
		t.Errorf("r1|r2 = %q, want %q", got, want)
	}
}

func TestNewBackendErrors(t *testing.T) {
	tests := []struct{ in, err string }{
		{"virtual:failover udp:127.0.0.1:1", "unknown policy"},
		{"virtual:", "no policy"},
		{"virtual:PARALLEL", "no member"},
		{"virtual:PARALLEL virtual:FAILOVER udp:127.0.0.1:1", "cannot contain"},
		{"virtual:FAILOVER udp:127.0.0.1:1 bogus:x", `unknown scheme "bogus"`},
		{"udp:127.0.0.1", "HOST:PORT"},
		{"udp:127.0.0.1:70000", "1 to 65535"},
		{"unix:relative.sock", "absolute path"},
		{"stdout:x", "nothing after"},
		{"nonsense", "unknown scheme"},
	}
	for _, tt := range tests {
		_, err := NewBackend(tt.in, Deps{})
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%q: err = %v, want %q", tt.in, err, tt.err)
		}
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"rabbitmq:guest:secret@127.0.0.1:5672/pike": "rabbitmq:guest:xxxxx@127.0.0.1:5672/pike",
		"rabbitmq:127.0.0.1/pike":                   "rabbitmq:127.0.0.1/pike",
		"rabbitmq:guest@127.0.0.1/pike":             "rabbitmq:guest@127.0.0.1/pike",
		"http://u:p@example.com/x":                  "http://u:xxxxx@example.com/x",
		"udp:127.0.0.1:9000":                        "udp:127.0.0.1:9000",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRouter(t *testing.T) {
	m := NewMetrics(metrics.New())
	var mu sync.Mutex
	var failures []string
	r, err := NewRouter([]RouteConfig{
		{Name: "ul", Events: []string{"E_UL_*"}, To: "test:ul"},
		{Name: "pike", Events: []string{"E_PIKE_BLOCKED"}, To: "test:pike"},
		{Name: "all", To: "test:all", Queue: 1},
	}, Deps{}, m, func(route string, ev *Event, err error) error {
		mu.Lock()
		failures = append(failures, route+":"+string(ev.Params))
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	tb("all").fail.Store(true)
	r.Start()
	r.Accept(&Event{Name: "E_UL_CONTACT_INSERT", Params: []byte("1"), Received: time.Now()})
	r.Accept(&Event{Name: "E_PIKE_BLOCKED", Params: []byte("2"), Received: time.Now()})
	r.Accept(&Event{Name: "E_OTHER", Params: []byte("3"), Received: time.Now()})
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if tb("ul").received() != "1" || tb("pike").received() != "2" {
		t.Errorf("ul=%q pike=%q", tb("ul").received(), tb("pike").received())
	}
	if got := m.Undelivered.With("all", "failed").Value() + m.Undelivered.With("all", "queue_full").Value(); got != 3 {
		t.Errorf("route all: %d undelivered, want 3", got)
	}
	if len(failures) != 3 {
		t.Errorf("failures = %v, want the 3 events of route all", failures)
	}
	if r.TryAccept(&Event{Name: "E_X"}) {
		t.Error("a closed router accepted an event")
	}
}

func TestAppendJSONLine(t *testing.T) {
	at := time.Date(2026, 11, 27, 3, 4, 5, 123456789, time.UTC)
	tests := []struct {
		ev   Event
		want string
	}{
		{Event{Name: "E_PIKE_BLOCKED", Params: []byte(`{"ip":"192.0.2.1"}`), Received: at, Source: "udp:127.0.0.1:8090"},
			`{"event":"E_PIKE_BLOCKED","params":{"ip":"192.0.2.1"},"received":"2026-11-27T03:04:05.123456789Z","source":"udp:127.0.0.1:8090"}` + "\n"},
		{Event{Name: "E_MY_EVENT", Received: at, Source: "unix:/run/x.sock"},
			`{"event":"E_MY_EVENT","received":"2026-11-27T03:04:05.123456789Z","source":"unix:/run/x.sock"}` + "\n"},
		{Event{Name: "E_\"q\"\n\xff", Params: []byte(`{"":"a","":"b"}`), Received: at, Source: "s"},
			`{"event":"E_\"q\"\n\ufffd","params":{"":"a","":"b"},"received":"2026-11-27T03:04:05.123456789Z","source":"s"}` + "\n"},
	}
	for _, tt := range tests {
		if got := string(AppendJSONLine(nil, &tt.ev)); got != tt.want {
			t.Errorf("got  %s\nwant %s", got, tt.want)
		}
	}
}
