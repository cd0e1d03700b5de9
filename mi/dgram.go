package mi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/valyala/fastjson"
)

// maxRequestOpenSIPS is mi_datagram's buffer: a longer request is cut and answered
// "400 Parse_error" (captures/mi-02-datagram-size-limit.txt).
const maxRequestOpenSIPS = 65457

// maxRequestKamailio is jsonrpcs's datagram buffer (JSONRPC_DGRAM_BUF_SIZE).
const maxRequestKamailio = 65456

// unixReadBuf exceeds the default unix datagram size limit, so that a reply is
// either read whole or seen to be truncated.
const unixReadBuf = 1 << 20

var socketSeq atomic.Uint64

// dgram is the udp / unix datagram transport: one socket per client, replies
// matched to calls by id.
type dgram struct {
	t         Target
	socketDir string
	readBuf   int // bytes; a longer unix datagram is truncated
	drop      func(reason string, b []byte)

	mu      sync.Mutex
	conn    net.Conn
	local   string // our unix socket path, removed on close
	pending map[uint32]chan dgramReply
	closed  bool
}

type dgramReply struct {
	body []byte
	err  error
}

func newDgram(t Target, socketDir string, drop func(string, []byte)) *dgram {
	if socketDir == "" {
		socketDir = os.TempDir()
	}
	return &dgram{t: t, socketDir: socketDir, readBuf: unixReadBuf, drop: drop, pending: make(map[uint32]chan dgramReply)}
}

func (d *dgram) maxRequest() int {
	if d.t.Dialect == Kamailio {
		return maxRequestKamailio
	}
	return maxRequestOpenSIPS
}

func (d *dgram) roundTrip(ctx context.Context, id uint32, method string, params []byte) ([]byte, error) {
	req := encodeRequest(d.t.Dialect, method, params, id, "")
	if len(req) > d.maxRequest() {
		return nil, fmt.Errorf("request is %d bytes, over the %d a %s datagram takes: use http or fifo for it", len(req), d.maxRequest(), d.t.Dialect)
	}
	ch := make(chan dgramReply, 1)
	conn, err := d.register(id, ch)
	if err != nil {
		return nil, err
	}
	defer d.unregister(id)
	if _, err := conn.Write(req); err != nil {
		return nil, d.sendError(err)
	}
	select {
	case r := <-ch:
		return r.body, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (d *dgram) sendError(err error) error {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return d.refused(err)
	}
	return fmt.Errorf("send to %s: %w", d.t.Addr, err)
}

func (d *dgram) refused(err error) error {
	if d.t.Transport == Unix {
		return fmt.Errorf("nothing listens on %s: is the proxy running with its datagram MI socket there? (%w)", d.t.Addr, err)
	}
	return fmt.Errorf("connection refused by %s: is the proxy running with its datagram MI socket on that port? (%w)", d.t.Addr, err)
}

// register records a waiting call, opening the socket on first use or after it broke.
func (d *dgram) register(id uint32, ch chan dgramReply) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, net.ErrClosed
	}
	if d.conn == nil {
		if err := d.open(); err != nil {
			return nil, err
		}
	}
	d.pending[id] = ch
	return d.conn, nil
}

func (d *dgram) unregister(id uint32) {
	d.mu.Lock()
	delete(d.pending, id)
	d.mu.Unlock()
}

// open dials the proxy. UDP is connected so that an ICMP port unreachable fails the
// call at once instead of after the timeout; both proxies answer from the port
// they listen on. A unix client must bind a path of its own or the reply has
// nowhere to go, and must not connect: OpenSIPS's mi_datagram answers from a
// second, unbound socket, and Linux refuses (EPERM) a datagram to a connected
// socket from anyone but its peer.
func (d *dgram) open() error {
	var conn net.Conn
	switch d.t.Transport {
	case UDP:
		c, err := net.Dial("udp", d.t.Addr)
		if err != nil {
			return fmt.Errorf("open udp socket to %s: %w", d.t.Addr, err)
		}
		conn = c
	case Unix:
		local := filepath.Join(d.socketDir, "sipside-mi-"+strconv.Itoa(os.Getpid())+"-"+strconv.FormatUint(socketSeq.Add(1), 10)+".sock")
		_ = os.Remove(local)
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: local, Net: "unixgram"})
		if err != nil {
			return fmt.Errorf("open unix datagram socket %s for replies from %s: %w", local, d.t.Addr, err)
		}
		// The proxy may run as another user: let it write to our socket.
		_ = os.Chmod(local, 0o666)
		conn, d.local = unixClient{c, &net.UnixAddr{Name: d.t.Addr, Net: "unixgram"}}, local
	}
	d.conn = conn
	go d.readLoop(conn)
	return nil
}

func (d *dgram) readLoop(conn net.Conn) {
	size := 65536 // the largest UDP payload fits
	if d.t.Transport == Unix {
		size = d.readBuf
	}
	buf := make([]byte, size)
	var p fastjson.Parser
	for {
		n, trunc, err := readDatagram(conn, buf)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				// The kernel tells a connected UDP socket that a datagram we sent met a closed
				// port; every call waiting on this socket went to that port.
				d.failAll(d.refused(err))
				continue
			}
			d.mu.Lock()
			if d.conn == conn {
				d.conn = nil
				if d.local != "" {
					_ = os.Remove(d.local)
					d.local = ""
				}
			}
			d.mu.Unlock()
			if !errors.Is(err, net.ErrClosed) {
				d.failAll(fmt.Errorf("read from %s: %w", d.t.Addr, err))
			}
			conn.Close()
			return
		}
		body := append([]byte(nil), buf[:n]...)
		if trunc {
			d.truncated(body, size)
			continue
		}
		d.dispatch(&p, body)
	}
}

// unixClient is a bound, unconnected unix datagram socket whose Write sends to
// the proxy's path; the kernel reports a missing path on each send.
type unixClient struct {
	*net.UnixConn
	to *net.UnixAddr
}

func (u unixClient) Write(b []byte) (int, error) { return u.WriteToUnix(b, u.to) }

func readDatagram(conn net.Conn, buf []byte) (int, bool, error) {
	if uc, ok := conn.(unixClient); ok {
		n, _, flags, _, err := uc.ReadMsgUnix(buf, nil)
		return n, flags&syscall.MSG_TRUNC != 0, err
	}
	n, err := conn.Read(buf)
	return n, false, err
}

// dispatch hands a reply to the call with its id. mi_datagram's bare-text replies
// ("400 Parse_error", "500 Internal error") and id-less JSON errors carry no id: they
// can only be given to a call when exactly one is waiting.
func (d *dgram) dispatch(p *fastjson.Parser, body []byte) {
	v, err := p.ParseBytes(body)
	if err != nil && parseStatusLine(body) == nil {
		d.drop("malformed", body)
		return
	}
	var (
		id    uint32
		known bool
	)
	if err == nil {
		if iv := v.Get("id"); iv != nil && iv.Type() == fastjson.TypeNumber {
			if n, err := iv.Uint(); err == nil && n <= 0xffffffff {
				id, known = uint32(n), true
			}
		}
	}
	d.mu.Lock()
	var ch chan dgramReply
	if known {
		ch = d.pending[id]
	} else if len(d.pending) == 1 && (err != nil || v.Get("id") == nil || v.Get("id").Type() == fastjson.TypeNull) {
		for _, c := range d.pending {
			ch = c
		}
	}
	d.mu.Unlock()
	if ch == nil {
		reason := "unknown_id" // late (its call timed out) or never ours
		if !known {
			reason = "no_id"
		}
		d.drop(reason, body)
		return
	}
	select {
	case ch <- dgramReply{body: body}:
	default:
		d.drop("duplicate", body)
	}
}

// truncated handles a reply longer than the read buffer: its id may be cut off, so
// it fails the call only when exactly one is waiting.
func (d *dgram) truncated(body []byte, size int) {
	d.mu.Lock()
	var ch chan dgramReply
	if len(d.pending) == 1 {
		for _, c := range d.pending {
			ch = c
		}
	}
	d.mu.Unlock()
	d.drop("truncated", body)
	if ch != nil {
		select {
		case ch <- dgramReply{err: fmt.Errorf("reply over %d bytes was truncated: use http or fifo for it", size)}:
		default:
		}
	}
}

func (d *dgram) failAll(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ch := range d.pending {
		select {
		case ch <- dgramReply{err: err}:
		default:
		}
	}
}

func (d *dgram) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	var err error
	if d.conn != nil {
		err = d.conn.Close()
		d.conn = nil
	}
	if d.local != "" {
		_ = os.Remove(d.local)
		d.local = ""
	}
	for _, ch := range d.pending {
		select {
		case ch <- dgramReply{err: net.ErrClosed}:
		default:
		}
	}
	return err
}
