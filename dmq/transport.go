package dmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sipside/sipside/internal/ratelog"
)

// handlerFunc answers one request. It runs on the transport's single worker,
// so requests are handled in the order they arrived (a SET then a SET_CELL_
// EXPIRE from the same node must not swap).
type handlerFunc func(req *Message, src netip.AddrPort) *Message

type inbound struct {
	req   *Message
	src   netip.AddrPort
	key   string
	reply replier
}

// replier sends a response back where its request came from: to the Via
// address over UDP, on the connection (or a new one to the Via) over TCP.
type replier func(raw []byte) error

// transport is the UDP side: one socket, a reader, one request worker, the
// client and server transaction tables.
type transport struct {
	conn    *net.UDPConn
	log     *slog.Logger
	rl      *ratelog.Logger
	metrics *nodeMetrics
	timers  Timers
	handle  handlerFunc
	// admit, when set, runs on the reader before a request is queued; a
	// non-nil answer is sent at once and the request goes no further.
	// Refusing strangers there keeps a flood out of the queue and the
	// transaction table, which would otherwise hold it for Timer J.
	admit handlerFunc
	trace func(in bool, peer netip.AddrPort, m *Message)

	tcp *tcpTransport // nil: UDP only

	clients clientTxs
	servers serverTxs
	queue   chan inbound
}

func listenUDP(addr NodeAddr) (*net.UDPConn, error) {
	ap, err := addr.udpAddr()
	if err != nil {
		return nil, fmt.Errorf("listen %s: host must be an IP address: %w", addr, err)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	// A Kamailio node answering a sync or relaying an htable storm sends
	// faster than any scheduler hiccup; let the kernel hold the burst.
	_ = conn.SetReadBuffer(8 << 20)
	return conn, nil
}

// run reads until ctx ends or the socket closes.
func (t *transport) run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); t.worker(ctx) }()
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tick.C:
				t.servers.sweep(now)
			}
		}
	}()
	defer wg.Wait()
	buf := make([]byte, 65536)
	for {
		n, src, err := t.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("dmq: read: %w", err)
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		t.receive(ctx, buf[:n], src, nil)
	}
}

// udpReplier answers to where the sl module would: the topmost Via.
func (t *transport) udpReplier(m *Message, src netip.AddrPort) replier {
	dst := replyAddr(m, src)
	return func(raw []byte) error {
		_, err := t.conn.WriteToUDPAddrPort(raw, dst)
		return err
	}
}

// receive handles one message; reply is nil for UDP (answer to the Via).
func (t *transport) receive(ctx context.Context, data []byte, src netip.AddrPort, reply func(m *Message) replier) {
	if len(strings.TrimSpace(string(data))) == 0 {
		return // CRLF keepalive
	}
	m, err := ParseMessage(data)
	if err != nil {
		t.drop("malformed", src, err)
		return
	}
	if t.trace != nil {
		t.trace(true, src, m)
	}
	if !m.IsRequest() {
		t.metrics.messages.With("in", channelOfResponse(m), "response").Inc()
		if !t.clients.deliver(m) {
			t.metrics.rejects.With("stray_response").Inc()
			t.log.Debug("dmq: response matches no transaction", "from", src.String(), "status", m.StatusCode, "call_id", m.CallID())
		}
		return
	}
	t.metrics.messages.With("in", channelOf(m), "request").Inc()
	if !m.canReply() {
		t.drop("unanswerable", src, fmt.Errorf("%s without Via, Call-ID or CSeq", m.Method))
		return
	}
	var rep replier
	if reply == nil {
		rep = t.udpReplier(m, src)
	} else {
		rep = reply(m)
	}
	if err := m.validateRequest(); err != nil {
		t.drop("bad_request", src, err)
		t.reply(rep, src, m.Reply(400, "Bad Request", newTag(), "", nil), channelOf(m), nil)
		return
	}
	if t.admit != nil {
		if resp := t.admit(m, src); resp != nil {
			t.reply(rep, src, resp, channelOf(m), nil)
			return
		}
	}
	key := serverKey(m)
	now := time.Now()
	if tx, isNew := t.servers.begin(key, now, t.timers.Timeout); !isNew {
		if tx.resp != nil {
			t.metrics.retransmissions.With(channelOf(m)).Inc()
			_ = tx.reply(tx.resp)
		}
		return
	}
	select {
	case t.queue <- inbound{req: m, src: src, key: key, reply: rep}:
	case <-ctx.Done():
	}
}

func (t *transport) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-t.queue:
			resp := t.handle(in.req, in.src)
			if resp == nil {
				continue
			}
			t.reply(in.reply, in.src, resp, channelOf(in.req), func(raw []byte) {
				t.servers.finish(in.key, raw, in.reply, time.Now(), t.timers.Timeout)
			})
		}
	}
}

// reply sends resp; before is called with the bytes before they leave, so
// that a copy of the request arriving right after the answer finds it cached.
func (t *transport) reply(rep replier, peer netip.AddrPort, resp *Message, channel string, before func(raw []byte)) []byte {
	if t.trace != nil {
		t.trace(false, peer, resp)
	}
	raw := resp.Bytes()
	if before != nil {
		before(raw)
	}
	if err := rep(raw); err != nil {
		t.rl.WarnKey("reply "+peer.String(), "dmq: sending reply failed", "to", peer.String(), "status", resp.StatusCode, "err", err)
	}
	t.metrics.messages.With("out", channel, "response").Inc()
	return raw
}

func (t *transport) send(dst netip.AddrPort, raw []byte, channel string, count bool) error {
	if count {
		t.metrics.messages.With("out", channel, "request").Inc()
	}
	if _, err := t.conn.WriteToUDPAddrPort(raw, dst); err != nil {
		return fmt.Errorf("send to %s: %w", dst, err)
	}
	return nil
}

// drop counts refused traffic and logs it at most once a second per reason
// and source, so that a flood of garbage cannot flood the log too.
func (t *transport) drop(reason string, src netip.AddrPort, err error) {
	t.metrics.rejects.With(reason).Inc()
	t.rl.WarnKey(reason+" "+src.String(), "dmq: refused message", "reason", reason, "from", src.String(), "err", err)
}

// replyAddr is where the sl module would answer: the topmost Via's sent-by
// (received/rport when present), falling back to the packet's source when the
// Via names no usable IP address.
func replyAddr(m *Message, src netip.AddrPort) netip.AddrPort {
	v, _ := m.Get("Via")
	v, _, _ = strings.Cut(v, ",")
	// "SIP/2.0/UDP host[:port];params"
	_, sentBy, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok {
		return src
	}
	sentBy, _, _ = strings.Cut(strings.TrimSpace(sentBy), ";")
	host, port, err := splitHostPort(strings.TrimSpace(sentBy))
	if err != nil {
		return src
	}
	if r := headerParam(v, "received"); r != "" {
		host = r
	}
	if rp := headerParam(v, "rport"); rp != "" {
		if n, err := strconv.Atoi(rp); err == nil && n > 0 && n < 65536 {
			port = n
		}
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return src
	}
	if port == 0 {
		port = 5060
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port))
}

// channelOf is the DMQ channel (peer id) of a request: the R-URI user, as
// dmq_handle_message looks it up. Unknown or garbage users are folded into
// one label so that metrics stay bounded.
func channelOf(m *Message) string {
	u, err := ParseURI(m.RequestURI)
	if err != nil || u.User == "" {
		return "invalid"
	}
	return boundedChannel(u.User)
}

func channelOfResponse(m *Message) string {
	to, _ := m.Get("To")
	u, err := ParseURI(nameAddrURI(to))
	if err != nil || u.User == "" {
		return "invalid"
	}
	return boundedChannel(u.User)
}

func boundedChannel(c string) string {
	switch c {
	case ChannelNotification, ChannelHTable, ChannelUsrloc, ChannelDialog:
		return c
	}
	return "other"
}
