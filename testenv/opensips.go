package testenv

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fastjson"
)

// OpenSIPSConfig says which management interfaces an OpenSIPS test instance offers.
// mi_datagram is always on, over UDP or (UnixMI) a unix socket: like the real
// module, an instance has only one datagram socket.
type OpenSIPSConfig struct {
	UnixMI bool // mi_datagram on a unix socket instead of UDP
	HTTP   bool // httpd + mi_http on /mi
	FIFO   bool // mi_fifo, reply_dir = the FIFO's directory
	// Events are script events to publish besides the lab's E_MY_EVENT and E_LAB_TICK;
	// their ids follow E_LAB_TICK's (15), E_CORE_LOG comes last.
	Events []string
	// Tick raises E_LAB_TICK {"note":"tick","seq":N} every second, as the lab config does.
	Tick bool
	// StreamReliable is event_stream's reliable_mode=1: each tcp: event carries an id
	// and OpenSIPS waits StreamTimeout (default 1s) for a reply with that id; an
	// "error" member, no reply in time or a closed connection fails the delivery,
	// which Raise reports (protocol/opensips/captures/stream-02-reliable-mode.txt).
	StreamReliable bool
	StreamTimeout  time.Duration
	// FailoverTimeout is event_virtual's failover_timeout: how long FAILOVER skips a
	// member that failed (default 30s, the module's; the lab used 5s).
	FailoverTimeout time.Duration
	// ArrayParamsBug reproduces OpenSIPS 3.6.8's MI raise_event bug: array params that
	// follow a named raise_event come out as an object with empty keys
	// (protocol/opensips/captures/bug-raise-event-array-becomes-object.txt). Emulator only.
	ArrayParamsBug bool
	// JSONRPCDest is the host:port the jsonrpc module's functions call (the module
	// resolves it at startup); JSONRPCRequest and JSONRPCNotification run them.
	JSONRPCDest string
}

// OpenSIPSSubscription is one event subscriber as subscribers_list shows it.
type OpenSIPSSubscription struct {
	Event  string
	Socket string
	Expire int // seconds; -1 for never
	TTL    int // seconds left; <= 0 once expired
}

// OpenSIPSServer is an OpenSIPS for tests: a real one when OPENSIPS_BIN is set
// (OPENSIPS_MPATH overrides its module directory), else an in-process emulator that
// answers MI byte for byte as OpenSIPS 3.6.8 did in the recordings under
// protocol/opensips/captures, and sends event_datagram (udp:, unix:) and event_stream
// (tcp:, both modes) payloads for raised events.
//
// The emulator knows the commands version, uptime, which, ps, pwd, events_list,
// event_subscribe, subscribers_list, raise_event, get_statistics, list_statistics and
// reset_statistics (whose "statistics" must be an array, as in 3.6.8: `[["core:"]]`);
// the shapes of ps, pwd, which [command] and the shmem: figures are plausible, not
// recorded. It delivers no flatstore or
// xmlrpc events.
type OpenSIPSServer struct {
	Real     bool   // a real OpenSIPS process, not the emulator
	MIUDP    string // mi_datagram host:port ("" with UnixMI)
	MIUnix   string // mi_datagram unix socket path ("" without UnixMI)
	HTTPURL  string // mi_http URL, e.g. http://127.0.0.1:PORT/mi ("" without HTTP)
	FIFO     string // mi_fifo path ("" without FIFO)
	ReplyDir string // mi_fifo reply_dir

	t   testing.TB
	cfg OpenSIPSConfig
	dir string

	emu  *osipsEmu
	real *osipsProc
}

// Target returns the sipside MI target for transport "udp", "unix", "http" or "fifo".
func (o *OpenSIPSServer) Target(transport string) string {
	switch {
	case transport == "udp" && o.MIUDP != "":
		return "opensips:udp:" + o.MIUDP
	case transport == "unix" && o.MIUnix != "":
		return "opensips:unix:" + o.MIUnix
	case transport == "http" && o.HTTPURL != "":
		return "opensips:" + o.HTTPURL
	case transport == "fifo" && o.FIFO != "":
		return "opensips:fifo:" + o.FIFO
	}
	o.t.Fatalf("testenv: this OpenSIPS has no MI over %q (see OpenSIPSConfig)", transport)
	return ""
}

// OpenSIPS starts an OpenSIPS for t, stopped when t ends.
func OpenSIPS(t testing.TB, cfg OpenSIPSConfig) *OpenSIPSServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "sipside-opensips-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	registerDir(dir)
	o := &OpenSIPSServer{t: t, cfg: cfg, dir: dir}
	if bin := os.Getenv("OPENSIPS_BIN"); bin != "" {
		err = o.startReal(bin)
	} else {
		err = o.startEmu()
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		unregisterDir(dir)
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		o.stop()
		_ = os.RemoveAll(dir)
		unregisterDir(dir)
	})
	return o
}

func (o *OpenSIPSServer) stop() {
	if o.emu != nil {
		o.emu.close()
	}
	if o.real != nil {
		o.real.stop()
	}
}

// Restart restarts the proxy on the same addresses; like a real restart it forgets
// every subscription.
func (o *OpenSIPSServer) Restart() {
	o.t.Helper()
	if o.real != nil {
		o.real.stop()
		if err := o.real.start(); err != nil {
			o.t.Fatalf("testenv: restart OpenSIPS: %v", err)
		}
		return
	}
	o.emu.restart()
}

// Raise raises event name as a script's raise_event would: params is the JSON text of
// the params (an object or array), "" for none. With the emulator the notifications
// are sent before Raise returns, and its error reports failed deliveries (with
// StreamReliable: error replies and silence too). A real OpenSIPS is asked through MI
// raise_event, which turns array items into strings and delivers asynchronously.
func (o *OpenSIPSServer) Raise(name, params string) error {
	if o.real != nil {
		return o.real.raise(name, params)
	}
	return o.emu.raise(name, []byte(params), false)
}

// Subscriptions returns the live subscribers, newest first within an event.
func (o *OpenSIPSServer) Subscriptions() []OpenSIPSSubscription {
	o.t.Helper()
	if o.real != nil {
		subs, err := o.real.subscriptions()
		if err != nil {
			o.t.Fatalf("testenv: %v", err)
		}
		return subs
	}
	return o.emu.subscriptions()
}

// ---------------------------------------------------------------------------------
// emulator

// osipsDatagramBuf is mi_datagram's DATAGRAM_SOCK_BUF_SIZE: longer requests are cut
// (and fail to parse), longer replies fail to print.
const osipsDatagramBuf = 65457

var osipsWhich = []string{"get_statistics", "list_statistics", "reset_statistics", "reset_all_statistics", "uptime", "version", "pwd", "arg", "which", "ps", "kill", "log_level", "xlog_level", "log_level_filter", "log_mute_state", "shm_check", "cache_store", "cache_fetch", "cache_remove", "event_subscribe", "events_list", "subscribers_list", "raise_event", "list_tcp_conns", "mem_pkg_dump", "mem_shm_dump", "mem_rpm_dump", "reload_routes", "sr_get_status", "sr_list_status", "sr_list_reports", "sr_list_identifiers", "help", "list_blacklists", "check_blacklists", "check_blacklist", "add_blacklist_rule", "del_blacklist_rule", "tcp_trace", "t_uac_dlg", "t_uac_cancel", "t_hash", "t_reply", "rand_set_prob", "rand_reset_prob", "rand_get_prob", "get_config_hash", "check_config_hash", "shv_get", "shv_set", "ul_rm", "ul_rm_contact", "ul_dump", "ul_flush", "ul_add", "ul_show_contact", "ul_sync", "ul_cluster_sync", "httpd_list_root_path", "evi_flat_rotate"}

// osipsEvents is the lab config's events_list, in id order.
var osipsEvents = []string{"E_CORE_SR_STATUS_CHANGED", "E_CORE_THRESHOLD", "E_CORE_SHM_THRESHOLD", "E_CORE_PKG_THRESHOLD", "E_CORE_PROC_AUTO_SCALE", "E_CORE_TCP_DISCONNECT", "E_UL_AOR_INSERT", "E_UL_AOR_DELETE", "E_UL_CONTACT_INSERT", "E_UL_CONTACT_UPDATE", "E_UL_CONTACT_DELETE", "E_UL_CONTACT_REFRESH", "E_UL_LATENCY_UPDATE", "E_FLATSTORE_ROTATION", "E_MY_EVENT", "E_LAB_TICK", "E_CORE_LOG"}

// osipsRecipes are the parameter sets each emulated command accepts.
var osipsRecipes = map[string][][]string{
	"version":          {{}, {"revision"}},
	"uptime":           {{}},
	"which":            {{}, {"command"}},
	"ps":               {{}},
	"pwd":              {{}},
	"events_list":      {{}},
	"event_subscribe":  {{"event", "socket"}, {"event", "socket", "expire"}},
	"subscribers_list": {{}, {"event"}, {"event", "socket"}},
	"raise_event":      {{"event"}, {"event", "params"}},
	"get_statistics":   {{"statistics"}},
	"list_statistics":  {{}, {"statistics"}},
	"reset_statistics": {{"statistics"}},
}

// osipsStat is one statistic of the emulator: its group and name, and whether
// it counts up (reset_statistics may zero it) or reports a state.
type osipsStat struct {
	group, name string
	incremental bool
}

// osipsStats are the core: and shmem: groups as a real 3.6.8 lists them.
var osipsStats = []osipsStat{
	{"core", "rcv_requests", true}, {"core", "rcv_replies", true}, {"core", "fwd_requests", true},
	{"core", "fwd_replies", true}, {"core", "drop_requests", true}, {"core", "drop_replies", true},
	{"core", "err_requests", true}, {"core", "err_replies", true}, {"core", "bad_URIs_rcvd", true},
	{"core", "bad_msg_hdr", true}, {"core", "slow_messages", true}, {"core", "timestamp", false},
	{"shmem", "total_size", false}, {"shmem", "used_size", false}, {"shmem", "real_used_size", false},
	{"shmem", "max_used_size", false}, {"shmem", "free_size", false}, {"shmem", "fragments", false},
}

type osipsSub struct {
	proto  string // udp, unix, tcp, virtual...
	rest   string // after "proto:"
	socket string // as subscribers_list prints it
	host   string
	port   int
	method string // tcp /method
	expire int
	since  int64 // unix seconds

	// event_virtual state, under osipsEmu.mu
	rr          int                  // ROUND-ROBIN: the member whose turn it is
	failedUntil map[string]time.Time // FAILOVER: members skipped until then
}

type osipsEmu struct {
	cfg OpenSIPSConfig

	mu        sync.Mutex
	started   time.Time
	events    []string
	subs      map[int][]*osipsSub // by event id, newest first
	lastNamed bool
	tickSeq   int

	sendMu  sync.Mutex // event_stream connections, written in order
	streams map[string]*osipsStream
	nextID  int32
	udpOut  *net.UDPConn

	raises chan func() // MI raise_event deliveries, sent in order by one goroutine

	closers []io.Closer
	wg      sync.WaitGroup
	done    chan struct{}
}

func (o *OpenSIPSServer) startEmu() error {
	e := &osipsEmu{cfg: o.cfg, started: time.Now(), subs: make(map[int][]*osipsSub), streams: make(map[string]*osipsStream), done: make(chan struct{})}
	// ids as event_stream makes them: seeded from the pid, then +4 per event
	e.nextID = int32(os.Getpid()&0xffff | int(time.Now().UnixNano()&0x3fff)<<16)
	// Script events are published after the modules' and before E_CORE_LOG, as a real
	// OpenSIPS with the lab's modules numbers them.
	n := len(osipsEvents) - 1
	e.events = append(append(append([]string(nil), osipsEvents[:n]...), o.cfg.Events...), osipsEvents[n])
	e.raises = make(chan func(), 1024)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			select {
			case <-e.done:
				return
			case f := <-e.raises:
				f()
			}
		}
	}()
	// Events leave from their own ephemeral port, as each OpenSIPS process sends from its own.
	out, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return fmt.Errorf("opensips emulator: event socket: %w", err)
	}
	e.udpOut = out
	e.closers = append(e.closers, out)
	o.emu = e
	if o.cfg.UnixMI {
		o.MIUnix = filepath.Join(o.dir, "opensips_mi.sock")
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: o.MIUnix, Net: "unixgram"})
		if err != nil {
			e.close()
			return fmt.Errorf("opensips emulator: mi_datagram unix socket: %w", err)
		}
		e.serveDatagram(c)
	} else {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			e.close()
			return fmt.Errorf("opensips emulator: mi_datagram udp socket: %w", err)
		}
		o.MIUDP = c.LocalAddr().String()
		e.serveDatagram(c)
	}
	if o.cfg.HTTP {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			e.close()
			return fmt.Errorf("opensips emulator: mi_http: %w", err)
		}
		o.HTTPURL = "http://" + l.Addr().String() + "/mi"
		e.serveHTTP(l)
	}
	if o.cfg.FIFO {
		o.FIFO = filepath.Join(o.dir, "opensips_fifo")
		o.ReplyDir = o.dir
		if err := e.serveFIFO(o.FIFO, o.dir); err != nil {
			e.close()
			return err
		}
	}
	if o.cfg.Tick {
		e.wg.Add(1)
		go e.tick()
	}
	return nil
}

func (e *osipsEmu) close() {
	select {
	case <-e.done:
		return
	default:
	}
	close(e.done)
	for _, c := range e.closers {
		_ = c.Close()
	}
	e.dropStreams()
	e.wg.Wait()
}

func (e *osipsEmu) dropStreams() {
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	for k, st := range e.streams {
		st.close(errors.New("event_stream connection dropped"))
		delete(e.streams, k)
	}
}

func (e *osipsEmu) restart() {
	e.mu.Lock()
	e.subs = make(map[int][]*osipsSub)
	e.lastNamed = false
	e.started = time.Now()
	e.mu.Unlock()
	e.dropStreams()
}

func (e *osipsEmu) tick() {
	defer e.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-e.done:
			return
		case <-t.C:
			e.mu.Lock()
			e.tickSeq++
			seq := e.tickSeq
			e.mu.Unlock()
			_ = e.raise("E_LAB_TICK", []byte(`{"note":"tick","seq":`+strconv.Itoa(seq)+`}`), false)
		}
	}
}

// --- transports -------------------------------------------------------------------

func (e *osipsEmu) serveDatagram(c net.PacketConn) {
	e.closers = append(e.closers, c)
	// mi_datagram answers a unix request from a second, unbound socket (SOURCE.md
	// 7.2), so a client that connect(2)s its socket to the MI path gets nothing:
	// Linux refuses (EPERM) a datagram to a connected socket from anyone but its
	// peer. The emulator does the same, so that such a client fails here too.
	tx := c
	if _, ok := c.(*net.UnixConn); ok {
		u, err := unboundUnixgram()
		if err != nil {
			panic(fmt.Sprintf("opensips emulator: mi_datagram reply socket: %v", err))
		}
		e.closers = append(e.closers, u)
		tx = u
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		// A longer datagram is cut to the buffer, as recvfrom does, and then fails to parse.
		buf := make([]byte, osipsDatagramBuf)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			out := e.handle(buf[:n])
			var reply []byte
			switch {
			case out.parseError:
				reply = []byte("400 Parse_error")
			case out.internalError:
				reply = []byte("500 Internal error")
			case out.reply == nil:
				continue
			case len(out.reply) > osipsDatagramBuf:
				reply = []byte("500 Internal error")
			default:
				reply = out.reply
			}
			if from == nil || from.String() == "" {
				continue // an unbound unix client: the reply has nowhere to go
			}
			_, _ = tx.WriteTo(reply, from)
		}
	}()
}

func (e *osipsEmu) serveHTTP(l net.Listener) {
	e.closers = append(e.closers, l)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			e.wg.Add(1)
			go func() {
				defer e.wg.Done()
				e.serveHTTPConn(conn)
			}()
		}
	}()
}

func (e *osipsEmu) serveHTTPConn(conn net.Conn) {
	defer conn.Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-e.done:
			conn.Close()
		case <-stop:
		}
	}()
	req, err := http.ReadRequest(bufio.NewReader(conn))
	if err != nil {
		return
	}
	body, _ := io.ReadAll(io.LimitReader(req.Body, 16<<20))
	date := time.Now().UTC().Format(http.TimeFormat)
	// hang writes a head whose chunked body never ends, as mi_http does for GET and
	// notifications, and waits for the client to give up.
	hang := func(status string) {
		fmt.Fprintf(conn, "HTTP/1.1 %s\r\nDate: %s\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", status, date)
		_, _ = io.Copy(io.Discard, conn)
	}
	if req.URL.Path != "/mi" && req.URL.Path != "/mi/" {
		const page = "<html><body>Unable to parse URL!</body></html>"
		fmt.Fprintf(conn, "HTTP/1.1 400 Bad Request\r\nDate: %s\r\nConnection: close\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s", date, len(page), page)
		return
	}
	if req.Method != http.MethodPost {
		hang("405 Method Not Allowed")
		return
	}
	if mt, _, err := mime.ParseMediaType(req.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return // httpd closes without a byte: "missing Content-Type header"
	}
	if len(body) == 0 {
		fmt.Fprintf(conn, "HTTP/1.1 400 Bad Request\r\nDate: %s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n", date)
		return
	}
	out := e.handle(body)
	var reply []byte
	switch {
	case out.parseError:
		reply = []byte(`{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}`)
	case out.internalError:
		fmt.Fprintf(conn, "HTTP/1.1 500 Internal Server Error\r\nDate: %s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n", date)
		return
	case out.reply == nil:
		hang("202 Accepted")
		return
	default:
		reply = out.reply
	}
	fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nDate: %s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", date, len(reply))
	_, _ = conn.Write(reply)
}

// osipsFIFOBuf is mi_fifo's MAX_MI_FIFO_BUFFER: the longest request line.
const osipsFIFOBuf = 4096

func (e *osipsEmu) serveFIFO(path, replyDir string) error {
	if err := syscall.Mkfifo(path, 0o666); err != nil {
		return fmt.Errorf("opensips emulator: mkfifo %s: %w", path, err)
	}
	// Read-write, so that the read end never sees EOF between clients.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opensips emulator: open %s: %w", path, err)
	}
	e.closers = append(e.closers, f)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		r := bufio.NewReaderSize(f, 64<<10)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			if len(line) > osipsFIFOBuf {
				// mi_fifo reads at most MAX_MI_FIFO_BUFFER bytes at a time; a longer
				// request fails to parse and its tail "must begin with ':'" (both
				// dropped, no reply; seen on 3.6.8).
				continue
			}
			e.fifoLine(bytes.TrimRight(line, "\n"), replyDir)
		}
	}()
	return nil
}

// fifoLine handles ":reply_name:json"; "::json" wants no reply.
func (e *osipsEmu) fifoLine(line []byte, replyDir string) {
	if len(line) == 0 || line[0] != ':' {
		return
	}
	name, req, ok := bytes.Cut(line[1:], []byte(":"))
	if !ok || bytes.ContainsAny(name, "./\\") {
		return // "forbidden filename", "error trimming filename"
	}
	out := e.handle(req)
	if len(name) == 0 || out.parseError || (out.reply == nil && !out.internalError) {
		return
	}
	reply := out.reply
	if out.internalError {
		reply = []byte("failed to build response")
	}
	w, err := os.OpenFile(filepath.Join(replyDir, string(name)), os.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer w.Close()
	// mi_fifo streams the reply in chunks; the client must read until the value ends.
	for len(reply) > 0 {
		n := min(len(reply), 4096)
		if _, err := w.Write(reply[:n]); err != nil {
			return
		}
		reply = reply[n:]
	}
}

// --- MI engine --------------------------------------------------------------------

type osipsOutcome struct {
	reply         []byte // nil: no reply (notification)
	parseError    bool
	internalError bool
}

type osipsErr struct {
	code int
	msg  string
	data string
}

func (e *osipsEmu) handle(raw []byte) osipsOutcome {
	// cJSON stops at the end of the first value and ignores what follows.
	dec := json.NewDecoder(bytes.NewReader(raw))
	var first json.RawMessage
	if err := dec.Decode(&first); err != nil {
		return osipsOutcome{parseError: true}
	}
	var p fastjson.Parser
	v, err := p.ParseBytes(first)
	if err != nil {
		return osipsOutcome{parseError: true}
	}
	if v.Type() != fastjson.TypeObject {
		// a batch, or anything else that is not an object, is an invalid request
		return osipsOutcome{reply: osipsErrorReply(nil, osipsErr{-32600, "Invalid Request", ""})}
	}
	id := member(v, "id")
	if id != nil {
		switch id.Type() {
		case fastjson.TypeNumber, fastjson.TypeString, fastjson.TypeNull:
		default:
			return osipsOutcome{internalError: true} // the reply cannot be printed
		}
	}
	jv, method, params := member(v, "jsonrpc"), member(v, "method"), member(v, "params")
	valid := jv != nil && jv.Type() == fastjson.TypeString && string(jv.GetStringBytes()) == "2.0" &&
		method != nil && method.Type() == fastjson.TypeString &&
		(params == nil || params.Type() == fastjson.TypeArray || params.Type() == fastjson.TypeObject)
	if !valid {
		return osipsOutcome{reply: osipsErrorReply(id, osipsErr{-32600, "Invalid Request", ""})}
	}
	result, merr := e.run(string(method.GetStringBytes()), params)
	if id == nil {
		return osipsOutcome{}
	}
	if merr != nil {
		return osipsOutcome{reply: osipsErrorReply(id, *merr)}
	}
	b := append([]byte(`{"jsonrpc":"2.0","result":`), result...)
	b = append(b, `,"id":`...)
	b = appendOsipsID(b, id)
	return osipsOutcome{reply: append(b, '}')}
}

// member is cJSON_GetObjectItem: the first member whose name matches case-insensitively.
func member(v *fastjson.Value, name string) *fastjson.Value {
	o, err := v.Object()
	if err != nil {
		return nil
	}
	var found *fastjson.Value
	o.Visit(func(k []byte, mv *fastjson.Value) {
		if found == nil && strings.EqualFold(string(k), name) {
			found = mv
		}
	})
	return found
}

func osipsErrorReply(id *fastjson.Value, e osipsErr) []byte {
	b := []byte(`{"jsonrpc":"2.0","error":{"code":`)
	b = strconv.AppendInt(b, int64(e.code), 10)
	b = append(b, `,"message":`...)
	b = appendCJSONString(b, e.msg)
	if e.data != "" {
		b = append(b, `,"data":`...)
		b = appendCJSONString(b, e.data)
	}
	b = append(b, `},"id":`...)
	b = appendOsipsID(b, id)
	return append(b, '}')
}

// appendOsipsID echoes an id as mi does: numbers as cJSON's valueint (int32,
// saturated, truncated), strings verbatim, anything else null.
func appendOsipsID(b []byte, id *fastjson.Value) []byte {
	if id == nil {
		return append(b, "null"...)
	}
	switch id.Type() {
	case fastjson.TypeNumber:
		return strconv.AppendInt(b, int64(valueint(id.GetFloat64())), 10)
	case fastjson.TypeString:
		return appendCJSONString(b, string(id.GetStringBytes()))
	}
	return append(b, "null"...)
}

func valueint(f float64) int32 {
	switch {
	case f >= math.MaxInt32:
		return math.MaxInt32
	case f <= math.MinInt32:
		return math.MinInt32
	}
	return int32(f)
}

// appendCJSONString prints s as cJSON does: only '"', '\' and control bytes escaped,
// everything else (invalid UTF-8 included) copied raw.
func appendCJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, `\b`...)
		case '\f':
			b = append(b, `\f`...)
		case '\n':
			b = append(b, `\n`...)
		case '\r':
			b = append(b, `\r`...)
		case '\t':
			b = append(b, `\t`...)
		default:
			if c < 0x20 {
				b = fmt.Appendf(b, `\u%04x`, c)
			} else {
				b = append(b, c)
			}
		}
	}
	return append(b, '"')
}

// osipsArgs holds a call's parameters after recipe matching, by recipe name.
type osipsArgs map[string]*fastjson.Value

// matchRecipe matches positional params by count, named ones by count and names.
func matchRecipe(recipes [][]string, params *fastjson.Value) (osipsArgs, *osipsErr) {
	var (
		n   int
		arr []*fastjson.Value
		obj *fastjson.Object
	)
	if params != nil {
		if params.Type() == fastjson.TypeArray {
			arr = params.GetArray()
			n = len(arr)
		} else {
			obj = params.GetObject()
			n = obj.Len()
		}
	}
	countMatched := false
	for _, r := range recipes {
		if len(r) != n {
			continue
		}
		countMatched = true
		args := osipsArgs{}
		if obj == nil {
			for i, name := range r {
				args[name] = arr[i]
			}
			return args, nil
		}
		ok := true
		for _, name := range r {
			mv := obj.Get(name)
			if mv == nil {
				ok = false
				break
			}
			args[name] = mv
		}
		if ok {
			return args, nil
		}
	}
	if countMatched {
		return nil, &osipsErr{-32602, "Invalid params", "Named parameters do not match"}
	}
	return nil, &osipsErr{-32602, "Invalid params", "Too few or too many parameters"}
}

func stringParam(v *fastjson.Value, name string) (string, *osipsErr) {
	switch v.Type() {
	case fastjson.TypeString:
		return string(v.GetStringBytes()), nil
	case fastjson.TypeNumber:
		return string(v.MarshalTo(nil)), nil
	}
	return "", &osipsErr{-32602, "Invalid params", "Bad type for parameter '" + name + "'"}
}

func intParam(v *fastjson.Value, name string) (int, *osipsErr) {
	switch v.Type() {
	case fastjson.TypeNumber:
		return int(valueint(v.GetFloat64())), nil
	case fastjson.TypeString:
		if n, err := strconv.Atoi(strings.TrimSpace(string(v.GetStringBytes()))); err == nil {
			return n, nil
		}
	}
	return 0, &osipsErr{-32602, "Invalid params", "Bad type for parameter '" + name + "'"}
}

func (e *osipsEmu) run(method string, params *fastjson.Value) ([]byte, *osipsErr) {
	recipes, ok := osipsRecipes[method]
	if !ok {
		return nil, &osipsErr{-32601, "Method not found", ""}
	}
	if params != nil && ((params.Type() == fastjson.TypeArray && len(params.GetArray()) == 0) ||
		(params.Type() == fastjson.TypeObject && params.GetObject().Len() == 0)) {
		params = nil // an empty list counts as no params
	}
	args, merr := matchRecipe(recipes, params)
	if merr != nil {
		return nil, merr
	}
	switch method {
	case "version":
		if args["revision"] != nil {
			// mi_version_1: the revision of the build, whatever the param says;
			// "unknown" for a build from a source tree without git.
			return []byte(`{"Server":"OpenSIPS (3.6.8 (x86_64/linux))","unknown":"unknown"}`), nil
		}
		return []byte(`{"Server":"OpenSIPS (3.6.8 (x86_64/linux))"}`), nil
	case "uptime":
		e.mu.Lock()
		started := e.started
		e.mu.Unlock()
		now := time.Now()
		const ctime = "Mon Jan _2 15:04:05 2006"
		return fmt.Appendf(nil, `{"Now":"%s","Up since":"%s","Up time":"%d [sec]"}`, now.Format(ctime), started.Format(ctime), int(now.Sub(started).Seconds())), nil
	case "which":
		if c, ok := args["command"]; ok {
			name, merr := stringParam(c, "command")
			if merr != nil {
				return nil, merr
			}
			rs, ok := osipsRecipes[name]
			if !ok {
				return nil, &osipsErr{404, "Command not found", ""}
			}
			b, _ := json.Marshal(rs)
			return b, nil
		}
		b, _ := json.Marshal(osipsWhich)
		return b, nil
	case "ps":
		pid := os.Getpid()
		return fmt.Appendf(nil, `{"Processes":[{"ID":0,"PID":%d,"Type":"attendant"},{"ID":1,"PID":%d,"Type":"MI Datagram"},{"ID":2,"PID":%d,"Type":"SIP receiver udp:127.0.0.1:5060"}]}`, pid, pid, pid), nil
	case "pwd":
		wd, _ := os.Getwd()
		b := appendCJSONString([]byte(`{"WD":`), wd+"/")
		return append(b, '}'), nil
	case "get_statistics", "list_statistics", "reset_statistics":
		return e.statistics(method, args["statistics"])
	case "events_list":
		b := []byte(`{"Events":[`)
		e.mu.Lock()
		for i, name := range e.events {
			if i > 0 {
				b = append(b, ',')
			}
			b = fmt.Appendf(b, `{"name":"%s","id":%d}`, name, i)
		}
		e.mu.Unlock()
		return append(b, "]}"...), nil
	case "event_subscribe":
		return e.subscribe(args)
	case "subscribers_list":
		return e.subscribersList(args)
	case "raise_event":
		return e.miRaise(args)
	}
	return nil, &osipsErr{-32601, "Method not found", ""}
}

// statistics answers get_statistics, list_statistics and reset_statistics as
// 3.6.8's statistics.c does: "statistics" must be a non-empty array (a string
// is -32602 Invalid params, which is what `get_statistics core:` sent as
// ["core:"] gets), each item "all" (get only), a group "core:", or one
// statistic "name" or "group:name"; none found is 404.
func (e *osipsEmu) statistics(method string, param *fastjson.Value) ([]byte, *osipsErr) {
	invalid := &osipsErr{-32602, "Invalid params", ""}
	var want []osipsStat
	if param == nil { // list_statistics without parameters lists them all
		want = osipsStats
	} else {
		items, err := param.Array()
		if err != nil || len(items) == 0 {
			return nil, invalid
		}
		for _, it := range items {
			var name string
			switch it.Type() {
			case fastjson.TypeString:
				name = string(it.GetStringBytes())
			case fastjson.TypeNumber:
				name = strconv.Itoa(int(valueint(it.GetFloat64())))
			default:
				return nil, invalid
			}
			for _, st := range osipsStats {
				group, isGroup := strings.CutSuffix(name, ":")
				switch {
				case name == "all" && method == "get_statistics",
					isGroup && method != "reset_statistics" && st.group == group,
					name == st.name || name == st.group+":"+st.name:
					want = append(want, st)
				}
			}
		}
	}
	if len(want) == 0 {
		return nil, &osipsErr{404, "Statistics Not Found", ""}
	}
	if method == "reset_statistics" {
		return []byte(`"OK"`), nil
	}
	e.mu.Lock()
	up := int(time.Since(e.started).Seconds())
	e.mu.Unlock()
	b := []byte{'{'}
	for i, st := range want {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendCJSONString(b, st.group+":"+st.name)
		b = append(b, ':')
		switch {
		case method == "list_statistics" && st.incremental:
			b = append(b, `"incremental"`...)
		case method == "list_statistics":
			b = append(b, `"non-incremental"`...)
		case st.name == "timestamp":
			b = strconv.AppendInt(b, int64(up), 10)
		case st.group == "shmem":
			b = strconv.AppendInt(b, osipsShmem(st.name), 10)
		default:
			b = append(b, '0')
		}
	}
	return append(b, '}'), nil
}

// osipsShmem is a plausible shared memory figure of a freshly started 3.6.8
// with the default 32 MiB (not recorded).
func osipsShmem(name string) int64 {
	const total, used = 32 << 20, 1 << 20
	switch name {
	case "total_size":
		return total
	case "used_size":
		return used
	case "real_used_size", "max_used_size":
		return used + 64<<10
	case "free_size":
		return total - used - 64<<10
	}
	return 120 // fragments
}

func (e *osipsEmu) eventID(name string) int {
	for i, n := range e.events {
		if n == name {
			return i
		}
	}
	return -1
}

// parseSocket parses an event socket string as the transport modules do.
func parseSocket(s string) (*osipsSub, bool) {
	proto, rest, ok := strings.Cut(s, ":")
	if !ok {
		return nil, false
	}
	sub := &osipsSub{proto: proto, rest: rest, socket: s}
	switch proto {
	case "udp", "tcp":
		addr := rest
		if proto == "tcp" {
			addr, sub.method, _ = strings.Cut(rest, "/")
		}
		host, port, ok := strings.Cut(addr, ":")
		n, err := strconv.Atoi(port)
		if !ok || host == "" || err != nil || n <= 0 || n > 65535 {
			return nil, false
		}
		sub.host, sub.port = host, n
	case "unix", "flatstore":
		if rest == "" {
			return nil, false
		}
	case "xmlrpc":
		if strings.Count(rest, ":") < 2 {
			return nil, false
		}
	case "virtual":
		f := strings.Fields(rest)
		if len(f) == 0 || (f[0] != "PARALLEL" && f[0] != "FAILOVER" && f[0] != "ROUND-ROBIN") {
			return nil, false
		}
		sub.rest = strings.Join(f, " ")
		sub.socket = "virtual:" + sub.rest
	default:
		return nil, false
	}
	return sub, true
}

// matches is the transports' match(): event_datagram compares a prefix of the address
// (a 3.6.8 bug, kept on purpose), event_stream never matches a socket with a /method
// (another 3.6.8 bug: re-subscribing adds a duplicate), the rest compare the text.
func (s *osipsSub) matches(n *osipsSub) bool {
	if s.proto != n.proto {
		return false
	}
	switch s.proto {
	case "udp":
		return s.port == n.port && strings.HasPrefix(s.host, n.host)
	case "unix":
		return strings.HasPrefix(s.rest, n.rest)
	case "tcp":
		return n.method == "" && s.method == "" && s.host == n.host && s.port == n.port
	}
	return s.rest == n.rest
}

// expired is checked lazily, at raise or listing time, with whole seconds.
func (s *osipsSub) expired(now int64) bool { return s.since+int64(s.expire) < now }

func (e *osipsEmu) purge(id int, now int64) {
	var live []*osipsSub
	for _, s := range e.subs[id] {
		if !s.expired(now) {
			live = append(live, s)
		}
	}
	e.subs[id] = live
}

var errBadParam = &osipsErr{400, "Bad parameter value", ""}

func (e *osipsEmu) subscribe(args osipsArgs) ([]byte, *osipsErr) {
	name, merr := stringParam(args["event"], "event")
	if merr != nil {
		return nil, merr
	}
	sock, merr := stringParam(args["socket"], "socket")
	if merr != nil {
		return nil, merr
	}
	expire := 3600
	if v, ok := args["expire"]; ok {
		if expire, merr = intParam(v, "expire"); merr != nil {
			return nil, merr
		}
		if expire < 0 {
			return nil, &osipsErr{-32602, "Invalid params", "Negative expire value"}
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	id := e.eventID(name)
	if id < 0 {
		return nil, errBadParam
	}
	sub, ok := parseSocket(sock)
	if !ok {
		return nil, errBadParam
	}
	now := time.Now().Unix()
	for _, s := range e.subs[id] {
		if s.matches(sub) {
			s.since, s.expire = now, expire
			return []byte(`"OK"`), nil
		}
	}
	sub.since, sub.expire = now, expire
	e.subs[id] = append([]*osipsSub{sub}, e.subs[id]...)
	return []byte(`"OK"`), nil
}

func appendSub(b []byte, s *osipsSub, now int64) []byte {
	b = append(b, `{"socket":`...)
	b = appendCJSONString(b, s.socket)
	b = fmt.Appendf(b, `,"expire":%d`, s.expire)
	if ttl := s.since + int64(s.expire) - now; ttl > 0 {
		return fmt.Appendf(b, `,"ttl":%d}`, ttl)
	}
	return append(b, `,"ttl":"expired"}`...)
}

func appendSubs(b []byte, subs []*osipsSub, now int64) []byte {
	b = append(b, '[')
	for i, s := range subs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendSub(b, s, now)
	}
	return append(b, ']')
}

func (e *osipsEmu) subscribersList(args osipsArgs) ([]byte, *osipsErr) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now().Unix()
	ev, ok := args["event"]
	if !ok {
		b := []byte(`{"Events":[`)
		first := true
		for id, name := range e.events {
			e.purge(id, now)
			if len(e.subs[id]) == 0 {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = fmt.Appendf(b, `{"name":"%s","id":%d,"Subscribers":`, name, id)
			b = appendSubs(b, e.subs[id], now)
			b = append(b, '}')
		}
		return append(b, "]}"...), nil
	}
	name, merr := stringParam(ev, "event")
	if merr != nil {
		return nil, merr
	}
	id := e.eventID(name)
	if id < 0 {
		return nil, &osipsErr{404, "Event not published", ""}
	}
	e.purge(id, now)
	if sv, ok := args["socket"]; ok {
		sock, merr := stringParam(sv, "socket")
		if merr != nil {
			return nil, merr
		}
		if want, ok := parseSocket(sock); ok {
			for _, s := range e.subs[id] {
				if s.matches(want) {
					b := fmt.Appendf(nil, `{"Event":{"name":"%s","id":%d,"Subscriber":`, name, id)
					b = appendSub(b, s, now)
					return append(b, "}}"...), nil
				}
			}
		}
		return nil, &osipsErr{404, "Subscriber does not exist", ""}
	}
	if len(e.subs[id]) == 0 {
		return []byte(`{"Event":{}}`), nil
	}
	b := fmt.Appendf(nil, `{"Event":{"name":"%s","id":%d,"Subscribers":`, name, id)
	b = appendSubs(b, e.subs[id], now)
	return append(b, "}}"...), nil
}

// miRaise is MI raise_event: array items are stringified; named params come as a
// string holding a JSON object, whose numbers stay numbers and whose other non-string
// values become their JSON text.
func (e *osipsEmu) miRaise(args osipsArgs) ([]byte, *osipsErr) {
	name, merr := stringParam(args["event"], "event")
	if merr != nil {
		return nil, merr
	}
	var payload []byte
	named := false
	if pv, ok := args["params"]; ok {
		switch pv.Type() {
		case fastjson.TypeArray:
			items := pv.GetArray()
			if len(items) > 0 {
				payload = []byte{'['}
				for i, it := range items {
					s, merr := stringParam(it, "params")
					if merr != nil {
						return nil, &osipsErr{-32602, "Invalid params", "Bad type for array item in parameter 'params'"}
					}
					if i > 0 {
						payload = append(payload, ',')
					}
					payload = appendCJSONString(payload, s)
				}
				payload = append(payload, ']')
			}
		case fastjson.TypeString, fastjson.TypeNumber:
			s, _ := stringParam(pv, "params")
			var p fastjson.Parser
			ov, err := p.Parse(s)
			if err != nil || ov.Type() != fastjson.TypeObject {
				return nil, &osipsErr{400, "Bad Params", ""}
			}
			named = true
			payload = []byte{'{'}
			first := true
			ov.GetObject().Visit(func(k []byte, mv *fastjson.Value) {
				if !first {
					payload = append(payload, ',')
				}
				first = false
				payload = appendCJSONString(payload, string(k))
				payload = append(payload, ':')
				switch mv.Type() {
				case fastjson.TypeNumber:
					payload = strconv.AppendInt(payload, int64(valueint(mv.GetFloat64())), 10)
				case fastjson.TypeString:
					payload = appendCJSONString(payload, string(mv.GetStringBytes()))
				default:
					payload = appendCJSONString(payload, string(cjsonPrint(nil, mv, false, 0)))
				}
			})
			payload = append(payload, '}')
		default:
			return nil, &osipsErr{400, "No Params", ""}
		}
	}
	e.mu.Lock()
	id := e.eventID(name)
	if id < 0 {
		e.mu.Unlock()
		return nil, &osipsErr{404, "Event not registered", ""}
	}
	e.purge(id, time.Now().Unix())
	if len(e.subs[id]) == 0 {
		e.mu.Unlock()
		return nil, &osipsErr{480, "Temporarily Unavailable", ""}
	}
	if e.cfg.ArrayParamsBug && e.lastNamed && len(payload) > 0 && payload[0] == '[' {
		payload = arrayAsEmptyKeys(payload)
	}
	e.lastNamed = named
	e.mu.Unlock()
	// OpenSIPS answers "OK" at once and has another process send the event.
	select {
	case e.raises <- func() { _ = e.raise(name, payload, true) }:
	default:
		return nil, &osipsErr{500, "Cannot Raise Event", ""}
	}
	return []byte(`"OK"`), nil
}

// arrayAsEmptyKeys turns ["a","b"] into {"":"a","":"b"}.
func arrayAsEmptyKeys(arr []byte) []byte {
	var p fastjson.Parser
	v, err := p.ParseBytes(arr)
	if err != nil {
		return arr
	}
	b := []byte{'{'}
	for i, it := range v.GetArray() {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `"":`...)
		b = cjsonPrint(b, it, false, 0)
	}
	return append(b, '}')
}

// raise sends the event to every live subscriber, newest first.
func (e *osipsEmu) raise(name string, params []byte, fromMI bool) error {
	if len(params) > 0 && !fromMI {
		var p fastjson.Parser
		v, err := p.ParseBytes(params)
		if err != nil || (v.Type() != fastjson.TypeObject && v.Type() != fastjson.TypeArray) {
			return fmt.Errorf("opensips emulator: params of %s must be a JSON object or array, got %q", name, params)
		}
		params = cjsonPrint(nil, v, false, 0)
	}
	e.mu.Lock()
	id := e.eventID(name)
	if id < 0 {
		e.mu.Unlock()
		return fmt.Errorf("opensips emulator: event %s is not published (add it to OpenSIPSConfig.Events)", name)
	}
	e.purge(id, time.Now().Unix())
	subs := append([]*osipsSub(nil), e.subs[id]...)
	e.mu.Unlock()
	var errs []error
	for _, s := range subs {
		if err := e.deliver(s, name, params); err != nil {
			errs = append(errs, fmt.Errorf("%s to %s: %w", name, s.socket, err))
		}
	}
	return errors.Join(errs...)
}

// eventPayload is evi_build_payload without id: no "params" member when there are none.
func eventPayload(method string, params []byte) []byte {
	b := append([]byte(`{"jsonrpc":"2.0","method":`), appendCJSONString(nil, method)...)
	if len(params) > 0 {
		b = append(b, `,"params":`...)
		b = append(b, params...)
	}
	return append(b, '}')
}

func (e *osipsEmu) deliver(s *osipsSub, name string, params []byte) error {
	switch s.proto {
	case "udp":
		addr, err := net.ResolveUDPAddr("udp4", net.JoinHostPort(s.host, strconv.Itoa(s.port)))
		if err != nil {
			return err
		}
		_, err = e.udpOut.WriteTo(eventPayload(name, params), addr)
		return err
	case "unix":
		c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.rest, Net: "unixgram"})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(eventPayload(name, params))
		return err
	case "tcp":
		method := name
		if s.method != "" {
			method = s.method
		}
		return e.stream(net.JoinHostPort(s.host, strconv.Itoa(s.port)), eventPayload(method, params))
	case "virtual":
		return e.deliverVirtual(s, name, params)
	}
	return fmt.Errorf("%s delivery is not emulated", s.proto)
}

// deliverVirtual applies event_virtual's policies as 3.6.8 does: PARALLEL sends to
// every member; ROUND-ROBIN strictly alternates and loses a dead member's turns;
// FAILOVER takes the first member that accepts, skips a failed one for
// FailoverTimeout, and drops the event when every member is failed or skipped. A UDP
// member fails only when the send itself does.
func (e *osipsEmu) deliverVirtual(s *osipsSub, name string, params []byte) error {
	f := strings.Fields(s.rest)
	policy, members := f[0], f[1:]
	if len(members) == 0 {
		return fmt.Errorf("virtual:%s has no members", policy)
	}
	member := func(m string) error {
		ms, ok := parseSocket(m)
		if !ok {
			return fmt.Errorf("bad member %q", m)
		}
		return e.deliver(ms, name, params)
	}
	switch policy {
	case "ROUND-ROBIN":
		e.mu.Lock()
		m := members[s.rr%len(members)]
		s.rr++
		e.mu.Unlock()
		return member(m)
	case "FAILOVER":
		timeout := e.cfg.FailoverTimeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		var errs []error
		for _, m := range members {
			e.mu.Lock()
			skip := time.Now().Before(s.failedUntil[m])
			e.mu.Unlock()
			if skip {
				continue
			}
			err := member(m)
			if err == nil {
				return nil
			}
			errs = append(errs, err)
			e.mu.Lock()
			if s.failedUntil == nil {
				s.failedUntil = make(map[string]time.Time)
			}
			s.failedUntil[m] = time.Now().Add(timeout)
			e.mu.Unlock()
		}
		return fmt.Errorf("FAILOVER: no member took the event, dropped: %w", errors.Join(errs...))
	}
	var errs []error
	for _, m := range members {
		errs = append(errs, member(m))
	}
	return errors.Join(errs...)
}

// osipsStream is event_stream's one persistent connection to a destination.
type osipsStream struct {
	c       net.Conn
	mu      sync.Mutex
	pending map[int64]chan error // reliable mode: event id -> outcome
	dead    bool
}

func (st *osipsStream) close(err error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.dead = true
	_ = st.c.Close()
	for id, ch := range st.pending {
		ch <- err
		delete(st.pending, id)
	}
}

// read parses the replies, concatenated JSON values: a reply with the id of a waiting
// event settles it ("error" member: failed); a reply without a numeric id tears the
// connection down and fails every waiting event; garbage closes the connection.
func (st *osipsStream) read() {
	dec := json.NewDecoder(st.c)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			st.close(fmt.Errorf("event_stream connection closed: %w", err))
			return
		}
		v, err := fastjson.ParseBytes(raw)
		idv := member(v, "id")
		if err != nil || idv == nil || idv.Type() != fastjson.TypeNumber {
			st.close(fmt.Errorf("event_stream reply without a numeric id: %s", raw))
			return
		}
		st.mu.Lock()
		ch, ok := st.pending[int64(valueint(idv.GetFloat64()))]
		delete(st.pending, int64(valueint(idv.GetFloat64())))
		st.mu.Unlock()
		if !ok {
			continue // "no pending queries with id N found!"
		}
		if ev := member(v, "error"); ev != nil {
			ch <- fmt.Errorf("event_stream reply is an error: %s", ev)
		} else {
			ch <- nil
		}
	}
}

// stream writes to event_stream's one persistent connection per destination, opened
// on the first event; a broken connection loses the event and the next one reconnects.
// In reliable mode it also waits for the reply.
func (e *osipsEmu) stream(addr string, payload []byte) error {
	e.sendMu.Lock()
	st := e.streams[addr]
	if st == nil || st.dead {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err != nil {
			e.sendMu.Unlock()
			return err
		}
		st = &osipsStream{c: c, pending: make(map[int64]chan error)}
		e.streams[addr] = st
		if e.cfg.StreamReliable {
			go st.read()
		} else {
			go func() { _, _ = io.Copy(io.Discard, c) }() // notification mode reads and drops replies
		}
	}
	var ch chan error
	if e.cfg.StreamReliable {
		e.nextID += 4
		if e.nextID <= 0 {
			e.nextID = 4
		}
		id := e.nextID
		payload = append(fmt.Appendf(nil, `{"id":%d,`, id), payload[1:]...)
		ch = make(chan error, 1)
		st.mu.Lock()
		st.pending[int64(id)] = ch
		st.mu.Unlock()
		defer func() {
			st.mu.Lock()
			delete(st.pending, int64(id))
			st.mu.Unlock()
		}()
	}
	_, err := st.c.Write(payload)
	e.sendMu.Unlock()
	if err != nil {
		st.close(err)
		return err
	}
	if ch == nil {
		return nil
	}
	timeout := e.cfg.StreamTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-ch:
		return err
	case <-t.C:
		return fmt.Errorf("event_stream: no reply within %s", timeout)
	}
}

func (e *osipsEmu) subscriptions() []OpenSIPSSubscription {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now().Unix()
	var out []OpenSIPSSubscription
	for id, name := range e.events {
		e.purge(id, now)
		for _, s := range e.subs[id] {
			out = append(out, OpenSIPSSubscription{Event: name, Socket: s.socket, Expire: s.expire, TTL: int(s.since + int64(s.expire) - now)})
		}
	}
	return out
}

// ---------------------------------------------------------------------------------
// real OpenSIPS (OPENSIPS_BIN)

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
