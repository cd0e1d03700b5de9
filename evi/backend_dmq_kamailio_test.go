package evi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/testenv"
)

// kamNode starts a real Kamailio 5.6 DMQ node from dmq's test template
// (htable repl with dmqreplicate=1, dmq_usrloc, dialog with DMQ) at addr,
// notifying notify ("" = itself). 256 MB of shm: with the default 64 MB a
// storm of 10 000 replicated sets runs out of tm cells.
func kamNode(t *testing.T, name, addr, notify string) *testenv.Kamailio {
	t.Helper()
	tmpl, err := os.ReadFile("../dmq/testdata/kamailio-dmq.cfg.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	return testenv.NewKamailio(t, testenv.KamailioConfig{Name: name, Addr: addr, Template: string(tmpl),
		Vars: map[string]any{"Notify": notify, "Ping": 5, "FrTimer": 4000, "UAS": "", "Transport": ""},
		Args: []string{"-m", "256"}})
}

func kamRPC(k *testenv.Kamailio, method string, params ...any) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return k.RPC(ctx, method, params...)
}

// kamCell is htable.get of a cell: its value as text, or an error (the
// cell does not exist).
func kamCell(k *testenv.Kamailio, table, name string) (string, error) {
	raw, err := kamRPC(k, "htable.get", table, name)
	if err != nil {
		return "", err
	}
	var r struct {
		Item struct {
			Value json.RawMessage `json:"value"`
		} `json:"item"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return "", fmt.Errorf("htable.get: %w: %s", err, raw)
	}
	var s string
	if json.Unmarshal(r.Item.Value, &s) == nil {
		return s, nil
	}
	return string(r.Item.Value), nil
}

// kamItems is the number of cells of table on k (htable.stats), -1 when
// unknown.
func kamItems(k *testenv.Kamailio, table string) int {
	raw, err := kamRPC(k, "htable.stats")
	if err != nil {
		return -1
	}
	var stats []struct {
		Name  string `json:"name"`
		Items int    `json:"all"`
	}
	if json.Unmarshal(raw, &stats) != nil {
		return -1
	}
	for _, s := range stats {
		if s.Name == table {
			return s.Items
		}
	}
	return -1
}

// kamActive reports whether k lists every one of addrs as active.
func kamActive(k *testenv.Kamailio, addrs ...string) bool {
	raw, err := kamRPC(k, "dmq.list_nodes")
	if err != nil {
		return false
	}
	var nodes []struct {
		Host   string `json:"host"`
		Port   string `json:"port"`
		Status string `json:"status"`
	}
	if json.Unmarshal(raw, &nodes) != nil {
		return false
	}
	active := map[string]bool{}
	for _, n := range nodes {
		active["sip:"+n.Host+":"+n.Port] = n.Status == "active"
	}
	for _, a := range addrs {
		if !active[a] {
			return false
		}
	}
	return true
}

// busEvents records the E_DMQ_* events of the sipside node.
type busEvents struct {
	mu     sync.Mutex
	events []string
}

func (b *busEvents) add(name string, params []byte) {
	b.mu.Lock()
	b.events = append(b.events, name+" "+string(params))
	b.mu.Unlock()
}

func (b *busEvents) with(substrs ...string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
next:
	for _, e := range b.events {
		for _, s := range substrs {
			if !strings.Contains(e, s) {
				continue next
			}
		}
		out = append(out, e)
	}
	return out
}

// dmqBus is a 2-node Kamailio bus with sipside's node beside it, and a
// router whose routes write to the bus.
type dmqBus struct {
	A, B   *testenv.Kamailio
	node   *dmq.Node
	events *busEvents
	run    func() // starts the node (the router runs from the start)
	router *Router
	m      *Metrics
	spool  *Spool
}

func startDMQBus(t *testing.T, routes []RouteConfig) *dmqBus {
	t.Helper()
	if testing.Short() {
		t.Skip("starts two Kamailio nodes")
	}
	b := &dmqBus{events: &busEvents{}}
	b.A = kamNode(t, "A", "127.0.0.2", "")
	b.B = kamNode(t, "B", "127.0.0.3", "sip:"+b.A.SIPAddr())
	waitUntil(t, 20*time.Second, "A and B to list each other active", func() bool {
		both := []string{"sip:" + b.A.SIPAddr(), "sip:" + b.B.SIPAddr()}
		return kamActive(b.A, both...) && kamActive(b.B, both...)
	})
	port := testenv.FreePort(t, "udp", "127.0.0.1")
	log := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	node, err := dmq.New(dmq.Config{
		Listen:       "sip:127.0.0.1:" + strconv.Itoa(port),
		Seeds:        []string{"sip:" + b.A.SIPAddr()},
		PingInterval: config.Duration(time.Second),
		T1:           config.Duration(100 * time.Millisecond),
		T2:           config.Duration(400 * time.Millisecond),
		Timeout:      config.Duration(2 * time.Second),
		LeaveTimeout: config.Duration(time.Second),
	}, dmq.Options{Logger: log, OnChange: b.events.add})
	if err != nil {
		t.Fatal(err)
	}
	b.node = node
	reg := metrics.New()
	b.m = NewMetrics(reg)
	b.spool, err = NewSpool(SpoolConfig{Dir: t.TempDir(), SpillAfter: config.Duration(time.Hour), Retry: config.Duration(50 * time.Millisecond)}, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	b.router, err = NewRouter(routes, Deps{Metrics: reg, Log: log, DMQ: node}, b.m, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.router.spool = b.spool
	b.router.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	b.run = func() { go func() { done <- node.Run(ctx) }() }
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		b.router.Close(cctx)
		ccancel()
		b.spool.Close()
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("dmq node did not stop within 10s")
		}
	})
	return b
}

// joined waits until sipside lists both Kamailio nodes active (a write goes
// to the nodes active in its list).
func (b *dmqBus) joined(t *testing.T) {
	t.Helper()
	waitUntil(t, 15*time.Second, "sipside to see A and B active", func() bool {
		active := 0
		for _, n := range b.node.Nodes() {
			if !n.Local && n.Status == dmq.StatusActive {
				active++
			}
		}
		return active == 2
	})
}

func (b *dmqBus) raise(name, params string) {
	b.router.Accept(&Event{Name: name, Params: []byte(params), Received: time.Now(), Source: "test"})
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestDMQBackendKamailio: events become htable cells, contacts and dialogs
// on every node of a real Kamailio bus, written by routes.
func TestDMQBackendKamailio(t *testing.T) {
	b := startDMQBus(t, []RouteConfig{
		{Name: "block", Events: []string{"E_PIKE_BLOCKED"}, To: "dmq:htable:repl?key={ip}&value=1"},
		{Name: "unblock", Events: []string{"E_PIKE_UNBLOCKED"}, To: "dmq:htable:repl?key={ip}&op=delete"},
		{Name: "flag", Events: []string{"E_ROUTING_FLAG"}, To: "dmq:htable:replx?key=flag:{name}&value={value}&expire=600"},
		{Name: "reg", Events: []string{"E_UL_CONTACT_INSERT"}, To: "dmq:usrloc?aor={aor}&contact={uri}&expires={expires}&user_agent=sipside-test"},
		{Name: "unreg", Events: []string{"E_UL_CONTACT_DELETE"}, To: "dmq:usrloc?aor={aor}&contact={uri}&op=delete"},
		{Name: "dlg", Events: []string{"E_CALL"}, To: "dmq:dialog?callid={callid}&from_uri={from}&to_uri={to}&from_tag={ftag}&to_tag={ttag}&state={state}"},
		{Name: "dlgend", Events: []string{"E_CALL_END"}, To: "dmq:dialog?callid={callid}&from_tag={ftag}&op=delete"},
	})
	A, B := b.A, b.B
	nodes := []*testenv.Kamailio{A, B}
	outer := t // C, started in a subtest, must outlive it: the bus keeps it
	ips := []string{"198.51.100.1", "198.51.100.2", "198.51.100.3"}

	// The first event arrives before sipside has joined: it waits in the
	// spool and is written once the node has joined.
	b.raise("E_PIKE_BLOCKED", `{"ip":"`+ips[0]+`"}`)
	rs, err := b.spool.Route("block")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the event from before the join to be spooled", func() bool { return rs.Len() == 1 })
	b.run()
	b.joined(t)

	t.Run("E_PIKE_BLOCKED to repl on both nodes", func(t *testing.T) {
		for _, ip := range ips[1:] {
			b.raise("E_PIKE_BLOCKED", `{"ip":"`+ip+`"}`)
		}
		waitUntil(t, 10*time.Second, "three repl cells on A and B", func() bool {
			for _, k := range nodes {
				for _, ip := range ips {
					if v, err := kamCell(k, "repl", ip); err != nil || v != "1" {
						return false
					}
				}
			}
			return true
		})
		if rs.Len() != 0 {
			t.Errorf("spool still holds %d events", rs.Len())
		}
	})

	t.Run("an event without ip is counted and written nowhere", func(t *testing.T) {
		before := b.m.Undelivered.With("block", "failed").Value()
		b.raise("E_PIKE_BLOCKED", `{"node":"edge1"}`)
		b.raise("E_PIKE_BLOCKED", `{"ip":"198.51.100.9"}`) // behind it, to know it was handled
		waitUntil(t, 10*time.Second, "the event after it to be written", func() bool {
			_, errA := kamCell(A, "repl", "198.51.100.9")
			_, errB := kamCell(B, "repl", "198.51.100.9")
			return errA == nil && errB == nil
		})
		if n := b.m.Undelivered.With("block", "failed").Value() - before; n != 1 {
			t.Errorf("failed deliveries = %d, want 1", n)
		}
		for _, k := range nodes {
			if n := kamItems(k, "repl"); n != 4 {
				t.Errorf("%s holds %d repl cells, want 4 (nothing written for the event without ip)", k.Name, n)
			}
			if v, err := kamCell(k, "repl", ""); err == nil {
				t.Errorf("%s has a cell with an empty name: %q", k.Name, v)
			}
		}
		if rs.Len() != 0 {
			t.Errorf("the rejected event went to the spool (%d events there)", rs.Len())
		}
	})

	t.Run("delete removes it from both", func(t *testing.T) {
		b.raise("E_PIKE_UNBLOCKED", `{"ip":"`+ips[1]+`"}`)
		waitUntil(t, 10*time.Second, ips[1]+" to be gone from A and B", func() bool {
			_, errA := kamCell(A, "repl", ips[1])
			_, errB := kamCell(B, "repl", ips[1])
			return errA != nil && errB != nil
		})
		for _, k := range nodes {
			if _, err := kamCell(k, "repl", ips[0]); err != nil {
				t.Errorf("%s lost %s too: %v", k.Name, ips[0], err)
			}
		}
	})

	t.Run("string value with expire", func(t *testing.T) {
		b.raise("E_ROUTING_FLAG", `{"name":"carrier-x","value":"down"}`)
		waitUntil(t, 10*time.Second, "replx[flag:carrier-x] on A and B", func() bool {
			for _, k := range nodes {
				if v, err := kamCell(k, "replx", "flag:carrier-x"); err != nil || v != "down" {
					return false
				}
			}
			return true
		})
	})

	t.Run("no echo", func(t *testing.T) {
		if ev := b.events.with("E_DMQ_HTABLE", "198.51.100."); len(ev) > 0 {
			t.Errorf("the cells sipside wrote came back as events (echo is off): %v", ev)
		}
	})

	t.Run("a node joining later gets the cells by init sync", func(t *testing.T) {
		C := kamNode(outer, "C", "127.0.0.4", "sip:"+A.SIPAddr())
		waitUntil(t, 20*time.Second, "C to hold the repl cells", func() bool {
			_, err0 := kamCell(C, "repl", ips[0])
			_, err2 := kamCell(C, "repl", ips[2])
			_, err1 := kamCell(C, "repl", ips[1])
			return err0 == nil && err2 == nil && err1 != nil
		})
		// sipside asks C for its sync too: the copies of its own cells are
		// echoes, not events.
		waitUntil(t, 15*time.Second, "sipside to see C active", func() bool {
			for _, n := range b.node.Nodes() {
				if n.Addr.String() == "sip:"+C.SIPAddr() {
					return n.Status == dmq.StatusActive
				}
			}
			return false
		})
		if ev := b.events.with("E_DMQ_HTABLE", "198.51.100."); len(ev) > 0 {
			t.Errorf("sync answers from C raised events for sipside's own cells: %v", ev)
		}
	})

	t.Run("usrloc", func(t *testing.T) {
		b.raise("E_UL_CONTACT_INSERT", `{"aor":"alice","uri":"sip:alice@192.0.2.7:5060","expires":300}`)
		lookup := func(k *testenv.Kamailio) string {
			raw, err := kamRPC(k, "ul.lookup", "location", "alice")
			if err != nil {
				return err.Error()
			}
			return string(raw)
		}
		waitUntil(t, 10*time.Second, "alice on A and B (ul.lookup)", func() bool {
			return strings.Contains(lookup(A), "sip:alice@192.0.2.7:5060") && strings.Contains(lookup(B), "sip:alice@192.0.2.7:5060")
		})
		if raw := lookup(A); !strings.Contains(raw, "sipside-test") || !strings.Contains(raw, dmq.ContactRUID("alice", "sip:alice@192.0.2.7:5060")) {
			t.Errorf("alice on A: %s", raw)
		}
		b.raise("E_UL_CONTACT_DELETE", `{"aor":"alice","uri":"sip:alice@192.0.2.7:5060"}`)
		waitUntil(t, 10*time.Second, "alice gone from A and B", func() bool {
			return !strings.Contains(lookup(A), "192.0.2.7") && !strings.Contains(lookup(B), "192.0.2.7")
		})
	})

	t.Run("dialog", func(t *testing.T) {
		b.raise("E_CALL", `{"callid":"call-1@192.0.2.7","from":"sip:alice@example.com","to":"sip:bob@example.com","ftag":"ft1","ttag":"tt1","state":"confirmed"}`)
		list := func(k *testenv.Kamailio) string {
			raw, err := kamRPC(k, "dlg.list")
			if err != nil {
				return err.Error()
			}
			return string(raw)
		}
		defer func() {
			if t.Failed() {
				t.Logf("A: %s\nB: %s\nA log:\n%s", list(A), list(B), A.LogTail(40))
			}
		}()
		waitUntil(t, 10*time.Second, "the dialog on A and B (dlg.list)", func() bool {
			return strings.Contains(list(A), "call-1@192.0.2.7") && strings.Contains(list(B), "call-1@192.0.2.7")
		})
		if raw := list(B); !strings.Contains(raw, `"state":4`) {
			t.Errorf("dialog on B is not confirmed (4): %s", raw)
		}
		b.raise("E_CALL_END", `{"callid":"call-1@192.0.2.7","ftag":"ft1"}`)
		waitUntil(t, 10*time.Second, "the dialog gone from A and B", func() bool {
			return !strings.Contains(list(A), "call-1@192.0.2.7") && !strings.Contains(list(B), "call-1@192.0.2.7")
		})
	})
	for _, name := range []string{"block", "unblock", "flag", "reg", "unreg", "dlg", "dlgend"} {
		want := uint64(0)
		if name == "block" {
			want = 1
		}
		if n := b.m.Undelivered.With(name, "failed").Value(); n != want {
			t.Errorf("route %s: %d failed deliveries, want %d", name, n, want)
		}
	}
}

// TestDMQBackendKamailioBurst: 10 000 E_PIKE_BLOCKED events are all applied
// on both nodes. The figure (events/s, time until the last cell is visible
// on both nodes) is logged, not asserted; with SIPSIDE_DMQ_FIGURES=1 the
// same 10 000 cells are also written by Kamailio node A with htable.sets
// (8 concurrent jsonrpcs clients), the way a Kamailio node replicates them.
func TestDMQBackendKamailioBurst(t *testing.T) {
	const total = 10000
	b := startDMQBus(t, []RouteConfig{
		{Name: "block", Events: []string{"E_PIKE_BLOCKED"}, To: "dmq:htable:repl?key={ip}&value=1", Queue: total},
	})
	b.run()
	b.joined(t)
	ok := b.m.Delivered.With("block", "dmq:htable:repl?key={ip}&value=1")
	start := time.Now()
	for i := range total {
		b.raise("E_PIKE_BLOCKED", `{"ip":"10.1.`+strconv.Itoa(i/256)+`.`+strconv.Itoa(i%256)+`"}`)
	}
	waitUntil(t, 120*time.Second, "every event delivered", func() bool {
		return ok.Value() >= total || b.m.Undelivered.With("block", "failed").Value() > 0
	})
	delivered := time.Since(start)
	var visible time.Duration
	waitUntil(t, 60*time.Second, "10 000 repl cells on A and B", func() bool {
		if kamItems(b.A, "repl") >= total && kamItems(b.B, "repl") >= total {
			visible = time.Since(start)
			return true
		}
		return false
	})
	if n := b.m.Undelivered.With("block", "failed").Value(); n != 0 {
		t.Fatalf("%d events failed", n)
	}
	t.Logf("FIGURE route dmq:htable: %d events delivered in %v (%.0f events/s); last cell visible on A and B at %v",
		total, delivered.Round(time.Millisecond), float64(total)/delivered.Seconds(), visible.Round(time.Millisecond))

	if os.Getenv("SIPSIDE_DMQ_FIGURES") == "" {
		return
	}
	// The same cells again, now written by Kamailio A itself.
	start = time.Now()
	var next, rpcErrs atomicCounter
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.add() - 1
				if i >= total {
					return
				}
				for {
					if _, err := kamRPC(b.A, "htable.sets", "replx", "10.1."+strconv.Itoa(i/256)+"."+strconv.Itoa(i%256), "1"); err == nil {
						break
					}
					rpcErrs.add()
				}
			}
		}()
	}
	wg.Wait()
	written := time.Since(start)
	waitUntil(t, 120*time.Second, "10 000 replx cells on B", func() bool { return kamItems(b.B, "replx") >= total })
	t.Logf("FIGURE kamailio htable.sets on A: %d cells written in %v (%.0f sets/s, %d jsonrpcs retries); last cell visible on B at %v",
		total, written.Round(time.Millisecond), float64(total)/written.Seconds(), rpcErrs.load(), time.Since(start).Round(time.Millisecond))
}

type atomicCounter struct {
	mu sync.Mutex
	n  int
}

func (c *atomicCounter) add() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.n
}

func (c *atomicCounter) load() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
