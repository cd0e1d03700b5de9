package testenv

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/valyala/fastjson"
)

// A real OpenSIPS (OPENSIPS_BIN) run on a generated config, driven through
// the same calls as the emulator.

type osipsProc struct {
	o       *OpenSIPSServer
	bin     string
	cfgPath string
	logPath string
	sip     string // the SIP socket, host:port
	p       *proc
}

const osipsCfg = `# sipside testenv OpenSIPS
mpath = "{{MPATH}}"
log_level = 3
stderror_enabled = yes
syslog_enabled = no
udp_workers = 2
socket = udp:127.0.0.1:{{SIP_PORT}}
loadmodule "proto_udp.so"
loadmodule "proto_tcp.so"
loadmodule "signaling.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "cfgutils.so"
# the lab's modules in the lab's order (LIVE.md), so that events_list ids and
# the command list of "which" match the recordings
loadmodule "usrloc.so"
loadmodule "registrar.so"
{{FIFO}}
loadmodule "mi_datagram.so"
modparam("mi_datagram", "socket_name", "{{MI_SOCKET}}")
{{HTTP}}
loadmodule "event_datagram.so"
loadmodule "event_stream.so"
modparam("event_stream", "reliable_mode", {{RELIABLE}})
modparam("event_stream", "timeout", {{STREAM_TIMEOUT}})
loadmodule "event_virtual.so"
modparam("event_virtual", "failover_timeout", {{FAILOVER_TIMEOUT}})
loadmodule "event_flatstore.so"

route {
{{ROUTE}}
	sl_send_reply(404, "Not here");
}

# never run: every event name written here is published at startup
route[sipside_publish] {
{{EVENTS}}
}
`

func (o *OpenSIPSServer) startReal(bin string) error {
	mpath := os.Getenv("OPENSIPS_MPATH")
	if mpath == "" {
		// the binary has no default module path: $PREFIX/sbin/opensips -> $PREFIX/lib64/opensips/modules/
		mpath = filepath.Join(filepath.Dir(filepath.Dir(bin)), "lib64", "opensips", "modules") + "/"
	}
	sipPort, err := freePort("udp", "127.0.0.1")
	if err != nil {
		return err
	}
	var sock string
	if o.cfg.UnixMI {
		o.MIUnix = filepath.Join(o.dir, "opensips_mi.sock")
		sock = o.MIUnix
	} else {
		port, err := freePort("udp", "127.0.0.1")
		if err != nil {
			return err
		}
		o.MIUDP = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		sock = "udp:" + o.MIUDP
	}
	var fifo, httpMods string
	if o.cfg.FIFO {
		o.FIFO = filepath.Join(o.dir, "opensips_fifo")
		o.ReplyDir = o.dir
		fifo = fmt.Sprintf("loadmodule \"mi_fifo.so\"\nmodparam(\"mi_fifo\", \"fifo_name\", %q)\nmodparam(\"mi_fifo\", \"reply_dir\", %q)", o.FIFO, o.dir+"/")
	}
	if o.cfg.HTTP {
		port, err := freePort("tcp", "127.0.0.1")
		if err != nil {
			return err
		}
		o.HTTPURL = fmt.Sprintf("http://127.0.0.1:%d/mi", port)
		httpMods = fmt.Sprintf("loadmodule \"httpd.so\"\nmodparam(\"httpd\", \"ip\", \"127.0.0.1\")\nmodparam(\"httpd\", \"port\", %d)\nloadmodule \"mi_http.so\"\nmodparam(\"mi_http\", \"root\", \"mi\")", port)
	}
	var events strings.Builder
	for _, ev := range append([]string{"E_MY_EVENT", "E_LAB_TICK"}, o.cfg.Events...) {
		fmt.Fprintf(&events, "\traise_event(%q);\n", ev)
	}
	reliable, streamTimeout := "0", o.cfg.StreamTimeout
	if o.cfg.StreamReliable {
		reliable = "1"
	}
	if streamTimeout <= 0 {
		streamTimeout = time.Second
	}
	failover := o.cfg.FailoverTimeout
	if failover <= 0 {
		failover = 30 * time.Second
	}
	cfg := strings.NewReplacer("{{FAILOVER_TIMEOUT}}", strconv.Itoa(int(failover.Seconds())), "{{RELIABLE}}", reliable, "{{STREAM_TIMEOUT}}", strconv.Itoa(int(streamTimeout.Milliseconds())), "{{MPATH}}", mpath, "{{SIP_PORT}}", strconv.Itoa(sipPort), "{{MI_SOCKET}}", sock,
		"{{FIFO}}", fifo, "{{HTTP}}", httpMods, "{{EVENTS}}", events.String(),
		"{{ROUTE}}", jsonrpcRoute(o.cfg.JSONRPCDest)).Replace(osipsCfg)
	if o.cfg.JSONRPCDest != "" {
		cfg = strings.Replace(cfg, "\nroute {", "\n"+jsonrpcModules+"\nroute {", 1)
	}
	if o.cfg.Tick {
		cfg += "\ntimer_route[sipside_tick, 1] {\n\t$var(n) = $shv(tick) + 0;\n\t$shv(tick) = $var(n) + 1;\n\t$avp(name) = \"seq\";  $avp(val) = $shv(tick);\n\t$avp(name) = \"note\"; $avp(val) = \"tick\";\n\traise_event(\"E_LAB_TICK\", $avp(name), $avp(val));\n}\n"
	}
	r := &osipsProc{o: o, bin: bin, cfgPath: filepath.Join(o.dir, "opensips.cfg"), logPath: filepath.Join(o.dir, "opensips.log"), sip: net.JoinHostPort("127.0.0.1", strconv.Itoa(sipPort))}
	if err := os.WriteFile(r.cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	o.real, o.Real = r, true
	return r.start()
}

func (r *osipsProc) start() error {
	p, err := startProc("opensips", exec.Command(r.bin, "-F", "-f", r.cfgPath), r.logPath)
	if err != nil {
		return err
	}
	r.p = p
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("opensips exited during startup\n%s", logTail(r.logPath, 30))
		}
		if _, err := r.call("version", nil, 300*time.Millisecond); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond) // a refused datagram fails at once: pace the polling
	}
	p.kill()
	return fmt.Errorf("opensips did not answer MI version within 15s\n%s", logTail(r.logPath, 30))
}

func (r *osipsProc) stop() {
	if r.p != nil {
		_ = r.p.stop(5 * time.Second)
		r.p = nil
	}
}

// call sends one MI request over mi_datagram and returns the result's JSON.
func (r *osipsProc) call(method string, params any, timeout time.Duration) ([]byte, error) {
	req := map[string]any{"jsonrpc": "2.0", "method": method, "id": 1}
	if params != nil {
		req["params"] = params
	}
	b, _ := json.Marshal(req)
	var (
		conn net.Conn
		err  error
	)
	if r.o.MIUnix != "" {
		// Bound, not connected: OpenSIPS answers from another socket.
		local := filepath.Join(r.o.dir, fmt.Sprintf("client-%d.sock", time.Now().UnixNano()))
		var u *net.UnixConn
		u, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: local, Net: "unixgram"})
		defer os.Remove(local)
		if err == nil {
			conn = unixTo{u, &net.UnixAddr{Name: r.o.MIUnix, Net: "unixgram"}}
		}
	} else {
		conn, err = net.Dial("udp", r.o.MIUDP)
	}
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(b); err != nil {
		return nil, err
	}
	buf := make([]byte, 1<<17)
	n, err := conn.Read(buf)
	if err != nil {
		return nil, err
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(buf[:n])
	if err != nil {
		return nil, fmt.Errorf("opensips MI %s: %q", method, buf[:n])
	}
	if ev := v.Get("error"); ev != nil {
		return nil, fmt.Errorf("opensips MI %s: %s", method, ev)
	}
	return v.Get("result").MarshalTo(nil), nil
}

// unboundUnixgram is a unix datagram socket with no address, which the net
// package cannot make (ListenUnixgram wants a path).
func unboundUnixgram() (net.PacketConn, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "unixgram")
	defer f.Close()
	return net.FilePacketConn(f)
}

// unixTo is a bound unix datagram socket whose Write sends to one path.
type unixTo struct {
	*net.UnixConn
	to *net.UnixAddr
}

func (u unixTo) Write(b []byte) (int, error) { return u.WriteToUnix(b, u.to) }

func (r *osipsProc) raise(name, params string) error {
	args := []any{name}
	if params != "" {
		if strings.HasPrefix(strings.TrimSpace(params), "[") {
			args = append(args, json.RawMessage(params))
		} else {
			args = append(args, params) // MI takes named params as a string holding the object
		}
	}
	_, err := r.call("raise_event", args, 5*time.Second)
	return err
}

func (r *osipsProc) subscriptions() ([]OpenSIPSSubscription, error) {
	res, err := r.call("subscribers_list", nil, 5*time.Second)
	if err != nil {
		return nil, err
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(res)
	if err != nil {
		return nil, err
	}
	var out []OpenSIPSSubscription
	for _, ev := range v.GetArray("Events") {
		for _, s := range ev.GetArray("Subscribers") {
			sub := OpenSIPSSubscription{Event: string(ev.GetStringBytes("name")), Socket: string(s.GetStringBytes("socket")), Expire: -1}
			if x := s.Get("expire"); x != nil && x.Type() == fastjson.TypeNumber {
				sub.Expire = x.GetInt()
			}
			if x := s.Get("ttl"); x != nil && x.Type() == fastjson.TypeNumber {
				sub.TTL = x.GetInt()
			}
			out = append(out, sub)
		}
	}
	return out, nil
}
