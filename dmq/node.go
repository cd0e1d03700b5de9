package dmq

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sipside/sipside/internal/jsonstr"
	"github.com/sipside/sipside/internal/ratelog"
)

// Request is a KDMQ request as a peer sees it.
type Request struct {
	Channel     string
	From        NodeAddr       // the sender's server_address, from the From URI
	Src         netip.AddrPort // where the packet came from
	Verified    bool           // From matches Src (see fromSource)
	Known       bool           // Verified, and From is a node of the list (not pending)
	Listed      bool           // Verified, and From is in the list in any status (a pending seed too)
	ContentType string
	Body        []byte
	Msg         *Message
}

// Peer handles one channel. Handle returns the SIP status code of the answer;
// it runs on the node's single request worker and must not block on the
// network (use Node.Go for sends).
type Peer interface {
	Channel() string
	Handle(r *Request) int
	// SyncRequest is the body asking a node for its full data set, sent once
	// to every node this node starts talking to; nil when the peer needs none.
	SyncRequest() []byte
}

// Node is a member of a DMQ bus.
type Node struct {
	cfg     Config
	self    NodeAddr
	seeds   []NodeAddr
	log     *slog.Logger
	metrics *nodeMetrics
	opts    Options
	list    *NodeList
	peers   map[string]Peer

	htable *HTable
	usrloc *Usrloc
	dialog *Dialogs

	// rl logs refusals at most once a second per reason and source.
	rl *ratelog.Logger

	// Outgoing notifications go through a fixed pool of workers; a node
	// is queued at most once (notifyMF holds its Max-Forwards), so the
	// work never exceeds one ping per node in the list, however many
	// notifications ask for more.
	notifyQ  chan NodeAddr
	notifyMu sync.Mutex
	notifyMF map[NodeAddr]int

	mu      sync.Mutex
	tr      *transport
	runCtx  context.Context
	closing bool
	sends   sync.WaitGroup

	ready      chan struct{}
	joined     chan struct{}
	joinedOnce sync.Once
	toTag      string
	callSeq    uint64
}

// New builds a node from a validated configuration; Run starts it.
func New(cfg Config, opts Options) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	self, _ := ParseNodeAddr(cfg.Listen)
	n := &Node{
		cfg:     cfg,
		self:    self,
		log:     opts.Logger,
		metrics: newNodeMetrics(opts.Metrics),
		opts:    opts,
		list:    NewNodeList(self),
		peers:   make(map[string]Peer),
		ready:   make(chan struct{}),
		joined:  make(chan struct{}),
		toTag:   randHex(16),
		callSeq: rand.Uint64(),
	}
	if n.log == nil {
		n.log = slog.Default()
	}
	n.log = n.log.With("dmq_node", self.String())
	n.rl = ratelog.New(n.log, time.Second)
	n.rl.OnSuppress = n.metrics.logSuppressed.With().Inc
	n.list.SetMax(cfg.MaxNodes)
	// Seeds are queued without the cap, and a node is queued once: the
	// queue can hold every node, so a ping round never overflows it.
	n.notifyQ = make(chan NodeAddr, cfg.MaxNodes+len(cfg.Seeds)+1)
	n.notifyMF = make(map[NodeAddr]int)
	for _, s := range cfg.Seeds {
		a, _ := ParseNodeAddr(s)
		n.seeds = append(n.seeds, a)
		n.list.AddSeed(a)
	}
	for _, p := range cfg.Peers {
		switch p {
		case ChannelHTable:
			n.htable = newHTable(n, cfg.HTables, cfg.MaxCells)
			n.peers[p] = n.htable
		case ChannelUsrloc:
			n.usrloc = newUsrloc(n)
			n.peers[p] = n.usrloc
		case ChannelDialog:
			n.dialog = newDialogs(n)
			n.peers[p] = n.dialog
		}
	}
	n.updateNodeGauge()
	return n, nil
}

// Self is this node's identity.
func (n *Node) Self() NodeAddr { return n.self }

// HTable is the htable mirror, nil when the peer is not configured.
func (n *Node) HTable() *HTable { return n.htable }

// Usrloc is the usrloc view, nil when the peer is not configured.
func (n *Node) Usrloc() *Usrloc { return n.usrloc }

// Dialogs is the dialog view, nil when the peer is not configured.
func (n *Node) Dialogs() *Dialogs { return n.dialog }

// Nodes returns the node list, self first.
func (n *Node) Nodes() []NodeInfo { return n.list.Snapshot() }

// Ready is closed once the socket is bound.
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Joined is closed after the first successful notification exchange.
func (n *Node) Joined() <-chan struct{} { return n.joined }

// Run binds the socket, joins the bus and serves until ctx ends; then it
// leaves (announcing itself disabled, bounded by LeaveTimeout) and returns.
func (n *Node) Run(ctx context.Context) error {
	conn, err := listenUDP(n.self)
	if err != nil {
		return err
	}
	// The transports outlive ctx by the leave: answers to it must still be read.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	var ln *net.TCPListener
	if n.self.Transport == "tcp" {
		if ln, err = listenTCP(n.self); err != nil {
			conn.Close()
			return err
		}
	}
	tr := &transport{
		conn:    conn,
		log:     n.log,
		rl:      n.rl,
		metrics: n.metrics,
		timers:  Timers{T1: n.cfg.T1.Std(), T2: n.cfg.T2.Std(), Timeout: n.cfg.Timeout.Std()},
		handle:  n.handleRequest,
		admit:   n.admit,
		trace:   n.opts.Trace,
		queue:   make(chan inbound, 4096),
	}
	n.mu.Lock()
	n.tr, n.runCtx = tr, runCtx
	n.mu.Unlock()

	tr.tcp = &tcpTransport{t: tr, ln: ln, ctx: runCtx}
	tcpDone := make(chan struct{})
	go func() { tr.tcp.run(runCtx); close(tcpDone) }()
	trDone := make(chan error, 1)
	go func() { trDone <- tr.run(runCtx) }()
	for range notifyWorkers {
		n.Go(n.notifyWorker)
	}
	close(n.ready)
	n.log.Info("dmq: node started", "seeds", n.cfg.Seeds, "peers", n.cfg.Peers)

	// Join: notify every seed with Max-Forwards 2 so that it re-broadcasts us.
	n.pingAll(true)
	tick := time.NewTicker(n.cfg.PingInterval.Std())
	defer tick.Stop()
	expireTick := time.NewTicker(time.Second)
	defer expireTick.Stop()
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-trDone:
			runErr = err
			trDone = nil
			break loop
		case <-tick.C:
			n.pingAll(false)
		case <-expireTick.C:
			if n.htable != nil {
				n.htable.expire()
			}
			if n.usrloc != nil {
				n.usrloc.expire()
			}
			if n.dialog != nil {
				n.dialog.expire()
			}
		}
	}
	if runErr == nil {
		leaveCtx, cancelLeave := context.WithTimeout(context.WithoutCancel(ctx), n.cfg.LeaveTimeout.Std())
		n.leave(leaveCtx)
		cancelLeave()
	}
	cancel()
	n.mu.Lock()
	n.closing = true
	n.mu.Unlock()
	n.sends.Wait()
	conn.Close()
	<-tcpDone
	if trDone != nil {
		if err := <-trDone; err != nil && runErr == nil {
			runErr = err
		}
	}
	n.log.Info("dmq: node stopped")
	return runErr
}

// Go runs f in the background with the node's run context; Run waits for it
// before returning.
func (n *Node) Go(f func(ctx context.Context)) {
	n.mu.Lock()
	ctx := n.runCtx
	// Add under the lock that Run takes before Wait: no Add after Wait began.
	if ctx == nil || ctx.Err() != nil || n.closing {
		n.mu.Unlock()
		return
	}
	n.sends.Add(1)
	n.mu.Unlock()
	go func() {
		defer n.sends.Done()
		f(ctx)
	}()
}

// notifyWorkers is how many notifications are in flight at most. A node that
// does not answer holds a worker for Timeout; the others still get theirs.
const notifyWorkers = 16

// queueNotify asks a worker to notify a. A node already queued is not queued
// again (its Max-Forwards is raised if need be); a full queue drops the
// request, counted: the next ping round asks again.
func (n *Node) queueNotify(a NodeAddr, maxForwards int) {
	n.notifyMu.Lock()
	defer n.notifyMu.Unlock()
	if mf, ok := n.notifyMF[a]; ok {
		n.notifyMF[a] = max(mf, maxForwards)
		return
	}
	select {
	case n.notifyQ <- a:
		n.notifyMF[a] = maxForwards
	default:
		n.refuse("notify_queue_full", netip.AddrPort{}, "dmq: notification queue full; dropping a notification", "to", a.String())
	}
}

func (n *Node) notifyWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-n.notifyQ:
			n.notifyMu.Lock()
			mf := n.notifyMF[a]
			delete(n.notifyMF, a)
			n.notifyMu.Unlock()
			n.notify(ctx, a, mf)
		}
	}
}

// pingAll notifies every non-local node (any status) with this node's list:
// Kamailio's ping timer. Seeds that are not active get Max-Forwards 2, a
// re-join that makes them announce this node to the others.
func (n *Node) pingAll(join bool) {
	for _, o := range n.list.Others(false) {
		mf := 1
		if join || (o.Seed && o.Status != StatusActive) {
			mf = 2
		}
		n.queueNotify(o.Addr, mf)
	}
}

// refuse counts refused traffic by reason and logs it at most once a second
// per reason and source.
func (n *Node) refuse(reason string, src netip.AddrPort, msg string, args ...any) {
	n.refuseN(reason, 1, src, msg, args...)
}

// refuseN is refuse for count items refused at once (lines of one body).
func (n *Node) refuseN(reason string, count int, src netip.AddrPort, msg string, args ...any) {
	n.metrics.rejects.With(reason).Add(uint64(count))
	key := reason
	if src.IsValid() {
		key += " " + src.String()
		args = append(args, "src", src.String())
	}
	n.rl.WarnKey(key, msg, append(args, "reason", reason)...)
}

// notify sends this node's list to a and applies the answer as Kamailio's
// notification response callback does.
func (n *Node) notify(ctx context.Context, a NodeAddr, maxForwards int) {
	if !a.speakable() {
		return // tls and sctp are not spoken; such nodes stay as listed by others
	}
	statusAtSend, ok := n.list.startPing(a)
	if !ok {
		return
	}
	defer n.list.endPing(a)
	bodies, err := n.list.Bodies(maxNodeListBody)
	if err != nil {
		n.log.Error("dmq: own node list is invalid; not sending it", "err", err)
		return
	}
	resp, err := n.Send(ctx, a, ChannelNotification, "text/plain", bodies[0], maxForwards)
	switch {
	case errors.Is(err, ErrTimeout):
		if c := n.list.timedOut(a, statusAtSend); c != nil {
			n.nodeChanged(*c, a.String())
		}
		return
	case err != nil:
		if ctx.Err() == nil {
			n.rl.WarnKey("notify "+a.String(), "dmq: notification failed", "to", a.String(), "err", err)
		}
		return
	case resp.StatusCode != 200:
		n.log.Debug("dmq: notification answered", "to", a.String(), "status", resp.StatusCode)
		return
	}
	c, needSync := n.list.seen(a)
	if c != nil {
		n.nodeChanged(*c, a.String())
	}
	lines, err := ParseNodeList(resp.Body)
	if err != nil {
		n.refuse("bad_node_list", netip.AddrPort{}, "dmq: node list in a 200 refused", "from", a.String(), "err", err)
	} else {
		n.applyLines(lines, a)
	}
	n.joinedOnce.Do(func() { close(n.joined) })
	if needSync {
		n.syncWith(a)
	}
	// The rest of a list too long for one datagram: Kamailio merges each
	// body, so the parts add up. Their answers carry nothing new.
	for _, body := range bodies[1:] {
		if _, err := n.Send(ctx, a, ChannelNotification, "text/plain", body, 1); err != nil {
			return
		}
	}
}

// applyLines merges a validated list that node a answered with, and probes
// nodes heard of for the first time, so that the init sync reaches them once
// they know this node.
func (n *Node) applyLines(lines []NodeLine, a NodeAddr) []NodeChange {
	r := n.list.MergeFrom(lines, a, true)
	n.countMerge(r, netip.AddrPort{}, a)
	for _, c := range r.Changes {
		n.nodeChanged(c, a.String())
		if c.Added && c.New == StatusActive {
			n.queueNotify(c.Addr, 1)
		}
	}
	return r.Changes
}

// countMerge counts and logs the lines a merge refused.
func (n *Node) countMerge(r MergeResult, src netip.AddrPort, from NodeAddr) {
	if r.OverCap > 0 {
		n.refuseN("max_nodes", r.OverCap, src, "dmq: node list full (dmq.max_nodes); new nodes refused",
			"from", from.String(), "refused", r.OverCap, "max_nodes", n.cfg.MaxNodes)
	}
	if r.Foreign > 0 {
		n.refuseN("foreign_node_line", r.Foreign, src, "dmq: node list from a sender that is not a node; only its own line applied",
			"from", from.String(), "ignored", r.Foreign)
	}
}

// syncWith asks a for every peer's full data set.
func (n *Node) syncWith(a NodeAddr) {
	for _, ch := range []string{ChannelHTable, ChannelUsrloc, ChannelDialog} {
		p, ok := n.peers[ch]
		if !ok {
			continue
		}
		body := p.SyncRequest()
		if body == nil {
			continue
		}
		if ch == ChannelHTable {
			n.htable.markAsked(a)
		}
		n.Go(func(ctx context.Context) {
			resp, err := n.Send(ctx, a, ch, "application/json", body, 1)
			if err != nil {
				if ctx.Err() == nil {
					n.rl.WarnKey("sync "+a.String(), "dmq: sync request failed", "to", a.String(), "channel", ch, "err", err)
				}
				return
			}
			if resp.StatusCode != 200 {
				n.rl.WarnKey("sync "+a.String(), "dmq: sync request refused", "to", a.String(), "channel", ch, "status", resp.StatusCode)
			}
		})
	}
}

// leave announces this node disabled to every node, as a voluntary leave that
// Kamailio understands (it stops listing us; it deletes us once we stop
// answering its pings).
func (n *Node) leave(ctx context.Context) {
	n.list.setLocal(StatusDisabled)
	body, err := FormatNodeList([]NodeLine{{Addr: n.self, Status: StatusDisabled, HasStatus: true}})
	if err != nil {
		n.log.Error("dmq: cannot build leave notification", "err", err)
		return
	}
	var wg sync.WaitGroup
	for _, o := range n.list.Others(false) {
		if !o.Addr.speakable() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := n.Send(ctx, o.Addr, ChannelNotification, "text/plain", body, 1); err != nil {
				n.log.Debug("dmq: leave notification unanswered", "to", o.Addr.String(), "err", err)
			}
		}()
	}
	wg.Wait()
	n.log.Info("dmq: left the bus")
}

// Send runs one KDMQ client transaction to a and returns its final answer.
func (n *Node) Send(ctx context.Context, a NodeAddr, channel, contentType string, body []byte, maxForwards int) (*Message, error) {
	n.mu.Lock()
	tr := n.tr
	n.mu.Unlock()
	if tr == nil {
		return nil, errors.New("dmq: node is not running")
	}
	dst, err := a.udpAddr()
	if err != nil {
		return nil, fmt.Errorf("dmq: node %s: host must be an IP address: %w", a, err)
	}
	req := n.newRequest(a, channel, contentType, body, maxForwards)
	if n.opts.Trace != nil {
		n.opts.Trace(false, dst, req)
	}
	return tr.roundTripOn(ctx, dst, a.Transport == "tcp", req, boundedChannel(channel))
}

// Broadcast sends body on channel to every active node but self and waits for
// all answers. Receivers never relay, so this is how a change made here
// reaches the whole bus. The error lists the nodes that did not answer 200.
func (n *Node) Broadcast(ctx context.Context, channel, contentType string, body []byte) error {
	var others []NodeInfo
	for _, o := range n.list.Others(true) {
		if o.Addr.speakable() {
			others = append(others, o)
		}
	}
	errs := make([]error, len(others))
	var wg sync.WaitGroup
	for i, o := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := n.Send(ctx, o.Addr, channel, contentType, body, 1)
			switch {
			case err != nil:
				errs[i] = err
			case resp.StatusCode != 200:
				errs[i] = fmt.Errorf("%s answered %d %s", o.Addr, resp.StatusCode, resp.Reason)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (n *Node) newRequest(a NodeAddr, channel, contentType string, body []byte, maxForwards int) *Message {
	// As Kamailio does, ;transport= goes on non-UDP URIs only.
	target := URI{User: channel, Host: a.Host, Port: a.Port}
	from := URI{User: channel, Host: n.self.Host, Port: n.self.Port}
	if a.Transport != "" {
		target.Params = []Param{{"transport", a.Transport}}
	}
	if n.self.Transport != "" {
		from.Params = []Param{{"transport", n.self.Transport}}
	}
	via := "SIP/2.0/UDP " + hostPort(n.self.Host, n.self.Port)
	if a.Transport == "tcp" {
		// rport makes the answer come back on this connection rather than a
		// new one to the listen port.
		via = "SIP/2.0/TCP " + hostPort(n.self.Host, n.self.Port) + ";rport"
	}
	n.mu.Lock()
	n.callSeq++
	seq := n.callSeq
	n.mu.Unlock()
	return &Message{
		Method:     MethodKDMQ,
		RequestURI: target.String(),
		Headers: []Header{
			{"Via", via + ";branch=z9hG4bK" + randHex(16)},
			{"To", "<" + target.String() + ">"},
			{"From", "<" + from.String() + ">;tag=" + randHex(16)},
			{"CSeq", "10 KDMQ"},
			{"Call-ID", strconv.FormatUint(seq, 16) + "-" + strconv.Itoa(os.Getpid()) + "@" + n.self.Host},
			{"Content-Length", ""},
			{"User-Agent", userAgent},
			{"Max-Forwards", strconv.Itoa(maxForwards)},
			{"Content-Type", contentType},
		},
		Body: body,
	}
}

// handleRequest answers one request as Kamailio's script + dmq module would.
func (n *Node) handleRequest(req *Message, src netip.AddrPort) *Message {
	switch req.Method {
	case MethodKDMQ:
	case "OPTIONS":
		return req.Reply(200, "OK", n.toTag, "", nil)
	case "ACK":
		return nil
	default:
		n.metrics.rejects.With("method").Inc()
		r := req.Reply(405, reasonPhrase(405), n.toTag, "", nil)
		r.Headers = append(r.Headers[:len(r.Headers)-1], Header{"Allow", "KDMQ, OPTIONS"}, Header{"Content-Length", ""})
		return r
	}
	r, resp := n.request(req, src)
	if resp != nil {
		return resp
	}
	if r.Channel == ChannelNotification {
		return n.handleNotification(req, r, src)
	}
	code := n.peers[r.Channel].Handle(r)
	if code == 400 || code == 500 {
		n.metrics.rejects.With("bad_body").Inc()
	}
	return req.Reply(code, reasonPhrase(code), n.toTag, "", nil)
}

// admit refuses, on the reader, the KDMQ requests the worker would refuse
// without looking at their body: unknown channels and strangers.
func (n *Node) admit(req *Message, src netip.AddrPort) *Message {
	if req.Method != MethodKDMQ {
		return nil
	}
	r, resp := n.request(req, src)
	if resp != nil || r.Channel == ChannelNotification {
		return resp
	}
	return nil
}

// request reads a KDMQ request's channel and sender; a non-nil answer
// refuses it (bad URI, unknown channel, or a peer channel from an address
// that is not a node).
func (n *Node) request(req *Message, src netip.AddrPort) (*Request, *Message) {
	u, err := ParseURI(req.RequestURI)
	if err != nil || u.User == "" {
		n.refuse("bad_request", src, "dmq: KDMQ with an unusable request URI", "uri", req.RequestURI, "err", err)
		return nil, req.Reply(400, reasonPhrase(400), n.toTag, "", nil)
	}
	r := &Request{Channel: u.User, Body: req.Body, Msg: req, Src: src}
	r.ContentType, _ = req.Get("Content-Type")
	if fu, err := ParseURI(req.FromURI()); err == nil {
		if a, err := addrFromURI(fu); err == nil {
			r.From = a
			r.Verified = fromSource(a, src)
			info, ok := n.list.Lookup(a)
			r.Listed = r.Verified && ok && !info.Local
			r.Known = r.Listed && info.Status != StatusPending
		}
	}
	if r.Channel == ChannelNotification {
		return r, nil
	}
	if _, ok := n.peers[r.Channel]; !ok {
		n.metrics.rejects.With("unknown_channel").Inc()
		return nil, req.Reply(404, reasonPhrase(404), n.toTag, "", nil)
	}
	if !r.Known {
		// Kamailio scripts guard these channels with dmq_is_from_node(); a
		// stranger must not fill the mirror or fire events into the routes.
		n.refuse("not_from_node", src, "dmq: KDMQ from an address that is not a node; refused",
			"channel", r.Channel, "from", r.From.String())
		return nil, req.Reply(403, reasonPhrase(403), n.toTag, "", nil)
	}
	return r, nil
}

// fromSource reports whether a packet from src can be node a's: Kamailio
// sends KDMQ from the socket of its server_address (dmq_server_socket), so
// over UDP the source is exactly the node's address; over TCP the port is
// an ephemeral one and only the IP is checked (as dmq_is_from_node does).
func fromSource(a NodeAddr, src netip.AddrPort) bool {
	ap, err := a.udpAddr()
	if err != nil || !src.IsValid() {
		return false
	}
	if a.Transport == "tcp" {
		return ap.Addr() == src.Addr()
	}
	return ap == src
}

// handleNotification is dmq_notification_callback with validation added: a
// body with any bad line is refused whole with 400 (Kamailio 5.6.3 would
// deadlock on it instead).
func (n *Node) handleNotification(req *Message, r *Request, src netip.AddrPort) *Message {
	lines, err := ParseNodeList(req.Body)
	if err != nil {
		n.refuse("bad_node_list", src, "dmq: node list refused", "err", err)
		return req.Reply(400, "Bad Node List", n.toTag, "", nil)
	}
	if !r.Verified && len(lines) > 0 {
		// The From names a node this packet cannot come from: whoever sent
		// it must not speak for that node (nor for any other).
		n.refuse("not_from_node", src, "dmq: node list whose From is not its source; refused", "from", r.From.String())
		return req.Reply(403, reasonPhrase(403), n.toTag, "", nil)
	}
	// A seed that has not answered yet is pending but configured, hence
	// trusted: its list may name nodes (as dmq_is_from_node, any status).
	res := n.list.MergeFrom(lines, r.From, r.Listed)
	n.countMerge(res, src, r.From)
	for _, c := range res.Changes {
		n.nodeChanged(c, r.From.String())
	}
	// Kamailio caps Max-Forwards at what it sends (2 on a join); a larger
	// one would only make this node relay more.
	mf := min(req.MaxForwards(1), 2)
	if len(res.Changes) > 0 && mf-1 > 0 {
		// The sender asked us to spread the news (a join): tell every active node.
		for _, o := range n.list.Others(true) {
			n.queueNotify(o.Addr, mf-1)
		}
	} else {
		for _, c := range res.Changes {
			if c.Added && c.New == StatusActive && c.Addr != r.From {
				n.queueNotify(c.Addr, 1)
			}
		}
	}
	if r.Verified && n.list.requestFrom(r.From) {
		n.joinedOnce.Do(func() { close(n.joined) })
		n.syncWith(r.From)
	}
	body, err := n.list.Body()
	if err != nil {
		n.log.Error("dmq: own node list is invalid; answering without it", "err", err)
		return req.Reply(500, reasonPhrase(500), n.toTag, "", nil)
	}
	return req.Reply(200, "OK", n.toTag, "text/plain", body)
}

// nodeChanged reports a status change that source (who told us) caused. The
// log line is rate-limited per source: a list of a thousand new nodes is one
// line and a count, the events carry every change.
func (n *Node) nodeChanged(c NodeChange, source string) {
	n.updateNodeGauge()
	status := c.New.String()
	if c.Removed {
		status = "removed"
	}
	n.rl.InfoKey("node_status "+source, "dmq: node status", "node", c.Addr.String(), "old", c.Old.String(), "status", status, "told_by", source)
	n.emit("E_DMQ_NODE", jsonObject(
		"node", c.Addr.String(),
		"status", status,
		"old_status", c.Old.String(),
	))
}

func (n *Node) updateNodeGauge() {
	counts := map[Status]int{}
	for _, i := range n.list.Snapshot() {
		counts[i.Status]++
	}
	for _, s := range []Status{StatusActive, StatusPending, StatusDisabled, StatusTimeout} {
		n.metrics.nodes.With(s.String()).Set(float64(counts[s]))
	}
}

func (n *Node) emit(name string, params []byte) {
	if n.opts.OnChange != nil {
		n.opts.OnChange(name, params)
	}
}

func randHex(nbytes int) string {
	b := make([]byte, nbytes)
	for i := range b {
		b[i] = byte(rand.Uint32())
	}
	return hex.EncodeToString(b)
}

// jsonObject builds a flat JSON object from key, value pairs; values are
// strings, int64/int, bool, or json.RawMessage-like []byte (inserted as is).
func jsonObject(kv ...any) []byte {
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		writeJSONString(&b, kv[i].(string))
		b.WriteByte(':')
		switch v := kv[i+1].(type) {
		case string:
			writeJSONString(&b, v)
		case int:
			b.WriteString(strconv.Itoa(v))
		case int64:
			b.WriteString(strconv.FormatInt(v, 10))
		case bool:
			b.WriteString(strconv.FormatBool(v))
		case []byte:
			if len(v) == 0 {
				b.WriteString("null")
			} else {
				b.Write(v)
			}
		default:
			b.WriteString("null")
		}
	}
	b.WriteByte('}')
	return []byte(b.String())
}

func writeJSONString(b *strings.Builder, s string) {
	var buf [64]byte
	b.Write(jsonstr.Append(buf[:0], s))
}
