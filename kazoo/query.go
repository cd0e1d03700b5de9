package kazoo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/valyala/fastjson"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/internal/rabbit"
)

// TargetedExchange is where Kazoo apps send replies, keyed by the request's Server-ID.
const TargetedExchange = "targeted"

// ErrQueryTimeout: no reply came before the deadline.
var ErrQueryTimeout = errors.New("kazoo: no reply before the timeout")

// ErrReplyLost: the channel a direct reply-to request went out on died before the
// reply came; the responder may or may not have acted on the request.
var ErrReplyLost = errors.New("kazoo: connection to the broker lost before the reply came; the request may have been processed")

// ErrTooManyQueries: amqp.max_queries are waiting for their replies already.
var ErrTooManyQueries = errors.New("kazoo: too many queries waiting for replies (amqp.max_queries); the responders are slower than the callers: retry later, add responders or raise max_queries")

var errCallerGone = errors.New("kazoo: the caller hung up before the reply came; query abandoned")

var errKazooPayload = errors.New("kazoo: with amqp.kazoo on, payload must be a JSON object (Kazoo messages are objects)")

// querier matches replies to waiting queries by correlation id (Msg-ID in Kazoo mode).
type querier struct {
	b        *Bridge
	serverID string // routing key of our queue on the targeted exchange

	mu      sync.Mutex
	waiters map[string]chan answer

	// targetedTried is closed once the Kazoo reply queue was set up (or
	// refused) the first time; nil outside Kazoo mode.
	targetedTried chan struct{}
	targetedOnce  sync.Once

	parsers fastjson.ParserPool

	drops      *metrics.CounterVec
	timeouts   *metrics.Counter
	lost       *metrics.Counter
	latency    *metrics.Histogram
	inflight   *metrics.Gauge
	refused    *metrics.Counter
	gone       *metrics.Counter
	unroutable *metrics.Counter
	waiting    atomic.Int64 // queries between admission and their end
}

func newQuerier(b *Bridge) *querier {
	var r [4]byte
	_, _ = randRead(r[:])
	q := &querier{
		b: b,
		// Like kazoo's "kamailio@host-<1>-targeted-0", unique per process so that two
		// sipsides on one host never share a reply queue.
		serverID:   b.cfg.AMQP.Node + "-" + strconv.Itoa(os.Getpid()) + "-" + fmt.Sprintf("%x", r) + "-targeted",
		waiters:    make(map[string]chan answer),
		drops:      b.reg.Counter("sipside_amqp_query_replies_dropped_total", "Replies matching no waiting query (late, unknown correlation id, no id).", "reason"),
		timeouts:   b.reg.Counter("sipside_amqp_query_timeouts_total", "Queries that got no reply in time.").With(),
		lost:       b.reg.Counter("sipside_amqp_query_lost_total", "Queries whose reply channel died before the reply came.").With(),
		latency:    b.reg.Histogram("sipside_amqp_query_seconds", "Query round trip (publish to reply).", nil).With(),
		inflight:   b.reg.Gauge("sipside_amqp_queries_inflight", "Queries waiting for a reply.").With(),
		refused:    b.reg.Counter("sipside_amqp_queries_refused_total", "Queries refused at once because amqp.max_queries were waiting already.").With(),
		gone:       b.reg.Counter("sipside_amqp_queries_abandoned_total", "Queries given up because their caller went away (connection closed) before the reply.").With(),
		unroutable: b.reg.Counter("sipside_amqp_queries_unroutable_total", "Queries returned by the broker because no queue was bound for their routing key.").With(),
	}
	if b.cfg.AMQP.Kazoo {
		q.targetedTried = make(chan struct{})
	}
	return q
}

// answer is what a waiting query gets: the reply's body, or why none will come.
type answer struct {
	body []byte
	err  error
}

func (q *querier) register(id string) chan answer {
	ch := make(chan answer, 1)
	q.mu.Lock()
	q.waiters[id] = ch
	q.mu.Unlock()
	return ch
}

func (q *querier) unregister(id string) {
	q.mu.Lock()
	delete(q.waiters, id)
	q.mu.Unlock()
}

func (q *querier) deliver(id string, r answer) {
	if id == "" {
		q.drops.With("no_id").Inc()
		return
	}
	q.mu.Lock()
	ch, ok := q.waiters[id]
	delete(q.waiters, id)
	q.mu.Unlock()
	if !ok {
		q.drops.With("unknown_id").Inc()
		return
	}
	ch <- r
}

func (q *querier) onDirectReply(d amqp.Delivery) { q.deliver(d.CorrelationId, answer{body: d.Body}) }

// onReturn fails the query that no queue took, at once: the correlation id
// names it (Msg-ID in Kazoo mode, which the querier also sets as correlation id).
func (q *querier) onReturn(r amqp.Return) {
	q.unroutable.Inc()
	q.mu.Lock()
	ch, ok := q.waiters[r.CorrelationId]
	delete(q.waiters, r.CorrelationId)
	q.mu.Unlock()
	if ok {
		ch <- answer{err: fmt.Errorf("%w: exchange %q routing key %q: %d %s (is a responder bound to this key?)",
			rabbit.ErrReturned, r.Exchange, r.RoutingKey, r.ReplyCode, r.ReplyText)}
	}
}

// onTargeted takes a Kazoo reply: the Msg-ID in the body names the query.
func (q *querier) onTargeted(d amqp.Delivery) {
	p := q.parsers.Get()
	defer q.parsers.Put(p)
	id := d.CorrelationId
	if v, err := p.ParseBytes(d.Body); err == nil {
		if s := v.GetStringBytes("Msg-ID"); s != nil {
			id = string(s)
		}
	} else if id == "" {
		q.drops.With("not_json").Inc()
		return
	}
	q.deliver(id, answer{body: d.Body})
}

// targetedTask is the Kazoo-mode reply path: our queue on the targeted
// exchange, on a channel of its own.
func (q *querier) targetedTask() rabbit.Task {
	mode, _ := rabbit.ParseDeclareMode(q.b.cfg.AMQP.Declare) // checked by Validate
	tried := func(up bool, err error) {
		if up || err != nil {
			q.targetedOnce.Do(func() { close(q.targetedTried) })
		}
	}
	return rabbit.Task{Name: "kazoo reply queue " + q.serverID, State: tried, Run: func(ctx context.Context, s *rabbit.Session, ch *amqp.Channel, up func()) error {
		// Created as kazoo creates it (direct, not durable) when missing; one
		// that exists is used as it is.
		x := rabbit.Exchange{Name: TargetedExchange, Type: amqp.ExchangeDirect}
		if err := rabbit.DeclareExchange(ctx, s.Conn, mode, x); err != nil {
			return err
		}
		// Ours alone, whatever the mode: the name is unique to this process.
		if _, err := ch.QueueDeclare(q.serverID, false, true, true, false, nil); err != nil {
			return fmt.Errorf("declare reply queue %q: %w", q.serverID, err)
		}
		if err := ch.QueueBind(q.serverID, q.serverID, TargetedExchange, false, nil); err != nil {
			return fmt.Errorf("bind reply queue %q to %q: %w", q.serverID, TargetedExchange, err)
		}
		deliveries, err := ch.Consume(q.serverID, "", true, true, false, false, nil)
		if err != nil {
			return fmt.Errorf("consume reply queue %q: %w", q.serverID, err)
		}
		up()
		return rabbit.ServeDeliveries(ctx, ch, deliveries, q.onTargeted)
	}}
}

// kazooFields adds what Kazoo apps expect to a JSON object body, keeping members the
// caller set (a script may bring its own Msg-ID). It returns the Msg-ID.
func (q *querier) kazooFields(body []byte) ([]byte, string, error) {
	p := q.parsers.Get()
	defer q.parsers.Put(p)
	v, err := p.ParseBytes(body)
	if err != nil || v.Type() != fastjson.TypeObject {
		return nil, "", errKazooPayload
	}
	o := v.GetObject()
	msgID := string(v.GetStringBytes("Msg-ID"))
	if msgID == "" {
		msgID = newUUID()
	}
	out := make([]byte, 0, len(body)+256)
	out = append(out, '{')
	n := 0
	o.Visit(func(k []byte, m *fastjson.Value) {
		if n > 0 {
			out = append(out, ',')
		}
		out = appendString(out, string(k))
		out = append(out, ':')
		out = m.MarshalTo(out)
		n++
	})
	add := func(k, val string) {
		if o.Get(k) != nil {
			return
		}
		if n > 0 {
			out = append(out, ',')
		}
		out = appendString(out, k)
		out = append(out, ':')
		out = appendString(out, val)
		n++
	}
	add("Msg-ID", msgID)
	add("Server-ID", q.serverID)
	add("Node", q.b.cfg.AMQP.Node)
	add("App-Name", "sipside")
	add("App-Version", q.b.opts.Version)
	return append(out, '}'), msgID, nil
}

// QueryRequest is one amqp.query.
type QueryRequest struct {
	PublishRequest
	Timeout time.Duration // 0 = amqp.query_timeout
}

// Query publishes r with a fresh correlation id and returns the reply's body. The
// waiter is registered before the publish, so a reply however fast is matched.
func (b *Bridge) Query(ctx context.Context, r QueryRequest) ([]byte, error) {
	q := b.q
	// Admission first: a flood of slow queries is refused at once instead of
	// piling up waiters, goroutines and memory without bound.
	if q.waiting.Add(1) > int64(b.cfg.AMQP.MaxQueries) {
		q.waiting.Add(-1)
		q.refused.Inc()
		return nil, ErrTooManyQueries
	}
	defer q.waiting.Add(-1)
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = b.cfg.AMQP.QueryTimeout.Std()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body := r.Body
	var id string
	msg := publishing(r.PublishRequest, nil)
	if b.cfg.AMQP.Kazoo {
		var err error
		body, id, err = q.kazooFields(body)
		if err != nil {
			return nil, err
		}
	} else {
		id = newUUID()
		msg.ReplyTo = rabbitDirectReplyTo
	}
	msg.CorrelationId = id
	msg.Body = body
	start := time.Now()
	ch := q.register(id)
	defer q.unregister(id)
	q.inflight.Add(1)
	defer q.inflight.Add(-1)
	// Sent without a confirm: the reply is the confirmation. What a confirm
	// would say comes anyway: a return fails the waiter at once (unroutable),
	// and lost closes when the channel the reply must come back on dies.
	lost, err := b.req.Send(ctx, r.Exchange, r.RoutingKey, msg)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			q.timeouts.Inc()
		}
		return nil, err
	}
	if b.cfg.AMQP.Kazoo {
		// The targeted reply queue is declared again, same name, on the next
		// connection: a reply may still arrive there.
		lost = nil
	}
	select {
	case rep := <-ch:
		if rep.err != nil {
			return nil, rep.err
		}
		q.latency.Since(start)
		return rep.body, nil
	case <-lost:
		// A reply that raced with the loss is still taken.
		select {
		case rep := <-ch:
			if rep.err == nil {
				q.latency.Since(start)
				return rep.body, nil
			}
		default:
		}
		q.lost.Inc()
		return nil, ErrReplyLost
	case <-callerGone(ctx):
		q.gone.Inc()
		return nil, errCallerGone
	case <-ctx.Done():
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			q.gone.Inc()
			return nil, ctx.Err()
		}
		q.timeouts.Inc()
		return nil, fmt.Errorf("%w (%v): is a responder consuming %q on %q?", ErrQueryTimeout, timeout, r.RoutingKey, r.Exchange)
	}
}
