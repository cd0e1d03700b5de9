package evi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sipside/sipside/dmq"
	"github.com/sipside/sipside/internal/config"
	"github.com/sipside/sipside/testenv"
)

// The conformance suite runs every backend through the same story against a
// real receiver: N events arrive in order with exact bytes; the receiver
// goes down and every delivery returns within its deadline, failing where the
// transport can know (everything but udp); the receiver comes back and
// deliveries succeed again, in order, with nothing of the outage replayed.

// confEvent is one event of the suite, raised as OpenSIPS raises E_LAB_TICK.
type confEvent struct {
	name, note string
	seq        int
}

var confReceived = time.Date(2026, 11, 27, 2, 6, 50, 513000000, time.UTC)

func (c confEvent) event() *Event {
	params := fmt.Sprintf(`{"note":%q,"seq":%d}`, c.note, c.seq)
	return &Event{
		Name:     c.name,
		Params:   []byte(params),
		Raw:      []byte(fmt.Sprintf(`{"jsonrpc":"2.0","method":%q,"params":%s}`, c.name, params)),
		Received: confReceived,
		Source:   "udp:127.0.0.1:8090",
	}
}

var confProbe = confEvent{name: "E_PROBE", note: "probe"}

// confCase is one backend with its receiver.
type confCase struct {
	name   string
	socket string
	deps   Deps
	in     *inbox
	want   func(confEvent) string // what the receiver reads for the event
	// down and up break and restore the receiver; nil when it cannot be
	// broken (stdout).
	down, up func(t *testing.T, b Backend)
	// fireAndForget: a delivery cannot learn that nobody received it.
	fireAndForget bool
	// recover bounds how long the backend may take to notice the receiver is back.
	recover time.Duration
}

// inbox collects what a receiver read, one payload per entry.
type inbox struct{ ch chan string }

func newInbox() *inbox          { return &inbox{ch: make(chan string, 4096)} }
func (in *inbox) put(s string)  { in.ch <- s }
func (in *inbox) putB(b []byte) { in.ch <- string(b) }

func (in *inbox) next(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case s := <-in.ch:
		return s
	case <-time.After(d):
		t.Fatalf("nothing received within %v", d)
		return ""
	}
}

func notificationOf(c confEvent) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","method":%q,"params":{"note":%q,"seq":%d}}`, c.name, c.note, c.seq)
}

func TestBackendConformance(t *testing.T) {
	cases := []func(t *testing.T) *confCase{
		confUDP, confUnix, confStdout, confStreamCase(false), confStreamCase(true),
		confFlatstore, confXMLRPC, confHTTP, confRabbitMQ, confDMQ,
	}
	for _, mk := range cases {
		c := mk(nil)
		t.Run(c.name, func(t *testing.T) {
			c := mk(t)
			runConformance(t, c)
		})
	}
}

func runConformance(t *testing.T, c *confCase) {
	const n = 20
	b, err := NewBackend(c.socket, c.deps)
	if err != nil {
		t.Fatalf("NewBackend(%q): %v", c.socket, err)
	}
	defer b.Close()
	deliver := func(ev confEvent, timeout time.Duration) (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		err := b.Deliver(ctx, ev.event())
		if f, ok := b.(flusher); ok && err == nil {
			err = f.Flush() // as the router does when its queue runs dry
		}
		return time.Since(start), err
	}
	// expect reads the next n events in order, skipping probes.
	expect := func(from int) {
		t.Helper()
		for i := from; i < from+n; {
			got := c.in.next(t, 10*time.Second)
			if got == c.want(confProbe) {
				continue
			}
			ev := confEvent{name: "E_CONFORMANCE", note: "tick", seq: i}
			if want := c.want(ev); got != want {
				t.Fatalf("event %d: receiver read\n%q\nwant\n%q", i, got, want)
			}
			i++
		}
	}
	deliverN := func(from int) {
		t.Helper()
		for i := from; i < from+n; i++ {
			if _, err := deliver(confEvent{name: "E_CONFORMANCE", note: "tick", seq: i}, 5*time.Second); err != nil {
				t.Fatalf("event %d: %v", i, err)
			}
		}
		expect(from)
	}

	deliverN(0)
	if c.down == nil {
		t.Logf("%s cannot be taken down; exact bytes and order checked only", c.name)
		return
	}

	c.down(t, b)
	const timeout = 300 * time.Millisecond
	var failed error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && failed == nil; {
		took, err := deliver(confProbe, timeout)
		if took > timeout+2*time.Second {
			t.Fatalf("Deliver took %v with the receiver down and a %v deadline", took, timeout)
		}
		failed = err
		if c.fireAndForget {
			break
		}
	}
	switch {
	case failed != nil:
		t.Logf("receiver down: %v", failed)
	case !c.fireAndForget:
		t.Fatal("every delivery succeeded with the receiver down")
	}

	c.up(t, b)
	wait := c.recover
	if wait == 0 {
		wait = 5 * time.Second
	}
	var last error
	checkFor(t, wait, "a delivery once the receiver is back", func() bool {
		_, last = deliver(confProbe, timeout)
		return last == nil
	})
	deliverN(n)
}

// --- udp and unix datagrams

func confUDP(t *testing.T) *confCase {
	c := &confCase{name: "udp", want: notificationOf, fireAndForget: true}
	if t == nil {
		return c
	}
	return datagramCase(t, c, "udp", "127.0.0.1:0")
}

func confUnix(t *testing.T) *confCase {
	c := &confCase{name: "unix", want: notificationOf}
	if t == nil {
		return c
	}
	return datagramCase(t, c, "unixgram", filepath.Join(t.TempDir(), "events.sock"))
}

func datagramCase(t *testing.T, c *confCase, network, addr string) *confCase {
	c.in = newInbox()
	var mu sync.Mutex
	var pc net.PacketConn
	listen := func(t *testing.T) {
		if network == "unixgram" {
			os.Remove(addr)
		}
		p, err := net.ListenPacket(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		addr = p.LocalAddr().String()
		mu.Lock()
		pc = p
		mu.Unlock()
		go func() {
			buf := make([]byte, 65536)
			for {
				n, _, err := p.ReadFrom(buf)
				if err != nil {
					return
				}
				c.in.putB(buf[:n])
			}
		}()
	}
	listen(t)
	c.socket = "udp:" + addr
	if network == "unixgram" {
		c.socket = "unix:" + addr
	}
	c.down = func(t *testing.T, _ Backend) {
		mu.Lock()
		defer mu.Unlock()
		pc.Close()
	}
	c.up = func(t *testing.T, _ Backend) { listen(t) }
	t.Cleanup(func() { c.down(t, nil) })
	return c
}

// --- stdout

func confStdout(t *testing.T) *confCase {
	c := &confCase{name: "stdout", socket: "stdout:"}
	c.want = func(e confEvent) string {
		return fmt.Sprintf(`{"event":%q,"params":{"note":%q,"seq":%d},"received":"2026-11-27T02:06:50.513Z","source":"udp:127.0.0.1:8090"}`+"\n", e.name, e.note, e.seq)
	}
	if t == nil {
		return c
	}
	c.in = newInbox()
	c.deps = Deps{Stdout: lineWriter{c.in}}
	return c
}

// lineWriter hands each line written to it to an inbox.
type lineWriter struct{ in *inbox }

func (w lineWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.SplitAfter(p, []byte("\n")) {
		if len(line) > 0 {
			w.in.putB(line)
		}
	}
	return len(p), nil
}

// --- tcp (event_stream)

// tcpPeer is a TCP listener that can be closed and opened again on the
// same address, with every connection it accepted.
type tcpPeer struct {
	addr   string
	handle func(net.Conn)
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newTCPPeer(t *testing.T, handle func(net.Conn)) *tcpPeer {
	p := &tcpPeer{addr: "127.0.0.1:0", handle: handle}
	p.up(t)
	t.Cleanup(p.down)
	return p
}

func (p *tcpPeer) up(t *testing.T) {
	var ln net.Listener
	var err error
	// The old port may linger for a moment after a close; poll, don't sleep.
	checkFor(t, 5*time.Second, "listening on "+p.addr, func() bool {
		ln, err = net.Listen("tcp", p.addr)
		return err == nil
	})
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			go p.handle(c)
		}
	}()
}

func (p *tcpPeer) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func confStreamCase(reliable bool) func(t *testing.T) *confCase {
	return func(t *testing.T) *confCase {
		c := &confCase{name: "tcp", want: notificationOf}
		if reliable {
			c.name = "tcp reliable"
		}
		if t == nil {
			return c
		}
		c.in = newInbox()
		p := newTCPPeer(t, func(conn net.Conn) {
			defer conn.Close()
			dec := json.NewDecoder(conn)
			for {
				var v json.RawMessage
				if err := dec.Decode(&v); err != nil {
					return
				}
				s := string(v)
				if reliable {
					var req struct{ ID json.RawMessage }
					json.Unmarshal(v, &req)
					// The request form is checked elsewhere; compare the notification.
					s = "{" + strings.TrimPrefix(s, `{"id":`+string(req.ID)+`,`)
					fmt.Fprintf(conn, `{"jsonrpc":"2.0","result":"ok","id":%s}`, req.ID)
				}
				c.in.put(s)
			}
		})
		c.socket = "tcp:" + p.addr
		if reliable {
			c.socket += "?reliable"
		}
		c.down = func(*testing.T, Backend) { p.down() }
		c.up = func(t *testing.T, _ Backend) { p.up(t) }
		return c
	}
}

// --- flatstore

// The file is reached through a symlink: taking the receiver down points it
// at /dev/full (a disk that is full) and reopens, as SIGHUP would; up points
// it back at the file.
func confFlatstore(t *testing.T) *confCase {
	c := &confCase{name: "flatstore"}
	c.want = func(e confEvent) string { return fmt.Sprintf("%s,%s,%d\n", e.name, e.note, e.seq) }
	if t == nil {
		return c
	}
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full to fill the disk with")
	}
	dir := t.TempDir()
	file, link := filepath.Join(dir, "events.log"), filepath.Join(dir, "current.log")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	c.socket = "flatstore:" + link
	c.in = newInbox()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // tail -f
		defer close(done)
		var off int64
		var partial []byte
		for {
			if b, err := os.ReadFile(file); err == nil && int64(len(b)) > off {
				partial = append(partial, b[off:]...)
				off = int64(len(b))
				for {
					i := bytes.IndexByte(partial, '\n')
					if i < 0 {
						break
					}
					c.in.putB(partial[:i+1])
					partial = partial[i+1:]
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	repoint := func(t *testing.T, b Backend, to string) {
		os.Remove(link)
		if err := os.Symlink(to, link); err != nil {
			t.Fatal(err)
		}
		if err := ReopenBackend(b); err != nil {
			t.Fatal(err)
		}
	}
	c.down = func(t *testing.T, b Backend) { repoint(t, b, "/dev/full") }
	c.up = func(t *testing.T, b Backend) { repoint(t, b, file) }
	return c
}

// --- xmlrpc

func confXMLRPC(t *testing.T) *confCase {
	c := &confCase{name: "xmlrpc"}
	if t == nil {
		return c
	}
	c.in = newInbox()
	p := newTCPPeer(t, func(conn net.Conn) {
		defer conn.Close()
		raw, err := readHTTPRequest(bufio.NewReader(conn))
		if err != nil {
			return
		}
		c.in.put(raw)
		io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 0\r\n\r\n")
	})
	c.socket = "xmlrpc:" + p.addr + ":conformance"
	c.want = func(e confEvent) string {
		body := "<?xml version=\"1.0\"?>\n<methodCall>\n<methodName>conformance</methodName>\n<params>\n" +
			"<param>\n<value><string>" + e.name + "</string></value>\n</param>\n" +
			"<param>\n<name>note</name>\n<value><string>" + e.note + "</string></value>\n</param>\n" +
			"<param>\n<name>seq</name>\n<value><int>" + strconv.Itoa(e.seq) + "</int></value>\n</param>\n" +
			"</params>\n</methodCall>"
		return "POST /RPC2 HTTP/1.1\r\nHost: " + p.addr + "\r\nConnection: close\r\nUser-Agent: OpenSIPS XMLRPC Notifier\r\nContent-type: text/xml\r\nContent-length: " +
			strconv.Itoa(len(body)) + "\r\n\r\n" + body
	}
	c.down = func(*testing.T, Backend) { p.down() }
	c.up = func(t *testing.T, _ Backend) { p.up(t) }
	return c
}

// --- http

func confHTTP(t *testing.T) *confCase {
	c := &confCase{name: "http", want: notificationOf}
	if t == nil {
		return c
	}
	c.in = newInbox()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		c.in.putB(body)
		w.WriteHeader(http.StatusNoContent)
	})
	var mu sync.Mutex
	var srv *http.Server
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t, "tcp", "127.0.0.1")))
	serve := func(t *testing.T) {
		var ln net.Listener
		var err error
		checkFor(t, 5*time.Second, "listening on "+addr, func() bool {
			ln, err = net.Listen("tcp", addr)
			return err == nil
		})
		s := &http.Server{Handler: h}
		mu.Lock()
		srv = s
		mu.Unlock()
		go s.Serve(ln)
	}
	serve(t)
	t.Cleanup(func() { mu.Lock(); srv.Close(); mu.Unlock() })
	c.socket = "http://" + addr + "/events"
	c.down = func(*testing.T, Backend) { mu.Lock(); srv.Close(); mu.Unlock() }
	c.up = func(t *testing.T, _ Backend) { serve(t) }
	return c
}

// --- rabbitmq

// The broker stays up (it is shared); a TCP proxy in front of it is cut as a
// dying broker or network would cut it, and opened again on the same port.
func confRabbitMQ(t *testing.T) *confCase {
	c := &confCase{name: "rabbitmq", want: notificationOf, recover: 30 * time.Second}
	if t == nil {
		return c
	}
	r := testenv.SharedRabbitMQ(t)
	q, ch := rabbitQueue(t, r.URL, false)
	deliveries, err := ch.Consume(q, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.in = newInbox()
	go func() {
		for d := range deliveries {
			c.in.putB(d.Body)
		}
	}()
	broker := net.JoinHostPort(r.Host, strconv.Itoa(r.Port))
	p := newTCPPeer(t, func(conn net.Conn) {
		defer conn.Close()
		u, err := net.Dial("tcp", broker)
		if err != nil {
			return
		}
		defer u.Close()
		go func() { io.Copy(u, conn); u.Close() }()
		io.Copy(conn, u)
	})
	host, port, _ := net.SplitHostPort(p.addr)
	pn, _ := strconv.Atoi(port)
	c.socket = rabbitSocket(host, pn, "", q)
	c.down = func(*testing.T, Backend) { p.down() }
	c.up = func(t *testing.T, _ Backend) { p.up(t) }
	return c
}

// --- dmq

// The receiver is a second DMQ node (sipside's own, so the case runs
// wherever the tests run; the real Kamailio bus is in
// backend_dmq_kamailio_test.go). It reads each cell it is told to set; down
// stops it (it leaves the bus, so the writer has no node to write to); up
// starts it again at the same address, and it joins again.
func confDMQ(t *testing.T) *confCase {
	c := &confCase{name: "dmq", want: func(e confEvent) string { return e.note + strconv.Itoa(e.seq) + "=v" + strconv.Itoa(e.seq) }}
	if t == nil {
		return c
	}
	c.in = newInbox()
	nodeCfg := func(seed string) dmq.Config {
		return dmq.Config{
			Listen:       "sip:127.0.0.1:" + strconv.Itoa(testenv.FreePort(t, "udp", "127.0.0.1")),
			Seeds:        []string{seed},
			PingInterval: config.Duration(time.Second),
			T1:           config.Duration(50 * time.Millisecond),
			T2:           config.Duration(200 * time.Millisecond),
			Timeout:      config.Duration(time.Second),
			LeaveTimeout: config.Duration(time.Second),
			Peers:        []string{dmq.ChannelHTable},
		}
	}
	run := func(n *dmq.Node) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { n.Run(ctx); close(done) }()
		<-n.Ready()
		return func() { cancel(); <-done }
	}
	// Each seeds the other; the writer's seed is filled in once the
	// receiver's address is known.
	wcfg := nodeCfg("")
	rcfg := nodeCfg(wcfg.Listen)
	wcfg.Seeds = []string{rcfg.Listen}
	writer, err := dmq.New(wcfg, dmq.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	startReceiver := func(t *testing.T) func() {
		r, err := dmq.New(rcfg, dmq.Options{Logger: slog.New(slog.DiscardHandler), OnChange: func(name string, params []byte) {
			// Only what is set by a write: after a restart the receiver's
			// init sync brings back the writer's old cells too.
			var p struct{ Action, Cname, Strval string }
			if name == "E_DMQ_HTABLE" && json.Unmarshal(params, &p) == nil && p.Action == "set" {
				c.in.put(p.Cname + "=" + p.Strval)
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		return run(r)
	}
	stopWriter := run(writer)
	var mu sync.Mutex
	stopReceiver := startReceiver(t)
	t.Cleanup(func() { mu.Lock(); stopReceiver(); mu.Unlock(); stopWriter() })
	active := func() bool {
		for _, n := range writer.Nodes() {
			if n.Addr.String() == rcfg.Listen {
				return n.Status == dmq.StatusActive
			}
		}
		return false
	}
	checkFor(t, 5*time.Second, "the writer to see the receiver active", active)
	c.socket = "dmq:htable:conf?key={note}{seq}&value=v{seq}"
	c.deps = Deps{DMQ: writer}
	c.down = func(*testing.T, Backend) { mu.Lock(); stopReceiver(); mu.Unlock() }
	c.up = func(t *testing.T, _ Backend) {
		mu.Lock()
		stopReceiver = startReceiver(t)
		mu.Unlock()
		checkFor(t, 5*time.Second, "the writer to see the receiver active again", active)
	}
	return c
}
