package evi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

// BenchPayload is a REGISTER's E_UL_CONTACT_INSERT as a real OpenSIPS 3.6.8
// sent it (testdata/opensips-event-datagrams.txt has the others): what
// `sipside bench` and the Go benchmarks send.
var BenchPayload = []byte(`{"jsonrpc":"2.0","method":"E_UL_CONTACT_INSERT","params":{"domain":"location","aor":"alice","uri":"sip:alice@127.0.0.1:5099","received":null,"path":null,"qval":-1,"user_agent":"sipside-lab","socket":"udp:127.0.0.1:5060","bflags":0,"expires":1795745246,"callid":"b5a0c3e2-4e8a-4f0c","cseq":1,"attr":"","latency":0,"shtag":""}}`)

// BenchResult is one measured run of a path.
type BenchResult struct {
	Path    string
	Events  int
	Done    int // events that came out at the end of the path
	Elapsed time.Duration
	Mallocs uint64 // heap allocations during the run, whole process
}

// Rate is events per second out of the path.
func (r BenchResult) Rate() float64 { return float64(r.Done) / r.Elapsed.Seconds() }

// AllocsPerEvent is heap allocations per event, sender included.
func (r BenchResult) AllocsPerEvent() float64 { return float64(r.Mallocs) / float64(max(r.Events, 1)) }

// Lost is the share of events that never came out, in percent.
func (r BenchResult) Lost() float64 {
	return float64(r.Events-r.Done) / float64(max(r.Events, 1)) * 100
}

// benchWindow is how many datagrams may be unaccounted for at once: the
// figure is then the rate the receiver sustains, not how fast the kernel
// drops.
const benchWindow = 128

// sendWindowed sends n datagrams to addr, keeping at most benchWindow of them
// not yet counted by done, then waits up to 2 s for the tail.
func sendWindowed(ctx context.Context, addr string, n int, done func() uint64) (time.Duration, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	for i := 0; i < n; i++ {
		for d := done(); uint64(i) > d && uint64(i)-d >= benchWindow; d = done() {
			if ctx.Err() != nil {
				return time.Since(start), ctx.Err()
			}
			time.Sleep(20 * time.Microsecond)
		}
		if _, err := c.Write(BenchPayload); err != nil {
			return time.Since(start), err
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for done() < uint64(n) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Microsecond)
	}
	return time.Since(start), nil
}

func measure(path string, n int, run func() (time.Duration, error), done func() uint64) (BenchResult, error) {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	elapsed, err := run()
	runtime.ReadMemStats(&after)
	return BenchResult{Path: path, Events: n, Done: int(done()), Elapsed: elapsed, Mallocs: after.Mallocs - before.Mallocs}, err
}

// BenchUDPRead only reads a UDP socket: the ceiling for any input.
func BenchUDPRead(ctx context.Context, n int) (BenchResult, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return BenchResult{}, err
	}
	defer pc.Close()
	pc.(*net.UDPConn).SetReadBuffer(4 << 20) // as the input does
	var got atomic.Uint64
	go func() {
		buf := make([]byte, maxDatagram)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	return measure("udp read only (baseline)", n, func() (time.Duration, error) {
		return sendWindowed(ctx, pc.LocalAddr().String(), n, got.Load)
	}, got.Load)
}

// BenchUDPPipeline is the whole path: a udp input, parsing, a route and the
// backend of socket (stdout: writes to w). It first sends one event through
// so that the backend is connected before the clock starts.
func BenchUDPPipeline(ctx context.Context, n int, socket string, w io.Writer) (BenchResult, error) {
	log := slog.New(slog.DiscardHandler)
	m := NewMetrics(metrics.New())
	in, err := OpenInput(Listen{Proto: "udp", Addr: "127.0.0.1:0"}, InputConfig{}, Deps{Log: log}, m)
	if err != nil {
		return BenchResult{}, err
	}
	defer in.Close()
	r, err := NewRouter([]RouteConfig{{Name: "bench", To: socket}}, Deps{Stdout: w, Log: log}, m, nil)
	if err != nil {
		return BenchResult{}, err
	}
	r.Start()
	defer r.Close(context.Background())
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go in.Run(rctx, r)
	var delivered func() uint64
	if _, virtual := r.routes[0].b.(*Virtual); virtual {
		return BenchResult{}, fmt.Errorf("bench a plain socket, not a virtual: one (its members count separately)")
	}
	c := m.Delivered.With("bench", Redact(socket))
	failed := m.Failed.With("bench", Redact(socket))
	delivered = c.Value
	addr := in.(*datagramInput).Addr().String()
	if _, err := sendWindowed(ctx, addr, 1, delivered); err != nil {
		return BenchResult{}, err
	}
	if delivered() != 1 {
		return BenchResult{}, fmt.Errorf("the warm-up event was not delivered to %s (%d failed): is the backend reachable?", Redact(socket), failed.Value())
	}
	base := delivered()
	done := func() uint64 { return delivered() - base }
	return measure("udp -> "+Redact(socket), n, func() (time.Duration, error) {
		return sendWindowed(ctx, addr, n, done)
	}, done)
}
