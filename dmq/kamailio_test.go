package dmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/testenv"
)

// bus is three real Kamailio 5.6.3 DMQ nodes on 127.0.0.1-3. A notifies
// itself (it starts first and cannot know the others' ports); B and C are
// pointed at A, the way the recorded research bus was set up.
type bus struct {
	nodes   []*testenv.Kamailio // A, B, C
	uasPort int                 // where the nodes send calls (a sipp UAS in the dialog test)
}

func startBus(t *testing.T, args ...string) *bus {
	t.Helper()
	tmpl, err := os.ReadFile("testdata/kamailio-dmq.cfg.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	b := &bus{uasPort: testenv.FreePort(t, "udp", "127.0.0.1")}
	uas := "sip:127.0.0.1:" + strconv.Itoa(b.uasPort)
	for i, name := range []string{"A", "B", "C"} {
		notify := ""
		if i > 0 {
			notify = "sip:" + b.nodes[0].SIPAddr()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		k, err := testenv.StartKamailio(ctx, testenv.KamailioConfig{
			Name:     name,
			Addr:     "127.0.0." + strconv.Itoa(i+1),
			Template: string(tmpl),
			Vars:     map[string]any{"Notify": notify, "Ping": 5, "FrTimer": 4000, "UAS": uas, "Transport": ""},
			Args:     args,
		})
		cancel()
		if errors.Is(err, testenv.ErrNotInstalled) {
			testenv.Missing(t, "kamailio with dmq, htable, usrloc, dmq_usrloc and dialog ("+err.Error()+")",
				"apt-get install -y kamailio kamailio-extra-modules")
		}
		if err != nil {
			t.Fatalf("start kamailio %s: %v", name, err)
		}
		t.Cleanup(func() { _ = k.Close() })
		b.nodes = append(b.nodes, k)
	}
	// The Kamailio nodes must know each other before sipside comes in.
	checkFor(t, 20*time.Second, 200*time.Millisecond, func() error {
		for _, k := range b.nodes {
			nodes, err := listNodes(k)
			if err != nil {
				return err
			}
			for _, o := range b.nodes {
				if nodes["sip:"+o.SIPAddr()] != "active" {
					return errorf("%s sees %v, want %s active", k.Name, nodes, o.SIPAddr())
				}
			}
		}
		return nil
	})
	return b
}

func rpc(k *testenv.Kamailio, method string, params ...any) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return k.RPC(ctx, method, params...)
}

// listNodes returns "sip:host:port" -> status from dmq.list_nodes.
func listNodes(k *testenv.Kamailio) (map[string]string, error) {
	raw, err := rpc(k, "dmq.list_nodes")
	if err != nil {
		return nil, err
	}
	var nodes []struct {
		Host   string `json:"host"`
		Port   string `json:"port"`
		Status string `json:"status"`
		Local  int    `json:"local"`
	}
	if err := json.Unmarshal(raw, &nodes); err != nil {
		return nil, fmt.Errorf("dmq.list_nodes on %s: %w: %s", k.Name, err, raw)
	}
	out := make(map[string]string)
	for _, n := range nodes {
		out["sip:"+n.Host+":"+n.Port] = n.Status
	}
	return out, nil
}

// htGet returns the value of a cell on a Kamailio node, or an error.
func htGet(k *testenv.Kamailio, table, name string) (string, error) {
	raw, err := rpc(k, "htable.get", table, name)
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

// recorder keeps OnChange events for assertions.
type recorder struct {
	mu     sync.Mutex
	events []string
	hook   func(name string, params []byte)
}

// setHook adds a function that sees every later event.
func (r *recorder) setHook(f func(name string, params []byte)) {
	r.mu.Lock()
	r.hook = f
	r.mu.Unlock()
}

func (r *recorder) add(name string, params []byte) {
	if !json.Valid(params) {
		panic(fmt.Sprintf("event %s has invalid JSON params %q", name, params))
	}
	r.mu.Lock()
	r.events = append(r.events, name+" "+string(params))
	hook := r.hook
	r.mu.Unlock()
	if hook != nil {
		hook(name, params)
	}
}

// all returns the events whose name starts with prefix.
func (r *recorder) all(prefix string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		if strings.HasPrefix(e, prefix) {
			out = append(out, e)
		}
	}
	return out
}

func (r *recorder) find(substrs ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		all := true
		for _, s := range substrs {
			if !strings.Contains(e, s) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

type goNode struct {
	*Node
	reg    *metrics.Registry
	events *recorder
	cancel context.CancelFunc
	done   chan error
}

// nodeIPs hands each sipside node of a test binary a loopback address of its own.
// Kamailio 5.8 and later take a node-list line whose URI they do not know but whose IP
// is a known node's (their own included) for that node (dmq's find_dmq_node_ip), so a
// sipside node on a Kamailio node's IP, or two sipside nodes on one IP, never join.
var nodeIPs struct {
	sync.Mutex
	n int
}

// nodeAddr is the next of 127.0.1.1-250, never one of the Kamailio nodes' 127.0.0.x.
func nodeAddr() string {
	nodeIPs.Lock()
	defer nodeIPs.Unlock()
	nodeIPs.n = nodeIPs.n%250 + 1
	return "127.0.1." + strconv.Itoa(nodeIPs.n)
}

// nodePort returns a port free for UDP and TCP on ip, below the ephemeral range so
// that no outgoing connection of another node (or of the node itself) can be holding
// it by the time the node binds.
func nodePort(t *testing.T, ip string) int {
	t.Helper()
	for range 100 {
		p := 20000 + mrand.IntN(12000)
		u, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(p)))
		if err != nil {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(p)))
		u.Close()
		if err != nil {
			continue
		}
		l.Close()
		return p
	}
	t.Fatalf("no port free for udp and tcp in 20000-32000 on %s", ip)
	return 0
}

func testConfig(t *testing.T, seeds ...string) Config {
	ip := nodeAddr()
	return Config{
		Listen:       "sip:" + net.JoinHostPort(ip, strconv.Itoa(nodePort(t, ip))),
		Seeds:        seeds,
		PingInterval: config.Duration(time.Second),
		T1:           config.Duration(100 * time.Millisecond),
		T2:           config.Duration(400 * time.Millisecond),
		Timeout:      config.Duration(2 * time.Second),
		LeaveTimeout: config.Duration(2 * time.Second),
	}
}

func startNode(t *testing.T, cfg Config) *goNode {
	t.Helper()
	g := &goNode{reg: metrics.New(), events: &recorder{}, done: make(chan error, 1)}
	n, err := New(cfg, Options{
		Logger:   slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Metrics:  g.reg,
		OnChange: g.events.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	g.Node = n
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() { g.done <- n.Run(ctx) }()
	select {
	case <-n.Ready():
	case err := <-g.done:
		t.Fatalf("node did not start: %v", err)
	}
	t.Cleanup(func() { g.stop(t) })
	return g
}

func (g *goNode) stop(t *testing.T) {
	if g.cancel == nil {
		return
	}
	g.cancel()
	g.cancel = nil
	select {
	case err := <-g.done:
		if err != nil {
			t.Errorf("node Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("node did not stop within 10s")
	}
}

func (g *goNode) status(a string) string {
	for _, i := range g.Nodes() {
		if i.Addr.String() == a {
			return i.Status.String()
		}
	}
	return "absent"
}

func (g *goNode) counter(name string, labels ...string) uint64 {
	switch name {
	case "rejects":
		return g.metrics.rejects.With(labels...).Value()
	}
	return 0
}

// testWriter sends slog output to t.Log so that it shows only for failures.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// sendRaw sends one datagram to the node and returns the answer, if any.
func sendRaw(t *testing.T, to string, payload string, wait time.Duration) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst, _ := net.ResolveUDPAddr("udp", strings.TrimPrefix(to, "sip:"))
	payload = strings.ReplaceAll(payload, "LOCALPORT", strconv.Itoa(c.LocalAddr().(*net.UDPAddr).Port))
	if _, err := c.WriteTo([]byte(payload), dst); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65536)
	n, _, err := c.ReadFrom(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func kdmq(channel, to, body string, extra ...string) string {
	h := "KDMQ sip:" + channel + "@" + strings.TrimPrefix(to, "sip:") + " SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:LOCALPORT;branch=z9hG4bK" + randHex(6) + "\r\n" +
		"To: <sip:" + channel + "@" + strings.TrimPrefix(to, "sip:") + ">\r\n" +
		"From: <sip:" + channel + "@127.0.0.1:LOCALPORT>;tag=" + randHex(4) + "\r\n" +
		"CSeq: 10 KDMQ\r\nCall-ID: " + randHex(8) + "@127.0.0.1\r\nMax-Forwards: 1\r\n"
	for _, e := range extra {
		h += e + "\r\n"
	}
	return h + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

// TestKamailioBus runs sipside's node against a real 3-node Kamailio bus. The
// steps share the bus and build on each other, so they run in order.
func TestKamailioBus(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three Kamailio nodes")
	}
	b := startBus(t)
	A, B, C := b.nodes[0], b.nodes[1], b.nodes[2]
	if _, err := rpc(A, "htable.sets", "repl", "before_join", "old value"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, 100*time.Millisecond, func() error {
		_, err := htGet(C, "repl", "before_join")
		return err
	})

	cfg := testConfig(t, "sip:"+B.SIPAddr())
	g := startNode(t, cfg)
	self := cfg.Listen

	t.Run("join", func(t *testing.T) {
		checkFor(t, 15*time.Second, 100*time.Millisecond, func() error {
			for _, k := range b.nodes {
				if s := g.status("sip:" + k.SIPAddr()); s != "active" {
					return errorf("sipside sees %s %s", k.Name, s)
				}
				nodes, err := listNodes(k)
				if err != nil {
					return err
				}
				if nodes[self] != "active" {
					return errorf("%s lists %v, want %s active", k.Name, nodes, self)
				}
			}
			return nil
		})
		if !g.events.find("E_DMQ_NODE", `"status":"active"`) {
			t.Error("no E_DMQ_NODE event for a node becoming active")
		}
	})

	t.Run("htable sync on join", func(t *testing.T) {
		checkFor(t, 5*time.Second, 50*time.Millisecond, func() error {
			c, ok := g.HTable().Get("repl", "before_join")
			if !ok || c.Str != "old value" {
				return errorf("before_join = %+v, %v", c, ok)
			}
			return nil
		})
	})

	t.Run("htable from kamailio", func(t *testing.T) {
		if _, err := rpc(A, "htable.sets", "repl", "k1", "hello world"); err != nil {
			t.Fatal(err)
		}
		if _, err := rpc(A, "htable.seti", "repl", "k2", 42); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			c1, ok1 := g.HTable().Get("repl", "k1")
			c2, ok2 := g.HTable().Get("repl", "k2")
			if !ok1 || c1.Str != "hello world" || !ok2 || c2.Int != 42 || c2.Type != TypeInt {
				return errorf("k1 = %+v %v, k2 = %+v %v", c1, ok1, c2, ok2)
			}
			return nil
		})
		if !g.events.find("E_DMQ_HTABLE", `"cname":"k1"`, `"strval":"hello world"`) {
			t.Error("no E_DMQ_HTABLE event for k1")
		}
		if _, err := rpc(B, "htable.delete", "repl", "k1"); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			if _, ok := g.HTable().Get("repl", "k1"); ok {
				return errorf("k1 still mirrored after htable.delete on B")
			}
			return nil
		})
	})

	t.Run("htable write back", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.HTable().Set(ctx, "repl", "from_sipside", "set by sipside", 0); err != nil {
			t.Fatal(err)
		}
		if err := g.HTable().SetInt(ctx, "repl", "int_from_sipside", 7, 0); err != nil {
			t.Fatal(err)
		}
		for _, k := range b.nodes {
			if v, err := htGet(k, "repl", "from_sipside"); err != nil || v != "set by sipside" {
				t.Errorf("%s: from_sipside = %q, %v", k.Name, v, err)
			}
			if v, err := htGet(k, "repl", "int_from_sipside"); err != nil || v != "7" {
				t.Errorf("%s: int_from_sipside = %q, %v", k.Name, v, err)
			}
		}
		if err := g.HTable().Delete(ctx, "repl", "from_sipside"); err != nil {
			t.Fatal(err)
		}
		for _, k := range b.nodes {
			if v, err := htGet(k, "repl", "from_sipside"); err == nil {
				t.Errorf("%s: from_sipside still %q after delete", k.Name, v)
			}
		}
		// A table Kamailio does not have: every node refuses with 500, and says so.
		err := g.HTable().Set(ctx, "nosuchtable", "x", "y", 0)
		if err == nil || !strings.Contains(err.Error(), "500") {
			t.Errorf("set in a missing table: %v, want the 500 answers named", err)
		}
	})

	t.Run("htable expiry", func(t *testing.T) {
		if _, err := rpc(A, "htable.setxs", "replx", "short", "lived", 2); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			c, ok := g.HTable().Get("replx", "short")
			if !ok || c.Expire.IsZero() {
				return errorf("short = %+v, %v; want it with an expiry", c, ok)
			}
			return nil
		})
		checkFor(t, 6*time.Second, 100*time.Millisecond, func() error {
			if _, ok := g.HTable().Get("replx", "short"); ok {
				return errorf("short not expired")
			}
			if !g.events.find("E_DMQ_HTABLE", `"action":"expired"`, `"cname":"short"`) {
				return errorf("no expired event yet")
			}
			return nil
		})
	})

	t.Run("usrloc", func(t *testing.T) {
		register(t, A, "alice", 3)
		checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			cs := g.Usrloc().Lookup("alice")
			if len(cs) != 1 || !strings.HasPrefix(cs[0].Contact, "sip:alice@127.0.0.1:") {
				return errorf("alice = %+v", cs)
			}
			return nil
		})
		checkFor(t, 8*time.Second, 100*time.Millisecond, func() error {
			if cs := g.Usrloc().Lookup("alice"); len(cs) != 0 {
				return errorf("alice still has %+v", cs)
			}
			if !g.events.find("E_DMQ_USRLOC", `"action":"expired"`, `"aor":"alice"`) {
				return errorf("no expired usrloc event")
			}
			return nil
		})
	})

	t.Run("dialog", func(t *testing.T) {
		sipp, err := exec.LookPath("sipp")
		if err != nil {
			testenv.Missing(t, "sipp", "apt-get install -y sip-tester")
		}
		dir := t.TempDir()
		uas, err := testenv.WriteSippUAS(dir)
		if err != nil {
			t.Fatal(err)
		}
		startSipp(t, sipp, dir, "-sf", uas, "-i", "127.0.0.1", "-p", strconv.Itoa(b.uasPort), "-m", "1")
		// An INVITE relayed before the UAS binds fails the call: wait for the port.
		checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			c, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(b.uasPort))
			if err == nil {
				c.Close()
				return errorf("sipp UAS not listening yet")
			}
			return nil
		})
		uacPort := testenv.FreePort(t, "udp", "127.0.0.1")
		startSipp(t, sipp, dir, "-sn", "uac", A.SIPAddr(), "-i", "127.0.0.1", "-p", strconv.Itoa(uacPort),
			"-s", "1001", "-m", "1", "-d", "1000")
		// The whole life of the call, from the events: created, confirmed, deleted,
		// and nothing left in the view. (The order of the last two may swap:
		// Kamailio replicates from whichever process saw the SIP message.)
		checkFor(t, 15*time.Second, 50*time.Millisecond, func() error {
			switch {
			case !g.events.find("E_DMQ_DIALOG", `"action":"update"`, `"to_uri":"sip:1001@`):
				return errorf("no dialog creation seen; events %v", g.events.all("E_DMQ_DIALOG"))
			case !g.events.find("E_DMQ_DIALOG", `"action":"state"`, `"state":4`) && !g.events.find("E_DMQ_DIALOG", `"action":"state"`, `"state":2`):
				// "confirmed" may come after "deleted" and is then ignored; early
				// (2) or confirmed (4) shows the state changes are followed.
				return errorf("no early or confirmed state seen; events %v", g.events.all("E_DMQ_DIALOG"))
			case !g.events.find("E_DMQ_DIALOG", `"state":5`):
				return errorf("no deleted state seen; events %v", g.events.all("E_DMQ_DIALOG"))
			case g.Dialogs().Len() != 0:
				return errorf("dialogs left after the BYE: %+v", g.Dialogs().Dump())
			}
			return nil
		})
	})

	t.Run("garbage", func(t *testing.T) {
		before := g.counter("rejects", "malformed")
		if r := sendRaw(t, self, "this is not SIP\r\n\r\n", 300*time.Millisecond); r != "" {
			t.Errorf("answer to garbage: %q", r)
		}
		checkFor(t, 2*time.Second, 20*time.Millisecond, func() error {
			if g.counter("rejects", "malformed") == before {
				return errorf("garbage not counted")
			}
			return nil
		})
		// From an address that is not a node: refused before the body is
		// read (bad bodies from nodes are TestPeerAnswers' part).
		cases := []struct{ channel, body, want string }{
			{"htable", "not json", "SIP/2.0 403 "},
			{"htable", `{"action":2,"bogus":1}`, "SIP/2.0 403 "},
			{"htable", "", "SIP/2.0 403 "},
			{"usrloc", "[1,2", "SIP/2.0 403 "},
			{"dialog", "{", "SIP/2.0 403 "},
			{"customchan", `{"x":1}`, "SIP/2.0 404 "},
			{"notification_peer", "sip:127.0.0.9:5060;status=active\r\n\r\nsip:127.0.0.10:5060;status=active\r\n", "SIP/2.0 400 "},
			{"notification_peer", "sip:127.0.0.9:5060;status=bogus\r\n", "SIP/2.0 400 "},
		}
		for _, c := range cases {
			r := sendRaw(t, self, kdmq(c.channel, self, c.body), 2*time.Second)
			if !strings.HasPrefix(r, c.want) {
				t.Errorf("KDMQ %s %q: answer %q, want %q", c.channel, c.body, firstLine(r), c.want)
			}
		}
		if s := g.status("sip:127.0.0.9:5060"); s != "absent" {
			t.Errorf("a node from a refused list was added: %s", s)
		}
		// Still working: a good notification is answered with the list.
		r := sendRaw(t, self, kdmq("notification_peer", self, ""), 2*time.Second)
		if !strings.HasPrefix(r, "SIP/2.0 200 OK") || !strings.Contains(r, self+";status=active") {
			t.Errorf("after garbage, notification answered %q", r)
		}
		if g.counter("rejects", "bad_node_list") < 2 {
			t.Errorf("bad node lists counted %d, want 2", g.counter("rejects", "bad_node_list"))
		}
	})

	t.Run("node death and return", func(t *testing.T) {
		baddr := "sip:" + B.SIPAddr()
		if err := B.Kill(); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 15*time.Second, 100*time.Millisecond, func() error {
			if s := g.status(baddr); s != "pending" {
				// B is sipside's seed: like a Kamailio notification address it
				// goes pending, never away.
				return errorf("B is %s, want pending", s)
			}
			return nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := B.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 15*time.Second, 100*time.Millisecond, func() error {
			if s := g.status(baddr); s != "active" {
				return errorf("B is %s, want active", s)
			}
			nodes, err := listNodes(B)
			if err != nil {
				return err
			}
			if nodes[self] != "active" {
				return errorf("restarted B lists %v", nodes)
			}
			return nil
		})
	})

	t.Run("non-seed death", func(t *testing.T) {
		caddr := "sip:" + C.SIPAddr()
		if err := C.Kill(); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 20*time.Second, 100*time.Millisecond, func() error {
			// Other nodes may list C as active again for a few seconds (they
			// notice its death later), so the events tell, not the status.
			if !g.events.find("E_DMQ_NODE", caddr, `"status":"disabled"`) || !g.events.find("E_DMQ_NODE", caddr, `"status":"removed"`) {
				return errorf("no disabled and removed events for C yet (C is %s)", g.status(caddr))
			}
			return nil
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := C.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 15*time.Second, 100*time.Millisecond, func() error {
			if s := g.status(caddr); s != "active" {
				return errorf("C is %s, want active", s)
			}
			return nil
		})
	})

	t.Run("leave", func(t *testing.T) {
		g.stop(t)
		checkFor(t, 5*time.Second, 100*time.Millisecond, func() error {
			nodes, err := listNodes(A)
			if err != nil {
				return err
			}
			if s := nodes[self]; s != "disabled" {
				return errorf("A lists sipside as %q, want disabled", s)
			}
			return nil
		})
	})
}

// startSipp runs sipp in the foreground of its own process, killed by pid when
// the test ends.
func startSipp(t *testing.T, bin, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"-nostdin", "-timeout", "20s"}, args...)...)
	cmd.Dir = dir
	logf, err := os.Create(filepath.Join(dir, "sipp-"+strconv.Itoa(len(args))+"-"+randHex(2)+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sipp: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}

// register sends one REGISTER for user to k and waits for its 200.
func register(t *testing.T, k *testenv.Kamailio, user string, expires int) {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	port := c.LocalAddr().(*net.UDPAddr).Port
	msg := fmt.Sprintf("REGISTER sip:%s SIP/2.0\r\n"+
		"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%s\r\n"+
		"Max-Forwards: 70\r\n"+
		"From: <sip:%s@%s>;tag=%s\r\n"+
		"To: <sip:%s@%s>\r\n"+
		"Call-ID: reg-%s@127.0.0.1\r\n"+
		"CSeq: 1 REGISTER\r\n"+
		"Contact: <sip:%s@127.0.0.1:%d>\r\n"+
		"Expires: %d\r\n"+
		"User-Agent: sipside-test\r\n"+
		"Content-Length: 0\r\n\r\n",
		k.Addr, port, randHex(6), user, k.Addr, randHex(4), user, k.Addr, randHex(6), user, port, expires)
	dst, _ := net.ResolveUDPAddr("udp", k.SIPAddr())
	if _, err := c.WriteTo([]byte(msg), dst); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, _, err := c.ReadFrom(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "SIP/2.0 200") {
		t.Fatalf("REGISTER %s: %q, %v", user, buf[:n], err)
	}
}

// TestKamailioTCP joins a Kamailio node whose DMQ address is TCP.
func TestKamailioTCP(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Kamailio")
	}
	tmpl, err := os.ReadFile("testdata/kamailio-dmq.cfg.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	k, err := testenv.StartKamailio(ctx, testenv.KamailioConfig{
		Name: "T", Addr: "127.0.0.2", Template: string(tmpl),
		Vars: map[string]any{"Notify": "", "Ping": 5, "FrTimer": 4000, "UAS": "", "Transport": ";transport=tcp"},
	})
	cancel()
	if errors.Is(err, testenv.ErrNotInstalled) {
		testenv.Missing(t, "kamailio with the dmq modules", "apt-get install -y kamailio kamailio-extra-modules")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	seed := "sip:" + k.SIPAddr() + ";transport=tcp"
	cfg := testConfig(t, seed)
	cfg.Listen += ";transport=tcp"
	g := startNode(t, cfg)
	self := strings.TrimSuffix(cfg.Listen, ";transport=tcp")
	checkFor(t, 15*time.Second, 100*time.Millisecond, func() error {
		if s := g.status(seed); s != "active" {
			return errorf("sipside sees the Kamailio node %s", s)
		}
		nodes, err := listNodes(k)
		if err != nil {
			return err
		}
		if nodes[self] != "active" {
			return errorf("Kamailio lists %v, want %s active", nodes, self)
		}
		return nil
	})
	if _, err := rpc(k, "htable.sets", "repl", "over_tcp", "from kamailio"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if c, ok := g.HTable().Get("repl", "over_tcp"); !ok || c.Str != "from kamailio" {
			return errorf("over_tcp = %+v, %v", c, ok)
		}
		return nil
	})
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := g.HTable().Set(sctx, "repl", "back_over_tcp", "from sipside", 0); err != nil {
		t.Fatal(err)
	}
	if v, err := htGet(k, "repl", "back_over_tcp"); err != nil || v != "from sipside" {
		t.Fatalf("back_over_tcp on Kamailio = %q, %v", v, err)
	}
	if got := g.metrics.retransmissions.With(ChannelHTable).Value(); got != 0 {
		t.Errorf("%d htable retransmissions over TCP", got)
	}
}
