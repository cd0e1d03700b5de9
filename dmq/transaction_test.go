package dmq

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/internal/ratelog"
)

func startTransport(t *testing.T, timers Timers, h handlerFunc) (*transport, netip.AddrPort) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &transport{
		conn:    conn,
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		rl:      ratelog.New(nil, time.Second),
		metrics: newNodeMetrics(metrics.New()),
		timers:  timers,
		handle:  h,
		queue:   make(chan inbound, 16),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = tr.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); conn.Close(); <-done })
	return tr, conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func testRequest(self netip.AddrPort, dst string) *Message {
	n := &Node{self: NodeAddr{Host: self.Addr().String(), Port: int(self.Port())}}
	a, _ := ParseNodeAddr("sip:" + dst)
	return n.newRequest(a, ChannelHTable, "application/json", []byte(`{"action":1}`), 1)
}

// A silent peer gets the request at 0, T1, 3T1, 7T1 … (interval doubling up
// to T2), and the transaction ends with ErrTimeout at Timeout.
func TestClientRetransmissions(t *testing.T) {
	timers := Timers{T1: 50 * time.Millisecond, T2: 200 * time.Millisecond, Timeout: time.Second}
	tr, self := startTransport(t, timers, nil)
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	arrivals := make(chan time.Time, 64)
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := peer.ReadFrom(buf); err != nil {
				close(arrivals)
				return
			}
			arrivals <- time.Now()
		}
	}()
	start := time.Now()
	_, err = tr.roundTrip(context.Background(), peer.LocalAddr().(*net.UDPAddr).AddrPort(), testRequest(self, peer.LocalAddr().String()), "htable")
	elapsed := time.Since(start)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("roundTrip = %v, want ErrTimeout", err)
	}
	if elapsed < timers.Timeout || elapsed > timers.Timeout+300*time.Millisecond {
		t.Errorf("gave up after %s, want about %s", elapsed, timers.Timeout)
	}
	peer.Close()
	var offsets []time.Duration
	for a := range arrivals {
		offsets = append(offsets, a.Sub(start))
	}
	// Expected sends: 0, 50, 150, 350, 550, 750, 950 ms.
	want := []time.Duration{0, 50, 150, 350, 550, 750, 950}
	if len(offsets) < len(want)-1 || len(offsets) > len(want) {
		t.Fatalf("sent %d times at %v, want %d at %v ms", len(offsets), offsets, len(want), want)
	}
	for i, o := range offsets {
		w := want[i] * time.Millisecond
		if o < w-10*time.Millisecond || o > w+80*time.Millisecond {
			t.Errorf("send %d at %s, want about %s", i, o, w)
		}
	}
	if got := tr.metrics.retransmissions.With("htable").Value(); got != uint64(len(offsets)-1) {
		t.Errorf("retransmissions counted %d, want %d", got, len(offsets)-1)
	}
}

// A provisional answer keeps the transaction waiting for the final one.
func TestClientProvisionalThenFinal(t *testing.T) {
	tr, self := startTransport(t, Timers{T1: 50 * time.Millisecond, T2: 200 * time.Millisecond, Timeout: 2 * time.Second}, nil)
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	go func() {
		buf := make([]byte, 65536)
		n, src, err := peer.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		req, err := ParseMessage(buf[:n])
		if err != nil {
			return
		}
		_, _ = peer.WriteToUDPAddrPort(req.Reply(100, "Trying", "", "", nil).Bytes(), src)
		time.Sleep(300 * time.Millisecond)
		_, _ = peer.WriteToUDPAddrPort(req.Reply(200, "OK", "x", "", nil).Bytes(), src)
	}()
	resp, err := tr.roundTrip(context.Background(), peer.LocalAddr().(*net.UDPAddr).AddrPort(), testRequest(self, peer.LocalAddr().String()), "htable")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("roundTrip = %v, %v; want 200", resp, err)
	}
}

// A retransmitted request gets the very same answer, and the handler runs
// once.
func TestServerRetransmission(t *testing.T) {
	var calls atomic.Int32
	_, addr := startTransport(t, Timers{T1: 50 * time.Millisecond, T2: 200 * time.Millisecond, Timeout: 2 * time.Second},
		func(req *Message, _ netip.AddrPort) *Message {
			calls.Add(1)
			return req.Reply(200, "OK", newTag(), "", nil)
		})
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := kdmq("htable", "sip:"+addr.String(), `{"action":1}`)
	req = strings.ReplaceAll(req, "LOCALPORT", strings.TrimPrefix(c.LocalAddr().String(), "127.0.0.1:"))
	var answers []string
	buf := make([]byte, 65536)
	for range 3 {
		if _, err := c.WriteToUDPAddrPort([]byte(req), addr); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		answers = append(answers, string(buf[:n]))
	}
	if answers[0] != answers[1] || answers[1] != answers[2] {
		t.Errorf("answers differ:\n%q\n%q\n%q", answers[0], answers[1], answers[2])
	}
	if calls.Load() != 1 {
		t.Errorf("handler ran %d times, want 1", calls.Load())
	}
}
