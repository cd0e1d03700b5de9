package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

func TestDMQUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "Usage: sipside dmq"},
		{[]string{"--help"}, exitOK, "htable set TABLE NAME VALUE"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"htable", "get", "onlyone"}, exitUsage, "htable get: want 2 arguments, got 1"},
		{[]string{"watch"}, exitUsage, "give --listen"},
		{[]string{"watch", "--listen", "sip:127.0.0.1:5090"}, exitUsage, "dmq.seeds"},
		{[]string{"watch", "--listen", "127.0.0.1:5090", "--seed", "sip:127.0.0.2:5060"}, exitUsage, "sip: scheme"},
	}
	for _, tc := range tests {
		e, out := testEnv()
		if code := dispatch(context.Background(), e, append([]string{"dmq"}, tc.args...)); code != tc.code {
			t.Errorf("dmq %v: exit %d, want %d; output:\n%s", tc.args, code, tc.code, out)
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("dmq %v: output lacks %q:\n%s", tc.args, tc.want, out)
		}
	}
}

// TestDMQAgainstKamailio runs watch, htable set/get/delete and nodes against
// one real Kamailio DMQ node.
func TestDMQAgainstKamailio(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Kamailio")
	}
	k := kamailioDMQNode(t, "dmqcli", "127.0.0.2")
	seed := "sip:" + k.SIPAddr()
	// Each one-shot node on an IP of its own: Kamailio 5.8 and later take a node with an
	// unknown URI but a known IP (the watcher's, an earlier command's) for that node, and
	// never add it to the bus (dmq/README.md).
	ip := 10
	listen := func() string {
		ip++
		addr := "127.0.1." + strconv.Itoa(ip)
		return "sip:" + addr + ":" + strconv.Itoa(testenv.FreePort(t, "udp", addr))
	}

	// watch runs until cancelled.
	watchAddr := listen()
	we, wout := testEnv()
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan int, 1)
	go func() {
		wdone <- dispatch(wctx, we, []string{"dmq", "watch", "--listen", watchAddr, "--seed", seed, "--ping", "1s"})
	}()
	defer func() {
		wcancel()
		<-wdone
	}()
	waitFor(t, 10*time.Second, func() bool {
		return strings.Contains(wout.String(), `"event":"E_DMQ_NODE"`) && strings.Contains(wout.String(), `"status":"active"`)
	}, "watch to print the node becoming active", wout)

	run := func(args ...string) (int, string) {
		e, out := testEnv()
		full := append([]string{"dmq", args[0]}, args[1:]...)
		return dispatch(context.Background(), e, full), out.String()
	}

	if code, out := run("htable", "set", "--listen", listen(), "--seed", seed, "repl", "cli_key", "cli value"); code != exitOK {
		t.Fatalf("htable set: exit %d\n%s", code, out)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	raw, err := k.RPC(rctx, "htable.get", "repl", "cli_key")
	rcancel()
	if err != nil || !strings.Contains(string(raw), "cli value") {
		t.Fatalf("htable.get on Kamailio after sipside dmq htable set: %s, %v", raw, err)
	}
	waitFor(t, 5*time.Second, func() bool {
		return strings.Contains(wout.String(), `"strval":"cli value"`)
	}, "watch to see the set", wout)

	code, out := run("htable", "get", "--listen", listen(), "--seed", seed, "repl", "cli_key")
	if code != exitOK {
		t.Fatalf("htable get: exit %d\n%s", code, out)
	}
	var cell struct {
		Str string `json:"strval"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &cell); err != nil || cell.Str != "cli value" {
		t.Fatalf("htable get printed %q (%v)", out, err)
	}

	if code, out := run("htable", "delete", "--listen", listen(), "--seed", seed, "repl", "cli_key"); code != exitOK {
		t.Fatalf("htable delete: exit %d\n%s", code, out)
	}
	if code, out := run("htable", "get", "--listen", listen(), "--seed", seed, "repl", "cli_key"); code != exitFailure || !strings.Contains(out, "does not exist") {
		t.Fatalf("htable get after delete: exit %d\n%s", code, out)
	}

	code, out = run("nodes", "--listen", listen(), "--seed", seed)
	if code != exitOK || !strings.Contains(out, `"node":"`+seed+`","status":"active"`) || !strings.Contains(out, watchAddr) {
		t.Fatalf("nodes: exit %d\n%s", code, out)
	}

	wcancel()
	if code := <-wdone; code != exitOK {
		t.Errorf("watch exit %d\n%s", code, wout)
	}
	wdone <- exitOK // for the deferred receive
	waitFor(t, 5*time.Second, func() bool {
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer rcancel()
		raw, err := k.RPC(rctx, "dmq.list_nodes")
		return err == nil && strings.Contains(string(raw), `"status":"disabled"`)
	}, "Kamailio to list the departed watcher as disabled", wout)
}

func waitFor(t *testing.T, timeout time.Duration, ok func() bool, what string, out *lockedBuffer) {
	t.Helper()
	if err := testenv.Poll(timeout, 50*time.Millisecond, func() error {
		if ok() {
			return nil
		}
		return fmt.Errorf("not yet")
	}); err != nil {
		t.Fatalf("waited %s for %s; output so far:\n%s", timeout, what, out)
	}
}

// TestRunDMQRoute: `sipside run` with [dmq] and a dmq: route turns an
// E_PIKE_BLOCKED datagram into a cell on a real Kamailio node; an event that
// lacks the key is counted as failed.
func TestRunDMQRoute(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Kamailio")
	}
	k := kamailioDMQNode(t, "dmqroute", "127.0.0.2")
	udpPort := testenv.FreePort(t, "udp", "127.0.0.1")
	httpPort := testenv.FreePort(t, "tcp", "127.0.0.1")
	dmqPort := testenv.FreePort(t, "udp", "127.0.0.1")
	cfg := fmt.Sprintf(`[http]
listen = "127.0.0.1:%d"
[[input]]
listen = "udp:127.0.0.1:%d"
[dmq]
listen = "sip:127.0.0.1:%d"
seeds = ["sip:%s"]
ping_interval = "1s"
[spool]
dir = %q
retry_interval = "100ms"
[[route]]
name = "pike"
events = ["E_PIKE_BLOCKED"]
to = "dmq:htable:repl?key={ip}&value=1"
`, httpPort, udpPort, dmqPort, k.SIPAddr(), t.TempDir())
	cfgPath := filepath.Join(t.TempDir(), "sipside.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, "-c", cfgPath)
	d.waitLog(t, "input listening")
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", udpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Sent at once, maybe before the join: the spool keeps it until then.
	conn.Write([]byte(`{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"ip":"203.0.113.5"}}`))
	conn.Write([]byte(`{"jsonrpc":"2.0","method":"E_PIKE_BLOCKED","params":{"node":"edge1"}}`))
	checkFor(t, 15*time.Second, "repl[203.0.113.5] on Kamailio", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		raw, err := k.RPC(ctx, "htable.get", "repl", "203.0.113.5")
		return err == nil && strings.Contains(string(raw), `"value":1`)
	})
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)
	checkFor(t, 10*time.Second, "the event without ip counted as failed", func() bool {
		return metricValue(t, metrics, `sipside_events_undelivered_total{route="pike",reason="failed"}`) == 1
	})
}
