package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

// daemonProc is `sipside run` started as a process.
type daemonProc struct {
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line
	stderr *lockedBuffer
	done   chan error
}

func startDaemon(t *testing.T, args ...string) *daemonProc {
	t.Helper()
	return startDaemonCmd(t, exec.Command(sipsideBinary(t), append([]string{"run"}, args...)...))
}

// startDaemonCmd runs cmd, a `sipside run` possibly wrapped (in a shell that
// lowers a limit first), as a daemonProc.
func startDaemonCmd(t *testing.T, cmd *exec.Cmd) *daemonProc {
	t.Helper()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, lines: make(chan string, 1000), stderr: &lockedBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = d.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			d.lines <- sc.Text()
		}
		close(d.lines)
	}()
	go func() { d.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-d.done
		}
		if t.Failed() {
			t.Logf("sipside stderr:\n%s", d.stderr)
		}
	})
	return d
}

func (d *daemonProc) waitLog(t *testing.T, substr string) {
	t.Helper()
	checkFor(t, 10*time.Second, "log line "+strconv.Quote(substr), func() bool { return strings.Contains(d.stderr.String(), substr) })
}

func (d *daemonProc) nextLine(t *testing.T) string {
	t.Helper()
	select {
	case l, ok := <-d.lines:
		if !ok {
			t.Fatal("stdout closed")
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatal("no stdout line within 10s")
	}
	return ""
}

// checkFor is testenv.WaitFor.
var checkFor = testenv.WaitFor

func recordedDatagrams(t *testing.T) [][]byte {
	t.Helper()
	data, err := os.ReadFile("../../evi/testdata/opensips-event-datagrams.txt")
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, line := range strings.Split(string(data), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		_, h, _ := strings.Cut(line, " ")
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func metricValue(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, series+" ") {
			v, _ := strconv.ParseFloat(strings.TrimPrefix(line, series+" "), 64)
			return v
		}
	}
	return -1
}

// TestRunEndToEnd starts `sipside run` as an operator does, sends it the
// datagrams a real OpenSIPS 3.6.8 sent, and checks stdout, /metrics,
// SIGHUP and SIGTERM.
func TestRunEndToEnd(t *testing.T) {
	udpPort := testenv.FreePort(t, "udp", "127.0.0.1")
	httpPort := testenv.FreePort(t, "tcp", "127.0.0.1")
	input := fmt.Sprintf("udp:127.0.0.1:%d", udpPort)
	cfgPath := filepath.Join(t.TempDir(), "sipside.toml")
	writeCfg := func(extra string) {
		cfg := fmt.Sprintf("[http]\nlisten = \"127.0.0.1:%d\"\n[[input]]\nlisten = %q\n%s", httpPort, input, extra)
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg("")
	d := startDaemon(t, "-c", cfgPath)
	d.waitLog(t, "input listening")

	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", udpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sent := recordedDatagrams(t)
	for _, b := range sent {
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	for i, b := range sent {
		line := d.nextLine(t)
		var got struct {
			Event    string          `json:"event"`
			Params   json.RawMessage `json:"params"`
			Received string          `json:"received"`
			Source   string          `json:"source"`
		}
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("line %d is not JSON: %v\n%s", i, err, line)
		}
		var want struct {
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
		}
		json.Unmarshal(b, &want)
		if got.Event != want.Method || !bytes.Equal(got.Params, want.Params) || got.Source != input {
			t.Errorf("line %d = %s\nfrom datagram %s", i, line, b)
		}
		if _, err := time.Parse(time.RFC3339Nano, got.Received); err != nil {
			t.Errorf("received %q: %v", got.Received, err)
		}
	}
	// Duplicate empty keys (OpenSIPS 3.6.8's raise_event bug) come out as sent.
	if !bytes.Contains(sent[len(sent)-1], []byte(`{"":"a","":"b"}`)) {
		t.Fatal("testdata lost the duplicate-key datagram")
	}

	for _, bad := range [][]byte{[]byte("garbage"), []byte(`{"jsonrpc":"2.0"}`), bytes.Repeat([]byte{0xff}, 65000)} {
		conn.Write(bad)
	}
	conn.Write([]byte(`{"jsonrpc":"2.0","method":"E_AFTER_BAD"}`))
	if l := d.nextLine(t); !strings.Contains(l, `"event":"E_AFTER_BAD"`) {
		t.Errorf("after bad input: %s", l)
	}
	metrics := fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort)
	if v := metricValue(t, metrics, fmt.Sprintf(`sipside_events_received_total{input=%q}`, input)); v != float64(len(sent)+1) {
		t.Errorf("received_total = %v, want %d", v, len(sent)+1)
	}
	if v := metricValue(t, metrics, fmt.Sprintf(`sipside_events_invalid_total{input=%q}`, input)); v != 3 {
		t.Errorf("invalid_total = %v, want 3", v)
	}
	if v := metricValue(t, metrics, "go_goroutines"); v <= 0 {
		t.Errorf("go_goroutines = %v", v)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", httpPort))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	// SIGHUP with a bad file: refused, old config keeps working.
	writeCfg("[log]\nlevel = \"loud\"\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "config reload refused")
	conn.Write([]byte(`{"jsonrpc":"2.0","method":"E_STILL_HERE"}`))
	if l := d.nextLine(t); !strings.Contains(l, "E_STILL_HERE") {
		t.Errorf("after refused reload: %s", l)
	}

	// SIGHUP with a good file that routes only E_KEEP_* to stdout.
	writeCfg("[[route]]\nevents = [\"E_KEEP_*\"]\nto = \"stdout:\"\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "config reloaded")
	conn.Write([]byte(`{"jsonrpc":"2.0","method":"E_DROP_ME"}`))
	conn.Write([]byte(`{"jsonrpc":"2.0","method":"E_KEEP_ME"}`))
	if l := d.nextLine(t); !strings.Contains(l, "E_KEEP_ME") {
		t.Errorf("after reload: %s", l)
	}
	checkFor(t, 5*time.Second, "unmatched counted", func() bool {
		return metricValue(t, metrics, "sipside_events_unmatched_total") == 1
	})

	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("took %v to stop", el)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("still running 6s after SIGTERM")
	}
	if !regexp.MustCompile(`msg="sipside stopped"`).MatchString(d.stderr.String()) {
		t.Errorf("no clean stop log line")
	}
}

// Two sipside on one port: the second says what is wrong and exits 1.
func TestRunPortInUse(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cfg := filepath.Join(t.TempDir(), "c.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[http]\nlisten = \"off\"\n[[input]]\nlisten = \"udp:%s\"\n", pc.LocalAddr())), 0o644)
	out, err := exec.Command(sipsideBinary(t), "run", "-c", cfg).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitFailure || !strings.Contains(string(out), "address already in use") {
		t.Errorf("err=%v out=%s", err, out)
	}
}

// The daemon subscribes at OpenSIPS (emulator, or real with OPENSIPS_BIN),
// events raised by the proxy come out on stdout, `sipside events status`
// shows the subscription, and SIGTERM unsubscribes.
func TestRunSubscribes(t *testing.T) {
	o := testenv.OpenSIPS(t, testenv.OpenSIPSConfig{})
	input := fmt.Sprintf("udp:127.0.0.1:%d", testenv.FreePort(t, "udp", "127.0.0.1"))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	cfgPath := filepath.Join(t.TempDir(), "sipside.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`[http]
listen = %q
[[input]]
listen = %q
[[subscribe]]
target = %q
events = ["E_MY_EVENT"]
socket = %q
check_interval = "200ms"
`, httpAddr, input, o.Target("udp"), input)), 0o644)
	d := startDaemon(t, "-c", cfgPath)
	d.waitLog(t, "subscribed")
	if err := o.Raise("E_MY_EVENT", `{"count":7,"from":"sip:lab@127.0.0.1"}`); err != nil {
		t.Fatal(err)
	}
	if l := d.nextLine(t); !strings.Contains(l, `"event":"E_MY_EVENT","params":{"count":7,"from":"sip:lab@127.0.0.1"}`) {
		t.Errorf("stdout: %s", l)
	}
	e, out := testEnv()
	if code := dispatch(t.Context(), e, []string{"events", "status", "--json", "--http", httpAddr}); code != exitOK {
		t.Fatalf("events status: exit %d: %s", code, out)
	}
	var st status
	if err := json.Unmarshal([]byte(out.String()), &st); err != nil {
		t.Fatalf("events status output: %v\n%s", err, out)
	}
	if len(st.Subscriptions) != 1 || st.Subscriptions[0].State != "active" || st.Subscriptions[0].Socket != input || len(st.Inputs) != 1 {
		t.Errorf("status = %+v", st)
	}
	page, err := httpGet("http://" + httpAddr + "/")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<h2 id=\"inputs\">Inputs</h2>", "<code>" + input + "</code>", "E_MY_EVENT", `class="ok">active`, "Routes and backends", "<code>stdout:</code>"} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-d.done; err != nil {
		t.Errorf("exit: %v", err)
	}
	for _, s := range o.Subscriptions() {
		if s.Socket == input && s.TTL > 0 {
			t.Errorf("still subscribed after SIGTERM: %+v", s)
		}
	}
}

// logrotate: the file is moved away, SIGHUP, and the next event lands in a
// new file at the configured path.
func TestRunReopensFilesOnHUP(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "events.log")
	udpPort := testenv.FreePort(t, "udp", "127.0.0.1")
	cfgPath := filepath.Join(dir, "sipside.toml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("[http]\nlisten = \"off\"\n[[input]]\nlisten = \"udp:127.0.0.1:%d\"\n[[route]]\nto = \"flatstore:%s\"\n", udpPort, logPath)), 0o644)
	d := startDaemon(t, "-c", cfgPath)
	d.waitLog(t, "input listening")
	conn, _ := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", udpPort))
	defer conn.Close()
	conn.Write([]byte(`{"jsonrpc":"2.0","method":"E_MY_EVENT","params":{"k":"v w","n":1}}`))
	checkFor(t, 5*time.Second, "first line", func() bool { b, _ := os.ReadFile(logPath); return string(b) == "E_MY_EVENT,v w,1\n" })
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	// A broken config on the same SIGHUP: the reload is refused and the
	// running route (and its open file) stays, so only the reopen can move
	// the next event to a new file.
	good, _ := os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, append(good, []byte("[log]\nlevel = \"loud\"\n")...), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "config reload refused")
	conn.Write([]byte(`{"jsonrpc":"2.0","method":"E_MY_EVENT","params":["a","b"]}`))
	checkFor(t, 5*time.Second, "a line in the new file", func() bool { b, _ := os.ReadFile(logPath); return string(b) == "E_MY_EVENT,a,b\n" })
	if b, _ := os.ReadFile(logPath + ".1"); string(b) != "E_MY_EVENT,v w,1\n" {
		t.Errorf("rotated file = %q", b)
	}
}
