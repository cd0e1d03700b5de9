package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// scrape returns every sample of a /metrics page by its series (name and labels).
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	samples := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// TestRunProcessMetrics: a running daemon's /metrics has the standard
// process_* families about itself and sipside_build_info about its build.
func TestRunProcessMetrics(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("process_* metrics are read from /proc, which this system lacks")
	}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	cfgPath := filepath.Join(t.TempDir(), "sipside.toml")
	cfg := fmt.Sprintf("[http]\nlisten = %q\n[[input]]\nlisten = \"udp:127.0.0.1:%d\"\n", httpAddr, testenv.FreePort(t, "udp", "127.0.0.1"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// Whole seconds: btime has no fraction, so a start time can read up to 1s early.
	before := float64(time.Now().Unix() - 1)
	d := startDaemon(t, "-c", cfgPath)
	d.waitLog(t, "input listening")
	m := scrape(t, "http://"+httpAddr+"/metrics")
	after := float64(time.Now().Unix() + 1)

	for _, name := range []string{"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
		"process_open_fds", "process_max_fds", "process_start_time_seconds", "go_goroutines", "go_memstats_heap_inuse_bytes"} {
		if _, ok := m[name]; !ok {
			t.Errorf("/metrics has no %s", name)
		}
	}
	if v := m["process_start_time_seconds"]; v < before || v > after {
		t.Errorf("process_start_time_seconds = %v, want the daemon's start, between %v and %v", v, before, after)
	}
	if rss, vsz := m["process_resident_memory_bytes"], m["process_virtual_memory_bytes"]; rss < 1<<20 || vsz < rss {
		t.Errorf("resident %v, virtual %v: want at least 1 MiB resident and virtual >= resident", rss, vsz)
	}
	// stdin, stdout, stderr, the input socket and the HTTP listener at least.
	if fds, max := m["process_open_fds"], m["process_max_fds"]; fds < 5 || (max != -1 && fds > max) {
		t.Errorf("process_open_fds %v, process_max_fds %v", fds, max)
	}
	if v := m["process_cpu_seconds_total"]; v < 0 {
		t.Errorf("process_cpu_seconds_total = %v", v)
	}

	out, err := exec.Command(sipsideBinary(t), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	ver := strings.Fields(string(out))[1] // "sipside VERSION (goX linux/amd64)"
	re := regexp.MustCompile(`^sipside_build_info\{version="([^"]*)",commit="([^"]+)",goversion="([^"]+)"\}$`)
	found := false
	for series, v := range m {
		g := re.FindStringSubmatch(series)
		if g == nil {
			continue
		}
		found = true
		if v != 1 || g[1] != ver || g[3] != runtime.Version() {
			t.Errorf("%s %v: want version %q, goversion %q, value 1", series, v, ver, runtime.Version())
		}
	}
	if !found {
		t.Errorf("/metrics has no sipside_build_info{version,commit,goversion}")
	}
}
