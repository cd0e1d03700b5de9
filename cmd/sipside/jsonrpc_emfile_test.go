package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// The JSON-RPC listeners out of file descriptors: sipside runs with
// RLIMIT_NOFILE lowered, idle connections exhaust it and accept fails with
// EMFILE; once they close, the netstring listener answers again.
func TestRunJSONRPCEMFILE(t *testing.T) {
	if testing.Short() {
		t.Skip("runs sipside as a process")
	}
	rmq := testenv.SharedRabbitMQ(t)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	cfg := filepath.Join(t.TempDir(), "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = "off"
[[input]]
listen = "udp:127.0.0.1:%d"
[[route]]
to = "stdout:"
[amqp]
brokers = [%q]
[jsonrpc]
listen = ["netstring:%s"]
max_conns = 10000
`, testenv.FreePort(t, "udp", "127.0.0.1"), rmq.URL, addr)), 0o644)
	d := runOutOfFDs(t, cfg, addr, "JSON-RPC accept failed")
	var reply string
	checkFor(t, 10*time.Second, "a reply after EMFILE", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		req := `{"jsonrpc":"2.0","id":7,"method":"sipside.ping"}`
		fmt.Fprintf(c, "%d:%s,", len(req), req)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 256)
		n, _ := c.Read(buf)
		reply = string(buf[:n])
		return strings.Contains(reply, `"pong"`)
	})
	if d.cmd.ProcessState != nil {
		t.Fatal("sipside exited")
	}
}
