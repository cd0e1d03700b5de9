package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// The status page, /api/status and `sipside events status` tell an operator
// per input what came in, per route and backend what went out, and which
// FAILOVER member is in use and which sits out its failover_timeout.
func TestStatusShowsCountsAndFailover(t *testing.T) {
	udpPort := testenv.FreePort(t, "udp", "127.0.0.1")
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	dead := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	dir := t.TempDir()
	logFile := filepath.Join(dir, "events.log")
	cfg := filepath.Join(dir, "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = %q
[[input]]
listen = "udp:127.0.0.1:%d"
[[route]]
name = "fo"
to = "virtual:FAILOVER tcp:%s flatstore:%s"
failover_timeout = "1h"
`, httpAddr, udpPort, dead, logFile)), 0o644)
	startDaemon(t, "-c", cfg)
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", udpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	checkFor(t, 10*time.Second, "the daemon", func() bool { code, _ := readyz(t, "http://"+httpAddr); return code == 200 })
	for i := 0; i < 3; i++ {
		fmt.Fprintf(c, `{"jsonrpc":"2.0","method":"E_STATUS","params":{"n":%d}}`, i)
	}
	c.Write([]byte("not json"))

	var st status
	checkFor(t, 10*time.Second, "every event counted", func() bool {
		e, out := testEnv()
		if dispatch(t.Context(), e, []string{"events", "status", "--json", "--http", httpAddr}) != exitOK {
			return false
		}
		st = status{}
		json.Unmarshal([]byte(out.String()), &st)
		return len(st.Inputs) == 1 && st.Inputs[0].Received == 3 && st.Inputs[0].Invalid == 1 &&
			len(st.Routes) == 1 && len(st.Routes[0].Backends) == 2 && st.Routes[0].Backends[1].Delivered == 3
	})
	r := st.Routes[0]
	tcp, file := r.Backends[0], r.Backends[1]
	if r.Policy != "FAILOVER" || tcp.Failed != 1 || tcp.SkippedUntil.IsZero() || tcp.InUse || !file.InUse {
		t.Errorf("route status %+v", r)
	}

	e, out := testEnv()
	if code := dispatch(t.Context(), e, []string{"events", "status", "--http", httpAddr}); code != exitOK {
		t.Fatalf("events status: exit %d\n%s", code, out)
	}
	text := out.String()
	for _, want := range []string{"udp:127.0.0.1:", "  3  ", "tcp:" + dead, "skipped (failover_timeout) until", "flatstore:" + logFile, "in use"} {
		if !strings.Contains(text, want) {
			t.Errorf("events status lacks %q:\n%s", want, text)
		}
	}
	page, err := httpGet("http://" + httpAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"skipped (failover_timeout) until", `class="ok">in use`, "<th>invalid</th>"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
}
