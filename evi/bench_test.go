package evi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

var benchPayload = BenchPayload

// report turns a run into the benchmark's figures.
func report(b *testing.B, r BenchResult, err error) {
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(r.Lost(), "%lost")
	b.ReportMetric(r.Rate(), "events/s")
}

// BenchmarkUDPReadBaseline only reads the socket: the ceiling for any input.
func BenchmarkUDPReadBaseline(b *testing.B) {
	b.ReportAllocs()
	r, err := BenchUDPRead(context.Background(), b.N)
	report(b, r, err)
}

// BenchmarkUDPToJSONLines is the default job: udp input, parse, route,
// JSON line to a stdout backend (here discarded).
func BenchmarkUDPToJSONLines(b *testing.B) {
	b.ReportAllocs()
	r, err := BenchUDPPipeline(context.Background(), b.N, "stdout:", io.Discard)
	report(b, r, err)
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
