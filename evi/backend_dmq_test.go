package evi

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
)

// fakeDMQ records writes; it stands in for the node where only the
// mapping from events to writes is under test (the real bus is in
// backend_dmq_kamailio_test.go).
type fakeDMQ struct {
	mu      sync.Mutex
	joined  bool
	peers   []string
	err     error
	ht      []dmq.HTableWrite
	ul      []dmq.ContactWrite
	dlg     []dmq.DialogWrite
	quorums []int
}

func (f *fakeDMQ) IsJoined() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.joined
}

func (f *fakeDMQ) HasPeer(ch string) bool {
	for _, p := range f.peers {
		if p == ch {
			return true
		}
	}
	return f.peers == nil
}

func (f *fakeDMQ) WriteHTable(_ context.Context, w dmq.HTableWrite, q int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ht, f.quorums = append(f.ht, w), append(f.quorums, q)
	return f.err
}

func (f *fakeDMQ) WriteUsrloc(_ context.Context, w dmq.ContactWrite, q int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ul, f.quorums = append(f.ul, w), append(f.quorums, q)
	return f.err
}

func (f *fakeDMQ) WriteDialog(_ context.Context, w dmq.DialogWrite, q int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dlg, f.quorums = append(f.dlg, w), append(f.quorums, q)
	return f.err
}

func TestDMQBackendSocketErrors(t *testing.T) {
	for _, tc := range []struct{ socket, want string }{
		{"dmq:", "unknown kind"},
		{"dmq:redis:x?key=a", "unknown kind"},
		{"dmq:htable?key={ip}&value=1", "no table"},
		{"dmq:htable:repl?value=1", "no key="},
		{"dmq:htable:repl?key={ip}", "a set needs value="},
		{"dmq:htable:repl?key={ip}&value=1&colour=red", `unknown parameter "colour"`},
		{"dmq:htable:repl?key={ip&value=1", "unclosed {"},
		{"dmq:htable:repl?key={}&value=1", "want {PARAM}"},
		{"dmq:htable:repl?key={a..b}&value=1", "empty name"},
		{"dmq:htable:repl?key={ip}&value=1&expire=soon", "expire="},
		{"dmq:htable:repl?key={ip}&value=1&op=insert", `op="insert"`},
		{"dmq:htable:repl?key={ip}&value=1&quorum=0", "quorum="},
		{"dmq:htable:repl?key={ip}&key={x}&value=1", "given twice"},
		{"dmq:usrloc:location?aor={aor}&contact={c}", "takes no table"},
		{"dmq:usrloc?aor={aor}", "no contact="},
		{"dmq:dialog?from_uri={f}", "no callid="},
		{"dmq:dialog?callid={c}&state=ringing", `state "ringing"`},
		{"dmq:dialog?callid={c}&hash_size=1000", "power of two"},
	} {
		t.Run(tc.socket, func(t *testing.T) {
			_, err := NewBackend(tc.socket, Deps{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewBackend(%q) = %v, want an error with %q", tc.socket, err, tc.want)
			}
		})
	}
	// Good sockets build without a node (sipside check builds them so).
	for _, s := range []string{
		"dmq:htable:repl?key={ip}&value=1",
		"dmq:htable:repl?key=pike:{ip}&op=delete",
		"dmq:htable:repl?key={ip}&value={node}&expire=600&quorum=1",
		"dmq:usrloc?aor={aor}&contact={uri}&expires={expires}&op=insert",
		"dmq:dialog?callid={callid}&from_uri={from}&to_uri={to}&from_tag={tag}&state=confirmed",
		"virtual:FAILOVER dmq:htable:repl?key={ip}&value=1 stdout:",
	} {
		b, err := NewBackend(s, Deps{})
		if err != nil {
			t.Errorf("NewBackend(%q): %v", s, err)
			continue
		}
		b.Close()
	}
}

func TestDMQChannels(t *testing.T) {
	for _, tc := range []struct {
		socket string
		want   string
	}{
		{"stdout:", ""},
		{"dmq:htable:repl?key={ip}&value=1", "htable"},
		{"dmq:usrloc?aor={a}&contact={c}", "usrloc"},
		{"virtual:PARALLEL stdout: dmq:dialog?callid={c} dmq:htable:t?key=k&value=v", "dialog,htable"},
	} {
		if got := strings.Join(DMQChannels(tc.socket), ","); got != tc.want {
			t.Errorf("DMQChannels(%q) = %q, want %q", tc.socket, got, tc.want)
		}
	}
}

func TestDMQBackendMapping(t *testing.T) {
	ev := func(params string) *Event {
		return &Event{Name: "E_TEST", Params: []byte(params), Received: time.Now()}
	}
	for _, tc := range []struct {
		name, socket, params string
		want                 dmq.HTableWrite
		wantQuorum           int
	}{
		{"string param", "dmq:htable:repl?key={ip}&value={reason}", `{"ip":"10.0.0.1","reason":"pike"}`,
			dmq.HTableWrite{Table: "repl", Name: "10.0.0.1", Type: dmq.TypeStr, Str: "pike"}, 0},
		{"literal integer", "dmq:htable:repl?key={ip}&value=1", `{"ip":"10.0.0.1"}`,
			dmq.HTableWrite{Table: "repl", Name: "10.0.0.1", Type: dmq.TypeInt, Int: 1}, 0},
		{"integer param", "dmq:htable:repl?key={ip}&value={count}", `{"ip":"10.0.0.1","count":17}`,
			dmq.HTableWrite{Table: "repl", Name: "10.0.0.1", Type: dmq.TypeInt, Int: 17}, 0},
		{"digits sent as a string stay a string", "dmq:htable:repl?key={ip}&value={count}", `{"ip":"10.0.0.1","count":"17"}`,
			dmq.HTableWrite{Table: "repl", Name: "10.0.0.1", Type: dmq.TypeStr, Str: "17"}, 0},
		{"mixed and nested", "dmq:htable:flags?key=route:{a.b}:{n}&value=on-{a.c}", `{"a":{"b":"x","c":true},"n":3}`,
			dmq.HTableWrite{Table: "flags", Name: "route:x:3", Type: dmq.TypeStr, Str: "on-true"}, 0},
		{"expire and quorum", "dmq:htable:repl?key={ip}&value=1&expire=600&quorum=1", `{"ip":"::1"}`,
			dmq.HTableWrite{Table: "repl", Name: "::1", Type: dmq.TypeInt, Int: 1, Expire: 600 * time.Second}, 1},
		{"expire from the event", "dmq:htable:repl?key={ip}&value=1&expire={ttl}", `{"ip":"::1","ttl":"30"}`,
			dmq.HTableWrite{Table: "repl", Name: "::1", Type: dmq.TypeInt, Int: 1, Expire: 30 * time.Second}, 0},
		{"delete", "dmq:htable:repl?key={ip}&op=delete", `{"ip":"10.0.0.1"}`,
			dmq.HTableWrite{Table: "repl", Name: "10.0.0.1", Delete: true}, 0},
		{"escaped", "dmq:htable:repl?key={ip}&value=a%26b+c", `{"ip":"1"}`,
			dmq.HTableWrite{Table: "repl", Name: "1", Type: dmq.TypeStr, Str: "a&b+c"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeDMQ{joined: true}
			b, err := NewBackend(tc.socket, Deps{DMQ: f})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Deliver(context.Background(), ev(tc.params)); err != nil {
				t.Fatal(err)
			}
			if len(f.ht) != 1 || f.ht[0] != tc.want || f.quorums[0] != tc.wantQuorum {
				t.Fatalf("writes %+v quorum %v, want %+v quorum %d", f.ht, f.quorums, tc.want, tc.wantQuorum)
			}
		})
	}
}

func TestDMQBackendUsrlocDialogMapping(t *testing.T) {
	f := &fakeDMQ{joined: true}
	b, err := NewBackend("dmq:usrloc?aor={aor}&contact={uri}&expires={expires}&user_agent=sipside", Deps{DMQ: f})
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := b.Deliver(context.Background(), &Event{Name: "E_UL_CONTACT_INSERT",
		Params: []byte(`{"aor":"alice","uri":"sip:alice@10.0.0.1:5060","expires":120}`)}); err != nil {
		t.Fatal(err)
	}
	c := f.ul[0]
	if c.AoR != "alice" || c.Contact.Contact != "sip:alice@10.0.0.1:5060" || c.UserAgent != "sipside" || c.Delete ||
		c.Expires.Before(before.Add(119*time.Second)) || c.Expires.After(time.Now().Add(121*time.Second)) || c.Q != -1 {
		t.Errorf("usrloc write %+v", c)
	}

	b, err = NewBackend("dmq:dialog?callid={callid}&from_uri={from}&to_uri={to}&from_tag={ftag}&to_tag={ttag}&state={state}", Deps{DMQ: f})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Deliver(context.Background(), &Event{Name: "E_DLG_STATE_CHANGED",
		Params: []byte(`{"callid":"c1@h","from":"sip:a@h","to":"sip:b@h","ftag":"t1","ttag":"t2","state":"4"}`)}); err != nil {
		t.Fatal(err)
	}
	d := f.dlg[0]
	he, hid := dmq.DialogID("c1@h", "t1", 4096)
	if d.CallID != "c1@h" || d.State != dmq.DialogConfirmed || d.Tag2 != "t2" || d.ReqURI != "sip:b@h" || d.HEntry != he || d.HID != hid || d.HEntry >= 4096 {
		t.Errorf("dialog write %+v", d)
	}
}

func TestDMQBackendRejectsMissingParams(t *testing.T) {
	for _, tc := range []struct{ socket, params, want string }{
		{"dmq:htable:repl?key={ip}&value=1", `{"node":"x"}`, `no parameter "ip"`},
		{"dmq:htable:repl?key={ip}&value=1", ``, `no parameter "ip"`},
		{"dmq:htable:repl?key={ip}&value=1", `{"ip":null}`, `no parameter "ip"`},
		{"dmq:htable:repl?key={ip}&value=1", `{"ip":""}`, `key={ip} is empty`},
		{"dmq:htable:repl?key={ip}&value={a.b}", `{"ip":"1","a":{}}`, `no parameter "a.b"`},
		{"dmq:usrloc?aor={aor}&contact={c}&expires={e}", `{"aor":"a","c":"sip:a@h","e":"soon"}`, `is not an integer`},
		{"dmq:usrloc?aor={aor}&contact={c}&expires={e}", `{"aor":"a","c":"sip:a@h","e":-5}`, `want seconds from now`},
		{"dmq:dialog?callid={c}&state={s}", `{"c":"x","s":"ringing"}`, `state "ringing"`},
		{"dmq:htable:repl?key={ip}&value=1", `{"ip":`, `not JSON`},
	} {
		t.Run(tc.socket+" "+tc.params, func(t *testing.T) {
			f := &fakeDMQ{joined: true}
			b, err := NewBackend(tc.socket, Deps{DMQ: f})
			if err != nil {
				t.Fatal(err)
			}
			err = b.Deliver(context.Background(), &Event{Name: "E_PIKE_BLOCKED", Params: []byte(tc.params)})
			if !IsRejected(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "E_PIKE_BLOCKED") {
				t.Fatalf("Deliver: %v, want a rejection naming the event and %q", err, tc.want)
			}
			if len(f.ht)+len(f.ul)+len(f.dlg) != 0 {
				t.Fatalf("written anyway: %+v %+v %+v", f.ht, f.ul, f.dlg)
			}
		})
	}
}

func TestDMQBackendNotJoinedFailsFast(t *testing.T) {
	f := &fakeDMQ{}
	b, err := NewBackend("dmq:htable:repl?key={ip}&value=1", Deps{DMQ: f})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	err = b.Deliver(ctx, &Event{Name: "E_PIKE_BLOCKED", Params: []byte(`{"ip":"1.2.3.4"}`)})
	if !errors.Is(err, dmq.ErrNotJoined) || IsRejected(err) {
		t.Fatalf("Deliver before the join: %v, want ErrNotJoined (not a rejection: it is kept for later)", err)
	}
	if _, err := NewBackend("dmq:htable:repl?key={ip}&value=1", Deps{}); err != nil {
		t.Fatal(err)
	}
	nb, _ := NewBackend("dmq:htable:repl?key={ip}&value=1", Deps{})
	if err := nb.Deliver(ctx, &Event{Name: "E", Params: []byte(`{"ip":"1"}`)}); err == nil || !strings.Contains(err.Error(), "[dmq]") {
		t.Fatalf("Deliver without a node: %v, want it to name [dmq]", err)
	}
	f.peers = []string{"usrloc"}
	f.joined = true
	if err := b.Deliver(ctx, &Event{Name: "E", Params: []byte(`{"ip":"1"}`)}); err == nil || !strings.Contains(err.Error(), "peers") {
		t.Fatalf("Deliver without the htable peer: %v", err)
	}
}

func TestIsRejected(t *testing.T) {
	rej := errors.Join(ErrRejected, errors.New("x"))
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("down"), false},
		{rej, true},
		{&MemberError{Policy: Failover, Errs: []error{rej, rej}}, true},
		{&MemberError{Policy: Failover, Errs: []error{rej, errors.New("down")}}, false},
	} {
		if got := IsRejected(tc.err); got != tc.want {
			t.Errorf("IsRejected(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestRouterRejectedNotSpooled: an event the backend rejects is counted as
// failed and never reaches the spool, where it would block every later
// event; an event that failed because the node had not joined is spooled
// and written once it has.
func TestRouterRejectedNotSpooled(t *testing.T) {
	f := &fakeDMQ{}
	reg := metrics.New()
	sp, err := NewSpool(SpoolConfig{Dir: t.TempDir(), SpillAfter: config.Duration(time.Hour), Retry: config.Duration(20 * time.Millisecond)}, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(reg)
	r, err := NewRouter([]RouteConfig{{Name: "r", To: "dmq:htable:repl?key={ip}&value=1"}}, Deps{Metrics: reg, DMQ: f}, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.spool = sp
	r.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r.Close(ctx)
		sp.Close()
	})
	r.Accept(&Event{Name: "E_PIKE_BLOCKED", Params: []byte(`{"ip":"1.1.1.1"}`), Received: time.Now()})
	r.Accept(&Event{Name: "E_PIKE_BLOCKED", Params: []byte(`{"nope":1}`), Received: time.Now()})
	r.Accept(&Event{Name: "E_PIKE_BLOCKED", Params: []byte(`{"ip":"2.2.2.2"}`), Received: time.Now()})
	q, err := sp.Route("r")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the events to wait in the spool for the join", func() bool { return q.Len() == 3 })
	f.mu.Lock()
	f.joined = true
	f.mu.Unlock()
	waitUntil(t, 5*time.Second, "the spooled events to be written", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.ht) == 2
	})
	f.mu.Lock()
	got := []string{f.ht[0].Name, f.ht[1].Name}
	f.mu.Unlock()
	if got[0] != "1.1.1.1" || got[1] != "2.2.2.2" {
		t.Errorf("written %v, want 1.1.1.1 then 2.2.2.2", got)
	}
	if n := m.Undelivered.With("r", "failed").Value(); n != 1 {
		t.Errorf("failed = %d, want 1 (the event without ip)", n)
	}
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
