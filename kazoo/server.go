package kazoo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fastjson"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/internal/netstring"
	"github.com/sipside/sipside/internal/ratelog"
)

// Timeouts of the JSON-RPC listeners.
const (
	// readTimeout bounds reading one request once bytes started to arrive, and an idle
	// raw-TCP connection: OpenSIPS sends its request at once and never idles.
	readTimeout = 10 * time.Second
	// netstringIdle: jsonrpcc/janssonrpcc keep their connection for the life of the
	// proxy and may be quiet for long; TCP keepalive finds dead peers.
	netstringIdle = 0
	writeTimeout  = 5 * time.Second
	// maxPipelined bounds requests in flight on one netstring connection.
	maxPipelined = 1024
	// callSlack is what a call may take beyond the longest query timeout
	// (amqp.max_query_timeout) before the server gives up on it, so that
	// timeout_ms is what ends a query.
	callSlack = 5 * time.Second
	// Accept backoff bounds, as net/http's Server uses.
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
)

type server struct {
	b     *Bridge
	cfg   JSONRPCConfig
	allow []netip.Prefix
	log   *slog.Logger
	met   *serverMetrics
	// refusals logs every refused connection and broken frame at most once
	// a second per reason and source: a flood must not become a log flood.
	refusals *ratelog.Logger

	lns []*listener
}

type listener struct {
	kind, spec string
	ln         net.Listener
	slots      chan struct{}
}

func newServer(b *Bridge, cfg JSONRPCConfig) (*server, error) {
	s := &server{b: b, cfg: cfg, log: b.log, met: b.disp.met, refusals: ratelog.New(b.log, time.Second)}
	for _, a := range cfg.Allow {
		p, err := parseAllow(a)
		if err != nil {
			return nil, err
		}
		s.allow = append(s.allow, p)
	}
	return s, nil
}

func (s *server) listen() error {
	for _, spec := range s.cfg.Listen {
		kind, addr, err := ParseListen(spec)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			s.close()
			return fmt.Errorf("jsonrpc.listen %q: %w", spec, err)
		}
		s.lns = append(s.lns, &listener{kind: kind, spec: spec, ln: ln, slots: make(chan struct{}, s.cfg.MaxConns)})
		s.log.Info("JSON-RPC listening", "listen", spec, "addr", ln.Addr().String())
	}
	return nil
}

func (s *server) close() {
	for _, l := range s.lns {
		l.ln.Close()
	}
}

func (s *server) addrs() map[string]string {
	m := make(map[string]string)
	for _, l := range s.lns {
		m[l.kind] = l.ln.Addr().String()
	}
	return m
}

// serve runs every listener until ctx ends, then closes them and waits for the
// connections to finish.
func (s *server) serve(ctx context.Context) error {
	var wg sync.WaitGroup
	var conns sync.Map // net.Conn → struct{}, closed on shutdown
	for _, l := range s.lns {
		if l.kind == ListenHTTP {
			hs := &http.Server{
				Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serveHTTP(ctx, w, r) }),
				ReadHeaderTimeout: readTimeout,
				ReadTimeout:       readTimeout,
				ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
			}
			wg.Add(2)
			go func() { defer wg.Done(); hs.Serve(&guarded{listener: l, s: s}) }()
			go func() {
				defer wg.Done()
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				hs.Shutdown(sctx)
			}()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := &guarded{listener: l, s: s}
			var delay time.Duration
			for {
				c, err := g.Accept()
				if err != nil {
					if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
						return
					}
					// EMFILE, ENFILE, ENOBUFS: the listener is fine, the
					// process is short of something that comes back as
					// connections close. Back off and retry, as net/http
					// does; returning would leave the socket bound and
					// its backlog unanswered until a restart.
					delay = min(max(2*delay, acceptRetryMin), acceptRetryMax)
					s.met.acceptErrs.With(l.kind).Inc()
					s.refusals.WarnKey(l.kind+" accept", "JSON-RPC accept failed; retrying (raise the open-files limit or lower jsonrpc.max_conns)", "listener", l.spec, "error", err, "retry_in", delay)
					select {
					case <-time.After(delay):
					case <-ctx.Done():
						return
					}
					continue
				}
				delay = 0
				conns.Store(c, struct{}{})
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer conns.Delete(c)
					defer c.Close()
					if l.kind == ListenTCP {
						s.serveRaw(ctx, c)
					} else {
						s.serveNetstring(ctx, c)
					}
				}()
			}
		}()
	}
	<-ctx.Done()
	s.close()
	conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	wg.Wait()
	return nil
}

// guarded applies the allow-list and the connection limit to a listener.
type guarded struct {
	*listener
	s *server
}

func (g *guarded) Accept() (net.Conn, error) {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return nil, err
		}
		if !g.s.allowed(c.RemoteAddr()) {
			g.s.rejected(g.kind, "not_allowed", c.RemoteAddr(), "source not in jsonrpc.allow; add its network there")
			g.reject(c, CodeForbidden, "source address not in jsonrpc.allow")
			continue
		}
		select {
		case g.slots <- struct{}{}:
		default:
			g.s.rejected(g.kind, "too_many_connections", c.RemoteAddr(), fmt.Sprintf("jsonrpc.max_conns (%d) connections are open", cap(g.slots)))
			g.reject(c, CodeBusy, "too many connections (jsonrpc.max_conns)")
			continue
		}
		g.s.met.conns.With(g.kind).Add(1)
		return &slotConn{Conn: c, release: func() { <-g.slots; g.s.met.conns.With(g.kind).Add(-1) }}, nil
	}
}

// reject answers in the listener's own framing so the script logs a reason, then closes.
func (g *guarded) reject(c net.Conn, code int, msg string) {
	resp := errorResponse(nil, code, msg)
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	switch g.kind {
	case ListenTCP:
		c.Write(resp)
	case ListenNetstring:
		c.Write(netstring.Append(nil, resp))
	case ListenHTTP:
		fmt.Fprintf(c, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(resp), resp)
	}
	c.Close()
}

func (g *guarded) Close() error   { return g.ln.Close() }
func (g *guarded) Addr() net.Addr { return g.ln.Addr() }

type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

func (s *server) allowed(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range s.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (s *server) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.b.cfg.AMQP.MaxQueryTimeout.Std()+callSlack)
}

// serveRaw speaks what OpenSIPS's jsonrpc module sends: one raw JSON object, no
// delimiter, no half-close; the reply is one raw object. Further requests on the same
// connection are served in turn, for nc and scripts that reuse it.
func (s *server) serveRaw(ctx context.Context, c net.Conn) {
	buf := make([]byte, 0, min(4096, s.cfg.MaxFrame))
	var peek []byte
	for {
		c.SetReadDeadline(time.Now().Add(readTimeout))
		n, err := scanJSON(buf)
		for n == 0 && err == nil {
			if len(buf) == cap(buf) {
				if cap(buf) >= s.cfg.MaxFrame {
					err = errFrameTooBig
					break
				}
				nb := make([]byte, len(buf), min(2*cap(buf), s.cfg.MaxFrame))
				copy(nb, buf)
				buf = nb
			}
			m, rerr := c.Read(buf[len(buf):cap(buf)])
			buf = buf[:len(buf)+m]
			if m > 0 {
				n, err = scanJSON(buf)
			}
			if rerr != nil && n == 0 && err == nil {
				switch {
				case len(trimSpace(buf)) == 0:
					// Idle or closed between requests: the normal end.
				case errors.Is(rerr, io.EOF):
					s.frameError(ListenTCP, "truncated", c.RemoteAddr(), "connection closed inside a JSON value")
					s.write(c, errorResponse(nil, CodeParse, "connection closed inside a JSON value"))
				default:
					s.frameError(ListenTCP, "timeout", c.RemoteAddr(), rerr.Error())
				}
				return
			}
		}
		if err != nil {
			reason := "malformed"
			if errors.Is(err, errFrameTooBig) {
				reason = "too_big"
				err = fmt.Errorf("request larger than %d bytes (jsonrpc.max_frame)", s.cfg.MaxFrame)
			}
			s.frameError(ListenTCP, reason, c.RemoteAddr(), err.Error())
			s.write(c, errorResponse(nil, codeFor(reason), err.Error()))
			return
		}
		req := buf[:n]
		cctx, cancel := s.callContext(ctx)
		if peek == nil {
			peek = make([]byte, 512)
		}
		hungUp := make(chan struct{})
		stop := watchPeer(c, peek, func() { close(hungUp) })
		cctx = withCallerGone(cctx, hungUp)
		resp := s.b.disp.handle(cctx, ListenTCP, req)
		early, gone := stop()
		cancel()
		if gone {
			return // the caller hung up: a query it waited for was abandoned, and nobody reads a reply
		}
		if len(resp) > rawReplyMax {
			s.frameError(ListenTCP, "reply_too_big", c.RemoteAddr(), fmt.Sprintf("reply of %d bytes", len(resp)))
			resp = errorResponse(requestID(req), CodeBusy, fmt.Sprintf("reply of %d bytes is larger than the %d bytes OpenSIPS's jsonrpc module reads; make the responder's answer smaller or call over http", len(resp), rawReplyMax))
		}
		if resp != nil && !s.write(c, resp) {
			return
		}
		rest := copy(buf, buf[n:])
		buf = buf[:rest]
		if len(early) > 0 {
			if len(buf)+len(early) > s.cfg.MaxFrame {
				s.frameError(ListenTCP, "too_big", c.RemoteAddr(), "request larger than jsonrpc.max_frame")
				s.write(c, errorResponse(nil, CodeBusy, fmt.Sprintf("request larger than %d bytes (jsonrpc.max_frame)", s.cfg.MaxFrame)))
				return
			}
			buf = append(buf, early...)
		}
	}
}

// watchPeer reads from c while a call runs, so that a query whose caller
// hangs up is abandoned (it would otherwise wait for its reply, holding a
// waiter and its goroutines): hangup runs when the peer is gone. stop ends the
// watch and returns what it read meanwhile (the start of a pipelined request)
// and whether the peer is gone.
func watchPeer(c net.Conn, peek []byte, hangup func()) (stop func() (early []byte, gone bool)) {
	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := c.Read(peek)
		if n == 0 && err != nil && !isTimeout(err) {
			hangup()
		}
		done <- result{n, err}
	}()
	return func() ([]byte, bool) {
		// A deadline in the past wakes the Read without closing anything.
		c.SetReadDeadline(time.Unix(1, 0))
		r := <-done
		return peek[:r.n], r.n == 0 && r.err != nil && !isTimeout(r.err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// rawReplyMax is what OpenSIPS's jsonrpc module reads of a reply; a longer one would
// be cut and fail to parse there, so it becomes an error that says why.
const rawReplyMax = 8192

// requestID returns the raw id of a request that was already parsed once.
func requestID(req []byte) []byte {
	v, err := fastjson.ParseBytes(req)
	if err != nil {
		return nil
	}
	if id := v.Get("id"); id != nil && (id.Type() == fastjson.TypeNumber || id.Type() == fastjson.TypeString) {
		return id.MarshalTo(nil)
	}
	return nil
}

func codeFor(reason string) int {
	if reason == "too_big" {
		return CodeBusy
	}
	return CodeParse
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

func (s *server) write(c net.Conn, b []byte) bool {
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := c.Write(b)
	return err == nil
}

// serveNetstring speaks jsonrpcc/janssonrpcc: a persistent connection carrying
// `len:json,` frames. Requests run concurrently and are answered by id as they finish,
// so a slow query never holds up the ones behind it.
func (s *server) serveNetstring(ctx context.Context, c net.Conn) {
	if tc, ok := underlying(c).(*net.TCPConn); ok {
		tc.SetKeepAlive(true)
		tc.SetKeepAlivePeriod(30 * time.Second)
	}
	// A caller that hangs up leaves no queries waiting for replies nobody
	// will read; a publish it started still completes. (jsonrpcc and
	// janssonrpcc keep their connection and never half-close it.)
	gone := make(chan struct{})
	nc := &netstringConn{s: s, c: c, ctx: withCallerGone(ctx, gone), sem: make(chan struct{}, maxPipelined), work: make(chan []byte)}
	defer nc.wg.Wait()
	defer close(gone)
	defer close(nc.work)
	r := netstring.NewReader(c, s.cfg.MaxFrame)
	for {
		payload, err := r.Next()
		if err != nil {
			nc.readError(err)
			return
		}
		select {
		case nc.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		// The reader reuses its buffer; the request is handled while the
		// next one is read.
		nc.dispatch(append([]byte(nil), payload...))
	}
}

// netstringConn is one netstring connection: its requests run on a few reused
// workers and are answered by id as they finish.
type netstringConn struct {
	s   *server
	c   net.Conn
	ctx context.Context
	wmu sync.Mutex    // one frame written at a time
	sem chan struct{} // requests in flight, at most maxPipelined
	// Requests are handed to idle workers of this connection, and a new one
	// is started only when none is idle. A goroutine per request would start
	// on a small stack and grow it through the publish path every time;
	// reusing workers saves that on a connection that carries a steady stream.
	work chan []byte
	idle atomic.Int32
	wg   sync.WaitGroup
}

func (nc *netstringConn) dispatch(payload []byte) {
	select {
	case nc.work <- payload:
		// An idle worker took it; it is no longer idle.
		nc.idle.Add(-1)
	default:
		nc.wg.Add(1)
		go nc.worker(payload)
	}
}

func (nc *netstringConn) worker(payload []byte) {
	defer nc.wg.Done()
	nc.handle(payload)
	// At most maxIdleWorkers stay: a burst of a thousand pipelined
	// requests must not leave a thousand parked goroutines behind.
	for nc.idle.Add(1) <= maxIdleWorkers {
		payload, ok := <-nc.work
		if !ok {
			return
		}
		nc.handle(payload)
	}
	nc.idle.Add(-1)
}

func (nc *netstringConn) handle(payload []byte) {
	cctx, cancel := nc.s.callContext(nc.ctx)
	resp := nc.s.b.disp.handle(cctx, ListenNetstring, payload)
	cancel()
	if resp != nil {
		nc.send(resp)
	}
	<-nc.sem
}

func (nc *netstringConn) send(resp []byte) {
	fp := framePool.Get().(*[]byte)
	frame := netstring.Append((*fp)[:0], resp)
	nc.wmu.Lock()
	// One write per frame, as the proxies read whole frames.
	nc.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := nc.c.Write(frame); err != nil {
		nc.c.Close()
	}
	nc.wmu.Unlock()
	// Write is done with the frame once it returns; a frame grown for a
	// big reply is not kept, so the pool holds small buffers only.
	if cap(frame) <= maxPooledFrame {
		*fp = frame
		framePool.Put(fp)
	}
}

// readError answers a broken frame in the stream's own framing, counts and
// logs it; the connection then closes (the stream is out of sync).
func (nc *netstringConn) readError(err error) {
	s, from := nc.s, nc.c.RemoteAddr()
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	case errors.Is(err, netstring.ErrTooBig):
		s.frameError(ListenNetstring, "too_big", from, err.Error())
		nc.send(errorResponse(nil, CodeBusy, fmt.Sprintf("frame larger than %d bytes (jsonrpc.max_frame); closing", s.cfg.MaxFrame)))
	case errors.Is(err, netstring.ErrMalformed):
		s.frameError(ListenNetstring, "malformed", from, err.Error())
		nc.send(errorResponse(nil, CodeParse, err.Error()+"; closing the connection (the stream is out of sync)"))
	default:
		s.frameError(ListenNetstring, "truncated", from, err.Error())
	}
}

type callerGoneKey struct{}

// withCallerGone marks ctx with a channel that is closed when the caller's
// connection is gone. Only calls that wait on the caller's behalf (queries)
// give up on it; what the caller asked to be done (a publish, an ack) is
// done, as OpenSIPS's jsonrpc_notification writes and hangs up at once.
func withCallerGone(ctx context.Context, gone <-chan struct{}) context.Context {
	return context.WithValue(ctx, callerGoneKey{}, gone)
}

// callerGone is the channel of withCallerGone, or nil (never ready).
func callerGone(ctx context.Context) <-chan struct{} {
	gone, _ := ctx.Value(callerGoneKey{}).(<-chan struct{})
	return gone
}

// maxIdleWorkers bounds the idle request workers a netstring connection keeps.
const maxIdleWorkers = 8

// maxPooledFrame is the largest reply frame buffer kept for reuse.
const maxPooledFrame = 4096

// framePool holds netstring reply frame buffers: every reply needs one only
// for the duration of its write.
var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

func underlying(c net.Conn) net.Conn {
	if sc, ok := c.(*slotConn); ok {
		return sc.Conn
	}
	return c
}

func httpRemote(r *http.Request) net.Addr {
	a, err := net.ResolveTCPAddr("tcp", r.RemoteAddr)
	if err != nil {
		return nil
	}
	return a
}

// serveHTTP answers POST with the JSON-RPC response on one line (Kamailio's
// http_client keeps only the first line by default).
func (s *server) serveHTTP(ctx context.Context, w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		w.WriteHeader(http.StatusMethodNotAllowed)
		w.Write(errorResponse(nil, CodeInvalidRequest, "POST a JSON-RPC 2.0 request"))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxFrame)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.frameError(ListenHTTP, "too_big", httpRemote(r), "request larger than jsonrpc.max_frame")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			w.Write(errorResponse(nil, CodeBusy, fmt.Sprintf("request larger than %d bytes (jsonrpc.max_frame)", s.cfg.MaxFrame)))
			return
		}
		s.frameError(ListenHTTP, "truncated", httpRemote(r), err.Error())
		return
	}
	cctx, cancel := s.callContext(r.Context())
	defer cancel()
	resp := s.b.disp.handle(cctx, ListenHTTP, body)
	if resp == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Write(resp)
}

type serverMetrics struct {
	requests *metrics.CounterVec
	lat      *metrics.HistogramVec
	frames   *metrics.CounterVec
	rejects  *metrics.CounterVec
	conns    *metrics.GaugeVec
	// acceptErrs counts failed accepts (out of file descriptors).
	acceptErrs *metrics.CounterVec

	// Every request counts once and times once. With joins the labels into a
	// key and takes the family's lock, so the children are kept here after
	// first use: a lookup costs no allocation and no shared lock. They are
	// still created on first use, so /metrics shows the same series as
	// before. Both maps stay small: the listeners and methods are fixed, and
	// any method name that is not known is counted as "unknown".
	reqCache sync.Map // requestKey → *metrics.Counter
	latCache sync.Map // latencyKey → *metrics.Histogram
}

type requestKey struct{ listener, method, outcome string }
type latencyKey struct{ listener, method string }

func newServerMetrics(reg *metrics.Registry) *serverMetrics {
	return &serverMetrics{
		requests:   reg.Counter("sipside_jsonrpc_requests_total", "JSON-RPC requests by listener, method and outcome.", "listener", "method", "outcome"),
		lat:        reg.Histogram("sipside_jsonrpc_request_seconds", "JSON-RPC handling time.", nil, "listener", "method"),
		frames:     reg.Counter("sipside_jsonrpc_frame_errors_total", "Broken frames (malformed, too_big, truncated, timeout); each closes its connection.", "listener", "reason"),
		rejects:    reg.Counter("sipside_jsonrpc_rejected_connections_total", "Connections refused (not_allowed, too_many_connections).", "listener", "reason"),
		conns:      reg.Gauge("sipside_jsonrpc_connections", "Open JSON-RPC connections.", "listener"),
		acceptErrs: reg.Counter("sipside_jsonrpc_accept_errors_total", "Failed accepts (e.g. out of file descriptors); the listener backs off and retries.", "listener"),
	}
}

func (m *serverMetrics) request(l, method, outcome string) {
	k := requestKey{l, method, outcome}
	c, ok := m.reqCache.Load(k)
	if !ok {
		c, _ = m.reqCache.LoadOrStore(k, m.requests.With(l, method, outcome))
	}
	c.(*metrics.Counter).Inc()
}

func (m *serverMetrics) latency(l, method string, start time.Time) {
	k := latencyKey{l, method}
	h, ok := m.latCache.Load(k)
	if !ok {
		h, _ = m.latCache.LoadOrStore(k, m.lat.With(l, method))
	}
	h.(*metrics.Histogram).Since(start)
}

// frameError counts a broken frame and logs it at a bounded rate.
func (s *server) frameError(l, reason string, from net.Addr, detail string) {
	s.met.frames.With(l, reason).Inc()
	s.refusals.WarnKey(l+" "+reason+" "+hostOf(from), "JSON-RPC frame refused; the connection is closed",
		"listener", l, "reason", reason, "from", addrString(from), "detail", detail)
}

// rejected counts a refused connection and logs it at a bounded rate.
func (s *server) rejected(l, reason string, from net.Addr, detail string) {
	s.met.rejects.With(l, reason).Inc()
	s.refusals.WarnKey(l+" "+reason+" "+hostOf(from), "JSON-RPC connection refused",
		"listener", l, "reason", reason, "from", addrString(from), "detail", detail)
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// hostOf is the source's address without its port: one noisy host is one
// log key, whatever ports it connects from.
func hostOf(a net.Addr) string {
	h, _, err := net.SplitHostPort(addrString(a))
	if err != nil {
		return addrString(a)
	}
	return h
}
