package evi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

// streamInput is what OpenSIPS's event_stream connects to: a TCP listener
// that reads JSON-RPC notifications written back to back with no delimiter.
// In the module's reliable_mode each event carries an id and OpenSIPS waits
// for a reply; sipside answers only when it knows the outcome, so that the
// proxy's own FAILOVER learns the truth.
type streamInput struct {
	inputBase
	ln           net.Listener
	replyTimeout time.Duration
	maxFrame     int
	idleTimeout  time.Duration // 0: none
	log          *slog.Logger

	slots      chan struct{} // one per open connection: max_conns
	overLimit  *metrics.Counter
	idleClosed *metrics.Counter
	acceptErrs *metrics.Counter
	// failing is the last accept error while accepts fail (nil once one
	// succeeds): /readyz reports the input as not ready meanwhile.
	failing atomic.Pointer[error]

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func openStreamInput(l Listen, ic InputConfig, base inputBase, log *slog.Logger, m *Metrics) (*streamInput, error) {
	ln, err := net.Listen("tcp", l.Addr)
	if err != nil {
		return nil, fmt.Errorf("input %s: %w (is another process bound there?)", l, err)
	}
	return &streamInput{inputBase: base, ln: ln, replyTimeout: time.Duration(ic.ReplyTimeout),
		maxFrame: ic.MaxFrame, idleTimeout: time.Duration(ic.IdleTimeout),
		log: log.With("input", l.String()), conns: map[net.Conn]struct{}{},
		slots:      make(chan struct{}, ic.MaxConns),
		overLimit:  m.ConnsClosed.With(l.String(), "max_conns"),
		idleClosed: m.ConnsClosed.With(l.String(), "idle_timeout"),
		acceptErrs: m.AcceptErrs.With(l.String()),
	}, nil
}

// Accept backoff bounds, as net/http's Server uses.
const (
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
)

// NotReady says why the input cannot take connections now ("" when it can).
func (in *streamInput) NotReady() string {
	if e := in.failing.Load(); e != nil {
		return "cannot accept connections: " + (*e).Error()
	}
	return ""
}

// Addr is the bound address.
func (in *streamInput) Addr() net.Addr { return in.ln.Addr() }

func (in *streamInput) Run(ctx context.Context, sink Sink) error {
	stop := context.AfterFunc(ctx, func() { in.ln.Close() })
	defer stop()
	defer in.closeConns()
	var delay time.Duration
	for {
		c, err := in.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// EMFILE, ENFILE, ENOBUFS: the listener is fine, the process
			// is short of something that comes back as connections close.
			// Back off and retry, as net/http does; returning would leave
			// the socket bound and its backlog unanswered until a restart.
			delay = min(max(2*delay, acceptRetryMin), acceptRetryMax)
			in.acceptErrs.Inc()
			in.failing.Store(&err)
			in.bad.Warn("accept failed; retrying (raise the open-files limit or lower max_conns)", "error", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		delay = 0
		in.failing.Store(nil)
		select {
		case in.slots <- struct{}{}:
		default:
			in.overLimit.Inc()
			in.bad.Warn("connection refused: max_conns connections are open", "peer", c.RemoteAddr().String(), "max_conns", cap(in.slots))
			c.Close()
			continue
		}
		in.mu.Lock()
		in.conns[c] = struct{}{}
		in.mu.Unlock()
		in.wg.Add(1)
		go func() {
			defer in.wg.Done()
			defer func() { <-in.slots }()
			in.serve(c, sink)
			in.mu.Lock()
			delete(in.conns, c)
			in.mu.Unlock()
			c.Close()
		}()
	}
}

func (in *streamInput) closeConns() {
	in.mu.Lock()
	for c := range in.conns {
		c.Close()
	}
	in.mu.Unlock()
	in.wg.Wait()
}

// replyConn serialises replies: each is one complete object in one write,
// as OpenSIPS parses replies from whatever one read() returned.
type replyConn struct {
	mu sync.Mutex
	c  net.Conn
}

func (s *replyConn) reply(id []byte, err error) {
	b := make([]byte, 0, 96)
	b = append(b, `{"jsonrpc":"2.0",`...)
	if err == nil {
		b = append(b, `"result":"OK"`...)
	} else {
		b = append(b, `"error":{"code":500,"message":`...)
		b = appendJSONString(b, err.Error())
		b = append(b, '}')
	}
	b = append(b, `,"id":`...)
	b = append(b, id...)
	b = append(b, '}')
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = s.c.Write(b)
}

func (in *streamInput) serve(c net.Conn, sink Sink) {
	peer := c.RemoteAddr().String()
	in.log.Debug("event_stream connection", "peer", peer)
	sc := &replyConn{c: c}
	buf := make([]byte, 0, 64<<10)
	rd := make([]byte, 64<<10)
	for {
		if in.idleTimeout > 0 {
			_ = c.SetReadDeadline(time.Now().Add(in.idleTimeout))
		}
		n, err := c.Read(rd)
		buf = append(buf, rd[:n]...)
		off := 0
		for off < len(buf) {
			note, used, perr := ParseNotification(buf[off:])
			if errors.Is(perr, ErrIncomplete) {
				break
			}
			if perr != nil {
				// A stream cannot be resynced after garbage: drop the
				// connection; OpenSIPS reconnects on its next event.
				in.reject(fmt.Errorf("from %s: %w; closing the connection", peer, perr), len(buf)-off)
				return
			}
			start := skipWS(buf[off:], 0)
			in.accept(sc, buf[off+start:off+used], note, sink, peer)
			off += used
		}
		rest := buf[off:]
		if skipWS(rest, 0) == len(rest) {
			rest = rest[:0]
		}
		buf = append(buf[:0], rest...)
		if len(buf) > in.maxFrame {
			in.reject(fmt.Errorf("from %s: an event larger than max_frame (%d bytes); closing the connection", peer, in.maxFrame), len(buf))
			return
		}
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() && len(buf) == 0 {
				in.idleClosed.Inc()
				in.log.Debug("event_stream connection idle; closing it", "peer", peer, "idle_timeout", in.idleTimeout)
				return
			}
			if len(buf) > 0 {
				in.reject(fmt.Errorf("from %s: connection closed in the middle of an event (%d bytes): %w", peer, len(buf), err), len(buf))
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				in.log.Info("event_stream connection ended", "peer", peer, "error", err)
			}
			return
		}
	}
}

// accept turns one complete value into an event; value aliases the read
// buffer and is copied.
func (in *streamInput) accept(sc *replyConn, value []byte, note Notification, sink Sink, peer string) {
	name, err := note.Name()
	if err != nil {
		in.reject(err, len(value))
		return
	}
	raw := make([]byte, len(value))
	copy(raw, value)
	ev := &Event{Name: name, Raw: raw, Received: time.Now(), Source: in.name}
	if note.Params != nil {
		off := cap(value) - cap(note.Params)
		ev.Params = raw[off : off+len(note.Params) : off+len(note.Params)]
	}
	if note.ID != nil {
		// reliable_mode: the raw bytes carry the id, which no other
		// consumer should see.
		ev.Raw = nil
		id := append([]byte(nil), note.ID...)
		if _, err := strconv.ParseInt(string(id), 10, 64); err != nil {
			in.log.Debug("event_stream id is not an integer; answering anyway", "id", string(id), "peer", peer)
		}
		var once sync.Once
		answer := func(err error) { once.Do(func() { sc.reply(id, err) }) }
		timer := time.AfterFunc(in.replyTimeout, func() {
			answer(fmt.Errorf("not delivered within %v", in.replyTimeout))
		})
		ev.OnDone(func(err error) {
			timer.Stop()
			answer(err)
		})
	}
	in.received.Inc()
	sink.Accept(ev)
}

func (in *streamInput) Close() error {
	err := in.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
