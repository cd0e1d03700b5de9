package evi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

// A REGISTER's E_UL_CONTACT_INSERT as OpenSIPS 3.6.8 sent it (captures).
var benchPayload = []byte(`{"jsonrpc":"2.0","method":"E_UL_CONTACT_INSERT","params":{"domain":"location","aor":"alice","uri":"sip:alice@127.0.0.1:5099","received":null,"path":null,"qval":-1,"user_agent":"sipside-lab","socket":"udp:127.0.0.1:5060","bflags":0,"expires":1795745246,"callid":"b5a0c3e2-4e8a-4f0c","cseq":1,"attr":"","latency":0,"shtag":""}}`)

// sendWindowed sends n datagrams to addr, keeping at most window of them
// unaccounted for by done(), so that the figure is the rate the receiver
// sustains, not how fast the kernel drops.
func sendWindowed(b *testing.B, addr string, n int, done func() uint64) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	const window = 128
	for i := 0; i < n; i++ {
		for d := done(); uint64(i) > d && uint64(i)-d >= window; d = done() {
			time.Sleep(20 * time.Microsecond)
		}
		if _, err := c.Write(benchPayload); err != nil {
			b.Fatal(err)
		}
	}
	// Wait for the tail; what never arrives was dropped by the kernel.
	deadline := time.Now().Add(2 * time.Second)
	for done() < uint64(n) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Microsecond)
	}
	b.ReportMetric(float64(uint64(n)-done())/float64(n)*100, "%lost")
}

// BenchmarkUDPReadBaseline only reads the socket: the ceiling for any input.
func BenchmarkUDPReadBaseline(b *testing.B) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	pc.(*net.UDPConn).SetReadBuffer(4 << 20) // as the input does
	var n atomic.Uint64
	go func() {
		buf := make([]byte, maxDatagram)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	sendWindowed(b, pc.LocalAddr().String(), b.N, n.Load)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkUDPToJSONLines is the default job: udp input, parse, route,
// JSON line to a stdout backend (here discarded).
func BenchmarkUDPToJSONLines(b *testing.B) {
	m := NewMetrics(metrics.New())
	log := slog.New(slog.DiscardHandler)
	in, err := OpenInput(Listen{Proto: "udp", Addr: "127.0.0.1:0"}, InputConfig{}, Deps{Log: log}, m)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	r, err := NewRouter([]RouteConfig{{Name: "stdout", To: "stdout:"}}, Deps{Stdout: io.Discard, Log: log}, m, nil)
	if err != nil {
		b.Fatal(err)
	}
	r.Start()
	defer r.Close(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go in.Run(ctx, r)
	delivered := m.Delivered.With("stdout", "stdout:")
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	sendWindowed(b, in.(*datagramInput).Addr().String(), b.N, delivered.Value)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkUDPLoss sends open-loop (no window, as a proxy does) at 50 %,
// 90 % and 100 % of the rate the windowed benchmark sustains and reports
// the share the pipeline never delivered (lost in the kernel's socket
// buffer). SIPSIDE_BENCH_MAX_RATE sets that maximum (events/s); default
// 150000.
func BenchmarkUDPLoss(b *testing.B) {
	maxRate := 150000.0
	if v, err := strconv.ParseFloat(os.Getenv("SIPSIDE_BENCH_MAX_RATE"), 64); err == nil && v > 0 {
		maxRate = v
	}
	for _, pct := range []int{50, 90, 100} {
		b.Run(fmt.Sprintf("rate=%d%%", pct), func(b *testing.B) {
			m := NewMetrics(metrics.New())
			log := slog.New(slog.DiscardHandler)
			in, err := OpenInput(Listen{Proto: "udp", Addr: "127.0.0.1:0"}, InputConfig{}, Deps{Log: log}, m)
			if err != nil {
				b.Fatal(err)
			}
			defer in.Close()
			r, _ := NewRouter([]RouteConfig{{Name: "stdout", To: "stdout:"}}, Deps{Stdout: io.Discard, Log: log}, m, nil)
			r.Start()
			defer r.Close(context.Background())
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go in.Run(ctx, r)
			delivered := m.Delivered.With("stdout", "stdout:")
			c, _ := net.Dial("udp", in.(*datagramInput).Addr().String())
			defer c.Close()
			rate := maxRate * float64(pct) / 100
			gap := time.Duration(float64(time.Second) / rate)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				// Pace by the clock, in bursts, as sleeping per event cannot.
				if due := start.Add(time.Duration(i) * gap); time.Until(due) > 200*time.Microsecond {
					time.Sleep(time.Until(due))
				}
				c.Write(benchPayload)
			}
			sent := time.Since(start)
			deadline := time.Now().Add(2 * time.Second)
			for delivered.Value() < uint64(b.N) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(float64(b.N)/sent.Seconds(), "sent/s")
			b.ReportMetric(float64(uint64(b.N)-delivered.Value())/float64(b.N)*100, "%lost")
		})
	}
}
