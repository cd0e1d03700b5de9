package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// KamailioModulesDir is where Debian's kamailio packages put the modules, the fallback when
// the binary does not say where its modules are (see FindKamailio).
const KamailioModulesDir = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"

// kamailioInstall is the command that installs everything the templates of this repository load.
const kamailioInstall = "apt-get install -y kamailio kamailio-json-modules kamailio-kazoo-modules kamailio-rabbitmq-modules kamailio-extra-modules kamailio-utils-modules"

// kamailioModulePackages names the Debian package of modules that are not in the kamailio package,
// so that a missing module produces an install command that fixes it.
var kamailioModulePackages = map[string]string{
	"kazoo": "kamailio-kazoo-modules", "rabbitmq": "kamailio-rabbitmq-modules",
	"json": "kamailio-json-modules", "jsonrpcc": "kamailio-json-modules",
	"jansson": "kamailio-extra-modules", "janssonrpcc": "kamailio-extra-modules", "evapi": "kamailio-extra-modules",
	"http_client": "kamailio-utils-modules",
}

// KamailioCoreTemplate is the start of every testenv node's config: the core
// parameters, the listen lines on the node's ports (SIP on udp and tcp, and the
// HTTP port for xhttp/jsonrpcs) and mpath. Other templates begin with it.
const KamailioCoreTemplate = `#!KAMAILIO
# testenv node {{.Name}} (rendered by testenv.StartKamailio)
debug=2
log_stderror=yes
fork=yes
children=2
tcp_children=1
auto_aliases=no
dns=no
rev_dns=no
dns_try_ipv6=no
run_dir="{{.Dir}}"
log_prefix="[{{.Name}} $mt $rm $ci] "

listen=udp:{{.Addr}}:{{.SIPPort}}
listen=tcp:{{.Addr}}:{{.SIPPort}}
listen=tcp:{{.Addr}}:{{.HTTPPort}}
tcp_accept_no_cl=yes
http_reply_parse=yes

mpath="{{.ModulesDir}}"
`

// DefaultKamailioTemplate is a small node: SIP on udp+tcp ADDR:SIPPORT, jsonrpcs over HTTP
// (ADDR:HTTPPORT/RPC), over UDP datagrams (ADDR:RPCUDPPORT) and over a FIFO, a ctl binrpc
// socket, and one htable "t". Templates of other packages should keep the same jsonrpcs,
// ctl and listen lines so that the readiness check and the RPC helpers work.
const DefaultKamailioTemplate = KamailioCoreTemplate + `loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
loadmodule "ctl.so"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "xhttp.so"
loadmodule "jsonrpcs.so"
loadmodule "htable.so"

modparam("ctl", "binrpc", "unix:{{.CtlSock}}")
modparam("jsonrpcs", "pretty_format", 0)
modparam("jsonrpcs", "transport", 7)
modparam("jsonrpcs", "fifo_name", "{{.FIFO}}")
modparam("jsonrpcs", "fifo_reply_dir", "{{.Dir}}/")
modparam("jsonrpcs", "dgram_socket", "udp:{{.Addr}}:{{.RPCUDPPort}}")
modparam("htable", "htable", "t=>size=8;autoexpire=0")

request_route {
	if ($rm == "OPTIONS") {
		sl_send_reply("200", "OK");
		exit;
	}
	sl_send_reply("404", "Not here");
}

event_route[xhttp:request] {
	if ($Rp == {{.HTTPPort}} && $hu =~ "^/RPC") {
		jsonrpc_dispatch();
		return;
	}
	xhttp_reply("404", "Not Found", "text/plain", "wrong url $hu\n");
}
`

// KamailioConfig describes one node to start.
type KamailioConfig struct {
	Name     string         // "A": used in temp dir names and logs; default "kamailio"
	Addr     string         // listen address; default 127.0.0.1 (nodes side by side use 127.0.0.2, .3 …)
	Template string         // text/template of a kamailio.cfg, given *Kamailio; default DefaultKamailioTemplate
	Vars     map[string]any // extra template values, as {{.Vars.key}}; a missing key is an error
	Args     []string       // extra kamailio command-line arguments, e.g. "-A", "WITH_X"
}

// Kamailio is a running (or stopped) node. Its exported fields are what templates see.
type Kamailio struct {
	Name       string
	Addr       string
	SIPPort    int // udp and tcp
	HTTPPort   int // jsonrpcs over xhttp, path /RPC
	RPCUDPPort int // jsonrpcs datagrams
	FIFO       string
	CtlSock    string
	Dir        string // run_dir, fifo_reply_dir; removed by Close or Main
	Config     string // path of the rendered kamailio.cfg
	Log        string // path of the stdout+stderr log
	ModulesDir string
	Vars       map[string]any
	Pid        int // main process of the current run; changes on Restart

	args   []string
	client *http.Client

	seq atomic.Int64 // jsonrpcs request ids

	mu sync.Mutex
	p  *proc
}

// RPCURL is the jsonrpcs HTTP endpoint.
func (k *Kamailio) RPCURL() string {
	return "http://" + net.JoinHostPort(k.Addr, strconv.Itoa(k.HTTPPort)) + "/RPC"
}

// MITargetHTTP is the mi package's address of the node's jsonrpcs over HTTP.
func (k *Kamailio) MITargetHTTP() string { return "kamailio:" + k.RPCURL() }

// MITargetUDP is the mi package's address of the node's jsonrpcs datagram socket.
func (k *Kamailio) MITargetUDP() string {
	return "kamailio:udp:" + net.JoinHostPort(k.Addr, strconv.Itoa(k.RPCUDPPort))
}

// MITargetFIFO is the mi package's address of the node's jsonrpcs FIFO.
func (k *Kamailio) MITargetFIFO() string { return "kamailio:fifo:" + k.FIFO }

// MITarget is the mi package's address for transport "http", "udp" or "fifo", for tests
// that run over a table of transports.
func (k *Kamailio) MITarget(transport string) string {
	switch transport {
	case "http":
		return k.MITargetHTTP()
	case "udp":
		return k.MITargetUDP()
	case "fifo":
		return k.MITargetFIFO()
	}
	panic("testenv: MITarget: unknown transport " + strconv.Quote(transport) + " (want http, udp or fifo)")
}

// SIPAddr is host:port of the SIP listener (udp and tcp).
func (k *Kamailio) SIPAddr() string { return net.JoinHostPort(k.Addr, strconv.Itoa(k.SIPPort)) }

// NewKamailio starts a node for one test and stops it, removing its directory, when the test
// ends. It calls Missing when kamailio or a module the template loads is not installed.
func NewKamailio(t testing.TB, cfg KamailioConfig) *Kamailio {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	k, err := StartKamailio(ctx, cfg)
	if errors.Is(err, ErrNotInstalled) {
		Missing(t, "kamailio ("+err.Error()+")", kamailioHowTo)
	}
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return k
}

var loadmoduleRE = regexp.MustCompile(`(?m)^\s*loadmodule\s+"([^"/]+?)(\.so)?"`)

// StartKamailio renders the template into a new temp dir, starts `kamailio -DD -E -f cfg` and
// returns once jsonrpcs over HTTP answers core.version. Without a deadline in ctx it waits 30 s.
func StartKamailio(ctx context.Context, cfg KamailioConfig) (*Kamailio, error) {
	build, err := FindKamailio()
	if err != nil {
		return nil, err
	}
	bin := build.Bin
	if cfg.Name == "" {
		cfg.Name = "kamailio"
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1"
	}
	if cfg.Template == "" {
		cfg.Template = DefaultKamailioTemplate
	}
	tmpl, err := template.New(cfg.Name).Option("missingkey=error").Parse(cfg.Template)
	if err != nil {
		return nil, fmt.Errorf("kamailio %s: parse config template: %w", cfg.Name, err)
	}
	dir, err := os.MkdirTemp("", "sipside-kam-"+cfg.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("kamailio %s: temp dir: %w", cfg.Name, err)
	}
	registerDir(dir)

	k := &Kamailio{
		Name:       cfg.Name,
		Addr:       cfg.Addr,
		FIFO:       filepath.Join(dir, "jsonrpc.fifo"),
		CtlSock:    filepath.Join(dir, "ctl.sock"),
		Dir:        dir,
		Config:     filepath.Join(dir, "kamailio.cfg"),
		Log:        filepath.Join(dir, "kamailio.log"),
		ModulesDir: build.ModulesDir,
		Vars:       cfg.Vars,
		args:       append([]string{bin, "-DD", "-E", "-f", filepath.Join(dir, "kamailio.cfg")}, cfg.Args...),
		client:     &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
	}
	if k.Vars == nil {
		k.Vars = map[string]any{}
	}

	ctx, cancel := withDefaultTimeout(ctx, 30*time.Second)
	defer cancel()
	// A port picked free can be taken by someone else before Kamailio binds it: pick again.
	for attempt := 1; ; attempt++ {
		if err := k.pickPorts(); err != nil {
			k.removeDir()
			return nil, err
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, k); err != nil {
			k.removeDir()
			return nil, fmt.Errorf("kamailio %s: render config template: %w", k.Name, err)
		}
		if err := os.WriteFile(k.Config, buf.Bytes(), 0o644); err != nil {
			k.removeDir()
			return nil, fmt.Errorf("kamailio %s: write config: %w", k.Name, err)
		}
		if err := checkModules(k.ModulesDir, buf.String(), build.Env); err != nil {
			k.removeDir()
			return nil, fmt.Errorf("kamailio %s: %w", k.Name, err)
		}
		err = k.start(ctx)
		if err == nil {
			return k, nil
		}
		k.mu.Lock()
		_ = k.stopLocked(5 * time.Second)
		k.mu.Unlock()
		if attempt >= 3 || !strings.Contains(logTail(k.Log, 50), "Address already in use") {
			return nil, err // dir kept for post-mortem; Main removes it
		}
		slog.Info("testenv: kamailio port taken meanwhile, retrying with new ports", "name", k.Name, "attempt", attempt)
		_ = os.Truncate(k.Log, 0)
	}
}

func (k *Kamailio) pickPorts() error {
	seen := map[int]bool{}
	for {
		sip, err := freePortBoth(k.Addr)
		if err != nil {
			return fmt.Errorf("kamailio %s: %w", k.Name, err)
		}
		httpPort, err := freePort("tcp", k.Addr)
		if err != nil {
			return fmt.Errorf("kamailio %s: %w", k.Name, err)
		}
		udp, err := freePort("udp", k.Addr)
		if err != nil {
			return fmt.Errorf("kamailio %s: %w", k.Name, err)
		}
		if sip != httpPort && sip != udp && !seen[sip] {
			k.SIPPort, k.HTTPPort, k.RPCUDPPort = sip, httpPort, udp
			return nil
		}
		seen[sip] = true
	}
}

// checkModules reports the first module cfg loads that mpath lacks, with the Debian package
// that has it, or, for a build of one's own (KAMAILIO_BIN), the module to build.
func checkModules(mpath, cfg string, ownBuild bool) error {
	for _, m := range loadmoduleRE.FindAllStringSubmatch(cfg, -1) {
		if _, err := os.Stat(filepath.Join(mpath, m[1]+".so")); err != nil {
			if ownBuild {
				return fmt.Errorf("module %s.so not found in %s (KAMAILIO_BIN's build; build it with include_modules, or set KAMAILIO_MODULES): %w", m[1], mpath, ErrNotInstalled)
			}
			pkg := kamailioModulePackages[m[1]]
			if pkg == "" {
				pkg = "kamailio"
			}
			return fmt.Errorf("module %s.so not found in %s (Debian package %s): %w", m[1], mpath, pkg, ErrNotInstalled)
		}
	}
	return nil
}

// start launches the process and waits until jsonrpcs answers; the caller owns cleanup on error.
func (k *Kamailio) start(ctx context.Context) error {
	k.mu.Lock()
	if k.p != nil && !k.p.exited() {
		k.mu.Unlock()
		return fmt.Errorf("kamailio %s: already running as pid %d", k.Name, k.Pid)
	}
	// A FIFO or socket left by a killed run would make the new one fail or be ignored.
	_ = os.Remove(k.FIFO)
	_ = os.Remove(k.CtlSock)
	cmd := exec.Command(k.args[0], k.args[1:]...)
	cmd.Dir = k.Dir
	p, err := startProcDir("kamailio "+k.Name, cmd, k.Log, k.Dir)
	if err != nil {
		k.mu.Unlock()
		return fmt.Errorf("kamailio %s: %w", k.Name, err)
	}
	k.p = p
	k.Pid = p.pid()
	k.mu.Unlock()
	slog.Debug("testenv: kamailio started", "name", k.Name, "pid", k.Pid, "addr", k.Addr, "sip", k.SIPPort, "http", k.HTTPPort, "log", k.Log)

	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		callCtx, cancel := context.WithTimeout(ctx, time.Second)
		_, lastErr = k.rpcHTTP(callCtx, "core.version", nil)
		cancel()
		if lastErr == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("kamailio %s exited during startup (%v); check the config %s:\n%s", k.Name, p.err, k.Config, logTail(k.Log, 30))
		case <-ctx.Done():
			return fmt.Errorf("kamailio %s: jsonrpcs on %s did not answer core.version before the deadline (last error: %v); check the config %s:\n%s",
				k.Name, k.RPCURL(), lastErr, k.Config, logTail(k.Log, 30))
		case <-tick.C:
		}
	}
}

// Stop stops the node with SIGTERM (SIGKILL to its process group after 5 s). The ports and
// the directory stay reserved for Restart.
func (k *Kamailio) Stop() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.stopLocked(5 * time.Second)
}

func (k *Kamailio) stopLocked(grace time.Duration) error {
	if k.p == nil {
		return nil
	}
	if err := k.p.stop(grace); err != nil {
		return fmt.Errorf("kamailio %s: %w", k.Name, err)
	}
	return nil
}

// Kill sends SIGKILL to the node's process group, as a crash would.
func (k *Kamailio) Kill() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.p != nil {
		k.p.kill()
	}
	return nil
}

// Restart stops the node if it runs and starts it again with the same config and ports.
func (k *Kamailio) Restart(ctx context.Context) error {
	if err := k.Stop(); err != nil {
		return err
	}
	ctx, cancel := withDefaultTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := k.start(ctx); err != nil {
		_ = k.Stop()
		return err
	}
	return nil
}

// LogTail returns the last n lines of the node's log, to explain a failure in a test message.
func (k *Kamailio) LogTail(n int) string { return logTail(k.Log, n) }

// Running reports whether the node's main process has not exited.
func (k *Kamailio) Running() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.p != nil && !k.p.exited()
}

// Close stops the node for good and removes its directory.
func (k *Kamailio) Close() error {
	err := k.Stop()
	k.removeDir()
	return err
}

func (k *Kamailio) removeDir() {
	if err := os.RemoveAll(k.Dir); err != nil {
		slog.Warn("testenv: removing kamailio dir", "dir", k.Dir, "err", err)
		return
	}
	unregisterDir(k.Dir)
}

// RPCError is an error answer of jsonrpcs (Kamailio uses code 500 for all of them).
type RPCError struct {
	Method  string
	Code    int
	Message string
}

func (e *RPCError) Error() string {
	return fmt.Sprintf("jsonrpcs %s: error %d: %s", e.Method, e.Code, e.Message)
}

// RPC calls method over jsonrpcs HTTP and returns the raw JSON of "result". A jsonrpcs error
// answer is returned as *RPCError.
func (k *Kamailio) RPC(ctx context.Context, method string, params ...any) ([]byte, error) {
	return k.rpcHTTP(ctx, method, params)
}

// Version is the node's core.version answer as raw JSON (a string with Kamailio's trailing
// space), for tests that check what sipside reports against the proxy actually running
// rather than the release they were written on.
func (k *Kamailio) Version(ctx context.Context) (string, error) {
	b, err := k.rpcHTTP(ctx, "core.version", nil)
	return string(b), err
}

// RPCOver is RPC over one transport: "http", "udp" (datagram socket) or "fifo". Without a
// deadline in ctx it gives up after 5 s, because Kamailio answers malformed requests with silence.
func (k *Kamailio) RPCOver(ctx context.Context, transport, method string, params ...any) ([]byte, error) {
	switch transport {
	case "http":
		return k.rpcHTTP(ctx, method, params)
	case "udp":
		return k.rpcUDP(ctx, method, params)
	case "fifo":
		return k.rpcFIFO(ctx, method, params)
	}
	return nil, fmt.Errorf("jsonrpcs transport %q: want http, udp or fifo", transport)
}

func (k *Kamailio) request(method string, params []any, extra map[string]any) ([]byte, int64) {
	id := k.seq.Add(1)
	req := map[string]any{"jsonrpc": "2.0", "method": method, "id": id}
	if len(params) > 0 {
		req["params"] = params
	}
	for key, v := range extra {
		req[key] = v
	}
	b, _ := json.Marshal(req) // params come from tests; unmarshalable ones fail loudly below
	return b, id
}

func decodeRPC(method string, body []byte) ([]byte, error) {
	var resp struct {
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("jsonrpcs %s: bad reply %q: %w", method, body, err)
	}
	if resp.Error != nil {
		return nil, &RPCError{Method: method, Code: resp.Error.Code, Message: resp.Error.Message}
	}
	if resp.Result == nil {
		return nil, fmt.Errorf("jsonrpcs %s: reply has neither result nor error: %q", method, body)
	}
	return resp.Result, nil
}

func (k *Kamailio) rpcHTTP(ctx context.Context, method string, params []any) ([]byte, error) {
	ctx, cancel := withDefaultTimeout(ctx, 5*time.Second)
	defer cancel()
	body, _ := k.request(method, params, nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, k.RPCURL(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("jsonrpcs %s: %w", method, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over HTTP %s: %w", method, k.RPCURL(), err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over HTTP %s: read reply: %w", method, k.RPCURL(), err)
	}
	return decodeRPC(method, b)
}

func (k *Kamailio) rpcUDP(ctx context.Context, method string, params []any) ([]byte, error) {
	ctx, cancel := withDefaultTimeout(ctx, 5*time.Second)
	defer cancel()
	addr := net.JoinHostPort(k.Addr, strconv.Itoa(k.RPCUDPPort))
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over UDP %s: %w", method, addr, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	body, _ := k.request(method, params, nil)
	if _, err := c.Write(body); err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over UDP %s: %w", method, addr, err)
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over UDP %s: no reply (is the dgram_socket configured?): %w", method, addr, err)
	}
	return decodeRPC(method, buf[:n])
}

func (k *Kamailio) rpcFIFO(ctx context.Context, method string, params []any) ([]byte, error) {
	ctx, cancel := withDefaultTimeout(ctx, 5*time.Second)
	defer cancel()
	name := fmt.Sprintf("reply-%d-%d", os.Getpid(), nextSeq())
	path := filepath.Join(k.Dir, name)
	if err := syscall.Mkfifo(path, 0o666); err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over FIFO: create reply fifo %s: %w", method, path, err)
	}
	defer os.Remove(path)
	// Open read-write: Kamailio opens the reply FIFO non-blocking for writing, which fails unless
	// a reader exists, and our own write end keeps reads from seeing EOF before the reply.
	rf, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over FIFO: open reply fifo: %w", method, err)
	}
	defer rf.Close()
	dl, _ := ctx.Deadline()
	_ = rf.SetReadDeadline(dl)

	// Non-blocking open fails with ENXIO when Kamailio is not reading the FIFO, instead of hanging.
	wf, err := os.OpenFile(k.FIFO, os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over FIFO %s (is Kamailio running with transport FIFO?): %w", method, k.FIFO, err)
	}
	body, _ := k.request(method, params, map[string]any{"reply_name": name})
	_, err = wf.Write(append(body, '\n'))
	wf.Close()
	if err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over FIFO %s: write: %w", method, k.FIFO, err)
	}
	var raw json.RawMessage
	if err := json.NewDecoder(rf).Decode(&raw); err != nil {
		return nil, fmt.Errorf("jsonrpcs %s over FIFO: read reply from %s: %w", method, path, err)
	}
	return decodeRPC(method, raw)
}

// withDefaultTimeout bounds ctx by d unless it already has a deadline.
func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}
