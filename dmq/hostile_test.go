package dmq

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/testenv"
)

// fakePeer is a DMQ "node" on its own UDP socket: it answers every request
// 200 with its own line, and hands responses to the request that waits.
type fakePeer struct {
	conn *net.UDPConn
	addr string // sip:127.0.0.1:PORT
	port int
	resp chan string
}

func newFakePeer(t *testing.T) *fakePeer {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &fakePeer{conn: c, port: c.LocalAddr().(*net.UDPAddr).Port, resp: make(chan string, 64)}
	p.addr = "sip:127.0.0.1:" + strconv.Itoa(p.port)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, src, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			m, err := ParseMessage(buf[:n])
			if err != nil {
				continue
			}
			if !m.IsRequest() {
				select {
				case p.resp <- string(buf[:n]):
				default:
				}
				continue
			}
			r := m.Reply(200, "OK", "fake", "text/plain", []byte(p.addr+";status=active\r\n"))
			c.WriteToUDP(r.Bytes(), src)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return p
}

// request sends a KDMQ from this peer's socket with From set to from
// (LOCALPORT: this peer) and returns the answer, "" for none within 2 s.
func (p *fakePeer) request(t *testing.T, to, channel, from, body string) string {
	t.Helper()
	for len(p.resp) > 0 {
		<-p.resp
	}
	msg := kdmqFrom(channel, to, from, body)
	msg = strings.ReplaceAll(msg, "LOCALPORT", strconv.Itoa(p.port))
	dst, _ := net.ResolveUDPAddr("udp", strings.TrimPrefix(to, "sip:"))
	if _, err := p.conn.WriteToUDP([]byte(msg), dst); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-p.resp:
		return r
	case <-time.After(2 * time.Second):
		return ""
	}
}

// kdmqFrom is kdmq with an explicit From URI (sip:HOST:PORT).
func kdmqFrom(channel, to, from, body string) string {
	fromURI := "sip:" + channel + "@" + strings.TrimPrefix(from, "sip:")
	m := kdmq(channel, to, body)
	return strings.Replace(m, "From: <sip:"+channel+"@127.0.0.1:LOCALPORT>", "From: <"+fromURI+">", 1)
}

// nodeLines is a node list of n made-up nodes on 127.0.x.y.
func nodeLines(n, offset int) string {
	var b strings.Builder
	for i := range n {
		k := offset + i
		fmt.Fprintf(&b, "sip:127.0.%d.%d:5060;status=active\r\n", 1+k/250, 1+k%250)
	}
	return b.String()
}

// startLoggedNode is startNode with the log kept for counting.
func startLoggedNode(t *testing.T, cfg Config) (*goNode, *testenv.Buffer) {
	t.Helper()
	logs := &testenv.Buffer{}
	g := &goNode{reg: metrics.New(), events: &recorder{}, done: make(chan error, 1)}
	n, err := New(cfg, Options{
		Logger:   slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Metrics:  g.reg,
		OnChange: g.events.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	g.Node = n
	g.start(t)
	return g, logs
}

// A node list flood: ten notifications of 1,000 nodes each, from strangers
// and then from a node. The list stays within max_nodes, every refused line
// is counted, the answer fits a datagram, the goroutines stay bounded, the
// log gets a line per reason and source, and the node still answers.
func TestNodeListFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a node on loopback")
	}
	seed := newFakePeer(t)
	cfg := testConfig(t, seed.addr)
	cfg.MaxNodes = 32
	g, logs := startLoggedNode(t, cfg)
	self := cfg.Listen
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if s := g.status(seed.addr); s != "active" {
			return errorf("seed is %s", s)
		}
		return nil
	})
	baseGoroutines := runtime.NumGoroutine()

	// Strangers: only their own line counts.
	for i := range 10 {
		p := newFakePeer(t)
		r := p.request(t, self, ChannelNotification, p.addr, p.addr+";status=active\r\n"+nodeLines(1000, 1000*i))
		if !strings.HasPrefix(r, "SIP/2.0 200 ") {
			t.Fatalf("stranger %d: answer %q", i, firstLine(r))
		}
		if len(r) > 65507 {
			t.Fatalf("answer of %d bytes does not fit a datagram", len(r))
		}
	}
	if got := g.metrics.rejects.With("foreign_node_line").Value(); got != 10*1000 {
		t.Errorf("foreign lines counted %d, want 10000", got)
	}
	// A node (the seed, active) listing 10 x 1000 nodes: the cap holds.
	for i := range 10 {
		r := seed.request(t, self, ChannelNotification, seed.addr, seed.addr+";status=active\r\n"+nodeLines(1000, 1000*i))
		if !strings.HasPrefix(r, "SIP/2.0 200 ") {
			t.Fatalf("seed list %d: answer %q", i, firstLine(r))
		}
	}
	if n := g.list.Len(); n > cfg.MaxNodes {
		t.Errorf("%d nodes, want at most max_nodes %d", n, cfg.MaxNodes)
	}
	if got := g.metrics.rejects.With("max_nodes").Value(); got < 10*1000-uint64(cfg.MaxNodes) {
		t.Errorf("max_nodes refusals counted %d, want at least %d", got, 10*1000-cfg.MaxNodes)
	}
	// Bounded work: the pool, not a goroutine per node.
	if n := runtime.NumGoroutine(); n > baseGoroutines+notifyWorkers+64 {
		t.Errorf("%d goroutines after the flood (%d before)", n, baseGoroutines)
	}
	// Still answering, with a list that fits.
	p := newFakePeer(t)
	if r := p.request(t, self, ChannelNotification, p.addr, ""); !strings.HasPrefix(r, "SIP/2.0 200 ") {
		t.Errorf("after the flood: answer %q", firstLine(r))
	}
	// One log line per reason and source and second, not one per line.
	if n := logs.Count("dmq: node status"); n > 40 {
		t.Errorf("%d node status lines for a flood", n)
	}
	if n := logs.Count("reason=foreign_node_line"); n > 10 {
		t.Errorf("%d foreign_node_line log lines for 10 bodies", n)
	}
}

// The mirror takes changes from nodes only, sync answers only from nodes it
// asked, and no more than max_cells cells per table. Node-status claims are
// taken only from the node's own address.
func TestStrangersRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nodes on loopback")
	}
	seed := newFakePeer(t)
	cfg := testConfig(t, seed.addr)
	cfg.MaxCells = 5
	g, logs := startLoggedNode(t, cfg)
	self := cfg.Listen
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if s := g.status(seed.addr); s != "active" {
			return errorf("seed is %s", s)
		}
		return nil
	})
	// The node asked the seed for a sync when it joined; forget that, so
	// that a sync answer from it is one nobody asked for.
	h := g.HTable()
	h.mu.Lock()
	clear(h.asked)
	h.mu.Unlock()
	stranger := newFakePeer(t)
	cells := func(prefix string, n int) string {
		var b strings.Builder
		b.WriteString(`{"cells":[`)
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"htname":"repl","cname":"%s%d","type":2,"strval":"v","expire":0}`, prefix, i)
		}
		b.WriteString("]}")
		return b.String()
	}
	set := `{"action":2,"htname":"repl","cname":"x","type":2,"strval":"v","mode":1}`
	tests := []struct {
		name, from, channel, body, want, reason string
		peer                                    *fakePeer
	}{
		{"stranger sync answer", "", ChannelHTable, cells("s", 3), "SIP/2.0 403 ", "not_from_node", stranger},
		{"stranger set", "", ChannelHTable, set, "SIP/2.0 403 ", "not_from_node", stranger},
		{"stranger usrloc", "", ChannelUsrloc, `{"action":1,"aor":"a","ruid":"r","expires":0}`, "SIP/2.0 403 ", "not_from_node", stranger},
		{"stranger dialog", "", ChannelDialog, `{"action":1,"h_entry":1,"h_id":2,"callid":"c","state":1}`, "SIP/2.0 403 ", "not_from_node", stranger},
		{"From of the seed, other source", seed.addr, ChannelHTable, set, "SIP/2.0 403 ", "not_from_node", stranger},
		{"From of the seed disabling it", seed.addr, ChannelNotification, seed.addr + ";status=disabled\r\n", "SIP/2.0 403 ", "not_from_node", stranger},
		{"node, sync not asked", "", ChannelHTable, cells("n", 3), "SIP/2.0 403 ", "unsolicited_sync", seed},
		{"node set", "", ChannelHTable, set, "SIP/2.0 200 ", "", seed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			from := tc.from
			if from == "" {
				from = tc.peer.addr
			}
			var before uint64
			if tc.reason != "" {
				before = g.metrics.rejects.With(tc.reason).Value()
			}
			r := tc.peer.request(t, self, tc.channel, from, tc.body)
			if !strings.HasPrefix(r, tc.want) {
				t.Fatalf("answer %q, want %q", firstLine(r), tc.want)
			}
			if tc.reason != "" && g.metrics.rejects.With(tc.reason).Value() != before+1 {
				t.Errorf("%s not counted", tc.reason)
			}
		})
	}
	if g.HTable().Len() != 1 || g.Usrloc().Len() != 0 || g.Dialogs().Len() != 0 {
		t.Errorf("mirror holds %d cells (want the node's 1), %d contacts, %d dialogs", g.HTable().Len(), g.Usrloc().Len(), g.Dialogs().Len())
	}
	if s := g.status(seed.addr); s != "active" {
		t.Errorf("seed is %s after a stranger claimed it disabled", s)
	}
	// A node's list may not change another node's status either.
	other := newFakePeer(t)
	if r := other.request(t, self, ChannelNotification, other.addr, other.addr+";status=active\r\n"); !strings.HasPrefix(r, "SIP/2.0 200 ") {
		t.Fatalf("join: %q", firstLine(r))
	}
	if r := other.request(t, self, ChannelNotification, other.addr, other.addr+";status=active\r\n"+seed.addr+";status=timeout\r\n"); !strings.HasPrefix(r, "SIP/2.0 200 ") {
		t.Fatalf("list: %q", firstLine(r))
	}
	if s := g.status(seed.addr); s != "active" {
		t.Errorf("seed is %s after another node claimed it timed out", s)
	}
	// Asked: the answer is taken, up to max_cells.
	g.HTable().markAsked(NodeAddr{Host: "127.0.0.1", Port: seed.port})
	if r := seed.request(t, self, ChannelHTable, seed.addr, cells("c", 20)); !strings.HasPrefix(r, "SIP/2.0 200 ") {
		t.Fatalf("asked sync answer: %q", firstLine(r))
	}
	if n := g.HTable().Len(); n != cfg.MaxCells {
		t.Errorf("%d cells, want max_cells %d", n, cfg.MaxCells)
	}
	if got := g.metrics.rejects.With("max_cells").Value(); got != 16 {
		t.Errorf("max_cells refusals %d, want 16 (20 sent, 1+4 stored)", got)
	}
	if r := seed.request(t, self, ChannelHTable, seed.addr, strings.Replace(set, `"x"`, `"y"`, 1)); !strings.HasPrefix(r, "SIP/2.0 500 ") {
		t.Errorf("set beyond max_cells: %q, want 500", firstLine(r))
	}
	// Floods of one refusal: one log line per second per reason and source.
	start := time.Now()
	for range 500 {
		stranger.request(t, self, ChannelHTable, stranger.addr, `not json `+strings.Repeat("x", 14000))
	}
	secs := int(time.Since(start)/time.Second) + 1
	if n := logs.Count("reason=not_from_node"); n > 4+secs {
		t.Errorf("%d not_from_node lines in %d s", n, secs)
	}
	if n := logs.Longest(); n > 2048 {
		t.Errorf("a log line of %d bytes", n)
	}
	if g.metrics.logSuppressed.With().Value() == 0 {
		t.Error("no suppressed log lines counted")
	}
}

// start runs a built node until the test ends.
func (g *goNode) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() { g.done <- g.Run(ctx) }()
	select {
	case <-g.Ready():
	case err := <-g.done:
		t.Fatalf("node did not start: %v", err)
	}
	t.Cleanup(func() { g.stop(t) })
}
