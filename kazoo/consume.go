package kazoo

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/internal/metrics"
	"github.com/sipside/sipside/internal/rabbit"
)

// Message is one consumed message on its way to the proxy.
type Message struct {
	Event       string // consume.event
	Exchange    string
	RoutingKey  string
	ContentType string
	Body        []byte
	// AckID is set in ack = "script" mode: the script passes it to amqp.ack / amqp.nack.
	AckID string
}

// Deliverer hands a consumed message to the proxy. A nil error means the proxy took it.
type Deliverer interface {
	Deliver(ctx context.Context, m *Message) error
}

// deliverTimeout bounds one hand-over to the proxy.
const deliverTimeout = 5 * time.Second

// redeliverPause slows the requeue loop of a message the proxy keeps refusing.
const redeliverPause = time.Second

type consumer struct {
	b    *Bridge
	idx  int
	cfg  ConsumeConfig
	d    Deliverer
	name string
	mode rabbit.DeclareMode

	queue atomic.Value // string: the queue consumed now
	gen   atomic.Int64 // channel generation, part of ack ids

	stateMu sync.Mutex
	isUp    bool
	lastErr error // why the consumer is down; nil while up or never tried
	tried   chan struct{}
	tryOnce sync.Once

	up                                         *metrics.Gauge
	received, delivered, failed, acked, nacked *metrics.Counter
}

func newConsumer(b *Bridge, idx int, cfg ConsumeConfig, d Deliverer) *consumer {
	name := cfg.DisplayName()
	cv := b.reg.Counter("sipside_amqp_consumer_messages_total", "Consumed messages by outcome (received, delivered, failed, acked, nacked).", "consumer", "outcome")
	mode, _ := rabbit.ParseDeclareMode(cfg.Declare) // checked by Validate
	c := &consumer{b: b, idx: idx, cfg: cfg, d: d, name: name, mode: mode,
		up:       b.reg.Gauge("sipside_amqp_consumer_up", "1 while the consumer is declared, bound and consuming; 0 while it is down (see the log and the status page for why).", "consumer").With(name),
		received: cv.With(name, "received"), delivered: cv.With(name, "delivered"), failed: cv.With(name, "failed"),
		acked: cv.With(name, "acked"), nacked: cv.With(name, "nacked"),
	}
	c.queue.Store("")
	c.tried = make(chan struct{})
	return c
}

// task runs the consumer on its own channel, so that a consumer the broker
// refuses is down alone and the bridge keeps publishing and querying.
func (c *consumer) task() rabbit.Task {
	return rabbit.Task{Name: "consumer " + c.name, Run: c.run, State: c.setState}
}

func (c *consumer) setState(up bool, err error) {
	c.stateMu.Lock()
	c.isUp, c.lastErr = up, err
	c.stateMu.Unlock()
	if up || err != nil {
		c.tryOnce.Do(func() { close(c.tried) })
	}
	if up {
		c.up.Set(1)
	} else {
		c.up.Set(0)
	}
}

// State reports whether the consumer is up and, if not, why.
func (c *consumer) state() (bool, error) {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	return c.isUp, c.lastErr
}

// run declares what the consumer needs as its declare mode says, binds, and
// hands every delivery to the proxy until the channel closes.
func (c *consumer) run(ctx context.Context, s *rabbit.Session, ch *amqp.Channel, up func()) error {
	if err := ch.Qos(c.cfg.Prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch %d: %w", c.cfg.Prefetch, err)
	}
	if c.cfg.Exchange != "" {
		x := rabbit.Exchange{Name: c.cfg.Exchange, Type: c.cfg.ExchangeType, Durable: c.cfg.Durable}
		if err := rabbit.DeclareExchange(ctx, s.Conn, c.mode, x); err != nil {
			return err
		}
	}
	q := rabbit.Queue{Name: c.cfg.Queue, Type: c.cfg.QueueType, Durable: c.cfg.Durable}
	qname, err := rabbit.DeclareQueue(ctx, s.Conn, ch, c.mode, q)
	if err != nil {
		return err
	}
	if c.cfg.Exchange != "" {
		for _, k := range c.cfg.keys() {
			if err := ch.QueueBind(qname, k, c.cfg.Exchange, false, nil); err != nil {
				return fmt.Errorf("bind queue %q to exchange %q with key %q: %w (the user needs write permission on the queue and read on the exchange)", qname, c.cfg.Exchange, k, err)
			}
		}
	}
	deliveries, err := ch.Consume(qname, "sipside-"+c.name, c.cfg.Ack == AckImmediate, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume queue %q: %w", qname, err)
	}
	c.queue.Store(qname)
	gen := c.gen.Add(1)
	c.b.log.Info("AMQP consumer ready", "consumer", c.name, "queue", qname, "exchange", c.cfg.Exchange, "ack", c.cfg.Ack)
	up()
	return rabbit.ServeDeliveries(ctx, ch, deliveries, func(d amqp.Delivery) { c.handle(ctx, gen, d) })
}

// handle delivers one message; messages of one consumer go to the proxy in order.
func (c *consumer) handle(ctx context.Context, gen int64, d amqp.Delivery) {
	c.received.Inc()
	m := &Message{Event: c.cfg.Event, Exchange: d.Exchange, RoutingKey: d.RoutingKey, ContentType: d.ContentType, Body: d.Body}
	if c.cfg.Ack == AckScript {
		// Registered before the hand-over: the script may ack before Deliver returns.
		m.AckID = c.b.acks.add(c, gen, d, c.cfg.AckTimeout.Std())
	}
	dctx, cancel := context.WithTimeout(ctx, deliverTimeout)
	err := c.d.Deliver(dctx, m)
	cancel()
	if err == nil {
		c.delivered.Inc()
		if c.cfg.Ack == AckDelivered {
			if d.Ack(false) == nil {
				c.acked.Inc()
			}
		}
		return
	}
	c.failed.Inc()
	c.b.log.Warn("AMQP message not delivered to the proxy", "consumer", c.name, "deliver", c.cfg.Deliver, "err", err)
	switch c.cfg.Ack {
	case AckImmediate:
		// Already acked by the broker on receipt: lost, and counted as failed.
	case AckScript:
		if !c.b.acks.take(m.AckID) {
			return // the script settled it already
		}
		fallthrough
	case AckDelivered:
		select {
		case <-time.After(redeliverPause):
		case <-ctx.Done():
		}
		if d.Nack(false, true) == nil {
			c.nacked.Inc()
		}
	}
}

func (c *consumer) status(out []byte) []byte {
	out = append(out, `{"name":`...)
	out = appendString(out, c.name)
	out = append(out, `,"queue":`...)
	out = appendString(out, c.queue.Load().(string))
	out = append(out, `,"exchange":`...)
	out = appendString(out, c.cfg.Exchange)
	out = append(out, `,"ack":`...)
	out = appendString(out, c.cfg.Ack)
	up, err := c.state()
	out = append(out, `,"up":`...)
	out = strconv.AppendBool(out, up)
	if err != nil {
		out = append(out, `,"error":`...)
		out = appendString(out, err.Error())
	}
	out = append(out, `,"received":`...)
	out = strconv.AppendUint(out, c.received.Value(), 10)
	out = append(out, `,"delivered":`...)
	out = strconv.AppendUint(out, c.delivered.Value(), 10)
	out = append(out, `,"failed":`...)
	out = strconv.AppendUint(out, c.failed.Value(), 10)
	return append(out, '}')
}

var errUnknownDelivery = errors.New("kazoo: no delivery waits for an ack with this id (already settled, timed out and requeued, or its connection was lost and the broker redelivers it)")

// ackTable holds deliveries waiting for the script's amqp.ack / amqp.nack.
type ackTable struct {
	mu      sync.Mutex
	pending map[string]*ackEntry
	seq     atomic.Uint64
	expired *metrics.Counter
}

type ackEntry struct {
	c        *consumer
	d        amqp.Delivery
	deadline time.Time
}

func newAckTable(reg *metrics.Registry) *ackTable {
	return &ackTable{
		pending: make(map[string]*ackEntry),
		expired: reg.Counter("sipside_amqp_ack_timeouts_total", "Script-acked deliveries nacked with requeue because amqp.ack did not come in time.").With(),
	}
}

func (t *ackTable) add(c *consumer, gen int64, d amqp.Delivery, timeout time.Duration) string {
	id := strconv.Itoa(c.idx) + "-" + strconv.FormatInt(gen, 10) + "-" + strconv.FormatUint(t.seq.Add(1), 10)
	t.mu.Lock()
	t.pending[id] = &ackEntry{c: c, d: d, deadline: time.Now().Add(timeout)}
	t.mu.Unlock()
	return id
}

// take removes id and reports whether it was there.
func (t *ackTable) take(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.pending[id]
	delete(t.pending, id)
	return ok
}

func (t *ackTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}

func (t *ackTable) settle(id string, ack, requeue bool) error {
	t.mu.Lock()
	e, ok := t.pending[id]
	delete(t.pending, id)
	t.mu.Unlock()
	if !ok {
		return errUnknownDelivery
	}
	var err error
	if ack {
		err = e.d.Ack(false)
		if err == nil {
			e.c.acked.Inc()
		}
	} else {
		err = e.d.Nack(false, requeue)
		if err == nil {
			e.c.nacked.Inc()
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %v", errUnknownDelivery, err)
	}
	return nil
}

// expire nacks (with requeue) deliveries whose script never answered.
func (t *ackTable) expire(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			var late []*ackEntry
			t.mu.Lock()
			for id, e := range t.pending {
				if now.After(e.deadline) {
					late = append(late, e)
					delete(t.pending, id)
				}
			}
			t.mu.Unlock()
			for _, e := range late {
				t.expired.Inc()
				if e.d.Nack(false, true) == nil {
					e.c.nacked.Inc()
				}
			}
		}
	}
}
