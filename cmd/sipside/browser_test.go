package main

import (
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// The status page as an operator sees it: headless Chromium loads / from a
// running sipside that has a subscription, and both the rendered DOM and a
// screenshot are checked.
func TestStatusPageInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Chromium")
	}
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		testenv.Missing(t, "chromium (renders the status page)", "apt-get install --no-install-recommends chromium")
		return
	}
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	rmq := testenv.SharedRabbitMQ(t)
	k := kamailioDMQNode(t, "browser-dmq", "127.0.0.4")
	input := fmt.Sprintf("udp:127.0.0.1:%d", testenv.FreePort(t, "udp", "127.0.0.1"))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = %q
[[input]]
listen = %q
[[subscribe]]
target = %q
events = ["E_MY_EVENT"]
socket = %q
[[route]]
name = "everything"
to = "stdout:"
[dmq]
listen = "sip:127.0.0.1:%d"
seeds = ["sip:127.0.0.4:%d"]
peers = ["htable"]
[amqp]
brokers = [%q]
[jsonrpc]
listen = ["netstring:127.0.0.1:%d"]
`, httpAddr, input, o.Target("udp"), input, testenv.FreePort(t, "udp", "127.0.0.1"), k.SIPPort, rmq.URL, testenv.FreePort(t, "tcp", "127.0.0.1"))), 0o644)
	d := startDaemon(t, "-c", cfg)
	d.waitLog(t, "subscribed")
	checkFor(t, 20*time.Second, "the DMQ node in the status", func() bool {
		page, err := httpGet("http://" + httpAddr + "/")
		return err == nil && strings.Contains(page, "127.0.0.4") && strings.Contains(page, "<td>active</td>")
	})

	shot := filepath.Join(dir, "status.png")
	browse := func(extra ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--user-data-dir=" + filepath.Join(dir, "chromium"), "--window-size=1200,900"}, extra...)
		args = append(args, "http://"+httpAddr+"/")
		out, err := exec.CommandContext(ctx, chromium, args...).Output()
		if err != nil {
			t.Fatalf("chromium %v: %v", extra, err)
		}
		return string(out)
	}
	dom := browse("--dump-dom")
	for _, want := range []string{"sipside", ">Inputs</h2>", ">Subscriptions</h2>", ">Routes and backends</h2>", "E_MY_EVENT", ">active<", "everything", input,
		">DMQ nodes</h2>", "127.0.0.4", "(sipside)", ">AMQP bridge</h2>", "netstring"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered page lacks %q", want)
		}
	}
	browse("--screenshot=" + shot)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	b := img.Bounds()
	if b.Dx() != 1200 || b.Dy() != 900 {
		t.Errorf("screenshot is %dx%d", b.Dx(), b.Dy())
	}
	// A page that rendered has text: many pixels differ from the background.
	bg := img.At(b.Max.X-1, b.Max.Y-1)
	differ := 0
	for y := b.Min.Y; y < b.Min.Y+400; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			if img.At(x, y) != bg {
				differ++
			}
		}
	}
	if differ < 500 {
		t.Errorf("screenshot looks blank (%d pixels differ from the background)", differ)
	}
	if os.Getenv("SIPSIDE_KEEP_SCREENSHOT") != "" {
		data, _ := os.ReadFile(shot)
		os.WriteFile(os.Getenv("SIPSIDE_KEEP_SCREENSHOT"), data, 0o644)
	}
}
