package testenv

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// The OpenSIPS emulator: its state, start, restart and timers. It is built
// from recordings of a real OpenSIPS 3.6.8 and stands in for one when
// OPENSIPS_BIN is not set.

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
