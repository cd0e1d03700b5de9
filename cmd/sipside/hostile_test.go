package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sipside/sipside/testenv"
)

var (
	plainOnce sync.Once
	plainPath string
	plainErr  error
)

// sipsideBinaryPlain is sipsideBinary built without the race detector, for
// measuring memory.
func sipsideBinaryPlain(t testing.TB) string {
	t.Helper()
	plainOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sipside-bin-")
		if err != nil {
			plainErr = err
			return
		}
		plainPath = filepath.Join(dir, "sipside")
		if out, err := exec.Command("go", "build", "-o", plainPath, ".").CombinedOutput(); err != nil {
			plainErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if plainErr != nil {
		t.Fatal(plainErr)
	}
	return plainPath
}

// procRSS is a process's resident set in kB, from /proc.
func procRSS(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// procCPU is a process's user+system CPU time.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
}

// kdmqFrom is one KDMQ request with the given From address and body.
func kdmqFrom(channel, to, from, body string, seq int) string {
	to = strings.TrimPrefix(to, "sip:")
	from = strings.TrimPrefix(from, "sip:")
	return fmt.Sprintf("KDMQ sip:%s@%s SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bKatk%d\r\nTo: <sip:%s@%s>\r\nFrom: <sip:%s@%s>;tag=a%d\r\nCSeq: 10 KDMQ\r\nCall-ID: atk%d@127.0.0.1\r\nMax-Forwards: 1\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
		channel, to, from, seq, channel, to, channel, from, seq, seq, len(body), body)
}

// sipside run joined to a real Kamailio node, attacked from loopback as the
// hostile-input issue did: node lists of 1,000 nodes from strangers and in a
// node's name, and htable sync bodies from strangers. The process stays up,
// Kamailio's replication keeps arriving, nothing of the attack is applied,
// the refusals are counted and logged at a bounded rate, memory comes back
// within 2x of idle, and SIGTERM ends it.
func TestRunDMQUnderAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Kamailio and attacks sipside on loopback")
	}
	k := kamailioDMQNode(t, "attack-dmq", "127.0.0.2")
	self := fmt.Sprintf("sip:127.0.0.1:%d", testenv.FreePort(t, "udp", "127.0.0.1"))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t, "tcp", "127.0.0.1"))
	kam := fmt.Sprintf("sip:127.0.0.2:%d", k.SIPPort)
	cfg := filepath.Join(t.TempDir(), "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = %q
[[input]]
listen = "udp:127.0.0.1:%d"
[[route]]
events = ["E_DMQ_HTABLE"]
to = "stdout:"
[dmq]
listen = %q
seeds = [%q]
ping_interval = "5s"
`, httpAddr, testenv.FreePort(t, "udp", "127.0.0.1"), self, kam)), 0o644)
	// Without -race: the race detector's shadow memory grows with every
	// allocation and is never given back, so RSS would measure it, not us.
	d := startDaemonCmd(t, exec.Command(sipsideBinaryPlain(t), "run", "-c", cfg))
	pid := d.cmd.Process.Pid
	var mu sync.Mutex
	var out []string
	go func() {
		for l := range d.lines {
			mu.Lock()
			out = append(out, l)
			mu.Unlock()
		}
	}()
	seen := func(substr string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range out {
			if strings.Contains(l, substr) {
				return true
			}
		}
		return false
	}
	metric := func(series string) float64 {
		body, err := httpGet("http://" + httpAddr + "/metrics")
		if err != nil {
			return -1 // not listening yet
		}
		for _, l := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(l, series+" "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return -1
	}
	ctx := context.Background()
	checkFor(t, 20*time.Second, "sipside joined", func() bool { return metric(`sipside_dmq_nodes{status="active"}`) == 2 })
	if _, err := k.RPC(ctx, "htable.sets", "repl", "warmup", "x"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 10*time.Second, "warm-up replication", func() bool { return seen(`"cname":"warmup"`) })
	idleRSS, idleCPU := procRSS(t, pid), procCPU(t, pid)

	dst, _ := net.ResolveUDPAddr("udp", strings.TrimPrefix(self, "sip:"))
	var nodes strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&nodes, "sip:127.0.%d.%d:5060;status=active\r\n", 1+i/250, 1+i%250)
	}
	var cells strings.Builder
	cells.WriteString(`{"cells":[`)
	for i := range 50 {
		if i > 0 {
			cells.WriteByte(',')
		}
		fmt.Fprintf(&cells, `{"htname":"repl","cname":"atk%d","type":2,"strval":"%s","expire":0}`, i, strings.Repeat("v", 40))
	}
	cells.WriteString("]}")
	start := time.Now()
	attack := func(n int, msg func(from string, i int) string) {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		from := "sip:" + c.LocalAddr().String()
		for i := range n {
			c.WriteToUDP([]byte(msg(from, i)), dst)
			if i%50 == 49 {
				time.Sleep(time.Millisecond) // a loopback flood, not a kernel-buffer test
			}
		}
	}
	var wg sync.WaitGroup
	const sources = 4
	for s := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			attack(10, func(from string, i int) string {
				return kdmqFrom("notification_peer", self, from, from+";status=active\r\n"+nodes.String(), s*100000+i)
			})
			attack(10, func(_ string, i int) string { // in the Kamailio node's name
				return kdmqFrom("notification_peer", self, kam, kam+";status=disabled\r\n"+nodes.String(), s*100000+100+i)
			})
			attack(5000, func(from string, i int) string {
				return kdmqFrom("htable", self, from, cells.String(), s*100000+1000+i)
			})
		}()
	}
	// Meanwhile Kamailio keeps replicating.
	for i := 0; ; i++ {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		name := fmt.Sprintf("live%d", i)
		if _, err := k.RPC(ctx, "htable.sets", "repl", name, "during the attack"); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 10*time.Second, "replication of "+name+" during the attack", func() bool { return seen(`"cname":"` + name + `"`) })
		select {
		case <-done:
		case <-time.After(50 * time.Millisecond):
			continue
		}
		break
	}
	attackTime := time.Since(start)
	attackCPU := procCPU(t, pid) - idleCPU
	peakRSS := procRSS(t, pid)

	if seen(`"cname":"atk`) {
		t.Error("cells from a stranger reached the routes")
	}
	if v := metric(`sipside_dmq_rejects_total{reason="not_from_node"}`); v < 1 {
		t.Errorf("not_from_node refusals: %v", v)
	}
	if v := metric(`sipside_dmq_rejects_total{reason="foreign_node_line"}`); v < 1000 {
		t.Errorf("foreign node lines counted: %v", v)
	}
	total := 0.0
	for _, s := range []string{"active", "pending", "disabled", "timeout"} {
		total += max(0, metric(`sipside_dmq_nodes{status="`+s+`"}`))
	}
	if total > 256+1 {
		t.Errorf("%v nodes listed, want at most max_nodes+self", total)
	}
	if v := metric(`sipside_dmq_nodes{status="active"}`); v < 2 {
		t.Errorf("active nodes %v after the attack: the Kamailio node lost", v)
	}
	secs := int(attackTime/time.Second) + 2
	if n := strings.Count(d.stderr.String(), "reason=not_from_node"); n > 2*sources*secs+4 {
		t.Errorf("%d not_from_node log lines in %d s from %d sources", n, secs, sources)
	}
	afterRSS := procRSS(t, pid)
	for deadline := time.Now().Add(60 * time.Second); afterRSS > 2*idleRSS && time.Now().Before(deadline); afterRSS = procRSS(t, pid) {
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("attack %v: CPU %v, RSS idle %d kB, peak %d kB, after %d kB; log %d bytes",
		attackTime.Round(time.Millisecond), attackCPU, idleRSS, peakRSS, afterRSS, len(d.stderr.String()))
	if afterRSS > 2*idleRSS {
		t.Errorf("RSS %d kB a minute after the attack, more than twice the idle %d kB", afterRSS, idleRSS)
	}

	termAt := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		t.Logf("SIGTERM to exit: %v", time.Since(termAt).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("sipside did not exit within 10 s of SIGTERM")
	}
}

// runOutOfFDs runs sipside on cfg with 64 file descriptors, holds idle
// connections to addr until the daemon logs want (accept failing with
// EMFILE), then closes them: what the caller checks next is recovery.
func runOutOfFDs(t *testing.T, cfg, addr, want string) *daemonProc {
	t.Helper()
	// ulimit -n sets the hard limit too, so the Go runtime cannot raise it.
	cmd := exec.Command("sh", "-c", `ulimit -n 64 && exec "$0" "$@"`, sipsideBinary(t), "run", "-c", cfg)
	d := startDaemonCmd(t, cmd)
	checkFor(t, 20*time.Second, "the listener", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	var conns []net.Conn
	for i := 0; i < 200 && !strings.Contains(d.stderr.String(), want); i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		conns = append(conns, c)
		time.Sleep(5 * time.Millisecond)
	}
	d.waitLog(t, want)
	for _, c := range conns {
		c.Close()
	}
	return d
}

// The tcp input out of file descriptors: sipside runs with RLIMIT_NOFILE
// lowered, idle connections exhaust it, accept fails with EMFILE; once they
// close, the input takes connections again and a reliable-mode event is
// answered.
func TestRunStreamInputEMFILE(t *testing.T) {
	if testing.Short() {
		t.Skip("runs sipside as a process")
	}
	port := testenv.FreePort(t, "tcp", "127.0.0.1")
	cfg := filepath.Join(t.TempDir(), "sipside.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`[http]
listen = "off"
[[input]]
listen = "tcp:127.0.0.1:%d"
max_conns = 10000
[[route]]
to = "stdout:"
`, port)), 0o644)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	d := runOutOfFDs(t, cfg, addr, "too many open files")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(`{"id":42,"jsonrpc":"2.0","method":"E_AFTER_EMFILE","params":{"x":1}}`))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != `{"jsonrpc":"2.0","result":"OK","id":42}` {
		t.Fatalf("reply after EMFILE: %q %v", buf[:n], err)
	}
	for !strings.Contains(d.nextLine(t), "E_AFTER_EMFILE") {
	}
	if d.cmd.ProcessState != nil {
		t.Fatal("sipside exited")
	}
}
