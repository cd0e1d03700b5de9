// Command lab runs the sipside lab on loopback, without Docker: a private
// RabbitMQ node and a Kamailio DMQ pair (testenv), and `sipside run` with a
// config like contrib/lab/sipside.toml; then a scenario that sends SIP
// registrations, htable writes and DMQ writes through it and prints how many
// arrived where.
//
//	go run ./testenv/lab up [-d]     start (in the foreground; -d: in the background)
//	go run ./testenv/lab scenario    run the scenario against the running lab
//	go run ./testenv/lab down        stop the lab started by up (SIGTERM to its pid)
//	go run ./testenv/lab run         up, scenario, down in one process (CI)
//
// Run it from the repository root (it builds ./cmd/sipside). State lives in
// $SIPSIDE_LAB_DIR (default /tmp/sipside-lab): state.json, lab.log, sipside's
// log and spool. OpenSIPS joins only under `go test ./testenv/lab`: testenv's
// OpenSIPS (its emulator, or a real one with OPENSIPS_BIN) needs a testing.T.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/testenv"
)

// State is what `up` writes for `scenario` and `down`.
type State struct {
	Pid        int    `json:"pid"`
	Ready      bool   `json:"ready"`
	Dir        string `json:"dir"`
	Sipside    string `json:"sipside"`      // the binary
	HTTP       string `json:"http"`         // sipside's /metrics
	RabbitURL  string `json:"rabbit_url"`   // amqp://…
	Queue      string `json:"queue"`        // where registrations end up
	NodeA      Node   `json:"node_a"`       // Kamailio
	NodeB      Node   `json:"node_b"`       // Kamailio
	DMQCLIPort int    `json:"dmq_cli_port"` // for `sipside dmq` one-shots
	Wired      bool   `json:"wired"`        // sipside run took [dmq], [amqp], [jsonrpc]
	BridgeTCP  string `json:"bridge_tcp"`   // the bridge's raw-JSON listener (OpenSIPS jsonrpc module)
	OpenSIPS   string `json:"opensips"`     // MI target; "" when the lab has no OpenSIPS
	OSQueue    string `json:"os_queue"`     // where OpenSIPS events end up
}

// raiseOpenSIPS raises an event in the lab's OpenSIPS (set by the test, which
// has testenv's OpenSIPS emulator or a real OpenSIPS under OPENSIPS_BIN).
var raiseOpenSIPS func(name, params string) error

// Node is one Kamailio of the pair.
type Node struct {
	SIP string `json:"sip"` // HOST:PORT (udp; also the DMQ address)
	RPC string `json:"rpc"` // jsonrpcs over HTTP
	Log string `json:"log"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	dir := os.Getenv("SIPSIDE_LAB_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "sipside-lab")
	}
	var err error
	switch os.Args[1] {
	case "up":
		fs := flag.NewFlagSet("up", flag.ExitOnError)
		detach := fs.Bool("d", false, "start in the background and return once the lab is ready")
		fs.Parse(os.Args[2:])
		if *detach {
			err = upDetached(dir)
		} else {
			err = up(dir, false)
		}
	case "run":
		err = up(dir, true)
	case "scenario":
		var st *State
		if st, err = readState(dir); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			err = scenario(ctx, st, os.Stdout)
		}
	case "down":
		err = down(dir)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go run ./testenv/lab up [-d] | scenario | down | run")
	os.Exit(2)
}

// up starts the lab and keeps it until SIGINT/SIGTERM; with once, it runs the
// scenario and stops.
func up(dir string, once bool) (err error) {
	if st, err := readState(dir); err == nil && syscall.Kill(st.Pid, 0) == nil {
		return fmt.Errorf("a lab is already running (pid %d); stop it with: go run ./testenv/lab down", st.Pid)
	}
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer testenv.Cleanup() // every process started, by pid; temp dirs
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	startCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	st, sipside, err := start(startCtx, dir, "")
	if sipside != nil {
		defer func() {
			sipside.Process.Signal(syscall.SIGTERM) // our child, by pid
			sipside.Wait()
		}()
	}
	if err != nil {
		return err
	}
	defer os.Remove(filepath.Join(dir, "state.json")) // logs stay for a look afterwards
	fmt.Printf("lab up (pid %d):\n  RabbitMQ   %s\n  Kamailio A sip:%s  rpc %s\n  Kamailio B sip:%s  rpc %s\n  sipside    http://%s/metrics  (log %s)\n",
		st.Pid, st.RabbitURL, st.NodeA.SIP, st.NodeA.RPC, st.NodeB.SIP, st.NodeB.RPC, st.HTTP, filepath.Join(dir, "sipside.log"))
	if once {
		sctx, scancel := context.WithTimeout(ctx, 2*time.Minute)
		defer scancel()
		return scenario(sctx, st, os.Stdout)
	}
	fmt.Println("lab: running until SIGTERM (go run ./testenv/lab down) or Ctrl-C")
	<-ctx.Done()
	return nil
}

// upDetached starts `up` in its own session and waits until it is ready.
func upDetached(dir string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(os.TempDir(), "sipside-lab.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	os.Remove(filepath.Join(dir, "state.json"))
	cmd := exec.Command(exe, "up")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(4 * time.Minute)
	for {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("lab up exited (%v):\n%s", err, b)
		case <-deadline:
			return fmt.Errorf("lab not ready after 4 minutes; see %s", logf.Name())
		case <-time.After(500 * time.Millisecond):
		}
		if st, err := readState(dir); err == nil && st.Ready {
			b, _ := os.ReadFile(logf.Name())
			os.Stdout.Write(b)
			fmt.Printf("lab: in the background (log %s); stop it with: go run ./testenv/lab down\n", logf.Name())
			return nil
		}
	}
}

func down(dir string) error {
	st, err := readState(dir)
	if err != nil {
		return fmt.Errorf("no running lab: %w", err)
	}
	if err := syscall.Kill(st.Pid, syscall.SIGTERM); err != nil {
		os.Remove(filepath.Join(dir, "state.json"))
		return fmt.Errorf("pid %d: %w (state removed)", st.Pid, err)
	}
	for range 300 {
		if syscall.Kill(st.Pid, 0) != nil {
			fmt.Printf("lab: stopped (pid %d)\n", st.Pid)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("pid %d still running after 30 s", st.Pid)
}

func readState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var st State
	return &st, json.Unmarshal(b, &st)
}

func writeState(st *State) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := filepath.Join(st.Dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(st.Dir, "state.json"))
}

// kamailioTemplate is contrib/lab/kamailio.cfg's DMQ pair and evapi on
// testenv's ports (testenv keeps its listen, jsonrpcs and xhttp lines).
const kamailioTemplate = testenv.KamailioCoreTemplate + `loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "ctl.so"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "xhttp.so"
loadmodule "jsonrpcs.so"
loadmodule "dmq.so"
loadmodule "htable.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "dmq_usrloc.so"
loadmodule "evapi.so"
loadmodule "jansson.so"
loadmodule "janssonrpcc.so"
loadmodule "rr.so"
loadmodule "dialog.so"
modparam("ctl", "binrpc", "unix:{{.CtlSock}}")
modparam("jsonrpcs", "pretty_format", 0)
modparam("jsonrpcs", "transport", 7)
modparam("jsonrpcs", "fifo_name", "{{.FIFO}}")
modparam("jsonrpcs", "fifo_reply_dir", "{{.Dir}}/")
modparam("jsonrpcs", "dgram_socket", "udp:{{.Addr}}:{{.RPCUDPPort}}")
modparam("dmq", "server_address", "sip:{{.Addr}}:{{.SIPPort}}")
modparam("dmq", "notification_address", "{{if eq .Vars.notify "self"}}sip:{{.Addr}}:{{.SIPPort}}{{else}}{{.Vars.notify}}{{end}}")
modparam("dmq", "multi_notify", 0)
modparam("dmq", "num_workers", 2)
modparam("dmq", "ping_interval", 5)
modparam("htable", "enable_dmq", 1)
modparam("htable", "dmq_init_sync", 1)
modparam("htable", "htable", "repl=>size=8;autoexpire=0;dmqreplicate=1")
modparam("usrloc", "db_mode", 0)
modparam("dmq_usrloc", "enable", 1)
modparam("dmq_usrloc", "sync", 1)
modparam("dialog", "enable_dmq", 1)
modparam("evapi", "bind_addr", "{{.Addr}}:{{.Vars.evapi}}")
modparam("evapi", "netstring_format", 1)
modparam("evapi", "workers", 1)
modparam("janssonrpcc", "server", "conn=sipside;addr=127.0.0.1;port={{.Vars.bridge}};priority=10;weight=10")
modparam("janssonrpcc", "result_pv", "$var(sipside_result)")

request_route {
	if (is_method("KDMQ")) {
		dmq_handle_message();
		exit;
	}
	if (is_method("REGISTER")) {
		if (!save("location")) {
			sl_reply_error();
			exit;
		}
		$sht(repl=>last_register) = $tU;
		evapi_relay("{\"event\":\"E_KAMAILIO_REGISTER\",\"node\":\"{{.Name}}\",\"aor\":\"$tu\",\"contact\":\"$ct\"}");
		exit;
	}
	if (is_method("MESSAGE") && $rU == "publish") {
		t_newtran();
		# The script's call to sipside's AMQP bridge (janssonrpcc, netstring);
		# the body names the queue (default exchange).
		janssonrpc_request("sipside", "amqp.publish",
			"{\"exchange\":\"\",\"routing_key\":\"$rb\",\"payload\":{\"from\":\"$fu\",\"node\":\"{{.Name}}\"}}",
			"route=BRIDGE_REPLY;timeout=2000;retry=0");
		exit;
	}
	if (is_method("MESSAGE") && $rU == "query") {
		t_newtran();
		janssonrpc_request("sipside", "amqp.query",
			"{\"exchange\":\"\",\"routing_key\":\"$rb\",\"payload\":{\"from\":\"$fu\",\"node\":\"{{.Name}}\"},\"timeout_ms\":1500}",
			"route=BRIDGE_REPLY;timeout=2000;retry=0");
		exit;
	}
	if ($rm == "OPTIONS") {
		sl_send_reply("200", "OK");
		exit;
	}
	# A call to a registered user: tracked by the dialog module, which
	# replicates it over DMQ to the peer node and to sipside.
	if (is_method("INVITE") && !has_totag()) {
		dlg_manage();
		record_route();
		if (!lookup("location")) {
			sl_send_reply("404", "Not Found");
			exit;
		}
		t_relay();
		exit;
	}
	if (has_totag()) {
		# sipp's built-in UAC sends ACK and BYE without Route headers, to
		# this node: find the callee again.
		if (loose_route() || lookup("location")) {
			t_relay();
			exit;
		}
		if (is_method("ACK") && t_check_trans()) {
			t_relay();
			exit;
		}
	}
	sl_send_reply("404", "Not here");
}

route[BRIDGE_REPLY] {
	if (jansson_get("result", "$var(sipside_result)", "$var(r)")) {
		append_to_reply("X-Sipside: $var(r)\r\n");
		t_reply("200", "OK");
	} else {
		xlog("L_WARN", "sipside bridge: $var(sipside_result)\n");
		t_reply("502", "Bridge Error");
	}
}

event_route[xhttp:request] {
	if ($Rp == {{.HTTPPort}} && $hu =~ "^/RPC") {
		jsonrpc_dispatch();
		return;
	}
	xhttp_reply("404", "Not Found", "text/plain", "wrong url $hu\n");
}
`

// start brings everything up and writes the state file; the returned command
// is sipside, for the caller to stop.
// opensips is an OpenSIPS MI target to subscribe at and deliver to, or "".
func start(ctx context.Context, dir, opensips string) (*State, *exec.Cmd, error) {
	st := &State{Pid: os.Getpid(), Dir: dir, Queue: "lab_registrations", OpenSIPS: opensips, OSQueue: "lab_opensips"}
	st.Sipside = filepath.Join(dir, "sipside")
	build := exec.CommandContext(ctx, "go", "build", "-o", st.Sipside, "./cmd/sipside")
	build.Dir = repoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("go build ./cmd/sipside (run from the repository root): %v\n%s", err, out)
	}
	fmt.Println("lab: starting RabbitMQ (10-60 s) and two Kamailio nodes …")
	ports, err := startParts(ctx, st)
	if err != nil {
		return nil, nil, err
	}
	cfg := filepath.Join(dir, "sipside.toml")
	os.WriteFile(cfg, []byte(sipsideConfig(st, ports)), 0o644)
	if out, err := exec.Command(st.Sipside, "check", "-c", cfg).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("sipside check: %s", out)
	}
	st.Wired = true
	logf, err := os.Create(filepath.Join(dir, "sipside.log"))
	if err != nil {
		return nil, nil, err
	}
	sipside := exec.Command(st.Sipside, "run", "-c", cfg)
	sipside.Stdout, sipside.Stderr = logf, logf
	sipside.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := sipside.Start(); err != nil {
		return nil, nil, err
	}
	if err := waitFor(ctx, 30*time.Second, func() error {
		_, err := metrics(st.HTTP)
		return err
	}); err != nil {
		return nil, sipside, fmt.Errorf("sipside did not serve /metrics: %w", err)
	}
	st.Ready = true
	return st, sipside, writeState(st)
}

// labPorts are the ports the parts were started with that sipside's config
// names.
type labPorts struct {
	evapiA, evapiB, bridge, rabbit int
}

// startParts starts RabbitMQ and the two Kamailio nodes (in parallel: the
// broker takes longest) and fills in st.
func startParts(ctx context.Context, st *State) (labPorts, error) {
	rabbitDone := make(chan error, 1)
	var rabbit *testenv.RabbitMQ
	go func() {
		var err error
		rabbit, err = testenv.StartRabbitMQ(ctx, testenv.RabbitOptions{})
		rabbitDone <- err
	}()
	p := labPorts{evapiA: freePort("tcp", "127.0.0.2"), evapiB: freePort("tcp", "127.0.0.3"), bridge: freePort("tcp", "127.0.0.1")}
	a, err := testenv.StartKamailio(ctx, testenv.KamailioConfig{Name: "A", Addr: "127.0.0.2", Template: kamailioTemplate,
		Vars: map[string]any{"evapi": p.evapiA, "notify": "self", "bridge": p.bridge}, Args: []string{"-m", "128"}})
	if err != nil {
		return p, fmt.Errorf("kamailio A: %w", err)
	}
	b, err := testenv.StartKamailio(ctx, testenv.KamailioConfig{Name: "B", Addr: "127.0.0.3", Template: kamailioTemplate,
		Vars: map[string]any{"evapi": p.evapiB, "notify": "sip:" + a.SIPAddr(), "bridge": p.bridge}, Args: []string{"-m", "128"}})
	if err != nil {
		return p, fmt.Errorf("kamailio B: %w", err)
	}
	st.NodeA = Node{SIP: a.SIPAddr(), RPC: a.RPCURL(), Log: a.Log}
	st.NodeB = Node{SIP: b.SIPAddr(), RPC: b.RPCURL(), Log: b.Log}
	if err := <-rabbitDone; err != nil {
		return p, fmt.Errorf("rabbitmq: %w", err)
	}
	st.RabbitURL, p.rabbit = rabbit.URL, rabbit.Port
	for _, q := range []string{st.Queue, st.OSQueue} {
		if err := declareQueue(rabbit.URL, q); err != nil {
			return p, err
		}
	}
	st.HTTP = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort("tcp", "127.0.0.1")))
	st.DMQCLIPort = freePort("udp", "127.0.0.1")
	st.BridgeTCP = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort("tcp", "127.0.0.1")))
	return p, nil
}

// sipsideConfig is sipside run's config for the lab: the Kamailio nodes'
// evapi events to RabbitMQ (FAILOVER to a file), a DMQ node on their bus,
// the scripts' AMQP bridge, and with OpenSIPS its subscriptions and a
// consumer that raises events in it.
func sipsideConfig(st *State, p labPorts) string {
	cfg := fmt.Sprintf(`[http]
listen = %q
[spool]
dir = %q
[[input]]
listen = "evapi:127.0.0.2:%d"
[[input]]
listen = "evapi:127.0.0.3:%d"
[[route]]
name = "registrations"
events = ["E_KAMAILIO_REGISTER"]
to = "virtual:FAILOVER rabbitmq:guest:guest@127.0.0.1:%d/%s flatstore:%s"
[[route]]
name = "watch"
events = ["E_DMQ_*"]
to = "stdout:"
[dmq]
listen = "sip:127.0.0.1:%d"
seeds = ["sip:%s"]
ping_interval = "5s"
peers = ["htable", "usrloc", "dialog"]
[amqp]
brokers = [%q]
[jsonrpc]
listen = ["netstring:127.0.0.1:%d", "tcp:%s"]
`, st.HTTP, filepath.Join(st.Dir, "spool"), p.evapiA, p.evapiB, p.rabbit, st.Queue, filepath.Join(st.Dir, "registrations.log"),
		freePort("udp", "127.0.0.1"), st.NodeA.SIP, st.RabbitURL, p.bridge, st.BridgeTCP)
	if st.OpenSIPS == "" {
		return cfg
	}
	// As contrib/lab: event_datagram and a reliable event_stream, both
	// subscribed by sipside, their events to their own queue; messages for
	// OpenSIPS raised with MI raise_event, as contrib/lab's consumer.
	udpIn := fmt.Sprintf("udp:127.0.0.1:%d", freePort("udp", "127.0.0.1"))
	tcpIn := fmt.Sprintf("tcp:127.0.0.1:%d", freePort("tcp", "127.0.0.1"))
	return cfg + fmt.Sprintf(`[[input]]
listen = %q
[[input]]
listen = %q
reply_timeout = "900ms"
[[subscribe]]
target = %q
events = ["E_AMQP_ROUTE_REQ"]
socket = %q
check_interval = "1s"
[[subscribe]]
target = %q
events = ["E_SIPSIDE_LAB"]
socket = %q
check_interval = "1s"
[[route]]
name = "opensips"
events = ["E_SIPSIDE_LAB", "E_AMQP_ROUTE_REQ"]
to = "rabbitmq:guest:guest@127.0.0.1:%d/%s"
[[amqp.consume]]
exchange = "lab_cmd"
routing_key = "route.req.#"
ack = "delivered"
deliver = %q
event = "E_AMQP_ROUTE_REQ"
`, udpIn, tcpIn, st.OpenSIPS, udpIn, st.OpenSIPS, tcpIn, p.rabbit, st.OSQueue, st.OpenSIPS)
}

func declareQueue(url, name string) error {
	c, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return err
	}
	_, err = ch.QueueDeclare(name, true, false, false, false, nil)
	return err
}

func queueDepth(url, name string) (int, error) {
	c, err := amqp.Dial(url)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return 0, err
	}
	q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
	return q.Messages, err
}

func freePort(network, host string) int {
	if network == "udp" {
		c, err := net.ListenPacket("udp", net.JoinHostPort(host, "0"))
		if err != nil {
			panic(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitFor(ctx context.Context, d time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// metrics returns sipside's /metrics as sample -> value.
func metrics(addr string) (map[string]float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		if v, err := strconv.ParseFloat(l[i+1:], 64); err == nil {
			m[l[:i]] = v
		}
	}
	return m, nil
}

// sum adds every sample of family whose labels contain all of want.
func sum(m map[string]float64, family string, want ...string) float64 {
	var s float64
	for k, v := range m {
		if k != family && !strings.HasPrefix(k, family+"{") {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(k, w)
		}
		if ok {
			s += v
		}
	}
	return s
}

// rpc calls a Kamailio jsonrpcs method over HTTP and returns the result's JSON.
func rpc(ctx context.Context, url, method string, params ...any) (string, error) {
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
	req, err := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(string(body)))
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var r struct {
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return "", fmt.Errorf("%s: %w", method, err)
	}
	if len(r.Error) > 0 {
		return "", fmt.Errorf("%s: %s", method, r.Error)
	}
	return string(r.Result), nil
}

// repoRoot is the directory of go.mod above the working directory (the
// command runs from the root, its test from testenv/lab).
func repoRoot() string {
	d, _ := os.Getwd()
	for p := d; ; p = filepath.Dir(p) {
		if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
			return p
		}
		if filepath.Dir(p) == p {
			return d
		}
	}
}

// responder answers every message on queue (default exchange) to its reply_to
// with the same correlation id, as an amqp.query responder must.
func responder(url, queue string) (stop func(), err error) {
	c, err := amqp.Dial(url)
	if err != nil {
		return nil, err
	}
	ch, err := c.Channel()
	if err == nil {
		_, err = ch.QueueDeclare(queue, false, true, false, false, nil)
	}
	var msgs <-chan amqp.Delivery
	if err == nil {
		msgs, err = ch.Consume(queue, "", true, false, false, false, nil)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	go func() {
		for d := range msgs {
			ch.Publish("", d.ReplyTo, false, false, amqp.Publishing{
				ContentType: "application/json", CorrelationId: d.CorrelationId,
				Body: []byte(`{"route":"sip:lab@127.0.0.1"}`),
			})
		}
	}()
	return func() { c.Close() }, nil
}

// jsonrpcRaw calls the bridge as OpenSIPS's jsonrpc module does: a new TCP
// connection per call, one raw JSON request, one raw JSON reply.
func jsonrpcRaw(ctx context.Context, addr, method, params string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(c, `{"id":7,"jsonrpc":"2.0","method":%q,"params":%s}`, method, params); err != nil {
		return "", err
	}
	var r struct {
		Result json.RawMessage `json:"result"`
		Error  json.RawMessage `json:"error"`
	}
	if err := json.NewDecoder(c).Decode(&r); err != nil {
		return "", err
	}
	if len(r.Error) > 0 {
		return "", fmt.Errorf("%s", r.Error)
	}
	return string(r.Result), nil
}

// publish sends one message with sipside's own AMQP code path's peer: a plain client.
func publish(url, exchange, key, body string) error {
	c, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer c.Close()
	ch, err := c.Channel()
	if err != nil {
		return err
	}
	if err := ch.ExchangeDeclare(exchange, "topic", false, false, false, false, nil); err != nil {
		return err
	}
	return ch.Publish(exchange, key, false, false, amqp.Publishing{ContentType: "application/json", Body: []byte(body)})
}
