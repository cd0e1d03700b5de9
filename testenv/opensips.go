package testenv

import (
	"os"
	"testing"
	"time"
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
