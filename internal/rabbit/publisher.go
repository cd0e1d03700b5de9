package rabbit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sipside/sipside/internal/metrics"
)

// DirectReplyTo is RabbitMQ's pseudo-queue for RPC replies without a reply queue.
// A request must be published on the channel that consumes it, which is why the
// publisher owns that consumer.
const DirectReplyTo = "amq.rabbitmq.reply-to"

// PublisherOptions tune a Publisher.
type PublisherOptions struct {
	// OnReply, when set, makes the publisher consume DirectReplyTo on its channel and
	// hand every reply to OnReply (from one goroutine, in arrival order). Requests must
	// then set ReplyTo: DirectReplyTo. OnReply must not block.
	OnReply func(amqp.Delivery)
	// Label distinguishes publishers of one manager in metrics; default "default".
	Label string
	// FailFast makes a publish fail at once with ErrNotConnected while the
	// manager has no live connection, instead of waiting (within its context)
	// for the next one. For callers with somewhere else to go, such as
	// event_virtual's FAILOVER or a spool. It still waits while a live
	// connection opens this publisher's channel.
	FailFast bool
}

// Publisher publishes on one confirm-mode channel. Publishes from many goroutines are
// pipelined: each waits only for its own confirm, never for the ones before it.
type Publisher struct {
	m    *Manager
	opts PublisherOptions

	mu      sync.Mutex // guards cur and cond
	cur     *pubChannel
	changed chan struct{} // closed and replaced whenever cur changes

	remove func()
	met    pubMetrics
}

type pubMetrics struct {
	results  *metrics.CounterVec
	latency  *metrics.Histogram
	inflight *metrics.Gauge
	returns  *metrics.Counter
	replies  *metrics.Counter
	reopens  *metrics.Counter
	label    string
	name     string
	ok       *metrics.Counter
}

// pubChannel is one confirm-mode channel and the publishes waiting for its confirms.
type pubChannel struct {
	ch   *amqp.Channel
	sess *Session
	seq  uint64 // delivery tag of the last publish; guarded by send

	send sync.Mutex // serialises seq assignment with the send itself

	pmu     sync.Mutex // guards pending, dead and receiving from returns; never held during I/O
	pending map[uint64]*pending
	returns <-chan amqp.Return
	dead    error // set when the channel is gone; later publishes fail fast
	done    chan struct{}
}

type pending struct {
	exchange, key string
	body          []byte
	returned      *amqp.Return
}

// NewPublisher registers a publisher with m. Its channel opens on every connection
// (as a Hook, so a failure to open it drops and retries the connection).
func (m *Manager) NewPublisher(ctx context.Context, opts PublisherOptions) (*Publisher, error) {
	if opts.Label == "" {
		opts.Label = "default"
	}
	reg := m.cfg.Metrics
	p := &Publisher{
		m:       m,
		opts:    opts,
		changed: make(chan struct{}),
	}
	p.met = pubMetrics{
		results:  reg.Counter("sipside_amqp_publishes_total", "Publishes by outcome (confirmed, nacked, returned, unconfirmed, timeout, no_exchange, error).", "name", "publisher", "result"),
		latency:  reg.Histogram("sipside_amqp_publish_seconds", "Time from publish to broker confirm.", nil, "name", "publisher").With(m.cfg.Name, opts.Label),
		inflight: reg.Gauge("sipside_amqp_publishes_inflight", "Publishes waiting for a confirm.", "name", "publisher").With(m.cfg.Name, opts.Label),
		returns:  reg.Counter("sipside_amqp_returns_total", "Messages returned as unroutable.", "name", "publisher").With(m.cfg.Name, opts.Label),
		replies:  reg.Counter("sipside_amqp_direct_replies_total", "Replies received on amq.rabbitmq.reply-to.", "name", "publisher").With(m.cfg.Name, opts.Label),
		reopens:  reg.Counter("sipside_amqp_publisher_channel_reopens_total", "Publisher channels reopened after a channel error.", "name", "publisher").With(m.cfg.Name, opts.Label),
		label:    opts.Label,
		name:     m.cfg.Name,
	}
	p.met.ok = p.met.results.With(m.cfg.Name, opts.Label, "confirmed")
	remove, err := m.OnConnect(ctx, func(ctx context.Context, conn *amqp.Connection) error {
		s := m.sessionFor(conn)
		return p.open(s, conn)
	})
	p.remove = remove
	if err != nil {
		return p, fmt.Errorf("rabbit: open publisher channel: %w", err)
	}
	return p, nil
}

// sessionFor finds the session of conn, which hooks get as a bare connection.
func (m *Manager) sessionFor(conn *amqp.Connection) *Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range []*Session{m.setup, m.sess} {
		if s != nil && s.Conn == conn {
			return s
		}
	}
	// Not one of ours (a caller ran the hook by hand): watch it on its own.
	s := &Session{Conn: conn, done: make(chan struct{})}
	ch := conn.NotifyClose(make(chan *amqp.Error, 1))
	go func() {
		for range ch {
		}
		close(s.done)
	}()
	return s
}

// Close unregisters the publisher and closes its channel; waiting publishes fail.
func (p *Publisher) Close() {
	if p.remove != nil {
		p.remove()
	}
	p.mu.Lock()
	pc := p.cur
	p.cur = nil
	p.mu.Unlock()
	if pc != nil {
		pc.ch.Close()
	}
}

func (p *Publisher) open(s *Session, conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return fmt.Errorf("enable publisher confirms: %w", err)
	}
	var replies <-chan amqp.Delivery
	if p.opts.OnReply != nil {
		replies, err = ch.Consume(DirectReplyTo, "", true, false, false, false, nil)
		if err != nil {
			ch.Close()
			return fmt.Errorf("consume %s: %w", DirectReplyTo, err)
		}
	}
	pc := &pubChannel{
		ch:      ch,
		sess:    s,
		pending: make(map[uint64]*pending),
		done:    make(chan struct{}),
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 4096))
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	pc.returns = returns
	go p.watch(pc, closed)
	if replies != nil {
		go func() {
			for d := range replies {
				p.met.replies.Inc()
				p.opts.OnReply(d)
			}
		}()
	}
	p.setCur(pc)
	return nil
}

func (p *Publisher) setCur(pc *pubChannel) {
	p.mu.Lock()
	p.cur = pc
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// watch drains returns that no publisher collected (their publishers gave up) so the
// library's reader never waits on a full listener, and handles the channel's end.
func (p *Publisher) watch(pc *pubChannel, closed <-chan *amqp.Error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case cerr := <-closed:
			p.channelGone(pc, cerr)
			return
		case <-t.C:
			pc.pmu.Lock()
			p.drainReturns(pc)
			pc.pmu.Unlock()
		}
	}
}

// drainReturns matches buffered returns to pending publishes; pc.pmu must be held.
// Returns are only ever received with pmu held: a publisher that saw its confirm then
// drains under pmu and is sure to see its own return, which the library queued before
// it processed the confirm.
func (p *Publisher) drainReturns(pc *pubChannel) {
	for {
		select {
		case r, ok := <-pc.returns:
			if !ok {
				pc.returns = nil
				return
			}
			p.noteReturn(pc, r)
		default:
			return
		}
	}
}

func (p *Publisher) noteReturn(pc *pubChannel, r amqp.Return) {
	p.met.returns.Inc()
	// Returns carry no delivery tag: match the oldest unconfirmed publish with the same
	// destination and body. Identical messages to the same dead end are interchangeable.
	var best uint64
	for tag, pd := range pc.pending {
		if pd.returned == nil && pd.exchange == r.Exchange && pd.key == r.RoutingKey && bytes.Equal(pd.body, r.Body) && (best == 0 || tag < best) {
			best = tag
		}
	}
	if best != 0 {
		rr := r
		pc.pending[best].returned = &rr
	}
}

// channelGone fails everything still pending and reopens the channel when only the
// channel (not the connection) died.
func (p *Publisher) channelGone(pc *pubChannel, cerr *amqp.Error) {
	err := error(ErrUnconfirmed)
	if cerr != nil {
		err = fmt.Errorf("%w (%s)", ErrUnconfirmed, cerr.Reason)
	}
	// Waiting publishes learn of it from their deferred confirmations, which the
	// library nacks on close; dead makes new ones fail fast.
	pc.pmu.Lock()
	pc.dead = err
	pc.pmu.Unlock()
	close(pc.done)

	p.mu.Lock()
	if p.cur == pc {
		p.cur = nil
	}
	p.mu.Unlock()

	if pc.sess.Conn.IsClosed() || cerr == nil {
		return // the connection is gone (the manager reconnects) or we closed it
	}
	// A channel exception (say a publish to an exchange deleted under us) killed only
	// this channel: reopen on the same connection.
	p.met.reopens.Inc()
	p.m.log.Warn("AMQP publisher channel closed by broker; reopening", "err", cerr)
	p.m.hookMu.Lock()
	defer p.m.hookMu.Unlock()
	if pc.sess.Conn.IsClosed() {
		return
	}
	if err := p.open(pc.sess, pc.sess.Conn); err != nil {
		p.m.log.Error("AMQP publisher channel reopen failed; closing the connection to start over", "err", err)
		pc.sess.Conn.Close()
	}
}

// current waits for an open publisher channel.
func (p *Publisher) current(ctx context.Context) (*pubChannel, error) {
	for {
		p.mu.Lock()
		pc, changed := p.cur, p.changed
		p.mu.Unlock()
		if pc != nil {
			select {
			case <-pc.done:
			case <-pc.sess.done:
			default:
				return pc, nil
			}
		}
		if p.opts.FailFast && !p.m.live() {
			return nil, fmt.Errorf("%w: the broker connection is down", ErrNotConnected)
		}
		if err := p.m.waitChange(ctx, changed); err != nil {
			return nil, err
		}
	}
}

// waitChange waits for changed to close (a channel owner's new channel), or
// a poll interval: a session that died may not have been replaced yet and
// nobody closes changed for its death. It fails when ctx ends or the
// manager has stopped.
func (m *Manager) waitChange(ctx context.Context, changed <-chan struct{}) error {
	t := time.NewTimer(20 * time.Millisecond)
	defer t.Stop()
	select {
	case <-changed:
	case <-t.C:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNotConnected, context.Cause(ctx))
	}
	if m.Current() == nil {
		m.mu.Lock()
		stopped := m.stopped
		m.mu.Unlock()
		if stopped {
			return ErrClosed
		}
	}
	return nil
}

// Publish sends msg with mandatory set and returns once the broker confirmed it: nil
// when a queue took it, ErrReturned when no queue is bound, ErrNacked when the broker
// refused it, ErrUnconfirmed when the connection died in between (the message may or
// may not have arrived), ErrNoExchange when the exchange does not exist. While
// disconnected it waits for a connection. ctx bounds the whole call; on expiry the
// message may still be confirmed later, unseen.
func (p *Publisher) Publish(ctx context.Context, exchange, key string, msg amqp.Publishing) error {
	return p.record(func() error {
		_, err := p.publish(ctx, exchange, key, msg)
		return err
	})
}

// Send is Publish in two halves, for callers that keep many messages in
// flight and still need each one's outcome in order: the message is on the
// channel, after every message sent before it, when Send returns, and the
// returned function waits (within ctx) for the broker's confirm and says what
// Publish would have said.
func (p *Publisher) Send(ctx context.Context, exchange, key string, msg amqp.Publishing) (wait func() error) {
	pc, err := p.current(ctx)
	if err != nil {
		return func() error { return p.record(func() error { return err }) }
	}
	confirm, err := p.sendOn(ctx, pc, exchange, key, msg)
	if err != nil {
		return func() error { return p.record(func() error { return err }) }
	}
	return func() error { return p.record(confirm) }
}

// record runs one publish and counts its outcome.
func (p *Publisher) record(publish func() error) error {
	start := time.Now()
	err := publish()
	result := "confirmed"
	switch {
	case err == nil:
		p.met.ok.Inc()
		p.met.latency.Since(start)
		return nil
	case errors.Is(err, ErrReturned):
		result = "returned"
	case errors.Is(err, ErrNacked):
		result = "nacked"
	case errors.Is(err, ErrUnconfirmed):
		result = "unconfirmed"
	case errors.Is(err, ErrNoExchange):
		result = "no_exchange"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		result = "timeout"
	default:
		result = "error"
	}
	p.met.results.With(p.met.name, p.met.label, result).Inc()
	return err
}

// PublishWatch is Publish that also returns a channel closed when the channel the
// message went out on dies. A direct reply-to request needs it: its reply can only
// arrive on that channel, so a waiter can give up at once instead of timing out.
func (p *Publisher) PublishWatch(ctx context.Context, exchange, key string, msg amqp.Publishing) (lost <-chan struct{}, err error) {
	var pc *pubChannel
	err = p.record(func() error {
		var err error
		pc, err = p.publish(ctx, exchange, key, msg)
		return err
	})
	if pc == nil {
		return closedChan, err
	}
	return pc.done, err
}

// publish retries, on the next channel, a message that never left because its channel
// died first: that is the one retry that cannot duplicate a message.
func (p *Publisher) publish(ctx context.Context, exchange, key string, msg amqp.Publishing) (*pubChannel, error) {
	for {
		pc, err := p.current(ctx)
		if err != nil {
			return nil, err
		}
		err = p.publishOn(ctx, pc, exchange, key, msg)
		var ns notSent
		if !errors.As(err, &ns) {
			return pc, err
		}
		select {
		case <-pc.done:
		case <-ctx.Done():
			return pc, err
		}
	}
}

// notSent marks a publish that never reached the socket.
type notSent struct{ error }

func (e notSent) Unwrap() error { return e.error }

func (p *Publisher) publishOn(ctx context.Context, pc *pubChannel, exchange, key string, msg amqp.Publishing) error {
	confirm, err := p.sendOn(ctx, pc, exchange, key, msg)
	if err != nil {
		return err
	}
	return confirm()
}

// sendOn puts the message on the channel and returns the wait for its confirm.
func (p *Publisher) sendOn(ctx context.Context, pc *pubChannel, exchange, key string, msg amqp.Publishing) (confirm func() error, err error) {
	err = p.m.checkExchange(ctx, pc.sess, exchange)
	if err != nil {
		return nil, err
	}
	select {
	case <-pc.sess.unblocked():
	case <-ctx.Done():
		return nil, fmt.Errorf("broker blocks publishing (resource alarm) and the deadline passed: %w", context.Cause(ctx))
	}
	pd := &pending{exchange: exchange, key: key, body: msg.Body}

	pc.send.Lock()
	pc.pmu.Lock()
	if pc.dead != nil {
		pc.pmu.Unlock()
		pc.send.Unlock()
		return nil, notSent{fmt.Errorf("rabbit: channel closed before the message was sent: %w", ErrNotConnected)}
	}
	// Registered before the send, so a return that arrives at once finds it.
	tag := pc.seq + 1
	pc.pending[tag] = pd
	pc.pmu.Unlock()
	dc, err := pc.ch.PublishWithDeferredConfirm(exchange, key, true, false, msg)
	if err == nil {
		pc.seq = tag
	}
	pc.send.Unlock()
	if err != nil {
		pc.forget(tag)
		if errors.Is(err, amqp.ErrClosed) {
			// Nothing was sent: safe to say so plainly rather than "unconfirmed".
			return nil, notSent{fmt.Errorf("rabbit: publish on a closed channel, message not sent: %w", ErrNotConnected)}
		}
		// A write that failed half way may still have reached the broker.
		return nil, fmt.Errorf("%w: %w", ErrUnconfirmed, err)
	}
	p.met.inflight.Add(1)
	return func() error {
		defer p.met.inflight.Add(-1)
		select {
		case <-dc.Done():
		case <-ctx.Done():
			pc.forget(tag)
			return fmt.Errorf("rabbit: no confirm from the broker before the deadline: %w", context.Cause(ctx))
		}
		pc.pmu.Lock()
		p.drainReturns(pc)
		delete(pc.pending, tag)
		dead := pc.dead
		pc.pmu.Unlock()
		switch {
		case pd.returned != nil:
			return fmt.Errorf("%w: exchange %q routing key %q: %d %s (bind a queue for this key or fix the key)",
				ErrReturned, exchange, key, pd.returned.ReplyCode, pd.returned.ReplyText)
		case dc.Acked():
			return nil
		case pc.ch.IsClosed():
			// The library nacks every outstanding confirm when the channel closes.
			if dead != nil {
				return dead
			}
			return ErrUnconfirmed
		default:
			return fmt.Errorf("%w: exchange %q routing key %q (queue full with overflow=reject-publish, or broker error)", ErrNacked, exchange, key)
		}
	}, nil
}

func (pc *pubChannel) forget(tag uint64) {
	pc.pmu.Lock()
	delete(pc.pending, tag)
	pc.pmu.Unlock()
}

// checkExchange makes a publish to a missing exchange a clear error instead of a
// channel exception that would fail every other publish in flight on the channel.
// Results are cached per connection.
func (m *Manager) checkExchange(ctx context.Context, s *Session, exchange string) error {
	if exchange == "" || len(exchange) > 4 && exchange[:4] == "amq." {
		return nil
	}
	if known, ok := m.exchanges.Load(exchange); ok && known.(*Session) == s {
		return nil
	}
	if err := ExchangeExists(ctx, s.Conn, exchange); err != nil {
		return err
	}
	m.exchanges.Store(exchange, s)
	return nil
}

// ExchangeExists checks with a passive declare on a throw-away channel (a missing
// exchange closes the channel it was asked on).
func ExchangeExists(ctx context.Context, conn *amqp.Connection, exchange string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("rabbit: check exchange %q: %w", exchange, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- ch.ExchangeDeclarePassive(exchange, "direct", false, false, false, false, nil) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		ch.Close()
		return fmt.Errorf("rabbit: check exchange %q: %w", exchange, context.Cause(ctx))
	}
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
		return fmt.Errorf("%w: %q on this broker/vhost (declare it, or fix the name)", ErrNoExchange, exchange)
	}
	if err != nil {
		return fmt.Errorf("rabbit: check exchange %q: %w", exchange, err)
	}
	ch.Close()
	return nil
}
