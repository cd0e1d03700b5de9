package mi

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// These compare Client.Call with a raw-socket request loop against a real Kamailio:
//
//	go test -run XXX -bench Kamailio ./mi
//
// Each reports calls/s and the p99 latency over all callers.

// benchCallers runs b.N calls spread over callers goroutines.
func benchCallers(b *testing.B, callers int, newCaller func() (call func() error, done func())) {
	lat := make([][]time.Duration, callers)
	fns := make([]func() error, callers)
	for g := range callers {
		call, done := newCaller()
		fns[g] = call
		b.Cleanup(done)
		if err := call(); err != nil { // warm up: sockets open, connections made
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	b.ResetTimer()
	start := time.Now()
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := fns[g](); err != nil {
					errs <- err
					return
				}
				lat[g] = append(lat[g], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "calls/s")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(0, "ns/op")
}

var benchCallerCounts = []int{1, 8, 64}

func BenchmarkKamailioClientCall(b *testing.B) {
	k := sharedKamailio(b)
	for _, tr := range []string{"udp", "http"} {
		for _, n := range benchCallerCounts {
			b.Run(fmt.Sprintf("%s/callers=%d", tr, n), func(b *testing.B) {
				c, err := New(kamailioTargets(k)[tr], Options{})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				benchCallers(b, n, func() (func() error, func()) {
					return func() error {
						_, err := c.Call(context.Background(), "core.version", nil)
						return err
					}, func() {}
				})
			})
		}
	}
}

// BenchmarkKamailioRawSocket is the floor: a fixed request written to a socket of
// each caller's own and the reply read back, with no id matching, no JSON parsing.
func BenchmarkKamailioRawSocket(b *testing.B) {
	k := sharedKamailio(b)
	body := `{"jsonrpc":"2.0","method":"core.version","id":1}`
	udpAddr := strings.TrimPrefix(k.MITargetUDP(), "kamailio:udp:")
	httpAddr := net.JoinHostPort(k.Addr, fmt.Sprint(k.HTTPPort))
	httpReq := fmt.Sprintf("POST /RPC HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", httpAddr, len(body), body)
	for _, tr := range []string{"udp", "http"} {
		for _, n := range benchCallerCounts {
			b.Run(fmt.Sprintf("%s/callers=%d", tr, n), func(b *testing.B) {
				benchCallers(b, n, func() (func() error, func()) {
					if tr == "udp" {
						c, err := net.Dial("udp", udpAddr)
						if err != nil {
							b.Fatal(err)
						}
						buf := make([]byte, 65536)
						return func() error {
							_ = c.SetDeadline(time.Now().Add(5 * time.Second))
							if _, err := c.Write([]byte(body)); err != nil {
								return err
							}
							_, err := c.Read(buf)
							return err
						}, func() { c.Close() }
					}
					c, err := net.Dial("tcp", httpAddr)
					if err != nil {
						b.Fatal(err)
					}
					br := bufio.NewReader(c)
					return func() error {
						_ = c.SetDeadline(time.Now().Add(5 * time.Second))
						if _, err := io.WriteString(c, httpReq); err != nil {
							return err
						}
						resp, err := http.ReadResponse(br, nil)
						if err != nil {
							return err
						}
						_, err = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						return err
					}, func() { c.Close() }
				})
			})
		}
	}
}
