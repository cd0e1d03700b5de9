package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

// spillBackend is the far end of the route in TestRunSpillSIGKILL: down (or
// hung) while sipside first runs, working for the run after the crash.
type spillBackend struct {
	to      string
	revive  func(t *testing.T)
	arrived func(t *testing.T, want map[int]bool) map[int]int // seq -> times received, once every wanted seq came
}

// A route whose backend takes nothing (a RabbitMQ port that refuses
// connections, a tcp receiver that accepts and never answers) and a spool:
// 50 events, SIGKILL 1.5 s later, and the next run replays all 50. Before
// spill_after held whatever the backend was doing, the first delivery held
// the route's worker (5 s waiting for a first broker connection, or the
// whole timeout on a hung receiver) and the queued events died with the
// process.
func TestRunSpillSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("runs sipside as a process and a private RabbitMQ node")
	}
	for _, tc := range []struct {
		name string
		make func(t *testing.T) spillBackend
	}{
		{"rabbitmq port refuses connections", refusedRabbitMQ},
		{"tcp receiver accepts and never answers", hungStreamReceiver},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := tc.make(t)
			dir := t.TempDir()
			httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
			input := fmt.Sprintf("udp:127.0.0.1:%d", testenv.FreePort(t, "udp", "127.0.0.1"))
			cfg := filepath.Join(dir, "sipside.toml")
			os.WriteFile(cfg, []byte(fmt.Sprintf(`[log]
level = "warn"
[http]
listen = %q
[[input]]
listen = %q
[[route]]
name = "spill"
to = %q
[spool]
dir = %q
retry_interval = "200ms"
`, httpAddr, input, be.to, filepath.Join(dir, "spool"))), 0o644)
			d := startDaemon(t, "-c", cfg)
			received := `sipside_events_received_total{input="` + input + `"}`
			checkFor(t, 10*time.Second, "sipside's /metrics", func() bool { return metricValueOr(httpAddr, received) >= 0 })

			c, err := net.Dial("udp", input[len("udp:"):])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			const n = 50
			want := map[int]bool{}
			for seq := 0; seq < n; seq++ {
				fmt.Fprintf(c, `{"jsonrpc":"2.0","method":"E_SPILL","params":{"seq":%d}}`, seq)
				want[seq] = true
			}
			kill := time.Now().Add(1500 * time.Millisecond)
			checkFor(t, 10*time.Second, "sipside read the 50 events", func() bool { return metricValueOr(httpAddr, received) == n })
			time.Sleep(time.Until(kill)) // the scenario: the crash comes 1.5 s after the events
			d.cmd.Process.Kill()
			<-d.done

			be.revive(t)
			d2 := startDaemon(t, "-c", cfg)
			got := be.arrived(t, want)
			var lost []int
			for seq := range want {
				if got[seq] == 0 {
					lost = append(lost, seq)
				}
			}
			if len(lost) > 0 {
				sort.Ints(lost)
				t.Errorf("%d of %d events lost: %v", len(lost), n, lost)
			}
			d2.cmd.Process.Signal(syscall.SIGTERM)
			<-d2.done
		})
	}
}

// metricValueOr is metricValue that returns -1 while sipside is not up.
func metricValueOr(addr, series string) float64 {
	body, err := httpGet("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

func refusedRabbitMQ(t *testing.T) spillBackend {
	rmq := testenv.NewRabbitMQ(t, testenv.RabbitOptions{Name: "spill"})
	conn, err := amqp.Dial(rmq.URL)
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := conn.Channel()
	if _, err := ch.QueueDeclare("spill", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if err := rmq.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	return spillBackend{
		to: fmt.Sprintf("rabbitmq:guest:guest@127.0.0.1:%d/spill", rmq.Port),
		revive: func(t *testing.T) {
			if err := rmq.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
		},
		arrived: func(t *testing.T, want map[int]bool) map[int]int {
			return consumeAll(t, rmq.URL, "spill", want, time.Minute).seen
		},
	}
}

// hungStreamReceiver is an event_stream receiver in reliable mode that
// accepts and never answers; revived, it answers every request on the same
// port.
func hungStreamReceiver(t *testing.T) spillBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	var mu sync.Mutex
	seen := map[int]int{}
	serve := func(ln net.Listener, answer bool) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			if !answer {
				continue // hung: the connection stays open and unread
			}
			go func() {
				dec := json.NewDecoder(c)
				for {
					var req struct {
						ID     json.RawMessage `json:"id"`
						Params struct {
							Seq int `json:"seq"`
						} `json:"params"`
					}
					if err := dec.Decode(&req); err != nil {
						return
					}
					mu.Lock()
					seen[req.Params.Seq]++
					mu.Unlock()
					fmt.Fprintf(c, `{"jsonrpc":"2.0","result":"ok","id":%s}`, req.ID)
				}
			}()
		}
	}
	go serve(ln, false)
	t.Cleanup(func() { ln.Close() })
	return spillBackend{
		to: "tcp:" + addr + "?reliable",
		revive: func(t *testing.T) {
			ln.Close()
			ln2, err := net.Listen("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln2.Close() })
			go serve(ln2, true)
		},
		arrived: func(t *testing.T, want map[int]bool) map[int]int {
			checkFor(t, time.Minute, "every event replayed", func() bool {
				mu.Lock()
				defer mu.Unlock()
				for seq := range want {
					if seen[seq] == 0 {
						return false
					}
				}
				return true
			})
			mu.Lock()
			defer mu.Unlock()
			out := map[int]int{}
			for k, v := range seen {
				out[k] = v
			}
			return out
		},
	}
}
