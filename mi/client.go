// Package mi calls management-interface commands of OpenSIPS (MI over
// mi_datagram, mi_http, mi_fifo) and Kamailio (jsonrpcs over UDP or unix
// datagrams, xhttp, FIFO) through one Client addressed by a target string such
// as opensips:udp:127.0.0.1:8080 or kamailio:http://127.0.0.1:5071/RPC.
//
// A JSON-RPC error reply is an *Error carrying the proxy's code and message;
// every other failure (no reply, refused, no such FIFO) is a plain error whose
// message says what to check.
package mi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sipside/sipside/internal/metrics"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = 5 * time.Second

// Options tune a Client; the zero value is fine.
type Options struct {
	// Timeout bounds each call whose context has no deadline (default DefaultTimeout).
	Timeout time.Duration
	// Metrics receives sipside_mi_* metrics; nil keeps them private.
	Metrics *metrics.Registry
	// Logger gets debug records of dropped replies; nil means slog.Default().
	Logger *slog.Logger
	// ReplyDir is the proxy's FIFO reply directory (mi_fifo reply_dir, jsonrpcs
	// fifo_reply_dir): the proxy takes just a file name and writes the reply there.
	// Default: watch both the FIFO's own directory and the modules' default /tmp.
	ReplyDir string
	// SocketDir is where a unix datagram client binds its own socket, which the
	// proxy needs to send the reply back. Default: os.TempDir().
	SocketDir string
}

// Client calls one proxy. It is safe for concurrent use; datagram transports share
// one socket and match replies to calls by JSON-RPC id.
type Client struct {
	target  Target
	name    string
	timeout time.Duration
	log     *slog.Logger
	tr      transport
	ids     atomic.Uint32

	calls   *metrics.CounterVec
	dur     *metrics.HistogramVec
	drops   *metrics.CounterVec
	methods sync.Map // method -> *methodMetrics, so that a call does no label lookups
}

type methodMetrics struct {
	ok, rpcErr, timeout, transport *metrics.Counter
	dur                            *metrics.Histogram
}

func (c *Client) metricsFor(method string) *methodMetrics {
	if m, ok := c.methods.Load(method); ok {
		return m.(*methodMetrics)
	}
	m := &methodMetrics{
		ok:        c.calls.With(c.name, method, "ok"),
		rpcErr:    c.calls.With(c.name, method, "error"),
		timeout:   c.calls.With(c.name, method, "timeout"),
		transport: c.calls.With(c.name, method, "transport"),
		dur:       c.dur.With(c.name, method),
	}
	actual, _ := c.methods.LoadOrStore(method, m)
	return actual.(*methodMetrics)
}

// transport moves one request to the proxy and returns the raw reply.
type transport interface {
	roundTrip(ctx context.Context, id uint32, method string, params []byte) ([]byte, error)
	close() error
}

// New returns a client for target (see ParseTarget). Sockets are opened on first use,
// so New succeeds while the proxy is down.
func New(target string, o Options) (*Client, error) {
	t, err := ParseTarget(target)
	if err != nil {
		return nil, err
	}
	reg := metrics.OrNew(o.Metrics)
	c := &Client{
		target:  t,
		name:    t.String(),
		timeout: o.Timeout,
		log:     o.Logger,
		calls:   reg.Counter("sipside_mi_calls_total", "MI / JSON-RPC management calls by outcome (ok, error, timeout, transport).", "target", "method", "outcome"),
		dur:     reg.Histogram("sipside_mi_call_duration_seconds", "Latency of MI calls that got a reply.", nil, "target", "method"),
		drops:   reg.Counter("sipside_mi_replies_dropped_total", "Replies that matched no waiting call (late, unknown id, malformed, truncated).", "target", "reason"),
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	drop := func(reason string, b []byte) {
		c.drops.With(c.name, reason).Inc()
		c.log.Debug("mi: dropped reply", "target", c.name, "reason", reason, "reply", string(clip(b, 200)))
	}
	switch t.Transport {
	case UDP, Unix:
		c.tr = newDgram(t, o.SocketDir, drop)
	case HTTP:
		c.tr, err = newHTTP(t)
	case FIFO:
		c.tr = newFIFO(t, o.ReplyDir)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Target returns the parsed target.
func (c *Client) Target() Target { return c.target }

// Close releases the client's sockets; calls in flight fail.
func (c *Client) Close() error { return c.tr.close() }

// Call runs method with params: nil, a list ([]any, []string...), named values (Named,
// or a map for OpenSIPS), or raw JSON (json.RawMessage holding an array or object).
func (c *Client) Call(ctx context.Context, method string, params any) (Result, error) {
	p, err := encodeParams(c.target.Dialect, params)
	if err != nil {
		return Result{}, fmt.Errorf("%s %s: %w", c.name, method, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	m := c.metricsFor(method)
	start := time.Now()
	id := c.nextID()
	body, err := c.tr.roundTrip(ctx, id, method, p)
	if err != nil {
		// A socket deadline (set from ctx's) can expire a moment before ctx reports it.
		if ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
			m.timeout.Inc()
			return Result{}, c.noReply(ctx, start)
		}
		m.transport.Inc()
		return Result{}, fmt.Errorf("%s %s: %w", c.name, method, err)
	}
	m.dur.Observe(time.Since(start).Seconds())
	r, err := parseReply(body)
	if err != nil {
		m.transport.Inc()
		return Result{}, fmt.Errorf("%s %s: bad reply: %w", c.name, method, err)
	}
	if r.err != nil {
		m.rpcErr.Inc()
		r.err.Method = method
		if r.id == nil && r.err.Code == 500 && c.target.Dialect == OpenSIPS && (c.target.Transport == UDP || c.target.Transport == Unix) {
			return Result{}, fmt.Errorf("%w (mi_datagram answers this when the reply does not fit in 65457 bytes: use opensips:http or opensips:fifo for big replies)", r.err)
		}
		return Result{}, r.err
	}
	m.ok.Inc()
	return Result{raw: r.result}, nil
}

// nextID returns ids in 1..2^31-1: OpenSIPS reads ids as int32 and would echo a
// bigger one saturated, and it would match no call.
func (c *Client) nextID() uint32 {
	for {
		id := c.ids.Add(1) & 0x7fffffff
		if id != 0 {
			return id
		}
	}
}

func (c *Client) noReply(ctx context.Context, start time.Time) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return fmt.Errorf("%s: call cancelled after %s: %w", c.name, time.Since(start).Round(time.Millisecond), ctx.Err())
	}
	d := time.Since(start)
	if dl, ok := ctx.Deadline(); ok {
		d = dl.Sub(start)
	}
	// the caller set a round figure a moment before start: show that figure
	if d < time.Second {
		d = d.Round(10 * time.Millisecond)
	} else {
		d = d.Round(100 * time.Millisecond)
	}
	return fmt.Errorf("no reply from %s within %s: %s: %w", c.name, d, c.hint(), context.DeadlineExceeded)
}

// hint says what to check when a proxy does not answer.
func (c *Client) hint() string {
	switch c.target.Dialect {
	case OpenSIPS:
		switch c.target.Transport {
		case UDP:
			return "is OpenSIPS running with mi_datagram's socket_name there?"
		case Unix:
			return "is OpenSIPS running with mi_datagram's socket_name on that path, and may the proxy write to our socket?"
		case HTTP:
			return "is OpenSIPS running with httpd and mi_http at that URL? (mi_http never finishes notifications and GETs)"
		case FIFO:
			return "does mi_fifo read that FIFO, and is its reply_dir the FIFO's directory or /tmp? (else name it with --reply-dir / Options.ReplyDir)"
		}
	case Kamailio:
		switch c.target.Transport {
		case UDP, Unix:
			return "is Kamailio running with jsonrpcs dgram_socket there (transport 4 or 7)? Kamailio sends no reply to malformed requests nor replies over 65507 bytes"
		case HTTP:
			return "is Kamailio running with xhttp and an event_route[xhttp:request] calling jsonrpc_dispatch() for that path?"
		case FIFO:
			return "does jsonrpcs read that FIFO (transport 2 or 7), and is its fifo_reply_dir the FIFO's directory or /tmp? (else name it with --reply-dir / Options.ReplyDir)"
		}
	}
	return "is the proxy running?"
}
