package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// readyz returns /readyz's status and body.
func readyz(t *testing.T, base string) (int, string) {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A consumer the broker refuses is down alone: /readyz names it, its series
// says 0, and the bridge keeps publishing. A broker that is down from the
// start has its connected series at 0 from the first scrape.
func TestRunReadyzAndConsumerUp(t *testing.T) {
	rmq := testenv.SharedRabbitMQ(t)
	deadPort := testenv.FreePort(t, "tcp", "127.0.0.1")
	for _, tc := range []struct {
		name, broker string
		notReady     []string
		series       map[string]float64
	}{
		{
			name: "consumer down", broker: rmq.URL,
			notReady: []string{"amqp: consumer missing is down", "NOT_FOUND", `declare = "auto"`},
			series: map[string]float64{
				`sipside_amqp_consumer_up{consumer="missing"}`:        0,
				`sipside_amqp_consumer_up{consumer="amq.topic/ok.#"}`: 1,
			},
		},
		{
			name: "broker down from the start", broker: fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", deadPort),
			notReady: []string{"amqp: no broker connected", "connection refused", "consumer missing is down"},
			series: map[string]float64{
				fmt.Sprintf(`sipside_amqp_connected{name="kazoo",broker="amqp://guest@127.0.0.1:%d/"}`, deadPort): 0,
				`sipside_amqp_consumer_up{consumer="missing"}`:                                                    0,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
			rpcAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
			cfg := filepath.Join(t.TempDir(), "sipside.toml")
			os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = %q
[[input]]
listen = "udp:127.0.0.1:%d"
[[route]]
to = "stdout:"
[amqp]
brokers = [%q]
[jsonrpc]
listen = ["http://%s"]
[[amqp.consume]]
name = "missing"
exchange = "sipside_nobody_declared_this"
routing_key = "k"
declare = "passive"
deliver = "events"
event = "E_AMQP"
[[amqp.consume]]
exchange = "amq.topic"
routing_key = "ok.#"
deliver = "events"
event = "E_AMQP_OK"
`, httpAddr, testenv.FreePort(t, "udp", "127.0.0.1"), tc.broker, rpcAddr)), 0o644)
			d := startDaemon(t, "-c", cfg)
			base := "http://" + httpAddr
			var code int
			var body string
			checkFor(t, 20*time.Second, "/readyz to list every problem", func() bool {
				code, body = readyz(t, base)
				for _, want := range tc.notReady {
					if !strings.Contains(body, want) {
						return false
					}
				}
				return code == http.StatusServiceUnavailable
			})
			// The health-check client says the same, with exit 1.
			e, out := testEnv()
			if code := dispatch(t.Context(), e, []string{"events", "status", "--ready", "--http", httpAddr}); code != exitFailure || !strings.Contains(out.String(), tc.notReady[0]) {
				t.Errorf("events status --ready: exit %d:\n%s", code, out)
			}
			for series, want := range tc.series {
				checkFor(t, 10*time.Second, series, func() bool { return metricValue(t, base+"/metrics", series) == want })
			}
			if tc.broker != rmq.URL {
				return
			}
			// The bridge works beside the consumer that is down.
			req := `{"jsonrpc":"2.0","id":1,"method":"amqp.publish","params":{"exchange":"amq.topic","routing_key":"ok.1","payload":{"n":1}}}`
			resp, err := http.Post("http://"+rpcAddr+"/", "application/json", strings.NewReader(req))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(b), `"confirmed"`) {
				t.Fatalf("publish beside a consumer that is down: %s", b)
			}
			for {
				if l := d.nextLine(t); strings.Contains(l, `"event":"E_AMQP_OK"`) {
					break
				}
			}
			// The status page tells the same.
			resp, err = http.Get(base + "/")
			if err != nil {
				t.Fatal(err)
			}
			page, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(page), "missing") || !strings.Contains(string(page), "down") {
				t.Errorf("status page does not show the consumer down:\n%s", page)
			}
		})
	}
}

func TestRunReadyzWhenAllIsWell(t *testing.T) {
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	cfg := filepath.Join(t.TempDir(), "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[http]\nlisten = %q\n[[input]]\nlisten = \"udp:127.0.0.1:%d\"\n[[route]]\nto = \"stdout:\"\n",
		httpAddr, testenv.FreePort(t, "udp", "127.0.0.1"))), 0o644)
	startDaemon(t, "-c", cfg)
	var code int
	var body string
	checkFor(t, 10*time.Second, "/readyz 200", func() bool {
		code, body = readyz(t, "http://"+httpAddr)
		return code == http.StatusOK
	})
	if body != "ready\n" {
		t.Errorf("body %q", body)
	}
	e, out := testEnv()
	if code := dispatch(t.Context(), e, []string{"events", "status", "--ready", "--http", httpAddr}); code != exitOK || out.String() != "ready\n" {
		t.Errorf("events status --ready: exit %d:\n%s", code, out)
	}
}
